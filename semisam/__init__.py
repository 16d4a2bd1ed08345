"""semisam: semi-supervised medical image segmentation with an nnU-Net student and a SAM teacher."""
__version__ = "0.1.0"

"""The semi-supervised loop: SamDSK rounds over an nnU-Net student and a SAM teacher."""

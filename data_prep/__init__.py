"""Dataset converters and split makers that write nnU-Net raw datasets for semisam."""

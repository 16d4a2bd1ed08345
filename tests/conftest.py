"""Suite-wide settings: CPU-friendly nnU-Net workers, no accidental W&B uploads, small thread counts."""
import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")
os.environ.setdefault("OMP_NUM_THREADS", "2")

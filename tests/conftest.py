"""Suite-wide settings: CPU-friendly nnU-Net workers, no accidental W&B uploads, small thread counts."""
import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")
# One torch thread per process: on 2 cores, a 2-thread process stalls at every parallel region whenever the other
# core is busy (another process of the test, nnU-Net's workers, a neighbour on a shared CI host). Measured on the
# real LiteMedSAM loop test: 81 s with 2 threads on an idle machine, 432 s with 2 threads and the other core
# busy, 110 s with 1 thread and the other core busy.
os.environ.setdefault("OMP_NUM_THREADS", "1")

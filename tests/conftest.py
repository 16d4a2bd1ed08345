"""Suite-wide settings: CPU-friendly nnU-Net workers, no accidental W&B uploads, small thread counts."""
import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")
# `make test` runs the suite in 2 pytest-xdist workers (one per core): one thread each, as two torch processes
# with 2 threads each on 2 cores slow each other many times over; a lone pytest process takes both cores.
os.environ.setdefault("OMP_NUM_THREADS", "1" if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else "2")

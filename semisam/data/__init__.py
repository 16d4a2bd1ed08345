"""The one home for nnU-Net raw dataset I/O: typed cases, splits, reading, atomic writing, checking."""
from semisam.data.cases import LabeledCase, UnlabeledCase
from semisam.data.raw import (
    HIDDEN_DIR,
    CaseData,
    Geometry,
    RawDataset,
    check_raw_dataset,
    parse_labels,
    write_array,
    write_raw_dataset,
)
from semisam.data.split import SPLIT_FILE, Split, load_split, make_split, num_labeled, save_split

__all__ = [
    "HIDDEN_DIR", "SPLIT_FILE", "CaseData", "Geometry", "LabeledCase", "RawDataset", "Split", "UnlabeledCase",
    "check_raw_dataset", "load_split", "make_split", "num_labeled", "parse_labels", "save_split",
    "write_array", "write_raw_dataset",
]

"""The one home for nnU-Net raw dataset I/O: typed cases, splits, reading, atomic writing, checking."""
from semisam.data.cases import LabeledCase, UnlabeledCase
from semisam.data.identity import RUN_PARTS, dataset_identity, dataset_identity_parts
from semisam.data.probabilities import load_probabilities, probabilities_file
from semisam.data.raw import (
    HIDDEN_DIR,
    CaseData,
    Geometry,
    RawDataset,
    check_case_files,
    check_raw_dataset,
    parse_labels,
    write_array,
    write_raw_dataset,
)
from semisam.data.split import SPLIT_FILE, Split, load_split, make_split, num_labeled, save_split

__all__ = [
    "HIDDEN_DIR", "RUN_PARTS", "SPLIT_FILE", "CaseData", "Geometry", "LabeledCase", "RawDataset", "Split",
    "UnlabeledCase", "check_case_files", "check_raw_dataset", "dataset_identity", "dataset_identity_parts",
    "load_probabilities", "load_split", "make_split", "num_labeled", "parse_labels", "probabilities_file", "save_split", "write_array", "write_raw_dataset",
]

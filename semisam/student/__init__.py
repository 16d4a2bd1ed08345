"""The nnU-Net student: nnunetv2's planning, preprocessing, training and prediction driven from Python."""
from semisam.student.env import NnUNetPaths, link_raw_dataset, nnunet_env
from semisam.data.probabilities import load_probabilities, probabilities_file
from semisam.student.driver import NnUNetStudent, resolve_device

__all__ = ["NnUNetPaths", "NnUNetStudent", "link_raw_dataset", "load_probabilities", "nnunet_env",
           "probabilities_file", "resolve_device"]

"""The pseudo-labelling pipeline: student probabilities → prompts → SAM teacher → fusion → filters → pseudo-label.

:mod:`semisam.teacher` is the model (SAM and its variants, the embedding cache, adaptation); this package turns
its masks and the student's probabilities into pseudo-labels, one case at a time
(:class:`~semisam.pseudolabel.pipeline.PseudoLabeler`), and over a folder of nnU-Net outputs
(:func:`~semisam.pseudolabel.folder.pseudolabel_folder`, ``semisam pseudolabel``).
"""
from semisam.pseudolabel.folder import pseudolabel_folder
from semisam.pseudolabel.pipeline import FilterSettings, PromptSettings, PseudoLabel, PseudoLabeler, build_pseudolabeler

__all__ = ["FilterSettings", "PromptSettings", "PseudoLabel", "PseudoLabeler", "build_pseudolabeler",
           "pseudolabel_folder"]

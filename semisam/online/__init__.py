"""Online semi-supervised training inside nnU-Net's trainer (``nnUNetTrainerSemiSAM``).

* :mod:`~semisam.online.settings` — the recipe's ``online.*`` as plain values, and the weight schedules λ(t).
* :mod:`~semisam.online.unlabeled` — the unlabeled cases: found in ``imagesTr/`` without a label, preprocessed
  with nnU-Net's preprocessor, drawn through nnU-Net's loader and augmentation as :class:`UnlabeledBatch`
  (a type without a target), and the store of SAM's pseudo-labels beside them.
* :mod:`~semisam.online.terms` — the consistency terms (mean teacher, weak→strong), the strong view, the EMA
  teacher.
* :mod:`~semisam.online.sam_term` — refreshing SAM's pseudo-labels from the EMA teacher's (or the student's)
  predictions.

The trainer imports these lazily (nnU-Net's trainer lookup imports the trainer module).
"""

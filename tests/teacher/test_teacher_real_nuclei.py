"""The embedded LiteMedSAM on the real DSB nuclei tiles: adaptation on labeled tiles must help on held-out
tiles, and agreement fusion must keep pixels that are more often right than the student's prediction.

Margins come from measured runs (docs/benchmarks.md): true-mask box prompts on the 16 test tiles,
zero-shot vs adapted on 4 labeled tiles.
"""
from __future__ import annotations

import pytest

from data_prep.nuclei import make_nuclei
from semisam.bench import one_hot
from semisam.eval.metrics import pooled_dice
from semisam.teacher.pipeline import FilterSettings, PromptSettings, PseudoLabeler

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    from semisam.data import RawDataset

    root = make_nuclei(tmp_path_factory.mktemp("nuclei") / "Dataset501_Nuclei", labeled=4, seed=0)
    return RawDataset.open(root)


def test_adapted_litemedsam_beats_zero_shot_on_held_out_tiles(nuclei, litemedsam_model, tmp_path):
    from semisam.teacher.cache import EmbeddingCache
    from semisam.teacher.predictor import SamTeacher
    from semisam.teacher.preprocess import IntensityRule

    teacher = SamTeacher(litemedsam_model, EmbeddingCache(tmp_path / "cache"), intensity=None)
    labeler = PseudoLabeler(teacher, intensity=IntensityRule(), prompts=PromptSettings(split_instances=True),
                            filters=FilterSettings(fusion="sam", case_min_accept=0.0), ignore_label=2,
                            adapt_settings=dict(steps=40, batch_size=4, lr=1e-4))
    test = [(nuclei.read_image(c.image_files)[0], nuclei.read_seg(c.label_file)[0][0]) for c in nuclei.test_cases()]

    def teacher_dice() -> float:
        # prompts from the TRUE test masks: the teacher's quality on its own, independent of any student
        return pooled_dice([(labeler(img, one_hot(lab, 2)).teacher, lab) for img, lab in test], {"nucleus": 1}, 2)

    zero_shot = teacher_dice()
    labeled = [(nuclei.read_image(c.image_files)[0], nuclei.read_seg(c.label_file)[0][0]) for c in nuclei.labeled_cases()]
    stats = labeler.adapt(labeled, [1], tmp_path / "adapted.pt")
    adapted = teacher_dice()
    assert stats["reused"] is False
    assert adapted >= zero_shot + 0.02, (zero_shot, adapted)
    # the saved adaptation is found again and gives the same teacher
    again = labeler.adapt(labeled, [1], tmp_path / "adapted.pt")
    assert again["reused"] is True and teacher_dice() == pytest.approx(adapted)

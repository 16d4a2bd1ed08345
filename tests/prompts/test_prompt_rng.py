"""Box jitter is random, so it needs the caller's generator or seed: no generator seeded from the OS."""
import numpy as np
import pytest

from semisam.prompts import box_from_mask, extract_objects, make_prompts
from semisam.utils.errors import SemisamError


def test_jitter_without_rng_is_refused_and_no_jitter_needs_none():
    m = np.zeros((20, 20), bool)
    m[5:12, 6:14] = True
    with pytest.raises(SemisamError, match="rng"):
        box_from_mask(m, jitter=2)
    np.testing.assert_array_equal(box_from_mask(m), [6, 5, 13, 11])  # no jitter: no generator needed
    probs = np.stack([~m, m]).astype(np.float32)
    objs = extract_objects(probs, min_size=5)
    with pytest.raises(SemisamError, match="rng"):
        make_prompts(objs, m.shape, box=True, box_jitter=2)
    assert len(make_prompts(objs, m.shape, box=True)) == 1
    a = make_prompts(objs, m.shape, box=True, box_jitter=2, rng=np.random.default_rng(4)).boxes_xyxy
    b = make_prompts(objs, m.shape, box=True, box_jitter=2, rng=4).boxes_xyxy
    np.testing.assert_array_equal(a, b)

"""Embedding cache: hits, disk persistence, keys, memory bound, damaged files, float16, the disk cap."""
import os

import numpy as np
import pytest
import torch

from semisam.teacher.cache import EmbeddingCache
from semisam.teacher.models import build_teacher_model
from semisam.teacher.predictor import SamTeacher
from semisam.teacher.preprocess import map_intensity

from teacher_helpers import synthetic_case


def _image(seed=0):
    return map_intensity(synthetic_case(seed)[0])


def test_second_pass_hits_memory(tiny_model):
    cache = EmbeddingCache(None)
    a, info = cache.get_or_compute(_image(), tiny_model)
    b, info2 = cache.get_or_compute(_image(), tiny_model)
    assert a.shape == (1, 32, 16, 16) and info == info2 and torch.equal(a, b)
    assert cache.stats() == {"hits": 1, "hits_memory": 1, "hits_disk": 0, "misses": 1, "in_memory": 1, "hit_rate": 0.5,
                             "disk_files": 0, "disk_bytes": 0, "evictions": 0, "write_errors": 0}


def test_disk_persists_across_instances(tiny_model, tmp_path):
    first = EmbeddingCache(tmp_path)
    a, info = first.get_or_compute(_image(), tiny_model)
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) == 1 and files[0].parent.name == tiny_model.spec.model_id
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]  # atomic write left no temporary

    calls = []
    second = EmbeddingCache(tmp_path)
    b, info_b = second.get_or_compute(_image(), tiny_model, compute_fn=lambda im: calls.append(1))
    assert not calls and torch.equal(a, b) and info == info_b
    assert (second.hits_disk, second.misses) == (1, 0)


def test_key_changes_with_image_and_model(tiny_model, tmp_path):
    base = EmbeddingCache.key(_image(0), tiny_model)
    assert EmbeddingCache.key(_image(0), tiny_model) == base
    assert EmbeddingCache.key(_image(1), tiny_model) != base
    assert EmbeddingCache.key(_image(0).astype(np.float64), tiny_model) != base  # dtype is part of the key
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["image_encoder.patch_embed.proj.weight"] *= 2  # another image encoder
    torch.save(state, tmp_path / "other.pth")
    other = build_teacher_model("tiny_random", checkpoint=tmp_path / "other.pth")
    assert EmbeddingCache.key(_image(0), other) != base


def test_memory_is_bounded_lru(tiny_model):
    cache = EmbeddingCache(None, max_memory_items=2)
    for seed in (0, 1, 2):
        cache.get_or_compute(_image(seed), tiny_model)
    assert len(cache) == 2
    cache.get_or_compute(_image(2), tiny_model)  # most recent: still there
    cache.get_or_compute(_image(0), tiny_model)  # evicted: computed again
    assert (cache.hits_memory, cache.misses) == (1, 4)


def test_damaged_file_is_a_miss_and_is_rewritten(tiny_model, tmp_path):
    cache = EmbeddingCache(tmp_path, max_memory_items=0)
    a, _ = cache.get_or_compute(_image(), tiny_model)
    (path,) = tmp_path.rglob("*.pt")
    path.write_bytes(path.read_bytes()[:100])
    b, _ = cache.get_or_compute(_image(), tiny_model)
    assert torch.equal(a, b) and cache.misses == 2
    c, _ = cache.get_or_compute(_image(), tiny_model)
    assert torch.equal(a, c) and cache.hits_disk == 1


def test_float16_store_gives_the_same_values_on_hit_and_miss(tiny_model, tmp_path):
    cache = EmbeddingCache(tmp_path, store_dtype=torch.float16)
    miss, _ = cache.get_or_compute(_image(), tiny_model)
    hit, _ = EmbeddingCache(tmp_path, store_dtype=torch.float16).get_or_compute(_image(), tiny_model)
    assert miss.dtype == torch.float16 and torch.equal(miss, hit)


def test_float16_decodes_like_float32_on_the_tiny_sam(tiny_model, tmp_path):
    """The same prompts decoded from float32 and from float16-stored embeddings (read back from disk)."""
    from teacher_helpers import dice

    EmbeddingCache(tmp_path / "f16", store_dtype="float16").get_or_compute(_image(), tiny_model)
    f32 = SamTeacher(tiny_model, EmbeddingCache(tmp_path / "f32"), intensity=None)
    f16 = SamTeacher(tiny_model, EmbeddingCache(tmp_path / "f16", store_dtype="float16"), intensity=None)
    boxes = np.array([[8, 8, 40, 40], [20, 10, 60, 50], [0, 0, 63, 63]], np.float32)
    a, b = f32.predict(_image(), boxes_xyxy=boxes), f16.predict(_image(), boxes_xyxy=boxes)
    assert f16.cache.hits_disk == 1 and f16.cache.misses == 0  # decoded from the float16 file
    # measured: max |Δ logit| 9.4e-5 (logits within ±0.11), |Δ iou_pred| 5e-7, 1 of 10,726 mask pixels flipped
    assert np.abs(a.logits - b.logits).max() < 5e-4 and np.abs(a.iou_pred - b.iou_pred).max() < 1e-5
    assert dice(a.masks, b.masks) > 0.999


def test_float16_cache_reads_float32_files_but_not_the_reverse(tiny_model, tmp_path):
    exact, _ = EmbeddingCache(tmp_path).get_or_compute(_image(), tiny_model)  # an older run's float32 file
    half = EmbeddingCache(tmp_path, store_dtype="float16")
    got, _ = half.get_or_compute(_image(), tiny_model, compute_fn=lambda im: pytest.fail("recomputed"))
    assert half.hits_disk == 1 and torch.equal(got, exact.half())  # the float32 file, rounded: a miss's values
    assert torch.equal(got, EmbeddingCache(None, store_dtype="float16").get_or_compute(_image(), tiny_model)[0])
    # a float16 entry is never read as float32: the float32 cache computes its own
    EmbeddingCache(tmp_path, store_dtype="float16").get_or_compute(_image(1), tiny_model)
    full = EmbeddingCache(tmp_path)
    again, _ = full.get_or_compute(_image(1), tiny_model)
    assert full.misses == 1 and again.dtype == torch.float32
    names = sorted(p.name.split(".", 1)[1] for p in tmp_path.rglob("*.pt"))
    assert names == ["f16.pt", "pt", "pt"]


def test_stats_report_the_folder_size(tiny_model, tmp_path):
    cache = EmbeddingCache(tmp_path, store_dtype="float16")
    for seed in (0, 1, 2):
        cache.get_or_compute(_image(seed), tiny_model)
    files = list(tmp_path.rglob("*.pt"))
    stats = cache.stats()
    assert stats["disk_files"] == 3 and stats["disk_bytes"] == sum(f.stat().st_size for f in files)
    assert 3 * 32 * 16 * 16 * 2 < stats["disk_bytes"] < 3 * 32 * 16 * 16 * 4  # half precision on disk
    assert stats["evictions"] == 0 and stats["misses"] == 3


def test_a_cap_evicts_the_least_recently_used_files(tiny_model, tmp_path):
    EmbeddingCache(tmp_path / "probe").get_or_compute(_image(), tiny_model)
    one = next((tmp_path / "probe").rglob("*.pt")).stat().st_size  # bytes of one entry
    cache = EmbeddingCache(tmp_path / "c", max_memory_items=0, max_disk_gb=3.5 * one / 1e9)
    for seed, t in zip((0, 1, 2), (100, 200, 300)):
        cache.get_or_compute(_image(seed), tiny_model)
        path = cache.path_for(cache.key(_image(seed), tiny_model), tiny_model)
        os.utime(path, ns=(t * 10**9, t * 10**9))  # a clear order of use
    cache.get_or_compute(_image(0), tiny_model)  # a hit marks seed 0 as the most recently used
    assert cache.hits_disk == 1 and cache.evictions == 0
    cache.get_or_compute(_image(3), tiny_model)  # 4 files > 3.5: evict the least recently used (seed 1)
    stats = cache.stats()
    assert stats["evictions"] == 1 and stats["disk_files"] == 3 and stats["disk_bytes"] <= 3.5 * one
    assert not cache.path_for(cache.key(_image(1), tiny_model), tiny_model).exists()
    assert all(cache.path_for(cache.key(_image(s), tiny_model), tiny_model).exists() for s in (0, 2, 3))
    cache.get_or_compute(_image(1), tiny_model)  # evicted: computed again, the folder stays under the cap
    assert cache.misses == 5 and cache.stats()["disk_bytes"] <= 3.5 * one
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "another key", "empty"])
def test_a_bad_cache_file_is_a_clean_miss(tiny_model, tmp_path, damage):
    cache = EmbeddingCache(tmp_path, max_memory_items=0)
    a, _ = cache.get_or_compute(_image(0), tiny_model)
    cache.get_or_compute(_image(1), tiny_model)
    path0 = cache.path_for(cache.key(_image(0), tiny_model), tiny_model)
    path1 = cache.path_for(cache.key(_image(1), tiny_model), tiny_model)
    if damage == "truncated":
        path0.write_bytes(path0.read_bytes()[:-50])
    elif damage == "garbage":
        path0.write_bytes(os.urandom(2000))
    elif damage == "another key":  # a file under the wrong name: the stored key does not match
        os.replace(path1, path0)
    else:
        path0.write_bytes(b"")
    b, _ = cache.get_or_compute(_image(0), tiny_model)
    assert torch.equal(a, b) and cache.misses == 3 and cache.hits_disk == 0  # computed again, rewritten
    c, _ = cache.get_or_compute(_image(0), tiny_model)
    assert torch.equal(a, c) and cache.hits_disk == 1

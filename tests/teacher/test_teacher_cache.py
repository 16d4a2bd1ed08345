"""Embedding cache: hits, disk persistence, keys, memory bound, damaged files."""
import numpy as np
import torch

from semisam.teacher.cache import EmbeddingCache
from semisam.teacher.models import build_teacher_model
from semisam.teacher.preprocess import map_intensity

from teacher_helpers import synthetic_case


def _image(seed=0):
    return map_intensity(synthetic_case(seed)[0])


def test_second_pass_hits_memory(tiny_model):
    cache = EmbeddingCache(None)
    a, info = cache.get_or_compute(_image(), tiny_model)
    b, info2 = cache.get_or_compute(_image(), tiny_model)
    assert a.shape == (1, 32, 16, 16) and info == info2 and torch.equal(a, b)
    assert cache.stats() == {"hits_memory": 1, "hits_disk": 0, "misses": 1, "in_memory": 1, "hit_rate": 0.5}


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

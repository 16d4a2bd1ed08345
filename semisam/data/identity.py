"""A raw dataset's identity: a hash of what defines its content, cheap enough for a resume check.

What is hashed: ``dataset.json`` and ``semisam_split.json`` (their bytes), and for each case folder the list
of file names with their sizes (not their bytes: a cohort of large volumes would take minutes to read; a
file rewritten with other content of exactly the same size is not noticed).

``labelsHidden/`` (evaluation only) is a part of its own: :func:`dataset_identity` includes it by default
(``semisam compare`` draws labeled cases from hidden labels too), a run's fingerprint leaves it out
(:data:`RUN_PARTS`: hidden labels change the reported pseudo-label quality, never what is trained).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

from semisam.data.raw import HIDDEN_DIR
from semisam.data.split import SPLIT_FILE

FILES = ("dataset.json", SPLIT_FILE)
FOLDERS = ("imagesTr", "labelsTr", HIDDEN_DIR, "imagesTs", "labelsTs")
#: the parts that change a run's results (everything but the evaluation-only hidden labels)
RUN_PARTS = tuple(p for p in (*FILES, *FOLDERS) if p != HIDDEN_DIR)


def _items(raw_dir: Path, parts: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    """``(part, bytes)`` in a fixed order: the files' names + content, then ``folder/name:size`` per file."""
    for name in FILES:
        p = raw_dir / name
        if name in parts and p.is_file():
            yield name, name.encode() + p.read_bytes()
    for sub in FOLDERS:
        folder = raw_dir / sub
        if sub in parts and folder.is_dir():
            for f in sorted(folder.iterdir()):
                yield sub, f"{sub}/{f.name}:{f.stat().st_size}".encode()


def dataset_identity(raw_dir: str | os.PathLike, parts: tuple[str, ...] = (*FILES, *FOLDERS)) -> str:
    """One hash (16 hex digits) of a raw dataset's ``parts`` (default: all, labelsHidden included)."""
    h = hashlib.sha256()
    for _, data in _items(Path(raw_dir), parts):
        h.update(data)
    return h.hexdigest()[:16]


def dataset_identity_parts(raw_dir: str | os.PathLike, parts: tuple[str, ...] = RUN_PARTS) -> dict[str, str]:
    """A hash per part (file or folder name → 16 hex digits; an absent part hashes nothing), so that a
    mismatch can say which part changed."""
    hashes = {p: hashlib.sha256() for p in parts}
    for part, data in _items(Path(raw_dir), parts):
        hashes[part].update(data)
    return {p: h.hexdigest()[:16] for p, h in hashes.items()}

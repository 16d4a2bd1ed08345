"""Process environment variables set for the duration of a block."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping


@contextlib.contextmanager
def updated_environ(updates: Mapping[str, str]) -> Iterator[None]:
    """Within the block, ``os.environ`` holds ``updates``; afterwards each variable has its value from before
    (or is unset again)."""
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

"""Progress lines for the user: one line on stderr each, so stdout stays for tables and results."""
from __future__ import annotations

import functools
import sys
from typing import Callable


def say(message: str, who: str = "semisam") -> None:
    """Print ``[who] message`` on stderr, flushed at once (progress of long work shows as it happens)."""
    print(f"[{who}] {message}", file=sys.stderr, flush=True)


def speaker(who: str) -> Callable[[str], None]:
    """:func:`say` with its ``[who]`` prefix fixed: ``say = speaker("compare")``."""
    return functools.partial(say, who=who)

"""What a compared *method* is: a name the user types → recipe overrides and the dataset it trains on.

Built-in methods:

=============  =====================================================================================
``supervised``  the student on the labeled cases only (round 0; the baseline every method is paired with)
``full``        the student on every training label (the un-split dataset): the ceiling
``selftrain``   rounds on the student's own pseudo-labels, no SAM (``experiment=samdsk teacher=none
                filters=student``)
=============  =====================================================================================

Anything else is a recipe name (``recipes/experiment/<name>.yaml``) optionally followed by overrides in
the same word: ``"samdsk filters=sam"``. Methods with rounds start from the supervised run's round 0 of
the same labeled draw and seed (``loop.init_from``) whenever their round 0 would be the same student.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from semisam.utils.errors import SemisamError
from semisam.utils.registry import suggest

SUPERVISED = "supervised"
FULL = "full"
SELFTRAIN = "selftrain"

#: built-in method → (its recipe overrides, the dataset it trains on: "draw" or "full")
BUILTIN: dict[str, tuple[tuple[str, ...], str]] = {
    SUPERVISED: (("experiment=supervised",), "draw"),
    FULL: (("experiment=supervised",), "full"),
    SELFTRAIN: (("experiment=samdsk", "teacher=none", "filters=student"), "draw"),
}


@dataclass(frozen=True)
class Method:
    """One compared method.

    Attributes:
        label: as the user wrote it (``"samdsk filters=sam"``); the table's row name.
        slug: a folder-safe name derived from the label (``samdsk__filters-sam``).
        overrides: the recipe overrides that make it, before the common and per-run overrides.
        extra: the user's own overrides inside the label; applied after the common overrides.
        dataset: ``"draw"`` (the labeled draw) or ``"full"`` (every training label).
    """

    label: str
    slug: str
    overrides: tuple[str, ...]
    extra: tuple[str, ...]
    dataset: str

    @property
    def supervised(self) -> bool:
        """Supervised-style methods, with or without their own overrides (``supervised student.epochs=16``):
        round 0 only, whatever the common overrides say. Online methods are found from their composed recipe
        (:func:`semisam.compare.runner.method_trains_online`)."""
        return "experiment=supervised" in self.overrides


def slugify(label: str) -> str:
    """A folder name for a method label: ``"samdsk filters=sam"`` → ``"samdsk__filters-sam"``."""
    words = [re.sub(r"[^A-Za-z0-9_.-]+", "-", w).strip("-") for w in label.split()]
    return "__".join(w for w in words if w) or "method"


def parse_method(label: str, experiments: list[str]) -> Method:
    """Resolve one method word.

    Args:
        label: ``supervised``, ``full``, ``selftrain``, or ``<recipe> [key=value ...]``.
        experiments: the recipe names available (``recipes/experiment/*.yaml``).

    Raises:
        SemisamError: an unknown name (with the closest known one), or a word after the recipe that is not
            an override.
    """
    words = label.split()
    if not words:
        raise SemisamError("an empty method name; name a method, e.g. supervised, selftrain, samdsk")
    name, extra = words[0], tuple(words[1:])
    for word in extra:
        if "=" not in word:
            raise SemisamError(f"method '{label}': '{word}' is not a recipe override (key=value)")
    if name in BUILTIN:
        overrides, dataset = BUILTIN[name]
    elif name in experiments:
        overrides, dataset = (f"experiment={name}",), "draw"
    else:
        known = sorted(set(BUILTIN) | set(experiments))
        hint = suggest(name, known)
        if "=" in name:
            hint += "; recipe overrides for every method go after `--`, a method's own inside its quotes"
        raise SemisamError(f"unknown method '{name}'{hint}; methods: {', '.join(known)}")
    return Method(label=" ".join(words), slug=slugify(" ".join(words)), overrides=overrides, extra=extra,
                  dataset=dataset)


def parse_methods(labels: list[str], experiments: list[str]) -> list[Method]:
    """Resolve the methods, ``supervised`` always first (every other method is paired with it).

    Raises:
        SemisamError: as :func:`parse_method`, or two methods with the same folder name.
    """
    methods = [parse_method(label, experiments) for label in labels]
    if not any(m.label == SUPERVISED for m in methods):
        methods.insert(0, parse_method(SUPERVISED, experiments))
    methods.sort(key=lambda m: m.label != SUPERVISED)
    seen: dict[str, str] = {}
    unique = []
    for m in methods:
        if m.slug in seen:
            if seen[m.slug] == m.label:
                continue  # the same method named twice
            raise SemisamError(f"methods '{seen[m.slug]}' and '{m.label}' share the folder name {m.slug}; "
                               "rename one")
        seen[m.slug] = m.label
        unique.append(m)
    return unique

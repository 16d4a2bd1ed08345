"""Reliability filters (SAM IoU, stability, agreement, perturbation uncertainty) and per-case stats."""
from semisam.filters.filters import (
    REASONS,
    CaseStats,
    PseudoLabelStats,
    agreement,
    boundary_band,
    case_accept,
    foreground_region,
    object_accept,
    perturbation_uncertainty,
    pixel_accept,
    stability_score,
)

__all__ = [
    "REASONS",
    "CaseStats",
    "PseudoLabelStats",
    "agreement",
    "boundary_band",
    "case_accept",
    "foreground_region",
    "object_accept",
    "perturbation_uncertainty",
    "pixel_accept",
    "stability_score",
]

"""Student probabilities → objects → SAM prompts (pure functions; inputs never include a label).

Typical use for one case (``student_probs`` ``(K, Z, Y, X)``)::

    probs = validate_probs(student_probs, image.shape)
    for z, probs_slice in iter_slices(probs, axis=slice_axis):          # (K, Y', X')
        objects = extract_objects(probs_slice, threshold=..., min_size=..., split_instances=...)
        batch = make_prompts(objects, probs_slice.shape[1:], box=..., box_margin=..., rng=rng)
        # teacher.predict(image_slice, batch.boxes_xyxy, batch.points_xy, batch.point_labels, batch.mask_inputs)
"""
from semisam.prompts.objects import (
    OVERLAP_RULES,
    ObjectMask,
    bounding_box,
    extract_candidates,
    extract_objects,
    has_foreground,
    iter_slices,
    split_touching,
    stack_slices,
    student_hard_labels,
    validate_probs,
)
from semisam.prompts.prompts import (
    NEGATIVE,
    PADDING,
    POSITIVE,
    PromptBatch,
    box_from_mask,
    deep_points,
    lowres_mask_logits,
    make_prompts,
    ring_points,
    second_pass_prompts,
)

__all__ = [
    "OVERLAP_RULES",
    "ObjectMask",
    "PromptBatch",
    "POSITIVE",
    "NEGATIVE",
    "PADDING",
    "bounding_box",
    "box_from_mask",
    "deep_points",
    "extract_candidates",
    "extract_objects",
    "has_foreground",
    "iter_slices",
    "lowres_mask_logits",
    "make_prompts",
    "ring_points",
    "second_pass_prompts",
    "split_touching",
    "stack_slices",
    "student_hard_labels",
    "validate_probs",
]

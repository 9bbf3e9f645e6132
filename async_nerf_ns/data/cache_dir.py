"""The one rule for where async-nerf writes derived files of a dataset (resized RGB copies, the
stage-1 time-pose function, ray shards).

The dataset itself is never written to. Derived files go to the configured folder if given, else to
``DATA/.async_nerf_cache``; when that folder cannot be created or written (a read-only dataset, a
shared mount), to ``$TMPDIR/async_nerf_cache/<hash of DATA's absolute path>``, with one notice.
"""

from __future__ import annotations

import hashlib
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

from nerfstudio.utils.rich_utils import CONSOLE

CACHE_FOLDER = ".async_nerf_cache"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=folder).close()  # a probe: creating a file is what must work
        return True
    except OSError:
        return False


@lru_cache(maxsize=None)
def _resolve(data: Path, configured: Optional[Path]) -> Path:
    preferred = configured if configured is not None else data / CACHE_FOLDER
    if _writable(preferred):
        return preferred
    key = hashlib.sha1(str(data.resolve()).encode()).hexdigest()[:12]
    fallback = Path(tempfile.gettempdir()) / "async_nerf_cache" / key
    if not _writable(fallback):
        raise OSError(f"neither {preferred} nor {fallback} can be written: pass a writable cache folder")
    CONSOLE.print(f"async-nerf: {preferred} is not writable; derived files go to {fallback}")
    return fallback


def cache_dir(data: Path, configured: Optional[Path] = None, sub: str = "") -> Path:
    """A writable folder for derived files of dataset ``data`` (``sub`` names a sub-folder, created)."""
    root = _resolve(Path(data), None if configured is None else Path(configured))
    folder = root / sub if sub else root
    folder.mkdir(parents=True, exist_ok=True)
    return folder

"""Files that appear complete or not at all: write to a temporary name, sync, rename.

``os.replace`` is atomic within one file system, so a reader (another process, a rerun after a kill)
sees either the old file or the whole new one, never half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Optional


def atomic_write(path: Path, write: Callable[[IO], None], binary: bool = True, temp_dir: Optional[Path] = None) -> Path:
    """Calls ``write(stream)`` on a temporary file, syncs it and renames it to ``path``.

    Args:
        path: the file to (re)place.
        write: writes the content into the open stream.
        binary: open the temporary file in binary mode (else text).
        temp_dir: where the temporary file is made (same file system as ``path``); default: beside it.
            Checkpoints use the parent of their folder, because nerfstudio parses every name in
            ``nerfstudio_models/`` as ``step-N.ckpt``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(temp_dir) if temp_dir is not None else path.parent
    handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb" if binary else "w") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, content: Any) -> Path:
    """Writes ``content`` as JSON so that ``path`` holds the old content or the complete new one."""
    return atomic_write(path, lambda stream: json.dump(content, stream, indent=1), binary=False)


def write_text_atomic(path: Path, text: str) -> Path:
    return atomic_write(path, lambda stream: stream.write(text), binary=False)

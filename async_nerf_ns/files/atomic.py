"""Files that appear complete or not at all: write to a temporary name, sync, rename.

``os.replace`` is atomic within one file system, so a reader (another process, a rerun after a kill)
sees either the old file or the whole new one, never half of it. A full disk raises a `DiskFullError`
naming the folder and the space (files/space.py), the temporary file removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Optional

from async_nerf_ns.files.checksums import ChecksummingWriter, sidecar_path, sidecar_record
from async_nerf_ns.files.space import naming_full_disk


def atomic_write(
    path: Path,
    write: Callable[[IO], None],
    binary: bool = True,
    temp_dir: Optional[Path] = None,
    checksum: bool = False,
    expected_bytes: Optional[int] = None,
    resume: str = "run the command again",
) -> Path:
    """Calls ``write(stream)`` on a temporary file, syncs it and renames it to ``path``.

    Args:
        path: the file to (re)place.
        write: writes the content into the open stream.
        binary: open the temporary file in binary mode (else text).
        temp_dir: where the temporary file is made (same file system as ``path``); default: beside it.
            Checkpoints use the parent of their folder, because nerfstudio parses every name in
            ``nerfstudio_models/`` as ``step-N.ckpt``.
        checksum: also write ``<path>.crc32`` (files/checksums.py), computed while writing, before
            ``path`` is renamed into place (binary only).
        expected_bytes: about how large the file will be, for the message of a full disk.
        resume: what the user does once space is freed, for that message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(temp_dir) if temp_dir is not None else path.parent
    handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".partial")
    written = 0
    try:
        with naming_full_disk(path.parent, path.name, lambda: max(expected_bytes or 0, written) or None, resume):
            with os.fdopen(handle, "wb" if binary else "w") as stream:
                target: Any = ChecksummingWriter(stream) if checksum else stream
                try:
                    write(target)
                finally:
                    with contextlib.suppress(OSError, ValueError):
                        written = stream.tell()
                stream.flush()
                os.fsync(stream.fileno())
            if checksum:
                write_json_atomic(sidecar_path(path), sidecar_record(target.crc32, target.bytes), temp_dir=temp_dir)
            os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, content: Any, temp_dir: Optional[Path] = None) -> Path:
    """Writes ``content`` as JSON so that ``path`` holds the old content or the complete new one."""
    return atomic_write(path, lambda stream: json.dump(content, stream, indent=1), binary=False, temp_dir=temp_dir)


def write_text_atomic(path: Path, text: str) -> Path:
    return atomic_write(path, lambda stream: stream.write(text), binary=False)

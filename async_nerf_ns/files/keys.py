"""Content keys: the name of a derived file is a hash of everything that decides its content.

A changed input (a pose, an image file, an option) gives a new key and so a new file, never a stale
one; the same inputs give the same key in every process, so they all find the same file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

KEY_LENGTH = 24
"""Hex digits kept of the sha256 (96 bits)."""

Part = Union[str, bytes, np.ndarray, torch.Tensor]


def content_key(*parts: Part) -> str:
    """The sha256 of ``parts`` (strings, bytes, arrays, tensors: arrays by shape and float64 bytes)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().to(torch.float64).numpy()
        if isinstance(part, np.ndarray):
            array = np.ascontiguousarray(part, dtype=np.float64)
            digest.update(f"{array.shape}".encode())
            digest.update(array.tobytes())
        elif isinstance(part, str):
            digest.update(part.encode())
        else:
            digest.update(part)
    return digest.hexdigest()[:KEY_LENGTH]


def file_identity(paths: Sequence[Path]) -> bytes:
    """What identifies input files without reading them: absolute path, size and modification time."""
    parts = []
    for path in paths:
        stat = Path(path).stat()
        parts.append(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    return "\n".join(parts).encode()

"""Checkpoint files that survive a crash, and checkpoints that load back with torch >= 2.6.

nerfstudio 1.1.5 writes ``step-N.ckpt`` in place and its LR schedulers leave ``numpy.float64``
values in the saved state, which ``torch.load(weights_only=True)`` (the torch >= 2.6 default)
refuses. We fix both at the source for our own runs (atomic writes, plain floats) and register
numpy's scalar types as safe so that checkpoints written by stock nerfstudio load too.

Every checkpoint written here gets a CRC-32 sidecar (``step-N.ckpt.crc32``, files/checksums.py),
checked before loading: a checkpoint whose bytes changed is skipped like one that does not load
(torch itself reads a checkpoint with a flipped byte in a tensor without complaint; measured).
"""

from __future__ import annotations

import numbers
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.files.atomic import atomic_write
from async_nerf_ns.files.checksums import checksum_problem, sidecar_path

#: Suffix of a file that is still being written (see files/atomic.py). nerfstudio's loaders parse every
#: file name in ``nerfstudio_models/`` as ``step-N.ckpt``, so partial checkpoints are written next to
#: the folder instead.
PARTIAL_SUFFIX = ".partial"
CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.ckpt$")
"""nerfstudio's checkpoint file names."""


def allow_numpy_in_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read the numpy scalars nerfstudio's schedulers save."""
    try:  # numpy 2 renamed numpy.core to numpy._core
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    safe = [scalar, np.dtype, type(np.dtype(np.float64))]
    safe += [type(np.dtype(t)) for t in (np.float32, np.int64, np.int32)]
    torch.serialization.add_safe_globals(safe)


def to_plain_python(value: Any) -> Any:
    """Recursively replace numpy scalars by Python numbers (tensors and containers kept)."""
    if isinstance(value, dict):
        return {k: to_plain_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        converted = [to_plain_python(v) for v in value]
        return type(value)(converted) if isinstance(value, list) else tuple(converted)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, numbers.Number) and not isinstance(value, (int, float, bool, complex)):
        return float(value)
    return value


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) state: about the size of its checkpoint file."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def atomic_torch_save(obj: Any, path: Path, resume: str = "run the command again") -> None:
    """Write ``obj`` to ``path`` so that ``path`` is either the old file or the complete new one, with
    its CRC-32 sidecar. A full disk raises `files.space.DiskFullError` naming the folder and the space.

    The temporary file lives in the parent of ``path``'s folder, so nerfstudio's checkpoint folder
    never holds a file that does not parse as ``step-N.ckpt``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path, lambda stream: torch.save(obj, stream), temp_dir=path.parent.parent, checksum=True,
        expected_bytes=tensor_bytes(obj), resume=resume,
    )


def remove_checkpoint(path: Path) -> None:
    """Deletes a checkpoint and its checksum file."""
    Path(path).unlink(missing_ok=True)
    sidecar_path(path).unlink(missing_ok=True)


def move_checkpoint(path: Path, folder: Path) -> Path:
    """Moves a checkpoint and its checksum file into ``folder`` (never deleted: it may be all a user has)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if sidecar_path(path).is_file():
        os.replace(sidecar_path(path), folder / sidecar_path(path).name)
    os.replace(path, folder / Path(path).name)
    return folder / Path(path).name


def load_checkpoint(path: Path, mmap: bool = False) -> Dict[str, Any]:
    """A checkpoint's content, after its checksum (if recorded) matched; raises ValueError naming the
    file when its bytes changed, and torch's error when it does not load."""
    problem = checksum_problem(path)
    if problem is not None:
        raise ValueError(f"{path}: {problem}")
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    if not isinstance(state, dict) or "pipeline" not in state or "step" not in state:
        raise ValueError(f"{path}: not a nerfstudio checkpoint (no 'pipeline' or 'step')")
    return state


def checkpoint_name(step: int) -> str:
    """nerfstudio's file name of the checkpoint of ``step``: ``step-000000123.ckpt``."""
    return f"step-{int(step):09d}.ckpt"


def checkpoint_step(path: Path) -> int:
    """``step-000000123.ckpt`` -> 123."""
    match = CHECKPOINT_NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a nerfstudio checkpoint name (step-N.ckpt)")
    return int(match.group(1))


def checkpoints_by_step(models_dir: Path) -> List[Path]:
    """The ``step-N.ckpt`` files of a checkpoint folder, oldest first (other names are ignored)."""
    folder = Path(models_dir)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if CHECKPOINT_NAME.match(p.name)), key=checkpoint_step)


def load_newest_checkpoint(
    models_dir: Path, quarantine: Optional[Path] = None, mmap: bool = False
) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The newest ``step-N.ckpt`` in ``models_dir`` that matches its checksum and torch reads back whole,
    with its content; or None.

    A file whose bytes changed or that does not load (truncated by a kill, a full disk, a copy cut short) is skipped with a
    warning, and moved to ``quarantine`` when one is given (never deleted: it may be all a user has);
    nerfstudio's loaders parse every name in ``models_dir``, so it must not stay there.
    """
    for path in reversed(checkpoints_by_step(models_dir)):
        try:
            state = load_checkpoint(path, mmap=mmap)
        except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on damage
            CONSOLE.print(f"[yellow]Checkpoint {path} does not load ({type(error).__name__}: {error}); trying an older one")
            if quarantine is not None:
                move_checkpoint(path, quarantine)
            continue
        return path, state
    return None


def newest_loadable_checkpoint(models_dir: Path, quarantine: Optional[Path] = None) -> Optional[Path]:
    """The path of `load_newest_checkpoint`'s checkpoint (its content is read whole as the check)."""
    found = load_newest_checkpoint(models_dir, quarantine)
    return None if found is None else found[0]

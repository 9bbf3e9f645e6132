"""What CUDA does that a CPU run does not, made visible on the CPU (../shared/NERFSTUDIO_NOTES.md).

- ``strict_dtypes()``: under CUDA autocast, ``index_copy``/``index_put``/``scatter``/``masked_scatter``
  (and their in-place forms) refuse a floating source whose dtype differs from the destination's;
  CPU autocast promotes them instead. Inside this context they raise on the CPU too.
- ``host_syncs()``: records the calls that make the host wait for a CUDA device (``.item()``,
  ``bool()``/``int()``/``float()`` of a tensor, ``.tolist()``, ``nonzero``/``unique``, boolean-mask
  indexing, ``.cpu()``/``.numpy()``) and where they come from, so a test can assert that a training
  step of ours makes none.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Tuple

import torch

PACKAGE = str(Path(__file__).resolve().parents[1] / "async_nerf_ns")

_STRICT = ["index_copy", "index_copy_", "index_put", "index_put_", "scatter", "scatter_", "masked_scatter", "masked_scatter_"]


def _source_of(name: str, args, kwargs):
    if name.startswith("index_put"):
        return args[1] if len(args) > 1 else kwargs.get("values")
    if name.startswith("masked_scatter"):
        return args[1] if len(args) > 1 else kwargs.get("source")
    return args[2] if len(args) > 2 else kwargs.get("source", kwargs.get("src"))


@contextlib.contextmanager
def strict_dtypes() -> Iterator[None]:
    originals = {name: getattr(torch.Tensor, name) for name in _STRICT}

    def strict(name, original):
        def wrapper(self, *args, **kwargs):
            source = _source_of(name, args, kwargs)
            if isinstance(source, torch.Tensor) and source.is_floating_point() and source.dtype != self.dtype:
                raise RuntimeError(f"{name}(): self and source expected to have the same dtype ({self.dtype} vs {source.dtype})")
            return original(self, *args, **kwargs)

        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, strict(name, original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@dataclass
class SyncLog:
    calls: List[Tuple[str, str]] = field(default_factory=list)
    """(operation, 'file:line in function') of each call made from our package."""
    other: int = 0
    """Calls made from code outside our package (nerfstudio, torch, ...)."""


_SYNC_METHODS = ["item", "__bool__", "__int__", "__float__", "__index__", "tolist", "nonzero", "cpu", "numpy"]


def _caller_in_package(allowed_functions) -> Tuple[bool, str]:
    """Whether the innermost frame outside this file and torch is ours (and not an allowed host function)."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename == __file__ or "/torch/" in filename:
            frame = frame.f_back
            continue
        if filename.startswith(PACKAGE) and frame.f_code.co_name not in allowed_functions:
            return True, f"{Path(filename).relative_to(PACKAGE)}:{frame.f_lineno} in {frame.f_code.co_name}"
        return False, ""
    return False, ""


@contextlib.contextmanager
def host_syncs(allowed_functions=()) -> Iterator[SyncLog]:
    """Records sync-inducing tensor operations; ``allowed_functions``: our functions that work on host
    memory by design (their calls are not recorded)."""
    log = SyncLog()
    originals = {name: getattr(torch.Tensor, name) for name in _SYNC_METHODS + ["__getitem__"]}
    functions = {"nonzero": torch.nonzero, "unique": torch.unique}

    def record(operation: str) -> None:
        ours, where = _caller_in_package(allowed_functions)
        if ours:
            log.calls.append((operation, where))
        else:
            log.other += 1

    def method(name, original):
        def wrapper(self, *args, **kwargs):
            record(f"Tensor.{name}")
            return original(self, *args, **kwargs)

        return wrapper

    def getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            record("boolean-mask indexing")
        return originals["__getitem__"](self, index)

    def function(name, original):
        def wrapper(*args, **kwargs):
            record(f"torch.{name}")
            return original(*args, **kwargs)

        return wrapper

    for name in _SYNC_METHODS:
        setattr(torch.Tensor, name, method(name, originals[name]))
    torch.Tensor.__getitem__ = getitem  # type: ignore[method-assign]
    for name, original in functions.items():
        setattr(torch, name, function(name, original))
    try:
        yield log
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        for name, original in functions.items():
            setattr(torch, name, original)

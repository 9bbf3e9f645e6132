"""CUDA's rules on a CPU: tensors tagged as on ``cuda:0``, host/device mixing refused, CUDA's dtype rules,
fp16 autocast, and every wait for the device counted at the ATen level, whoever makes it.

No GPU is needed. ``with emulated_cuda() as ledger:`` makes ``torch.cuda.is_available()`` true, and every
tensor created on, or moved to, ``cuda`` becomes a `DeviceTensor`: its data lives in host memory (the
computation is the CPU's), but Python sees ``.device == cuda:0`` and ``.is_cuda``, and a dispatch mode
applies what a real CUDA device would do, below nerfstudio and torch as well as our code:

- **devices**: an operation that mixes device tensors with host tensors raises, as CUDA does (a host
  0-dim tensor is a scalar and allowed, as on CUDA; a device tensor indexed by host indices is allowed
  and counted as a copy); a host tensor indexed by device indices raises; ``.numpy()`` of a device tensor
  raises.
- **dtypes**: ``index_copy``/``index_put``/``index_add``/``scatter``/``scatter_add``/``masked_scatter`` (and
  their in-place forms) on the device refuse a floating source of another dtype (CPU promotes it).
- **autocast**: ``torch.autocast("cuda")`` runs as CPU autocast with CUDA's default dtype, float16.
- **waits**: ``_local_scalar_dense`` (``.item()``, ``bool()``, ``int()``), ``nonzero``, ``unique``,
  ``masked_select``, ``equal``, ``bincount``, ``repeat_interleave`` without an output size, boolean-mask
  indexing and assignment, device -> host copies, and host -> device copies from memory that is not
  pinned, each recorded in `Ledger` with the Python line that caused it and whose code that is (ours:
  ``async_nerf_ns``, ``nerfstudio``, ``torch``, or ``other``).

Why not ``FakeTensorMode(device="cuda")`` alone: fake tensors have no data, so a real training step (its
losses, its shard reads, GradScaler) cannot run; and it lets a host tensor be indexed by device indices.
Why a CPU-backed wrapper rather than one that reports ``cuda`` to C++ too: autograd and autocast would
then call the CUDA runtime (streams), which needs a driver.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("cuda", 0)
HOST = torch.device("cpu")
aten = torch.ops.aten
_HERE = str(Path(__file__).resolve())
_PACKAGE = str(Path(__file__).resolve().parents[1] / "async_nerf_ns")


# --- the record of waits ------------------------------------------------------------------------
@dataclass(frozen=True)
class Wait:
    kind: str
    """What waits: 'item', 'nonzero', 'unique', 'boolean-mask indexing', 'device -> host copy', ..."""
    owner: str
    """Whose code made the call: 'ours' (async_nerf_ns), 'nerfstudio', 'torch', 'nerfacc', 'other'."""
    site: str
    """The innermost Python line of that owner: 'path:line in function'."""


@dataclass
class Ledger:
    """Every wait for the device made inside the emulation (``paused`` ones are not recorded)."""

    waits: List[Wait] = field(default_factory=list)
    paused: int = 0

    def mark(self) -> int:
        return len(self.waits)

    def since(self, mark: int) -> List[Wait]:
        return self.waits[mark:]

    @staticmethod
    def by_site(waits: List[Wait]) -> Counter:
        return Counter((w.owner, w.kind, w.site) for w in waits)

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Waits made inside are not recorded (a test's own reads of results)."""
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1


_ledger: Optional[Ledger] = None

# Frames that are machinery between a caller and the operation, not the caller.
_MACHINERY = ("torch/utils/_python_dispatch.py", "torch/_dynamo/", "torch/_compile.py", "torch/functional.py", "torch/_jit_internal.py", "torch/overrides.py", "torch/_tensor.py", "torch/utils/_pytree.py",
              "torch/_ops.py", "torch/nn/modules/module.py", "torch/autograd/", "torch/_tensor_str.py", "contextlib.py")


def _owner(filename: str) -> str:
    if filename.startswith(_PACKAGE) or "/async_nerf_ns/" in filename:  # also another checkout's (benchmarks)
        return "ours"
    for name in ("nerfstudio", "nerfacc"):
        if f"/{name}/" in filename:
            return name
    if "/torch/" in filename:
        return "torch"
    return "other"


def _record(kind: str) -> None:
    if _ledger is None or _ledger.paused:
        return
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename != _HERE and not any(part in filename for part in _MACHINERY):
            break
        frame = frame.f_back
    if frame is None:
        _ledger.waits.append(Wait(kind, "torch", "(autograd engine)"))
        return
    filename = frame.f_code.co_filename
    owner = _owner(filename)
    short = filename.split("site-packages/")[-1].replace(str(Path(_PACKAGE).parent) + "/", "")
    _ledger.waits.append(Wait(kind, owner, f"{short}:{frame.f_lineno} in {frame.f_code.co_name}"))


# --- device tensors ------------------------------------------------------------------------------
class DeviceTensor(torch.Tensor):
    """A tensor on the emulated CUDA device: data in ``elem`` (host memory), ``.device`` is cuda:0."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> "DeviceTensor":
        assert not isinstance(elem, DeviceTensor)
        wrapper = torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            device=HOST, requires_grad=elem.requires_grad,
        )
        wrapper.elem = elem
        return wrapper

    @property  # type: ignore[override]
    def device(self) -> torch.device:
        return DEVICE

    @property  # type: ignore[override]
    def is_cuda(self) -> bool:
        return True

    @property  # type: ignore[override]
    def is_cpu(self) -> bool:
        return False

    def __repr__(self, *, tensor_contents=None) -> str:  # type: ignore[override]
        with _no_record():
            return f"DeviceTensor({self.elem!r}, device='cuda:0')"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


@contextlib.contextmanager
def _no_record() -> Iterator[None]:
    if _ledger is None:
        yield
        return
    with _ledger.pause():
        yield


def _is_device(value: Any) -> bool:
    return isinstance(value, DeviceTensor)


def _pinned(tensor: torch.Tensor) -> bool:
    return bool(getattr(tensor, "_emulated_pinned", False))


def _unwrap(value: Any) -> Any:
    return value.elem if _is_device(value) else value


def _host_device(value: Any) -> Any:
    if isinstance(value, torch.device) and value.type in ("cuda", "meta"):
        return HOST
    if isinstance(value, str) and value.startswith("cuda"):
        return HOST
    return value


def _is_cuda_device(value: Any) -> bool:
    return value is not None and torch.device(value).type == "cuda"


class EmulatedCudaError(RuntimeError):
    """What CUDA would have raised."""


WAITING_OPS = {
    aten._local_scalar_dense.default: "item",
    aten.nonzero.default: "nonzero",
    aten.nonzero.out: "nonzero",
    aten._unique2.default: "unique",
    aten._unique.default: "unique",
    aten.unique_dim.default: "unique",
    aten.unique_consecutive.default: "unique",
    aten.masked_select.default: "masked_select",
    aten.equal.default: "equal",
    aten.bincount.default: "bincount",
    aten.repeat_interleave.Tensor: "repeat_interleave",
    aten.repeat_interleave.self_Tensor: "repeat_interleave",
}
"""Device operations whose result (or its size) the host needs before it can go on."""

_SOURCE_ARG = {
    "index_copy": 3, "index_copy_": 3, "index_add": 3, "index_add_": 3, "scatter": 3, "scatter_": 3,
    "scatter_add": 3, "scatter_add_": 3, "index_put": 2, "index_put_": 2, "_index_put_impl_": 2,
    "masked_scatter": 2, "masked_scatter_": 2,
}
"""Operations whose floating source must have the destination's dtype on CUDA: argument position."""


def _mixing_error(func, device: List[torch.Tensor], host: List[torch.Tensor]) -> EmulatedCudaError:
    shapes = [tuple(t.shape) for t in host]
    return EmulatedCudaError(
        f"Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
        f"(emulated CUDA: {func} with host tensors of shapes {shapes})"
    )


def _check_source_dtype(name: str, args, kwargs) -> None:
    position = _SOURCE_ARG.get(name)
    if position is None:
        return
    source = args[position] if len(args) > position else kwargs.get("source", kwargs.get("src", kwargs.get("values")))
    self = args[0] if args else None
    if (isinstance(self, torch.Tensor) and isinstance(source, torch.Tensor) and source.is_floating_point()
            and source.dtype != self.dtype):
        raise EmulatedCudaError(
            f"{name}(): self and source expected to have the same dtype, but got (self) {self.dtype} and "
            f"(source) {source.dtype} (emulated CUDA)"
        )


def _check(func, args, kwargs) -> None:
    name = func._schema.name.split("::")[-1]
    flat, _ = tree_flatten((args, kwargs))
    tensors = [x for x in flat if isinstance(x, torch.Tensor)]
    device = [t for t in tensors if _is_device(t)]
    if not device:
        return
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        self, indices = args[0], args[1]
        index_tensors = [i for i in indices if isinstance(i, torch.Tensor)]
        if not _is_device(self):
            raise EmulatedCudaError(
                f"indices should be either on cpu or on the same device as the indexed tensor (cpu) "
                f"(emulated CUDA: a host tensor of shape {tuple(self.shape)} indexed by device indices)"
            )
        if any(not _is_device(i) for i in index_tensors):
            _record("host -> device copy (host indices)")
        if any(i.dtype == torch.bool for i in index_tensors):
            _record("boolean-mask indexing" if name == "index" else "boolean-mask assignment")
        rest = [t for t in tensors if t is not self and not any(t is i for i in index_tensors)]
        host = [t for t in rest if not _is_device(t) and t.dim() > 0]
        if host:
            raise _mixing_error(func, device, host)
    elif name not in ("copy_", "_to_copy", "_copy_from", "_copy_from_and_resize", "lift_fresh", "set_"):
        host = [t for t in tensors if not _is_device(t)]
        first = args[0] if args else None
        in_place = name.endswith("_") and isinstance(first, torch.Tensor) and not _is_device(first)
        if in_place or any(t.dim() > 0 for t in host):
            raise _mixing_error(func, device, [t for t in host if t.dim() > 0 or t is first])
    _check_source_dtype(name, args, kwargs)
    kind = WAITING_OPS.get(func)
    if kind is not None:
        _record(kind)


def _dispatch(func, args, kwargs):
    """One ATen operation under CUDA's rules; computed on the host."""
    if func is torch.ops.prim.device.default:
        return DEVICE if _is_device(args[0]) else args[0].device
    name = func._schema.name.split("::")[-1]
    target = kwargs.get("device")
    flat, _ = tree_flatten((args, kwargs))
    has_device = any(_is_device(x) for x in flat)
    if name == "copy_":
        destination, source = args[0], args[1]
        if _is_device(destination) and isinstance(source, torch.Tensor) and not _is_device(source):
            if not _pinned(source):
                _record("host -> device copy (not pinned)")
        elif not _is_device(destination) and _is_device(source):
            _record("device -> host copy")
        destination_elem = _unwrap(destination)
        destination_elem.copy_(_unwrap(source), *args[2:], **kwargs)
        return destination
    if name == "_to_copy" and not has_device and _is_cuda_device(target):
        if not _pinned(args[0]):
            _record("host -> device copy (not pinned)")
        return DeviceTensor(func(*args, **{**kwargs, "device": HOST}))
    if name in ("is_pinned",):
        return _pinned(args[0])
    if name == "_pin_memory":
        copy = args[0].clone()
        copy._emulated_pinned = True
        return copy
    _check(func, args, kwargs)
    pin = kwargs.get("pin_memory")
    plain_kwargs = {k: _host_device(v) for k, v in tree_map(_unwrap, kwargs).items()}
    if pin:
        plain_kwargs["pin_memory"] = False
    inputs = {id(x.elem): x for x in flat if _is_device(x)}
    out = func(*tree_map(_unwrap, args), **plain_kwargs)
    if pin and isinstance(out, torch.Tensor):
        out._emulated_pinned = True
    if not (has_device or _is_cuda_device(target)):
        return out
    if name == "_local_scalar_dense" or (name in ("equal", "is_pinned") and not isinstance(out, torch.Tensor)):
        return out

    def rewrap(value):
        if isinstance(value, torch.Tensor):
            same = inputs.get(id(value))
            return DeviceTensor(value) if same is None else same
        return value

    return tree_map(rewrap, out)


class _DispatchMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


# --- Python-level calls: device names, D2H copies, numpy ----------------------------------------
class _DeviceToHost(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):  # type: ignore[override]
        _record("device -> host copy")
        return tensor.elem.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return DeviceTensor(grad.clone())


def _normalise(value: Any) -> Any:
    """'cuda' (no index) -> cuda:0: resolving the current device would ask the CUDA runtime."""
    if isinstance(value, str) and value == "cuda":
        return DEVICE
    if isinstance(value, torch.device) and value.type == "cuda" and value.index is None:
        return DEVICE
    return value


def _target_of_to(args, kwargs) -> Tuple[Optional[torch.device], bool]:
    """The device a Tensor.to call names (None: none), and whether it was named through a tensor."""
    for value in list(args[1:]) + [kwargs.get("device"), kwargs.get("other")]:
        if isinstance(value, torch.Tensor):
            return value.device, True
        if isinstance(value, (str, torch.device)):
            try:
                return torch.device(value), False
            except RuntimeError:
                continue
    return None, False


class _FunctionMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        args = tuple(_normalise(a) for a in args)
        kwargs = {k: _normalise(v) for k, v in kwargs.items()}
        first = args[0] if args else None
        # Checked before autocast, which on the CPU promotes these (CUDA's autocast does not, and raises).
        if _is_device(first):
            _check_source_dtype(getattr(func, "__name__", ""), args, kwargs)
        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and _is_device(first):
            raise TypeError(
                "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host "
                "memory first. (emulated CUDA)"
            )
        if func is torch.Tensor.tolist and _is_device(first):
            _record("device -> host copy")
            with _no_record():
                return first.elem.tolist()
        if func is torch.Tensor.cpu and _is_device(first):
            return _DeviceToHost.apply(first)
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and _is_cuda_device(kwargs.get("device")):
            # Made in host memory, then copied: what CUDA does with Python data (a blocking copy).
            return func(*args, **{**kwargs, "device": HOST}).to(DEVICE)
        if func is torch.Tensor.new_tensor and (_is_device(first) or _is_cuda_device(kwargs.get("device"))):
            kwargs = {**kwargs, "device": HOST, "dtype": kwargs.get("dtype") or first.dtype}
            return torch.tensor(*args[1:], **kwargs).to(DEVICE)
        if func is torch.Tensor.cuda:
            return first.to(DEVICE, **{k: v for k, v in kwargs.items() if k == "non_blocking"})
        if func is torch.Tensor.to and isinstance(first, torch.Tensor):
            target, through_tensor = _target_of_to(args, kwargs)
            if target is not None and target.type == "cpu" and _is_device(first):
                moved = _DeviceToHost.apply(first)
                rest = [a for a in args[1:] if isinstance(a, torch.dtype)]
                dtype = kwargs.get("dtype") or (rest[0] if rest else (args[1].dtype if through_tensor else None))
                return moved if dtype is None else moved.to(dtype)
            if through_tensor:
                other = args[1] if len(args) > 1 else kwargs.get("other")
                return first.to(device=other.device, dtype=other.dtype, **{
                    k: v for k, v in kwargs.items() if k in ("non_blocking", "copy")})
        return func(*args, **kwargs)


# --- autocast and torch.cuda ----------------------------------------------------------------------
class _Autocast(torch.amp.autocast_mode.autocast):
    """``torch.autocast("cuda")`` as CPU autocast with CUDA's default dtype (float16)."""

    def __init__(self, device_type: str, dtype: Optional[torch.dtype] = None, enabled: bool = True,
                 cache_enabled: Optional[bool] = None) -> None:
        if device_type == "cuda":
            device_type, dtype = "cpu", dtype or torch.float16
        super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


def _cuda_patches() -> Dict[str, Any]:
    return {
        "is_available": lambda: True,
        "_lazy_init": lambda: None,
        "is_initialized": lambda: True,
        "device_count": lambda: 1,
        "current_device": lambda: 0,
        "set_device": lambda device: None,
        "synchronize": lambda device=None: None,
        "empty_cache": lambda: None,
        "get_device_name": lambda device=None: "emulated CUDA device (tests/cuda_emulation.py)",
        "max_memory_allocated": lambda device=None: 0,
        "memory_allocated": lambda device=None: 0,
        "reset_peak_memory_stats": lambda device=None: None,
    }


class _NoCapture:
    @staticmethod
    def is_capturing() -> bool:
        return False


@contextlib.contextmanager
def emulated_cuda() -> Iterator[Ledger]:
    """Within the block, ``cuda`` is an emulated device with CUDA's rules; yields the `Ledger` of waits."""
    global _ledger
    assert _ledger is None, "emulated_cuda() does not nest"
    ledger = Ledger()
    swap = torch.__future__.get_swap_module_params_on_conversion()
    with contextlib.ExitStack() as stack:
        for name, value in _cuda_patches().items():
            stack.enter_context(mock.patch.object(torch.cuda, name, value))
        # Optimisers ask the accelerator whether a CUDA graph is being captured (never, here).
        stack.enter_context(mock.patch.object(torch.accelerator, "current_stream", lambda device=None: _NoCapture()))
        stack.enter_context(mock.patch.object(torch, "autocast", _Autocast))
        stack.enter_context(mock.patch.object(torch.amp, "autocast", _Autocast))
        # nn.Module.to swaps parameters for the device tensors (instead of sharing their storage).
        torch.__future__.set_swap_module_params_on_conversion(True)
        previous_multithreading = torch._C._is_multithreading_enabled()
        torch.autograd.set_multithreading_enabled(False)
        # Threads started inside (the shard writer's membership and I/O workers) run under the same rules:
        # the modes are per thread.
        original_run = threading.Thread.run

        def run_emulated(thread: threading.Thread) -> None:
            with _FunctionMode(), _DispatchMode():
                original_run(thread)

        stack.enter_context(mock.patch.object(threading.Thread, "run", run_emulated))
        _ledger = ledger
        try:
            with _FunctionMode(), _DispatchMode():
                yield ledger
        finally:
            _ledger = None
            torch.__future__.set_swap_module_params_on_conversion(swap)
            torch.autograd.set_multithreading_enabled(previous_multithreading)


def host_value(tensor: torch.Tensor) -> torch.Tensor:
    """A device tensor's data as a host tensor, without recording a wait (for a test's own checks)."""
    return tensor.elem.detach().clone() if _is_device(tensor) else tensor.detach()


def off_device(module_or_object: Any, prefix: str = "") -> List[str]:
    """Names of the tensors reachable from a module (parameters, buffers, tensor attributes of its
    modules and of plain objects they hold, one level deep) that are NOT on the emulated device."""
    found: List[str] = []
    seen = set()

    def visit(obj: Any, name: str, depth: int) -> None:
        if id(obj) in seen or depth > 3:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if not _is_device(obj):
                found.append(f"{name} {tuple(obj.shape)} {obj.dtype}")
            return
        if isinstance(obj, torch.nn.Module):
            for key, value in obj.named_parameters(recurse=False):
                visit(value, f"{name}.{key}", depth)
            for key, value in obj.named_buffers(recurse=False):
                visit(value, f"{name}.{key}", depth)
            for key, child in obj.named_children():
                visit(child, f"{name}.{key}", depth)
            attributes = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("async_nerf_ns", "nerfstudio")):
            attributes = {k: v for k, v in vars(obj).items()}
        else:
            return
        for key, value in attributes.items():
            if isinstance(value, (torch.Tensor, torch.nn.Module)) or (
                hasattr(value, "__dict__") and type(value).__module__.startswith(("async_nerf_ns", "nerfstudio"))
            ):
                visit(value, f"{name}.{key}", depth + 1)

    visit(module_or_object, prefix or type(module_or_object).__name__, 0)
    return found


def format_waits(waits: List[Wait]) -> str:
    return "\n".join(f"{n} x {kind} [{owner}] {site}" for (owner, kind, site), n in Ledger.by_site(waits).most_common())

"""On-disk format of cluster masks: bit-packed, written atomically.

A mask is a bool array of shape (H, W, K): pixel (row, column) belongs to cell k. On disk it is
``numpy.packbits(mask.reshape(-1))`` (C order, so the cell index varies fastest, then the
column, then the row; most significant bit first) together with its shape; unpack with
``numpy.unpackbits(bits, count=H * W * K).reshape(H, W, K)``. Files are `.npz` archives:

- one image (`save_mask` / `load_mask`): arrays ``bits`` (uint8) and ``shape`` (int64, [H, W, K]);
- many images (`save_masks` / `load_masks`): ``bits`` (all images' packed bytes, concatenated),
  ``offsets`` (int64, N + 1 byte offsets into ``bits``) and ``shapes`` (int64, N x 3).

Masks are compressed (zlib) on top of the packing: cells are contiguous regions, so rows of
identical bytes are common.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor


def pack_mask(mask: Bool[Tensor, "H W K"]) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """Bit-packs one (H, W, K) mask: (packed bytes, shape)."""
    array = torch.as_tensor(mask).detach().cpu().numpy()
    assert array.dtype == np.bool_ and array.ndim == 3, (array.dtype, array.shape)
    return np.packbits(array.reshape(-1)), tuple(int(n) for n in array.shape)  # type: ignore[return-value]


def unpack_mask(bits: np.ndarray, shape: Sequence[int]) -> Bool[Tensor, "H W K"]:
    """Inverse of `pack_mask`."""
    count = int(np.prod(shape))
    if bits.dtype != np.uint8 or bits.size != (count + 7) // 8:
        raise ValueError(f"{bits.size} packed bytes ({bits.dtype}) do not hold a mask of shape {tuple(shape)}")
    return torch.from_numpy(np.unpackbits(bits, count=count).astype(bool).reshape(tuple(int(n) for n in shape)))


def write_npz_atomic(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """Writes a compressed .npz so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez_compressed(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise


def _read_npz(path: Path, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """The named arrays of an .npz; any failure (missing, truncated, wrong content) is a ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in keys if key in archive.files}
    except Exception as error:  # np.load raises OSError, zipfile.BadZipFile, EOFError, ValueError...
        raise ValueError(f"{path}: unreadable cluster mask file ({type(error).__name__}: {error})") from error
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise ValueError(f"{path}: not a cluster mask file, missing arrays {missing}")
    return arrays


def save_mask(path: Path, mask: Bool[Tensor, "H W K"]) -> None:
    """Writes one image's mask (format in the module docstring)."""
    bits, shape = pack_mask(mask)
    write_npz_atomic(path, {"bits": bits, "shape": np.asarray(shape, dtype=np.int64)})


def load_mask(path: Path) -> Bool[Tensor, "H W K"]:
    """Reads a file written by `save_mask`."""
    arrays = _read_npz(path, ("bits", "shape"))
    return unpack_mask(arrays["bits"], arrays["shape"].tolist())


def save_masks(path: Path, masks: Sequence[Tensor]) -> None:
    """Writes several images' masks into one file (format in the module docstring)."""
    packed = [pack_mask(mask) for mask in masks]
    sizes = [bits.size for bits, _ in packed]
    arrays = {
        "bits": np.concatenate([bits for bits, _ in packed]) if packed else np.zeros(0, dtype=np.uint8),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "shapes": np.asarray([shape for _, shape in packed], dtype=np.int64).reshape(-1, 3),
    }
    write_npz_atomic(path, arrays)


def load_masks(path: Path) -> List[Bool[Tensor, "H W K"]]:
    """Reads a file written by `save_masks`."""
    arrays = _read_npz(path, ("bits", "offsets", "shapes"))
    bits, offsets, shapes = arrays["bits"], arrays["offsets"], arrays["shapes"]
    if offsets.shape != (shapes.shape[0] + 1,) or offsets[-1] != bits.size:
        raise ValueError(f"{path}: offsets do not match the packed masks (file damaged?)")
    return [unpack_mask(bits[offsets[i] : offsets[i + 1]], shapes[i].tolist()) for i in range(shapes.shape[0])]

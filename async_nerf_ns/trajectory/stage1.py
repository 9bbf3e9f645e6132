"""Stage 1 as a cached data product: the time-pose function fitted to a split's RGB frames.

The fit (2-5 s on the example, longer on thousands of frames) is stored next to the ray shards,
keyed by the frames' timestamps and poses and the TPF options, so that every process that trains
on the same data (a resumed run, each cell task of a cluster run, the partition command) uses the
very same function, and the depth-frame poses and depth shards derived from it agree.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.engine.checkpoints import atomic_torch_save
from async_nerf_ns.trajectory.fit import fit_tpf
from async_nerf_ns.trajectory.tpf import FittedTPF, TimePoseFunctionConfig

STAGE1_FORMAT = "stage1-tpf-v1"


def stage1_key(timestamps: np.ndarray, c2w: torch.Tensor, config: TimePoseFunctionConfig) -> str:
    digest = hashlib.sha256(STAGE1_FORMAT.encode())
    digest.update(np.ascontiguousarray(timestamps, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(c2w.detach().cpu().double().numpy()).tobytes())
    digest.update(repr(sorted(dataclasses.asdict(config).items())).encode())
    return digest.hexdigest()[:24]


def fitted_tpf(folder: Path, timestamps: np.ndarray, c2w: torch.Tensor, config: TimePoseFunctionConfig) -> FittedTPF:
    """The TPF fitted to (timestamps, c2w): read from ``folder`` if this fit was stored, else fitted and stored."""
    path = Path(folder) / f"tpf-{stage1_key(timestamps, c2w, config)}.pt"
    if path.is_file():
        try:
            tpf = FittedTPF.from_state_dict(config, torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:  # a damaged file: fit again and replace it
            CONSOLE.print(f"[yellow]Stage 1: {path} does not load ({error}); fitting again")
        else:
            CONSOLE.print(f"Stage 1: time-pose function from {path}")
            return tpf
    CONSOLE.print(f"Stage 1: fitting the time-pose function to {len(timestamps)} RGB frames")
    tpf = fit_tpf(timestamps, c2w, config)
    atomic_torch_save(tpf.state_dict(), path)
    return tpf

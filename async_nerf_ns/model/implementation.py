"""Which field implementation a run uses (tiny-cuda-nn or torch), decided once and written in config.yml.

nerfacto's default is ``implementation="tcnn"``, and nerfstudio builds torch fields instead, silently, where
tinycudann does not import. A config.yml that says tcnn then describes a run whose checkpoint holds torch
fields: loading it where tinycudann does import builds tcnn fields and fails on key names. So the choice is
resolved before config.yml is written (`resolve_implementation`), and a checkpoint's own keys say which
implementation it holds (`checkpoint_implementation`), so loading can rebuild the fields to match it or
name the problem.
"""

from __future__ import annotations

from typing import Iterable, Literal

Implementation = Literal["tcnn", "torch"]


def tcnn_importable() -> bool:
    """Whether tiny-cuda-nn imports in this process (nerfstudio's own probe)."""
    from nerfstudio.utils.external import TCNN_EXISTS

    return bool(TCNN_EXISTS)


def resolve_implementation(requested: str, device_type: str) -> Implementation:
    """What nerfstudio will really build: tcnn only when asked for, on CUDA, and tinycudann imports."""
    return "tcnn" if requested == "tcnn" and device_type == "cuda" and tcnn_importable() else "torch"


def checkpoint_implementation(keys: Iterable[str], prefix: str = "") -> Implementation:
    """The implementation of the fields whose state keys (under ``prefix``) are given: tinycudann's modules
    hold all their weights in one parameter named ``params``; torch fields have none of that name."""
    return "tcnn" if any(k.startswith(prefix) and k.endswith(".params") for k in keys) else "torch"


def mismatch_message(config_path_hint: str, saved: str, here: str) -> str:
    if saved == "tcnn":
        return (
            f"The checkpoint holds tcnn (tiny-cuda-nn) fields, but this machine builds {here} fields (tinycudann "
            f"does not import, or there is no CUDA device). Load it where tinycudann is installed and imports "
            f"(pip install tinycudann's torch bindings for this CUDA), or train a run with "
            f"--pipeline.model.implementation torch. ({config_path_hint})"
        )
    return (
        f"The checkpoint holds torch fields, but this run builds tcnn fields: resume it with "
        f"--pipeline.model.implementation torch (its weights are torch's). ({config_path_hint})"
    )

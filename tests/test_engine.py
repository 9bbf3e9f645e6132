"""Checkpoints that survive a crash and load with weights_only; per-cell optimisers from templates."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig

from async_nerf_ns.files.checkpoints import PARTIAL_SUFFIX, atomic_torch_save, to_plain_python
from async_nerf_ns.engine.optimizers import CellOptimizers, expand_cell_optimizers


def _templates():
    adam = lambda: {  # noqa: E731
        "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
        "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=1000, warmup_steps=100),
    }
    return {"fields": adam(), "proposal_networks": adam(), "camera_opt": adam()}


def test_atomic_save_keeps_the_old_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "nerfstudio_models" / "step-000000010.ckpt"
    atomic_torch_save({"step": 10}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 20}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 10}
    # nerfstudio parses every file name in nerfstudio_models/ as step-N.ckpt: nothing else may be there
    # but the checkpoint's checksum file, whose name parses the same (nerfstudio's expression below).
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".crc32"]
    assert {int(x[x.find("-") + 1 : x.find(".")]) for x in os.listdir(path.parent)} == {10}
    assert all(p.name.endswith(PARTIAL_SUFFIX) or p.is_dir() for p in tmp_path.iterdir() if p != path.parent)


def test_scheduler_state_is_saved_as_plain_floats_and_loads_with_weights_only(tmp_path):
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=1e-2)
    scheduler = ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=100).setup().get_scheduler(optimizer, 1e-2)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    raw = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    assert any(isinstance(v, np.generic) for v in raw["scheduler"]["_last_lr"])  # the nerfstudio trap
    path = tmp_path / "ckpt"
    atomic_torch_save(to_plain_python(raw), path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["scheduler"]["_last_lr"] == pytest.approx([float(v) for v in raw["scheduler"]["_last_lr"]])


def test_stock_nerfstudio_numpy_scalars_load_after_importing_the_package(tmp_path):
    import async_nerf_ns  # noqa: F401  (registers the numpy types as safe)

    path = tmp_path / "stock.ckpt"
    torch.save({"lr": np.float64(0.01)}, path)
    assert torch.load(path, weights_only=True)["lr"] == pytest.approx(0.01)


def test_cell_groups_copy_their_kinds_template_and_explicit_entries_win():
    templates = _templates()
    names = ["cell0.fields", "cell1.fields", "cell0.proposal_networks", "cell1.proposal_networks", "camera_opt"]
    expanded = expand_cell_optimizers(templates, names)
    assert set(expanded) == set(names)
    # Each cell runs the template's schedule on its own steps (CellOptimizers skips the others).
    assert expanded["cell1.fields"]["scheduler"].max_steps == 1000
    assert expanded["cell0.fields"] is not expanded["cell1.fields"]  # copies, not one shared config
    explicit = copy.deepcopy(templates)
    explicit["cell1.fields"] = {"optimizer": AdamOptimizerConfig(lr=5e-3), "scheduler": None}
    assert expand_cell_optimizers(explicit, names)["cell1.fields"]["optimizer"].lr == 5e-3
    with pytest.raises(RuntimeError, match="cell0.appearance"):
        expand_cell_optimizers(templates, ["cell0.appearance"])


def test_a_cell_without_gradient_neither_steps_nor_advances_its_schedule():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizers = CellOptimizers.from_templates(_templates(), {"cell0.fields": [a], "cell1.fields": [b]})
    for _ in range(5):
        optimizers.zero_grad_all()
        (a * 2).sum().backward()
        optimizers.optimizer_step_all()
        optimizers.scheduler_step_all(0)
    assert optimizers.schedulers["cell0.fields"].last_epoch == 5
    assert optimizers.schedulers["cell1.fields"].last_epoch == 0
    assert torch.equal(b.detach(), torch.ones(2)) and not torch.equal(a.detach(), torch.ones(2))

"""Cells trained in separate runs (--pipeline.cells) and merged with async-nerf-merge load like one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from async_nerf_ns.partition.merge import MergeError, merge_cell_states
from conftest import run_command

ITERATIONS = 40


def _state(trained, value: float):
    return {
        "trained_cells": torch.tensor(trained),
        "_model.centroids": torch.zeros(len(trained), 3),
        "_model.cells.0.field.w": torch.full((2,), value),
        "_model.cells.1.field.w": torch.full((2,), value),
        "tpf.network.w": torch.full((1,), value),
    }


def test_merge_takes_each_cell_from_the_run_that_trained_it():
    merged = merge_cell_states([_state([True, False], 1.0), _state([False, True], 2.0)], ["a", "b"])
    assert torch.equal(merged["_model.cells.0.field.w"], torch.ones(2))
    assert torch.equal(merged["_model.cells.1.field.w"], torch.full((2,), 2.0))
    assert torch.equal(merged["tpf.network.w"], torch.ones(1))  # shared parts from the first run
    assert merged["trained_cells"].all()


@pytest.mark.parametrize(
    "states, message",
    [
        ([_state([True, False], 1.0), _state([True, True], 2.0)], "cell 0 was trained by several runs"),
        ([_state([True, False], 1.0), _state([False, False], 2.0)], r"cells \[1\] were trained by none"),
    ],
)
def test_merge_refuses_a_cell_trained_twice_or_never(states, message):
    with pytest.raises(MergeError, match=message):
        merge_cell_states(states, ["a", "b"])


def test_merge_refuses_runs_of_another_partition():
    other = _state([False, True], 2.0)
    other["_model.centroids"] = torch.ones(2, 3)
    with pytest.raises(MergeError, match="centroids differ"):
        merge_cell_states([_state([True, False], 1.0), other], ["a", "b"])


def test_two_runs_of_two_cells_merge_into_a_run_that_ns_eval_loads(example_scene: Path, tmp_path: Path):
    configs = []
    for name, cells in (("left", ["0", "1"]), ("right", ["2", "3"])):
        run_command(
            [
                "ns-train", "async-nerf-small",
                "--data", str(example_scene),
                "--output-dir", str(tmp_path),
                "--experiment-name", "cells",
                "--timestamp", name,
                "--max-num-iterations", str(ITERATIONS),
                "--pipeline.cells", *cells,
                "--logging.local-writer.enable", "False",
            ],
            cwd=tmp_path,
        )
        configs.append(tmp_path / "cells" / "async-nerf-small" / name / "config.yml")
    run_command(
        ["async-nerf-merge", *map(str, configs), "--output-dir", str(tmp_path), "--timestamp", "merged"], cwd=tmp_path
    )
    merged = tmp_path / "cells" / "async-nerf-small" / "merged"
    state = torch.load(next((merged / "nerfstudio_models").glob("step-*.ckpt")), weights_only=True)["pipeline"]
    for cell, run in ((0, 0), (1, 0), (2, 1), (3, 1)):
        source = torch.load(next((configs[run].parent / "nerfstudio_models").glob("step-*.ckpt")), weights_only=True)
        key = f"_model.cells.{cell}.field.mlp_base_grid.tcnn_encoding.hash_table"
        key = key if key in state else next(k for k in state if k.startswith(f"_model.cells.{cell}.field."))
        assert torch.equal(state[key], source["pipeline"][key])
    output = tmp_path / "merged_eval.json"
    run_command(["ns-eval", "--load-config", str(merged / "config.yml"), "--output-path", str(output)], cwd=tmp_path)
    results = json.loads(output.read_text())["results"]
    assert results["psnr"] > 10.0

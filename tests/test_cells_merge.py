"""Cell-state assembly (cluster/assemble.py) on hand-made states, and async-nerf-merge on real runs.

Runs that trained different cells (--pipeline.datamanager.cells) assemble into one run that loads
like a single one; the per-frame pose corrections and the fine-tuned TPF come from the runs that
trained on those frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from async_nerf_ns.cluster.assemble import AssemblyError, assemble_cell_states, assemble_frame_table
from async_nerf_ns.cluster.merge import frame_pixel_counts
from conftest import run_command

ITERATIONS = 80
MERGED_PSNR_FLOOR = 18.0
"""Val PSNR of the merged run: measured 19.4 dB (40 steps per cell); the best constant image scores
15.6 dB, which is where a merge that loses cells or swaps them falls."""
DEPTH = "_model.camera_optimizer.depth.pose_adjustment"
RGB = "_model.camera_optimizer.rgb.pose_adjustment"


def _state(trained, value: float):
    return {
        "trained_cells": torch.tensor(trained),
        "_model.centroids": torch.zeros(len(trained), 3),
        "_model.cells.0.field.w": torch.full((2,), value),
        "_model.cells.1.field.w": torch.full((2,), value),
        "tpf.network.w": torch.full((1,), value),
    }


def test_assembly_takes_each_cell_from_the_run_that_trained_it():
    assembled = assemble_cell_states([_state([True, False], 1.0), _state([False, True], 2.0)], ["a", "b"])
    assert torch.equal(assembled["_model.cells.0.field.w"], torch.ones(2))
    assert torch.equal(assembled["_model.cells.1.field.w"], torch.full((2,), 2.0))
    assert torch.equal(assembled["tpf.network.w"], torch.ones(1))  # no stage-1 copy: not fine-tuned, the first run's
    assert assembled["trained_cells"].all()


@pytest.mark.parametrize(
    "states, message",
    [
        ([_state([True, False], 1.0), _state([True, True], 2.0)], "cell 0 was trained by several runs"),
        ([_state([True, False], 1.0), _state([False, False], 2.0)], r"cells \[1\] were trained by none"),
    ],
)
def test_assembly_refuses_a_cell_trained_twice_or_never(states, message):
    with pytest.raises(AssemblyError, match=message):
        assemble_cell_states(states, ["a", "b"])


def test_an_empty_cell_may_be_trained_by_none():
    assembled = assemble_cell_states([_state([True, False], 1.0), _state([False, False], 2.0)], ["a", "b"], empty_cells=[1])
    assert torch.equal(assembled["_model.cells.1.field.w"], torch.ones(2))  # the first run's (initial) weights


def test_assembly_refuses_runs_of_another_partition():
    other = _state([False, True], 2.0)
    other["_model.centroids"] = torch.ones(2, 3)
    with pytest.raises(AssemblyError, match="centroids differ"):
        assemble_cell_states([_state([True, False], 1.0), other], ["a", "b"])


def _rows(*values):
    return torch.tensor([[v] * 6 for v in values], dtype=torch.float32)


def test_frame_rows_come_from_the_cell_holding_most_of_the_frames_pixels():
    # Run 0 trained cell 0, run 1 trained cell 1 (owners [0, 1]). Frame 0: most pixels in cell 0;
    # frame 1: a tie (the lower cell wins); frame 2: cell 1; frame 3: seen by no cell (first run's row).
    counts = np.array([[10, 2], [3, 3], [0, 4], [0, 0]])
    table = assemble_frame_table([_rows(1, 2, 3, 0), _rows(5, 6, 7, 0)], owners=[0, 1], pixel_counts=counts)
    assert torch.equal(table, _rows(1, 2, 7, 0))
    # Owners reversed (run 1 trained cell 0): the same counts pick the other runs.
    table = assemble_frame_table([_rows(1, 2, 3, 0), _rows(5, 6, 7, 0)], owners=[1, 0], pixel_counts=counts)
    assert torch.equal(table, _rows(5, 6, 3, 0))
    with pytest.raises(AssemblyError, match="do not fit"):
        assemble_frame_table([_rows(1, 2), _rows(5, 6)], owners=[0, 1], pixel_counts=counts)


def test_without_pixel_counts_frame_rows_come_from_the_runs_that_moved_them():
    # A run that never trained a frame leaves its row at exactly 0: frame 0 moved by run 0 only,
    # frame 1 by run 1 only, frame 2 by both (their mean), frame 3 by none (stays 0).
    table = assemble_frame_table([_rows(1, 0, 2, 0), _rows(0, 3, 4, 0)], owners=[0, 1])
    assert torch.equal(table, _rows(1, 3, 3, 0))


def test_assembled_state_keeps_both_runs_frame_corrections():
    a, b = _state([True, False], 1.0), _state([False, True], 2.0)
    a[DEPTH], b[DEPTH] = _rows(0.5, 0.0, 0.25), _rows(0.0, -0.5, 0.75)
    a[RGB], b[RGB] = _rows(0.1, 0.2), _rows(0.3, 0.4)
    counts = {"depth": np.array([[5, 1], [0, 9], [2, 7]]), "rgb": np.array([[1, 0], [0, 1]])}
    assembled = assemble_cell_states([a, b], ["a", "b"], counts)
    assert torch.equal(assembled[DEPTH], _rows(0.5, -0.5, 0.75))  # as the old merge did: not just run a's rows
    assert torch.equal(assembled[RGB], _rows(0.1, 0.4))


def _tpf_state(trained, tuned: float, stage1: float = 1.0):
    state = _state(trained, tuned)
    state["tpf.network.w"] = torch.tensor([tuned, 2 * tuned])
    state["tpf.shape_info"] = torch.tensor([3, 1, 4])
    state["stage1_tpf.network.w"] = torch.tensor([stage1, 2 * stage1])
    state["stage1_tpf.shape_info"] = torch.tensor([3, 1, 4])
    return state


def test_the_fine_tuned_tpf_is_the_mean_over_the_runs_that_fine_tuned_it():
    # Runs 0 and 1 fine-tuned the TPF (away from its stage-1 value 1.0) to 2.0 and 4.0; run 2 did not
    # (it saw no depth pixels), so it does not pull the mean back to the stage-1 TPF.
    states = [_tpf_state([True, False, False], 2.0), _tpf_state([False, True, False], 4.0), _tpf_state([False, False, True], 1.0)]
    for s in states:
        s["_model.centroids"] = torch.zeros(3, 3)
        s["_model.cells.2.field.w"] = torch.zeros(2)
    assembled = assemble_cell_states(states, ["a", "b", "c"])
    assert torch.equal(assembled["tpf.network.w"], torch.tensor([3.0, 6.0]))
    assert torch.equal(assembled["tpf.shape_info"], torch.tensor([3, 1, 4]))
    assert torch.equal(assembled["stage1_tpf.network.w"], torch.tensor([1.0, 2.0]))
    # No run fine-tuned it: the (common) TPF as it is.
    untuned = assemble_cell_states([_tpf_state([True, False], 1.0), _tpf_state([False, True], 1.0)], ["a", "b"])
    assert torch.equal(untuned["tpf.network.w"], torch.tensor([1.0, 2.0]))


def test_assembly_refuses_runs_with_different_stage_1_tpfs():
    with pytest.raises(AssemblyError, match="stage-1 time-pose function"):
        assemble_cell_states([_tpf_state([True, False], 2.0), _tpf_state([False, True], 2.0, stage1=1.5)], ["a", "b"])


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
                "--pipeline.datamanager.cells", *cells,
                "--logging.local-writer.enable", "False",
                # stage 3 from step 10, so that both runs move depth-frame corrections and the TPF
                "--pipeline.model.depth-pose-refine-start", "10",
                "--pipeline.model.refine-accurate-depth-poses", "True",
                "--pipeline.finetune-tpf", "True",
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
    # Each depth frame's correction comes from the run that trained the cell holding most of its
    # pixels (both runs moved most frames: cells overlap); the TPF is the mean of the two fine-tuned ones.
    runs = [torch.load(next((c.parent / "nerfstudio_models").glob("step-*.ckpt")), weights_only=True)["pipeline"] for c in configs]
    counts = frame_pixel_counts(yaml.load(configs[0].read_text(), Loader=yaml.Loader))["depth"]
    owner_run = np.array([0, 0, 1, 1])[counts.argmax(axis=1)]
    table = state[DEPTH]
    moved_by_both = ((runs[0][DEPTH] != 0).any(1) & (runs[1][DEPTH] != 0).any(1)).sum().item()
    assert moved_by_both > 0 and 0 < owner_run.sum() < len(owner_run)
    for frame, run in enumerate(owner_run):
        assert torch.equal(table[frame], runs[run][DEPTH][frame]), frame
    key = "tpf.network.translation_spline.table"
    assert not torch.equal(runs[0][key], runs[1][key])
    assert torch.allclose(state[key], (runs[0][key] + runs[1][key]) / 2)
    output = tmp_path / "merged_eval.json"
    run_command(["ns-eval", "--load-config", str(merged / "config.yml"), "--output-path", str(output)], cwd=tmp_path)
    results = json.loads(output.read_text())["results"]
    assert results["psnr"] > MERGED_PSNR_FLOOR, results["psnr"]

"""Training's data path as users meet it: a read-only dataset, and a cell trained on a machine that
holds only that cell's shards (as a cluster task does)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch
import tyro
from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

from async_nerf_ns.files.cache_dir import fallback_cache_dir
from async_nerf_ns.scripts.partition import partition
from async_nerf_ns.shards.format import cell_folder
from conftest import run_command

STEPS = 12


def _train(scene: Path, out: Path, *extra: str, prefix=()):
    args = [
        "ns-train", "async-nerf-small", "--data", str(scene), "--output-dir", str(out),
        "--experiment-name", "data", "--timestamp", "run", "--max-num-iterations", str(STEPS),
        "--steps-per-save", "1000", "--logging.local-writer.enable", "False", *extra,
    ]
    return run_command(args, cwd=out, threads=1, prefix=prefix)


def _state(out: Path):
    return torch.load(next((out / "data" / "async-nerf-small" / "run" / "nerfstudio_models").glob("*.ckpt")), weights_only=True)["pipeline"]


def test_a_cell_trains_with_the_other_cells_shards_deleted(example_scene: Path, tmp_path: Path):
    shards = tmp_path / "shards"
    args = ["async-nerf-small", "--data", str(example_scene), "--pipeline.datamanager.shards.shard-dir", str(shards)]
    summary = partition(tyro.cli(AnnotatedBaseConfigUnion, args=args))
    # A written set leaves nothing but itself and the summaries (no lock or partial folders).
    assert sorted(p.name.split("-")[0] for p in shards.iterdir()) == ["depth", "partition.json", "partition.png", "rgb"]
    for shard_set in (Path(summary["rgb_shards"]), Path(summary["depth_shards"])):
        for cell in (0, 2, 3):
            shutil.rmtree(cell_folder(shard_set, cell))
    _train(example_scene, tmp_path, "--pipeline.datamanager.shards.shard-dir", str(shards), "--pipeline.datamanager.cells", "1")
    state = _state(tmp_path)
    assert state["trained_cells"].tolist() == [False, True, False, False]
    assert [int(state[f"_model.cells.{k}.steps"]) for k in range(4)] == [0, STEPS, 0, 0]
    # Nothing was rewritten: the run read the sets it found (one RGB, one depth) and only cell 1's chunks.
    assert sorted(p.name for p in shards.iterdir() if p.is_dir()) == sorted([Path(summary["rgb_shards"]).name, Path(summary["depth_shards"]).name])
    assert not cell_folder(Path(summary["rgb_shards"]), 0).exists()


def _without_root_privileges() -> tuple:
    """A command prefix under which permission bits bind. As root they do not, so the run goes into a
    new user namespace (``unshare --user``): still the files' owner, but without root's override."""
    if os.geteuid() != 0:
        return ()
    probe = subprocess.run(["unshare", "--user", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root and user namespaces are unavailable ({probe.stderr.decode().strip()})")
    return ("unshare", "--user")


def test_a_read_only_dataset_trains_and_stays_untouched(example_scene: Path, tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(example_scene, data, ignore=shutil.ignore_patterns(".async_nerf_cache"))
    out = tmp_path / "out"
    out.mkdir()
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    paths = [data, *data.rglob("*")]
    for path in paths:
        os.chmod(path, path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        _train(data, out, prefix=_without_root_privileges())
    finally:
        for path in paths:
            os.chmod(path, path.stat().st_mode | stat.S_IWUSR)
    # The one cache rule: the stage-1 TPF and the shards went to the fallback folder.
    fallback = fallback_cache_dir(data)
    try:
        assert len(list((fallback / "stage1").glob("tpf-*.pt"))) == 1
        assert {p.name.split("-")[0] for p in (fallback / "shards").iterdir() if p.is_dir()} == {"rgb", "depth"}
    finally:
        shutil.rmtree(fallback, ignore_errors=True)
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before
    assert [int(_state(out)[f"_model.cells.{k}.steps"]) for k in range(4)] == [STEPS // 4] * 4


def test_the_partition_command_offers_the_async_nerf_methods_only(tmp_path: Path):
    usage = run_command(["async-nerf-partition", "--help"], cwd=tmp_path).stdout
    assert "{async-nerf,async-nerf-small}" in usage and "nerfacto" not in usage

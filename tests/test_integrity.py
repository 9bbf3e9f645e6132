"""Nothing silently wrong (issue 19): damaged shard chunks and checkpoints are detected and named,
training never consumes a damaged chunk's records, a full disk while writing shards or a checkpoint
leaves nothing complete-looking and a rerun with space completes, and ``async-nerf-check`` says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from async_nerf_ns.check.command import Check
from async_nerf_ns.files.checkpoints import atomic_torch_save, checkpoints_by_step, load_checkpoint, load_newest_checkpoint
from async_nerf_ns.files.checksums import sidecar_path
from async_nerf_ns.files.space import DiskFullError
from async_nerf_ns.shards.format import MANIFEST, ShardSetError, read_manifest
from async_nerf_ns.shards.reader import CellRays
from async_nerf_ns.shards.writer import ShardLayout, write_shard_set
from small_disk import small_disk  # noqa: F401 (fixture)

PIXELS = 10_000
IMAGES = 40
LAYOUT = ShardLayout(num_cells=2, num_images=IMAGES, chunks_per_cell=4, shuffle_buffer_records=40_000)
"""Cell 0 gets every pixel, cell 1 half: 15,000 RGB records (165 kB) per image, 6.6 MB in all."""


def _image_pixels(index: int):
    membership = np.ones((2, PIXELS), dtype=bool)
    membership[1, : PIXELS // 2] = False
    colours = np.random.default_rng(index).integers(0, 256, (PIXELS, 3), dtype=np.uint8)
    return membership, colours


def _write(folder: Path) -> Path:
    return write_shard_set(folder / "rgb-test", "rgb", LAYOUT, _image_pixels, seed=3, description="test shards")


@pytest.fixture(scope="module")
def reference_set(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("reference"))


def _batches(shard_set: Path, cell: int, steps: int, size: int = 4096):
    rays = CellRays(shard_set, cell, seed=5, prefetch=False)
    try:
        for step in range(steps):
            yield rays.batch(step, size)
    finally:
        rays.close()


def _damaged_copy(reference_set: Path, tmp_path: Path, damage) -> tuple:
    shard_set = tmp_path / reference_set.name
    shutil.copytree(reference_set, shard_set)
    chunk = read_manifest(shard_set)["cells"][1]["chunks"][2]
    path = shard_set / chunk["file"]
    data = bytearray(path.read_bytes())
    damage(path, data)
    return shard_set, path


def _flip_one_bit(path: Path, data: bytearray) -> None:
    data[len(data) // 3] ^= 0x04  # inside one record's pixel index: a valid-looking wrong pixel
    path.write_bytes(bytes(data))


def _truncate(path: Path, data: bytearray) -> None:
    path.write_bytes(bytes(data[: len(data) - 11 * 7]))  # seven records short, a whole number of records


@pytest.mark.parametrize("damage", [_flip_one_bit, _truncate], ids=["flipped bit", "truncated"])
def test_a_damaged_chunk_stops_training_before_any_of_its_records_is_used(reference_set: Path, tmp_path: Path, damage):
    shard_set, damaged = _damaged_copy(reference_set, tmp_path, damage)
    # Which batch first reaches the damaged chunk, from the sound set: batches are a function of the
    # (seed, cell, step) only, so the damaged set must give the same batches up to that one.
    clean = list(_batches(reference_set, 1, steps=60))
    records = read_manifest(reference_set)["cells"][1]["chunks"][2]["records"]
    order = np.random.default_rng([5, 1, 0]).permutation(4)
    sizes = [c["records"] for c in read_manifest(reference_set)["cells"][1]["chunks"]]
    start = sum(sizes[c] for c in order[: list(order).index(2)])
    first_step = start // 4096
    assert records > 0 and first_step < 60
    given = []
    with pytest.raises(ShardSetError) as error:
        for batch in _batches(shard_set, 1, steps=60):
            given.append(batch)
    assert len(given) == first_step, "a batch holding the damaged chunk's records was handed out"
    for a, b in zip(given, clean):
        assert np.array_equal(a, b)
    message = str(error.value)
    assert str(damaged) in message and "cell 1" in message and "mv " in message


def _state(megabytes: float, value: float = 1.0):
    return {"step": 1, "pipeline": {"w": torch.full((int(megabytes * 1e6 / 4),), value)}, "optimizers": {}}


@pytest.mark.parametrize("damage", ["zeroed", "one byte"])
def test_a_changed_checkpoint_is_named_and_the_newest_sound_one_loads(tmp_path: Path, damage: str):
    models = tmp_path / "run" / "nerfstudio_models"
    atomic_torch_save({**_state(0.5, 1.0), "step": 10}, models / "step-000000010.ckpt")
    atomic_torch_save({**_state(0.5, 2.0), "step": 20}, models / "step-000000020.ckpt")
    newest = models / "step-000000020.ckpt"
    data = bytearray(newest.read_bytes())
    if damage == "zeroed":
        data = bytearray(len(data))
    else:
        data[len(data) // 2] ^= 0x01  # inside the tensor: torch reads this file without complaint (measured)
    newest.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=str(newest).replace(".", r"\.") + ".*(CRC-32|bytes)"):
        load_checkpoint(newest)
    report = Check(tmp_path / "run", strict=False).report()
    assert report.exit_code == 1 and any(str(newest) == f.subject and f.status == "error" for f in report.findings)
    path, state = load_newest_checkpoint(models, quarantine=tmp_path / "run" / "unloadable_checkpoints")
    assert path.name == "step-000000010.ckpt" and float(state["pipeline"]["w"][0]) == 1.0
    assert (tmp_path / "run" / "unloadable_checkpoints" / newest.name).is_file()
    assert (tmp_path / "run" / "unloadable_checkpoints" / sidecar_path(newest).name).is_file()
    assert sorted(p.name for p in models.iterdir()) == ["step-000000010.ckpt", "step-000000010.ckpt.crc32"]


def test_a_full_disk_while_writing_shards_is_named_and_a_rerun_with_space_completes(
    small_disk, reference_set: Path  # noqa: F811
):
    disk = small_disk(2.0)
    with pytest.raises(DiskFullError) as error:
        _write(disk.folder)
    message = str(error.value)
    assert str(disk.folder) in message and "MB free" in message and "more needed" in message
    assert not any(disk.folder.rglob(MANIFEST)), "a manifest was left: the set would look complete"
    assert not (disk.folder / "rgb-test").exists()
    disk.grow(20.0)
    written = _write(disk.folder)
    ours, reference = read_manifest(written), read_manifest(reference_set)
    assert [c["chunks"] for c in ours["cells"]] == [c["chunks"] for c in reference["cells"]], "resumed set differs"


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(small_disk):  # noqa: F811
    disk = small_disk(3.0)
    models = disk.folder / "nerfstudio_models"
    atomic_torch_save({**_state(1.0), "step": 10}, models / "step-000000010.ckpt")
    with pytest.raises(DiskFullError) as error:
        atomic_torch_save({**_state(2.5), "step": 20}, models / "step-000000020.ckpt")
    message = str(error.value)
    assert str(models) in message and "MB free" in message and "2.5 MB more needed" in message
    assert sorted(p.name for p in disk.folder.rglob("*") if p.is_file()) == ["step-000000010.ckpt", "step-000000010.ckpt.crc32"]
    assert load_newest_checkpoint(models)[0].name == "step-000000010.ckpt"
    disk.grow(10.0)
    atomic_torch_save({**_state(2.5), "step": 20}, models / "step-000000020.ckpt")
    assert load_newest_checkpoint(models)[0].name == "step-000000020.ckpt"
    assert [p.name for p in checkpoints_by_step(models)] == ["step-000000010.ckpt", "step-000000020.ckpt"]


def test_check_names_every_damaged_chunk_of_a_dataset_shard_folder(reference_set: Path, tmp_path: Path):
    shards = tmp_path / "shards"
    shards.mkdir()
    sound = Check(tmp_path / "nowhere", shard_dir=[shards]).report()
    assert sound.kind == "unknown"
    shard_set, damaged = _damaged_copy(reference_set, shards, _flip_one_bit)
    from async_nerf_ns.check.dataset import check_shard_root
    from async_nerf_ns.check.findings import Report

    report = Report(str(shards), "dataset")
    check_shard_root(report, shards)
    errors = report.errors
    assert len(errors) == 1 and errors[0].subject == str(damaged) and "CRC-32" in errors[0].detail, report.findings
    json.loads(report.to_json())

"""Everything training needs from the data, prepared once before any training process starts.

``prepare_training_data(config)`` resolves the partition, runs stage 1 (the time-pose function,
cached) and writes the RGB and depth ray shards of every cell, exactly as ``ns-train`` with the same
config would on its first step. Used by ``async-nerf-partition`` and by the cluster driver before it
launches cell tasks, so that tasks only read shards (no two processes write the same set).
"""

from __future__ import annotations

from typing import Any, Dict

from async_nerf_ns.data.datamanager import AsyncNerfDataManager


def prepare_training_data(config) -> Dict[str, Any]:
    """Stage 1 and all cells' shards for an ``ns-train async-nerf*`` TrainerConfig; returns their locations.

    Returns: ``rgb_shards``/``depth_shards``/``lidar_shards`` (folders, None without depth frames or LiDAR
    scans), ``cells``
    (trained cells that have pixels), ``empty_cells``, ``num_cells`` and the datamanager (for
    summaries: its ``geometry``, ``depth_frames``, ``train_dataset``).
    """
    if config.data:  # ns-train's --data alias
        config.pipeline.datamanager.data = config.data
    datamanager = config.pipeline.datamanager.setup(device="cpu", test_mode="val", world_size=1, local_rank=0)
    assert isinstance(datamanager, AsyncNerfDataManager), "prepare_training_data needs an async-nerf method config"
    shard_sets = datamanager.write_shards()  # found: setup_train wrote them
    sampler = datamanager.train_pixel_sampler
    assert sampler is not None
    return {
        "rgb_shards": shard_sets["rgb"],
        "depth_shards": shard_sets["depth"],
        "lidar_shards": shard_sets["lidar"],
        "cells": list(sampler.cells),
        "empty_cells": list(sampler.empty_cells),
        "num_cells": datamanager.geometry.num_cells,
        "datamanager": datamanager,
    }

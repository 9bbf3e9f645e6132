"""Where ``ShardConfig`` lived before the restructuring: config.yml files of runs trained then name it
here (``!!python/object:async_nerf_ns.data.cell_shards.ShardConfig``), so this name keeps them loading."""

from async_nerf_ns.shards.config import ShardConfig

__all__ = ["ShardConfig"]

"""``async-nerf-merge``: one nerfstudio run from cells trained in separate runs (async_nerf_ns/cluster/merge.py)."""

import tyro

from async_nerf_ns.cluster.merge import MergeCells


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(MergeCells).main()


if __name__ == "__main__":
    entrypoint()

"""``async-nerf-train-cells``: every cell of the partition as a fault-tolerant Ray task, then one run.

    async-nerf-train-cells --data DATA --run-dir RUN                              # local Ray cluster
    async-nerf-train-cells --data DATA --run-dir RUN --ray-address HEAD:6379 -- --max-num-iterations 30000
    async-nerf-train-cells --data DATA --run-dir RUN --backend local              # no Ray, one process
    ns-viewer --load-config RUN/assembled/async-nerf-small/config.yml

Options after ``--`` are the method's ns-train options. See async_nerf_ns/cluster/driver.py.
"""

from __future__ import annotations

import sys

import tyro

from async_nerf_ns.cluster.driver import cli


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    cli(sys.argv[1:]).main()


if __name__ == "__main__":
    entrypoint()

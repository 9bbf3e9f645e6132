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
from rich.markup import escape

from nerfstudio.utils.rich_utils import CONSOLE

from async_nerf_ns.cluster.driver import ClusterError, cli


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    try:
        cli(sys.argv[1:]).main()
    except ClusterError as error:  # the user's to fix (a refused connection, missing resources): no traceback
        CONSOLE.print(f"[bold red]async-nerf-train-cells:[/] {escape(str(error))}", highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    entrypoint()

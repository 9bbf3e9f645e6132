"""``async-nerf-check DATA|RUN``: is this dataset / this run folder sound? (async_nerf_ns/check/)."""

from async_nerf_ns.check.command import entrypoint

if __name__ == "__main__":
    entrypoint()

"""async-nerf: Async-NeRF (time-pose function, asynchronous depth) on a Mega-NeRF partition, for nerfstudio.

Importing the package makes nerfstudio 1.1.5 checkpoints loadable with torch >= 2.6 (see
``async_nerf_ns.files.checkpoints``). nerfstudio imports this package when it reads a config.yml
of ours or discovers our dataparser, i.e. before any checkpoint is loaded, so ns-eval, ns-render
and ns-viewer are covered, for our runs and for stock baselines trained through async-nerf-data.
Keep this module light: nerfstudio imports it while its own dataparser registry is being built.
"""

from async_nerf_ns.files.checkpoints import allow_numpy_in_checkpoints

allow_numpy_in_checkpoints()

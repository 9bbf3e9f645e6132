"""Training the cells of a partition as separate units of work, and assembling them into one run.

- `cell_task.train_cell(run_dir, k)`: nerfstudio's trainer on one cell in a fixed folder
  ``RUN/cells/cell_<k>/``; safe to run again after a kill (it resumes from the newest checkpoint that
  loads) and after it finished (it returns its DONE record). The same function runs in a Ray task
  and in-process (``--backend local``).
- `driver`: ``async-nerf-train-cells``: one Ray task per cell with retries, progress, and the
  assembly of the finished cells into one ordinary nerfstudio run directory.
- `assemble`: the *cell-state assembly*: one pipeline state from the states of runs that trained
  different cells, keeping every cell's weights and the per-frame pose corrections and fine-tuned
  time-pose function of the runs that trained on those frames. (The *merged field*, which routes
  samples to cells at render time, is `async_nerf_ns.model.merged`.)
"""

"""Names of what a training batch carries besides nerfstudio's ``image`` and ``indices``.

- ``metadata[DEPTH_FRAME_KEY]`` of the ray bundle: (R, 1) long, the depth frame a ray comes from,
  -1 for RGB rays (depth rays follow the RGB rays);
- ``batch[CELL_BATCH_KEY]``: the partition cell the batch belongs to, a Python int (the pipeline
  hands it to the model, which renders the batch with that cell alone);
- ``batch[DEPTH_BATCH_KEY]``: (D, 1) measured distance along each depth ray, scene units.
"""

DEPTH_FRAME_KEY = "depth_frame"
CELL_BATCH_KEY = "cell"
DEPTH_BATCH_KEY = "depth"

"""Per-cell ray shards on disk: the training data of every cell, written once, read in bounded memory.

- `format`: records (image index, pixel index, RGB or depth), chunk files, the manifest;
- `writer.write_shard_set`: deals every image's pixels to their cells' chunk files through a shuffle
  buffer; resumable after a kill, complete only once its manifest exists;
- `reader.CellRays`: a cell's batches as a pure function of (seed, cell, step), with the next chunk
  prefetched in a thread.
"""

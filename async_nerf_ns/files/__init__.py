"""How async-nerf writes files: atomically, under content keys, in one cache folder per dataset.

The lowest layer of the package (it imports nothing of ours):

- `atomic`: ``atomic_write`` (the one write-then-rename), ``write_json_atomic``;
- `keys`: ``content_key`` (the one hash behind every derived file's name) and ``file_identity``;
- `cache_dir`: the one rule for where derived files of a dataset go;
- `checkpoints`: ``step-N.ckpt`` names, atomic and numpy-free checkpoints, the newest loadable one.

The derived products themselves live with their producers: the stage-1 fit cache beside the fit
(`trajectory/fit_cache.py`), the ray shard sets beside the shards (`shards/sets.py`).
"""

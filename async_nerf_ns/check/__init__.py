"""``async-nerf-check``: is this dataset / this run folder sound? (dataset.py, run.py; findings.py
holds the table and the JSON both print.)"""

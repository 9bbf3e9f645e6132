"""Training engine pieces nerfstudio's Trainer lacks: atomic numpy-free checkpoints, per-cell optimisers."""

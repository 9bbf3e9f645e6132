"""What ns-eval reports beyond nerfstudio's image metrics.

- `depth`: depth accuracy of val depth frames rendered at their poses;
- `poses`: depth-frame pose errors per pose source, flattened for nerfstudio's writers.
"""

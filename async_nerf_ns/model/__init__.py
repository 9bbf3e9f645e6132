"""The radiance field: per-cell nerfacto-style fields, their merged view, losses and the Model."""

"""What the nerfstudio viewer shows of a partition (issue 17), through nerfstudio's viewer hooks.

- `outlines`: the cells' regions on the ground plane (nearest centroid, and with the boundary margin);
- `cells_panel`: a cell's status (steps, last train PSNR, training rays, images) and the panel's table;
- `partition_view.PartitionView`: the elements the pipeline declares (render mode, toggles, the cells
  panel) and the scene nodes (outlines, centroids, labels, depth-frame frustums).
"""

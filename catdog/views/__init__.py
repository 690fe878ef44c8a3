"""What the network sees, drawn: channel grids and pages, Grad-CAM, filter patterns, per-image reports."""

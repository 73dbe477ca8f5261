"""Dataset preparation: Slicer/NRRD/NIfTI exports → nnU-Net raw datasets, checks, preprocessing."""

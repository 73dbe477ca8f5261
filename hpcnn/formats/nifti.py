"""NIfTI-1/2 (``.nii``, ``.nii.gz``): read and written by SimpleITK; nnU-Net's default ending."""

from hpcnn.formats import Format, register

NIFTI = register(Format("nifti", (".nii.gz", ".nii"), dataset_choice="nii.gz",
                        prediction_choice="nii.gz", ending=".nii.gz", detached=False))

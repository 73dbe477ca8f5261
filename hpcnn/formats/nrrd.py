"""NRRD, attached (``.nrrd``) or as a detached header (``.nhdr``, data in ``.raw(.gz)`` or
another file the header names: dataset/payload.py checks it before SimpleITK reads it)."""

from hpcnn.formats import Format, register

NRRD = register(Format("nrrd", (".nrrd", ".nhdr"), dataset_choice="nrrd",
                       prediction_choice="nrrd", ending=".nrrd", detached=True))

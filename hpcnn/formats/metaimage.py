"""MetaImage (``.mha`` attached, ``.mhd`` with its data in ``.raw``/``.zraw``; an ``.mha`` may
name a data file too)."""

from hpcnn.formats import Format, register

METAIMAGE = register(Format("metaimage", (".mha", ".mhd"), detached=True))

"""A source item: what the user has for one image or segmentation, a file or a DICOM series
(a set of files in a folder), and how messages name it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcnn import formats


@dataclass(frozen=True)
class SourceItem:
    """A file (``files`` empty) or a DICOM series (``path`` its folder, ``files`` its slices in
    position order). ``display`` is how messages name it: a path relative to what the user
    passed, never a header value."""

    path: Path
    display: str
    files: tuple[Path, ...] = ()
    format_name: str | None = None  # set for items recognised by content (DICOM)

    @property
    def is_series(self) -> bool:
        return bool(self.files)

    @property
    def format(self) -> formats.Format | None:
        if self.format_name:
            return formats.get(self.format_name)
        return formats.of_file(self.path.name)

    @property
    def extension(self) -> str:
        if self.format_name:
            return ""
        return formats.split_extension(self.path.name)[1] or ""

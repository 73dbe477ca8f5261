"""What an image file declares and whether its voxel data are all there, read before SimpleITK.

SimpleITK trusts headers: a gzip payload whose CRC fails or that holds more bytes than declared
reads "fine" (the reader stops at the declared length and never reaches the checksum), a 4 MB
file may declare 16 GB of voxels and the reader allocates them, and a detached header (``.nhdr``
``data file:``, ``.mhd`` ``ElementDataFile``) reads whatever file it names, a NIfTI's own header
taken for voxels or a key file outside the export folder. So every image and segmentation is
looked at here first:

- ``layout(path)`` parses the header (NRRD, MetaImage, NIfTI-1/2): element size, voxel count,
  encoding, detached data files and where the data start; None for a header it does not know
  (SimpleITK then has the last word);
- ``refusals(...)`` names what must not be read at all: a data file outside the source folder,
  an encoding SimpleITK cannot decode, more memory than a worker may use;
- ``verify(layout)`` streams the data once: gzip CRC and length, zlib end of stream, and the
  declared against the actual byte count.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
_NRRD_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2",
                   "ascii": "text", "text": "text", "txt": "text", "hex": "text", "zstd": "zstd"}
_META_TYPES = {"CHAR": 1, "UCHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4, "LONG": 4,
               "ULONG": 4, "LONG_LONG": 8, "ULONG_LONG": 8, "FLOAT": 4, "DOUBLE": 8}
# NIfTI-1 and -2 by sizeof_hdr: offsets and types of dim[8], bitpix and vox_offset
_NIFTI = {348: (40, "h", 72, "f", 108), 540: (16, "q", 14, "q", 168)}


@dataclass(frozen=True)
class Layout:
    """Where a file's voxel data are and how much of them the header declares."""

    header: Path
    sizes: tuple[int, ...]
    element: int  # bytes per voxel, all components
    type_name: str
    encoding: str  # raw | gzip | zlib | text | bzip2 | zstd
    data_files: tuple[Path, ...]  # empty: the data follow the header in the same file
    offset: int  # bytes before the data in the (first) data file; -1: the data end the file
    line_skip: int = 0
    prefix: int = 0  # NIfTI: the header and extensions inside the (compressed) stream

    @property
    def declared(self) -> int:
        """Bytes of voxel data (uncompressed) the header declares."""
        return math.prod(self.sizes) * self.element

    @property
    def detached(self) -> bool:
        return bool(self.data_files)

    def describe(self) -> str:
        return f"{'x'.join(map(str, self.sizes))} {self.type_name}"


def layout(path: Path) -> Layout | None:
    """The data layout the header declares; None when this is not a header parsed here."""
    name = path.name.lower()
    try:
        if name.endswith((".nrrd", ".nhdr")):
            return _nrrd(path)
        if name.endswith((".mha", ".mhd")):
            return _meta(path)
        if name.endswith((".nii", ".nii.gz")):
            return _nifti(path)
    except (OSError, ValueError, KeyError, struct.error, EOFError, zlib.error):
        return None  # not a header this module reads: SimpleITK reports it
    return None


def data_files(path: Path) -> tuple[Path, ...]:
    """The detached data files a header names (none for an attached image)."""
    found = layout(path)
    return found.data_files if found else ()


def refusals(found: Layout, *, root: Path, allow_outside: bool,
             max_bytes: int | None) -> list[tuple[str, str]]:
    """(message, fix) for each reason not to read the file at all."""
    out = []
    for data in found.data_files:
        shown = _shown(data, found.header)
        if not allow_outside and not inside(data, root):
            out.append((f"its data file {shown} lies outside the source folder "
                        f"{root}: hpcnn reads only files inside it",
                        "move the data file next to its header, or pass --allow-outside-source "
                        "if it is really yours to import"))
        elif not data.is_file():
            out.append((f"its data file {shown} does not exist",
                        "copy the data file next to its header (a .nhdr/.mhd holds only the "
                        "header), or export the image as one .nrrd"))
    if found.encoding in ("bzip2", "zstd"):
        out.append((f"its data are {found.encoding}-compressed, an encoding SimpleITK cannot "
                    "read", "save it again with gzip compression (Slicer: Save → NRRD with "
                    "'Compress'; teem: unu save -e gzip)"))
    if max_bytes is not None and found.declared > max_bytes:
        out.append((f"declares {found.describe()} voxels: {found.declared / 2**30:.1f} GiB in "
                    f"memory, more than the {max_bytes / 2**30:.1f} GiB one import worker may use",
                    f"if it really is that large, pass --max-gib "
                    f"{math.ceil(found.declared / 2**30) + 1} (and fewer --workers if memory is "
                    "short); otherwise the header is wrong: export it again"))
    return out


def verify(found: Layout) -> tuple[str, str] | None:
    """(message, fix) when the data are damaged or not as long as the header says; None when
    they are whole (or encoded as text, which only the reader can count)."""
    if found.encoding in ("text", "bzip2", "zstd", "unknown") or len(found.data_files) > 1:
        return None
    source = found.data_files[0] if found.detached else found.header
    where = f"its data file {_shown(source, found.header)}: " if found.detached else ""
    fix = "export or copy it again: the file is damaged or was cut short"
    have = -found.prefix
    try:
        with source.open("rb") as fh:
            start = _start(fh, found)
            if found.encoding == "raw":
                size = source.stat().st_size
                have = size - start if found.offset >= 0 else min(size, found.declared)
            else:
                for chunk in _inflate(fh, found.encoding):
                    have += len(chunk)
    except EOFError:
        return (f"cannot read: {where}cut short: expected {found.declared} bytes of voxel data "
                f"({found.describe()}), received {max(have, 0)}", fix)
    except (OSError, zlib.error) as exc:
        return (f"cannot read: {where}the {found.encoding} data are corrupt ({_reason(exc)})",
                fix)
    if have == found.declared:
        return None
    if have < found.declared:
        return (f"cannot read: {where}cut short: expected {found.declared} bytes of voxel data "
                f"({found.describe()}), received {max(have, 0)}", fix)
    if found.detached and found.prefix == 0 and found.offset >= 0:
        fix = ("the data file holds more than the voxels (its own header, e.g. a NIfTI's?): "
               "set 'byte skip: -1' in the .nhdr (data at the end of the file) or convert "
               "the image to one .nrrd")
    return (f"cannot read: {where}{have} bytes of voxel data, more than the {found.declared} "
            f"bytes the header declares ({found.describe()})", fix)


def _start(fh: BinaryIO, found: Layout) -> int:
    """Seek ``fh`` to the data: past the attached header, ``line skip`` lines, ``byte skip``."""
    if not found.detached:
        fh.seek(found.offset)
        return found.offset
    for _ in range(found.line_skip):
        fh.readline()
    if found.offset > 0:
        fh.seek(found.offset, 1)
    return fh.tell()


def _inflate(fh: BinaryIO, encoding: str) -> Iterator[bytes]:
    """The decompressed data in chunks: gzip (CRC and length checked at the end of each
    member) or zlib (MetaImage's CompressedData), which must reach its end-of-stream mark."""
    if encoding == "gzip":
        with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            while chunk := gz.read(CHUNK):
                yield chunk
        return
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header
    while chunk := fh.read(CHUNK):
        yield inflater.decompress(chunk)
        if inflater.eof:
            break
    if not inflater.eof:
        raise EOFError("the compressed stream ends early")
    yield inflater.flush()


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return "gzip CRC check failed" if "CRC" in text else text


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, its symbolic links followed, lies under ``root``."""
    return path.resolve().is_relative_to(root.resolve())


def _shown(path: Path, header: Path) -> str:
    try:
        return path.relative_to(header.parent).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# Header parsers


def _head(path: Path, limit: int = 1 << 20) -> tuple[bytes, int]:
    """The text header (up to the blank line that ends an attached NRRD header) and the
    offset where the data start."""
    with path.open("rb") as fh:
        text = fh.read(limit)
    end = text.find(b"\n\n")
    if end < 0:
        return text, len(text)
    return text[:end], end + 2


def _nrrd(path: Path) -> Layout | None:
    head, offset = _head(path)
    lines = head.decode("latin-1").splitlines()
    if not lines or not lines[0].startswith("NRRD"):
        return None
    fields: dict[str, str] = {}
    listed: list[str] = []
    for i, line in enumerate(lines[1:], start=1):
        if line.startswith("#") or ":=" in line.split(": ", 1)[0]:
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        key = key.strip().lower().replace(" ", "")
        fields[key] = value.strip()
        if key == "datafile" and value.strip().upper().startswith("LIST"):
            listed = [ln.strip() for ln in lines[i + 1:] if ln.strip()]
            break
    sizes = tuple(int(v) for v in fields["sizes"].split())
    element = _nrrd_type(fields["type"])
    if element is None:
        return None
    encoding = _NRRD_ENCODINGS.get(fields.get("encoding", "raw").lower(), "unknown")
    spec = fields.get("datafile", "")
    files: tuple[Path, ...] = ()
    if listed:
        files = tuple(_beside(path, name) for name in listed)
    elif spec:
        parts = spec.split()
        if len(parts) >= 4 and "%" in parts[0]:  # a format: name%03d.raw min max step
            lo, hi, step = (int(v) for v in parts[1:4])
            files = tuple(_beside(path, parts[0] % n) for n in range(lo, hi + 1, step or 1))
        else:
            files = (_beside(path, spec),)
    skip = int(fields.get("byteskip", "0"))
    return Layout(path, sizes, element, fields["type"], encoding, files,
                  skip if files else offset, int(fields.get("lineskip", "0")))


def _nrrd_type(name: str) -> int | None:
    t = " ".join(name.lower().split())
    if t in ("float", "double"):
        return 4 if t == "float" else 8
    bits = re.search(r"int(8|16|32|64)", t)
    if bits:
        return int(bits.group(1)) // 8
    for word, size in (("char", 1), ("short", 2), ("long long", 8), ("longlong", 8), ("int", 4)):
        if word in t:
            return size
    return None


def _beside(header: Path, name: str) -> Path:
    data = Path(name).expanduser()
    return data if data.is_absolute() else header.parent / data


def _meta(path: Path) -> Layout | None:
    fields: dict[str, str] = {}
    offset = 0
    with path.open("rb") as fh:
        for raw in iter(lambda: fh.readline(4096), b""):
            offset += len(raw)
            key, sep, value = raw.decode("latin-1").partition("=")
            if not sep:
                return None
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                break
    if "elementdatafile" not in fields or "dimsize" not in fields:
        return None
    sizes = tuple(int(v) for v in fields["dimsize"].split())
    type_name = fields.get("elementtype", "").upper().removeprefix("MET_")
    element = _META_TYPES.get(type_name)
    if element is None:
        return None
    element *= int(fields.get("elementnumberofchannels", "1"))
    encoding = "zlib" if fields.get("compresseddata", "false").lower() == "true" else "raw"
    spec = fields["elementdatafile"]
    if spec.upper() == "LOCAL":
        return Layout(path, sizes, element, type_name.lower(), encoding, (), offset)
    parts = spec.split()
    if parts[0].upper() == "LIST" or (len(parts) >= 4 and "%" in parts[0]):
        return None  # one file per slice: left to the reader
    skip = int(fields.get("headersize", "0"))
    return Layout(path, sizes, element, type_name.lower(), encoding, (_beside(path, spec),),
                  skip if skip >= 0 else -1)


def _nifti(path: Path) -> Layout | None:
    compressed = path.name.lower().endswith(".gz")
    with path.open("rb") as fh:
        head = gzip.GzipFile(fileobj=fh).read(544) if compressed else fh.read(544)
    for size, (dim_at, dim_fmt, bits_at, off_fmt, off_at) in _NIFTI.items():
        for order in "<>":
            if len(head) >= size and struct.unpack_from(f"{order}i", head)[0] == size:
                dims = struct.unpack_from(f"{order}8{dim_fmt}", head, dim_at)
                bits = struct.unpack_from(f"{order}h", head, bits_at)[0]
                prefix = int(struct.unpack_from(f"{order}{off_fmt}", head, off_at)[0])
                n = dims[0]
                if not 1 <= n <= 7 or bits <= 0 or bits % 8:
                    return None
                return Layout(path, tuple(int(d) for d in dims[1:n + 1]), bits // 8,
                              f"{bits}-bit", "gzip" if compressed else "raw", (),
                              0 if compressed else prefix, prefix=prefix if compressed else 0)
    return None

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
- ``verify(layout)`` streams the data once: gzip CRC and length, zlib end of stream, the
  declared against the actual byte count, and, for floating-point voxels, NaN and infinite
  values;
- ``examine(path, ...)`` is all of it for one file, the one check that ``dataset import``,
  ``dataset check`` and ``predict`` (with ``predict --on-cluster``'s staging) run before any
  worker reads a voxel.

NaN and infinite voxels are counted here, in the payload, because SimpleITK cannot show them in
every format: ITK's NIfTI reader (nifti1_io's ``nifti_read_buffer``, NIfTI-1 and -2, ``.nii``
and ``.nii.gz``, float32 and float64, with or without ``scl_slope``/``scl_inter``) replaces
every NaN and ±Inf with 0, so a NIfTI image whose NaN areas are read as 0 (0 HU) passed every
check that looked at SimpleITK's array. NRRD and MetaImage keep them.
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

try:  # CPython's zlib module built on zlib-ng: the same API and words, inflate 1.7x as fast
    from zlib_ng import zlib_ng as _zlib
except ImportError:  # no wheel for this platform: the standard library's
    _zlib = zlib  # type: ignore[no-redef]
_ZLIB_ERRORS = (zlib.error, _zlib.error)

CHUNK = 1 << 20
_NRRD_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2",
                   "ascii": "text", "text": "text", "txt": "text", "hex": "text", "zstd": "zstd"}
_META_TYPES = {"CHAR": 1, "UCHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4, "LONG": 4,
               "ULONG": 4, "LONG_LONG": 8, "ULONG_LONG": 8, "FLOAT": 4, "DOUBLE": 8}
# NIfTI-1 and -2 by sizeof_hdr: offsets and types of dim[8], bitpix and vox_offset, datatype
_NIFTI = {348: (40, "h", 72, "f", 108, 70), 540: (16, "q", 14, "q", 168, 12)}
# NIfTI datatype codes of floating-point data: the size of one float (complex: two of them)
_NIFTI_FLOATS = {16: 4, 64: 8, 32: 4, 1792: 8}


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
    floats: str | None = None  # numpy dtype of a float component ("<f4"); None: not floats

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


@dataclass(frozen=True)
class Problem:
    """Why a file must not be used: the message, its fix, and its kind: ``unreadable`` (not to
    be read at all), ``corrupt-data``, ``nan`` or ``inf`` (voxel values)."""

    message: str
    fix: str
    code: str


def examine(path: Path, *, root: Path, allow_outside: bool, max_bytes: int | None,
            command: str = "import") -> list[Problem]:
    """Every reason not to use the image at ``path``: ``refusals`` (nothing is read then),
    else what ``verify`` finds in its data. Empty for a header this module does not parse
    (SimpleITK then has the last word)."""
    found = layout(path)
    if found is None:
        return []
    refused = refusals(found, root=root, allow_outside=allow_outside, max_bytes=max_bytes,
                       command=command)
    if refused:
        return [Problem(message, fix, "unreadable") for message, fix in refused]
    return scan(found)


def refusals(found: Layout, *, root: Path, allow_outside: bool, max_bytes: int | None,
             command: str = "import") -> list[tuple[str, str]]:
    """(message, fix) for each reason not to read the file at all; the fixes name the options
    of ``command`` (``import`` or ``predict``)."""
    importing = command == "import"
    out = []
    for data in found.data_files:
        shown = _shown(data, found.header)
        if not allow_outside and not inside(data, root):
            out.append((f"its data file {shown} lies outside the "
                        f"{'source' if importing else 'input'} folder {root}: hpcnn reads only "
                        "files inside it",
                        "move the data file next to its header"
                        + (", or pass --allow-outside-source if it is really yours to import"
                           if importing else "")))
        elif not data.is_file():
            out.append((f"its data file {shown} does not exist",
                        "copy the data file next to its header (a .nhdr/.mhd holds only the "
                        "header), or export the image as one .nrrd"))
    if found.encoding in ("bzip2", "zstd"):
        out.append((f"its data are {found.encoding}-compressed, an encoding SimpleITK cannot "
                    "read", "save it again with gzip compression (Slicer: Save → NRRD with "
                    "'Compress'; teem: unu save -e gzip)"))
    if max_bytes is not None and found.declared > max_bytes:
        gib = math.ceil(found.declared / 2**30) + 1
        out.append((f"declares {found.describe()} voxels: {found.declared / 2**30:.1f} GiB in "
                    f"memory, more than the {max_bytes / 2**30:.1f} GiB "
                    + ("one import worker may use" if importing else "predicting may use here"),
                    f"if it really is that large, pass --max-gib {gib}"
                    + (" (and fewer --workers if memory is short)" if importing else "")
                    + "; otherwise the header is wrong: export it again"))
    return out


def verify(found: Layout) -> tuple[str, str] | None:
    """(message, fix) when the data are damaged or not as long as the header says; None when
    they are whole (or encoded as text, which only the reader can count)."""
    damaged = [p for p in scan(found) if p.code == "corrupt-data"]
    return (damaged[0].message, damaged[0].fix) if damaged else None


def scan(found: Layout) -> list[Problem]:
    """Stream the data once: damage (corrupt, cut short, too long) or else NaN and infinite
    floating-point voxels. Raw data are read only when they are floats (their length is the
    file's size)."""
    if found.encoding in ("text", "bzip2", "zstd", "unknown") or len(found.data_files) > 1:
        return []
    source = found.data_files[0] if found.detached else found.header
    where = f"its data file {_shown(source, found.header)}: " if found.detached else ""
    fix = "export or copy it again: the file is damaged or was cut short"
    values = _Values(found.floats, found.prefix, found.declared) if found.floats else None
    have = -found.prefix
    try:
        with source.open("rb") as fh:
            start = _start(fh, found)
            if found.encoding == "raw":
                size = source.stat().st_size
                have = size - start if found.offset >= 0 else min(size, found.declared)
                if values is not None and have >= found.declared:
                    if found.offset < 0:
                        fh.seek(size - found.declared)
                    left = found.declared
                    while left and (chunk := fh.read(min(CHUNK, left))):
                        values.feed(chunk)
                        left -= len(chunk)
            else:
                for chunk in _inflate(fh, found.encoding):
                    have += len(chunk)
                    if values is not None:
                        values.feed(chunk)
    except EOFError:
        return [Problem(f"cannot read: {where}cut short: expected {found.declared} bytes of "
                        f"voxel data ({found.describe()}), received {max(have, 0)}", fix,
                        "corrupt-data")]
    except (OSError, *_ZLIB_ERRORS) as exc:
        return [Problem(f"cannot read: {where}the {found.encoding} data are corrupt "
                        f"({_reason(exc, found.encoding)})", fix, "corrupt-data")]
    if have < found.declared:
        return [Problem(f"cannot read: {where}cut short: expected {found.declared} bytes of "
                        f"voxel data ({found.describe()}), received {max(have, 0)}", fix,
                        "corrupt-data")]
    if have > found.declared:
        if found.detached and found.prefix == 0 and found.offset >= 0:
            fix = ("the data file holds more than the voxels (its own header, e.g. a NIfTI's?): "
                   "set 'byte skip: -1' in the .nhdr (data at the end of the file) or convert "
                   "the image to one .nrrd")
        return [Problem(f"cannot read: {where}{have} bytes of voxel data, more than the "
                        f"{found.declared} bytes the header declares ({found.describe()})", fix,
                        "corrupt-data")]
    return values.problems() if values is not None else []


NONFINITE_FIX = ("replace them with a real intensity (e.g. the background value) and export it "
                 "again: nnU-Net's normalisation turns them into NaN (a NaN loss in training, "
                 "an empty segmentation in prediction)")


class _Values:
    """Counts NaN and infinite values in a stream of float data (chunks of any length), past
    ``skip`` leading bytes (a compressed NIfTI's header) and up to ``declared`` bytes."""

    def __init__(self, dtype: str, skip: int, declared: int) -> None:
        import numpy as np

        self.dtype = np.dtype(dtype)
        self.skip = skip
        self.left = declared
        self.rest = b""
        self.nan = self.inf = 0

    def feed(self, chunk: bytes) -> None:
        import numpy as np

        if self.skip:
            cut = min(self.skip, len(chunk))
            chunk, self.skip = chunk[cut:], self.skip - cut
        chunk = chunk[:self.left]
        self.left -= len(chunk)
        data = self.rest + chunk if self.rest else chunk
        whole = len(data) - len(data) % self.dtype.itemsize
        self.rest = bytes(data[whole:])
        if not whole:
            return
        array = np.frombuffer(data, self.dtype, whole // self.dtype.itemsize)
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            nan = int(np.count_nonzero(np.isnan(array)))
            self.nan += nan
            self.inf += bad - nan

    def problems(self) -> list[Problem]:
        return [Problem(f"{count} voxel(s) are {what}", NONFINITE_FIX, code)
                for count, what, code in ((self.nan, "NaN", "nan"),
                                          (self.inf, "infinite", "inf")) if count]


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
    """The decompressed data in chunks of at most CHUNK bytes (a small file may inflate to
    gigabytes): gzip, member after member, each checked by zlib against its CRC and length;
    or zlib (MetaImage's CompressedData), which must reach its end-of-stream mark.

    zlib checks the gzip trailer itself, so no second pass computes the CRC (``gzip.GzipFile``
    does, in Python): this check is the one decompression that ``dataset import`` adds to
    SimpleITK's own read, hence zlib-ng's inflate where it is installed (the ``nnunet``
    extra): bench/import_throughput.py."""
    wbits = _zlib.MAX_WBITS | (16 if encoding == "gzip" else 32)  # gzip; zlib or gzip header
    inflater, data = None, b""
    while True:
        if inflater is None:  # between gzip members: zero padding is allowed there
            data = data.lstrip(b"\0")
            while not data:
                data = fh.read(CHUNK)
                if not data:
                    return
                data = data.lstrip(b"\0")
            inflater = _zlib.decompressobj(wbits)
        if not data:
            data = fh.read(CHUNK)
            if not data:
                raise EOFError("the compressed stream ends early")
        out = inflater.decompress(data, CHUNK)
        if out:
            yield out
        data = inflater.unconsumed_tail
        if inflater.eof:  # what follows the stream is all in unused_data (the tail repeats it)
            if encoding != "gzip":
                return
            data, inflater = inflater.unused_data, None


def _reason(exc: BaseException, encoding: str) -> str:
    """zlib's words for a failed trailer check, as a user reads them."""
    text = str(exc) or type(exc).__name__
    if "CRC" in text or "incorrect data check" in text:
        return "gzip CRC check failed" if encoding == "gzip" else "checksum failed"
    if "incorrect length check" in text:
        return "gzip length check failed"
    return text


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
    order = ">" if fields.get("endian", "little").lower() == "big" else "<"
    floats = (f"{order}f{element}"
              if " ".join(fields["type"].lower().split()) in ("float", "double") else None)
    return Layout(path, sizes, element, fields["type"], encoding, files,
                  skip if files else offset, int(fields.get("lineskip", "0")), floats=floats)


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
    msb = (fields.get("binarydatabyteordermsb") or fields.get("elementbyteordermsb") or "false")
    floats = (f"{'>' if msb.lower() == 'true' else '<'}f{element}"
              if type_name in ("FLOAT", "DOUBLE") else None)
    element *= int(fields.get("elementnumberofchannels", "1"))
    encoding = "zlib" if fields.get("compresseddata", "false").lower() == "true" else "raw"
    spec = fields["elementdatafile"]
    if spec.upper() == "LOCAL":
        return Layout(path, sizes, element, type_name.lower(), encoding, (), offset,
                      floats=floats)
    parts = spec.split()
    if parts[0].upper() == "LIST" or (len(parts) >= 4 and "%" in parts[0]):
        return None  # one file per slice: left to the reader
    skip = int(fields.get("headersize", "0"))
    return Layout(path, sizes, element, type_name.lower(), encoding, (_beside(path, spec),),
                  skip if skip >= 0 else -1, floats=floats)


def _nifti(path: Path) -> Layout | None:
    compressed = path.name.lower().endswith(".gz")
    with path.open("rb") as fh:
        head = gzip.GzipFile(fileobj=fh).read(544) if compressed else fh.read(544)
    for size, (dim_at, dim_fmt, bits_at, off_fmt, off_at, type_at) in _NIFTI.items():
        for order in "<>":
            if len(head) >= size and struct.unpack_from(f"{order}i", head)[0] == size:
                dims = struct.unpack_from(f"{order}8{dim_fmt}", head, dim_at)
                bits = struct.unpack_from(f"{order}h", head, bits_at)[0]
                prefix = int(struct.unpack_from(f"{order}{off_fmt}", head, off_at)[0])
                float_size = _NIFTI_FLOATS.get(struct.unpack_from(f"{order}h", head, type_at)[0])
                n = dims[0]
                if not 1 <= n <= 7 or bits <= 0 or bits % 8:
                    return None
                return Layout(path, tuple(int(d) for d in dims[1:n + 1]), bits // 8,
                              f"{bits}-bit{' float' if float_size else ''}",
                              "gzip" if compressed else "raw", (),
                              0 if compressed else prefix, prefix=prefix if compressed else 0,
                              floats=f"{order}f{float_size}" if float_size else None)
    return None

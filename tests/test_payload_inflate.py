"""The payload check's gzip reader agrees with Python's gzip module on every stream: one member
or several, zero padding, cut short, a bad CRC or length, garbage after the data, a flipped bit,
whatever the chunk boundaries. It is zlib's own trailer check with bounded output, in place of
``gzip.GzipFile``'s second CRC pass (the import's extra decompression, bench/import_throughput)."""

from __future__ import annotations

import gzip
import importlib.util
import io
import random
import zlib

import pytest
from conftest import need

from hpcnn.dataset import payload

INFLATERS = ["stdlib", "zlib-ng"]


@pytest.fixture(params=INFLATERS, autouse=True)
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test with both inflaters: zlib-ng where installed (the nnunet extra), the
    standard library's where it has no wheel."""
    if request.param == "zlib-ng":
        need(importlib.util.find_spec("zlib_ng") is not None, "zlib-ng is not installed")
        from zlib_ng import zlib_ng

        monkeypatch.setattr(payload, "_zlib", zlib_ng)
    else:
        monkeypatch.setattr(payload, "_zlib", zlib)


def _reference(data: bytes) -> tuple[str, bytes | None]:
    try:
        return "whole", gzip.decompress(data)
    except EOFError:
        return "cut short", None
    except (OSError, zlib.error):
        return "corrupt", None


def _inflated(data: bytes) -> tuple[str, bytes | None]:
    try:
        return "whole", b"".join(payload._inflate(io.BytesIO(data), "gzip"))
    except EOFError:
        return "cut short", None
    except (OSError, *payload._ZLIB_ERRORS):
        return "corrupt", None


def _streams() -> dict[str, bytes]:
    noise = random.Random(0).randbytes(3000) + bytes(6000)
    one, two = gzip.compress(noise), gzip.compress(b"second member " * 80)
    flipped = bytearray(one)
    flipped[600] ^= 0x10
    return {"one member": one, "two members": one + two, "three members": one + two + one,
            "zero padding": one + bytes(100), "padding between members": one + bytes(9) + two,
            "cut short": one[:-20], "trailer cut": one[:-3], "garbage after": one + b"xyz",
            "garbage after padding": one + bytes(5) + b"xyz",
            "bad crc": one[:-8] + bytes([one[-8] ^ 1]) + one[-7:],
            "bad length": one[:-4] + bytes([one[-4] ^ 1]) + one[-3:],
            "empty": b"", "a flipped bit": bytes(flipped)}


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_the_gzip_check_agrees_with_pythons_gzip(chunk: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload, "CHUNK", chunk)
    for name, data in _streams().items():
        assert _inflated(data) == _reference(data), name


def test_output_is_bounded_by_the_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few kilobytes of zeros inflate to megabytes: no piece larger than CHUNK is held."""
    monkeypatch.setattr(payload, "CHUNK", 4096)
    pieces = list(payload._inflate(io.BytesIO(gzip.compress(bytes(8 << 20))), "gzip"))
    assert sum(map(len, pieces)) == 8 << 20 and max(map(len, pieces)) <= 4096


def test_zlib_data_must_reach_their_end_of_stream() -> None:
    whole = zlib.compress(b"voxels" * 1000)
    assert b"".join(payload._inflate(io.BytesIO(whole), "zlib")) == b"voxels" * 1000
    with pytest.raises(EOFError):
        b"".join(payload._inflate(io.BytesIO(whole[:-10]), "zlib"))

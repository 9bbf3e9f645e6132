"""Checksums of the files the plugin writes: CRC-32 (``zlib.crc32``).

Chosen for its cost, not for security: it is in the standard library, runs at ~0.8 GB/s on one core
here (measured on this machine: a 1 M-record RGB chunk, 11 MB, in ~14 ms) and releases the GIL, so the
shard writer's I/O thread and the reader's prefetch thread compute it beside training. It detects every
burst error up to 32 bits and any other change with probability 1 - 2^-32, which is what a flipped
or zeroed block on a bad disk or a lost write on a network file system produces. (xxHash would be
faster but is not in the standard library; sha256 runs at about half the speed.)

Checkpoints get a sidecar ``step-N.ckpt.crc32`` (JSON: algorithm, crc32, bytes) written before the
checkpoint is renamed into place; nerfstudio reads ``step-N`` from every name in the folder, which
parses the same for the sidecar.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import IO, Any, Dict, Optional

ALGORITHM = "zlib.crc32"
SIDECAR_SUFFIX = ".crc32"
_READ_BYTES = 8 << 20


def crc32_bytes(data: Any, value: int = 0) -> int:
    """CRC-32 of a bytes-like object (bytes, memoryview, contiguous numpy array), continuing ``value``."""
    return zlib.crc32(memoryview(data).cast("B"), value)


def crc32_file(path: Path) -> int:
    """CRC-32 of a whole file, read in 8 MB pieces."""
    value = 0
    with open(path, "rb") as stream:
        while True:
            piece = stream.read(_READ_BYTES)
            if not piece:
                return value
            value = zlib.crc32(piece, value)


class ChecksummingWriter:
    """A write-only stream that passes everything to ``raw`` and keeps the CRC-32 and length of it
    (torch.save and json.dump write through it, so the file is not read again to checksum it)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.crc32 = 0
        self.bytes = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.crc32 = zlib.crc32(view, self.crc32)
        self.bytes += view.nbytes
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def sidecar_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + SIDECAR_SUFFIX)


def sidecar_record(crc32: int, size: int) -> Dict[str, Any]:
    return {"algorithm": ALGORITHM, "crc32": f"{crc32:08x}", "bytes": int(size)}


def read_sidecar(path: Path) -> Optional[Dict[str, Any]]:
    """The recorded checksum of ``path`` (its sidecar), or None when it has none (written by stock
    nerfstudio or before checksums existed). An unreadable sidecar raises ValueError."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text())
        int(record["crc32"], 16), int(record["bytes"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{sidecar}: unreadable checksum file ({error})") from error
    if record.get("algorithm") != ALGORITHM:
        raise ValueError(f"{sidecar}: checksum algorithm {record.get('algorithm')!r}, expected {ALGORITHM!r}")
    return record


def checksum_problem(path: Path) -> Optional[str]:
    """Why ``path`` does not match its recorded checksum (size or CRC-32), or None when it matches or
    has no checksum recorded (`has_checksum` tells these apart)."""
    record = read_sidecar(path)
    if record is None:
        return None
    size = Path(path).stat().st_size
    if size != int(record["bytes"]):
        return f"{size:,} bytes, its checksum file says {int(record['bytes']):,} (truncated or cut short?)"
    actual = crc32_file(path)
    if actual != int(record["crc32"], 16):
        return f"CRC-32 {actual:08x}, its checksum file says {record['crc32']} (its bytes changed after it was written)"
    return None


def has_checksum(path: Path) -> bool:
    return sidecar_path(path).is_file()

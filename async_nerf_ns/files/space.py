"""A full disk (or quota) named: which folder, how much is free, about how much more is needed.

Every writer of the plugin (shard sets, the stage-1 cache, checkpoints, the assembly) writes through
`files/atomic.py` or the shard journal, so a failed write leaves no file that looks complete; this
module turns the bare ``OSError: [Errno 28] No space left on device`` into a message a user can act on.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
"""No space left on the device; disk quota exceeded."""


class DiskFullError(OSError):
    """A write that failed because its file system is full; the message names the folder and the space."""


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in FULL_DISK_ERRNOS


def disk_full_cause(error: BaseException) -> Optional[OSError]:
    """The full-disk ``OSError`` behind ``error``, if any: itself, or one it was raised from or while
    handling (torch.save turns the stream's ENOSPC into a RuntimeError of its zip writer)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if is_disk_full(error):
            return error  # type: ignore[return-value]
        error = error.__cause__ or error.__context__
    return None


def free_bytes(folder: Path) -> Optional[int]:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent); None if unknown."""
    folder = Path(folder)
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def megabytes(count: Optional[float]) -> str:
    return "unknown" if count is None else f"{count / 1e6:,.1f} MB"


def disk_full_error(folder: Path, what: str, needed_bytes: Optional[float], resume: str, error: OSError) -> DiskFullError:
    """The `DiskFullError` for a failed write of ``what`` into ``folder``."""
    free = free_bytes(folder)
    message = (
        f"No space left for {what} in {folder} ({error.strerror or error}): {megabytes(free)} free there, "
        f"about {megabytes(needed_bytes)} more needed. Nothing half-written was left that a later run "
        f"would take as complete; free space (or choose another folder) and {resume}."
    )
    return DiskFullError(error.errno, message)


@contextlib.contextmanager
def naming_full_disk(
    folder: Path, what: str, needed_bytes: Union[None, float, Callable[[], Optional[float]]], resume: str
) -> Iterator[None]:
    """Re-raises a full-disk ``OSError`` raised inside as a `DiskFullError` naming ``folder``, the free
    space and ``needed_bytes`` (a number or a function evaluated when it happens); ``resume`` says what
    the user does after freeing space."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        cause = disk_full_cause(error)
        if cause is None:
            raise
        needed = needed_bytes() if callable(needed_bytes) else needed_bytes
        raise disk_full_error(Path(folder), what, needed, resume, cause) from error

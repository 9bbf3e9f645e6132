"""A bag's image frames written into the resumable folder: the streams being written, the encoders on writer
threads (bounded memory), and the journal of finished frames that lets an interrupted conversion resume
(convert/bag_convert.py drives them)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, Optional, Tuple

import numpy as np

from async_nerf_ns.convert.bag_messages import MessageError, depth_payload, rgb_payload, stem_of
from async_nerf_ns.convert.errors import RawDataError
from async_nerf_ns.convert.tf_chain import TfError

JOURNAL_FILE = "journal.jsonl"
"""The resumable folder's list of finished frames (`FrameJournal`)."""
MAX_DEFAULT_WORKERS = 8
"""--workers 0 means one writer thread per CPU core, up to this many."""


@dataclass
class FrameStream:
    """One image topic being written: the RGB camera or a depth track."""

    name: str
    topic: str
    msgtype: str
    count: int
    """Messages on the topic (from the bag's index)."""
    folder: Path
    frames: Dict[int, Path] = field(default_factory=dict)
    """stamp ns -> the frame's file in the resumable folder."""
    size: Optional[Tuple[int, int]] = None
    encoding: Optional[str] = None
    last: int = -1
    backwards: int = 0
    repeated: int = 0
    resumed: int = 0
    """Frames an interrupted run had written (not written again)."""

    def accept(self, stamp: int) -> bool:
        """Counts out-of-order and repeated stamps; False for a repeat (the first frame is kept)."""
        if stamp in self.frames:
            self.repeated += 1
            return False
        if stamp < self.last:
            self.backwards += 1
        self.last = max(self.last, stamp)
        return True

    def journal_fields(self, stamp: int) -> Dict[str, Any]:
        """What the journal keeps of a finished frame besides its file (to restore the stream's state)."""
        assert self.size is not None
        return {"size": list(self.size), "encoding": self.encoding}

    def restore_fields(self, entry: Dict[str, Any], bag: Path, stamp: int) -> None:
        """The stream's state from a journal entry of a frame an earlier run finished."""
        self.check_size(tuple(entry["size"]), bag, stamp)
        if self.encoding is None:
            self.encoding = entry["encoding"]

    def check_size(self, size: Tuple[int, int], bag: Path, stamp: int) -> None:
        if self.size is None:
            self.size = size
        elif size != self.size:
            raise RawDataError(bag, f"topic {self.topic}: the frame at {stem_of(stamp)} s is {size[0]}x{size[1]} "
                               f"pixels but earlier ones are {self.size[0]}x{self.size[1]}; one set of intrinsics "
                               "needs one size per stream")


@contextlib.contextmanager
def message_errors(bag: Path, where: str) -> Iterator[None]:
    """A message the converter cannot use as the bag's error naming the message; a TF error as --tf's."""
    try:
        yield
    except MessageError as error:
        raise RawDataError(bag, f"{where}: {error}; nothing was written") from error
    except TfError as error:
        raise RawDataError(bag, f"--tf: {error}") from error



def imwrite(path: Path, pixels: np.ndarray, png_compression: int) -> None:
    import cv2

    if not cv2.imwrite(str(path), pixels, [cv2.IMWRITE_PNG_COMPRESSION, png_compression]):
        raise OSError(f"cannot write {path}")


def write_rgb_frame(stream: FrameStream, message: Any, stamp: int, bag: Path, png_compression: int) -> Optional[Callable[[], None]]:
    """Checks the frame and registers its file; returns the work that writes it (None: written already)."""
    payload = rgb_payload(message, stream.msgtype)
    stream.check_size(payload.size, bag, stamp)
    path = stream.folder / (stem_of(stamp) + payload.suffix)
    stream.frames[stamp] = path
    if payload.encoded is not None:  # JPEG/PNG: the message's bytes are the file
        path.write_bytes(payload.encoded)
        return None
    decode = payload.decode
    assert decode is not None
    return lambda: imwrite(path, decode(), png_compression)


def write_depth_frame(stream: FrameStream, message: Any, stamp: int, bag: Path, png_compression: int) -> Optional[Callable[[], None]]:
    payload = depth_payload(message, stream.msgtype)
    stream.check_size(payload.size, bag, stamp)
    if stream.encoding is None:
        stream.encoding = payload.encoding
    elif payload.encoding != stream.encoding:
        raise MessageError(f"depth encoding changes from {stream.encoding} to {payload.encoding}")
    stem = stem_of(stamp)
    if payload.png is not None:
        path = stream.folder / (stem + ".png")
        path.write_bytes(payload.png)
        stream.frames[stamp] = path
        return None
    array = payload.array
    assert array is not None
    if payload.encoding == "16UC1":  # millimetres: the layout's 16-bit PNG convention
        path = stream.folder / (stem + ".png")
        stream.frames[stamp] = path
        return lambda: imwrite(path, array, png_compression)
    path = stream.folder / (stem + ".npy")  # float32 metres (non-finite = no measurement, as in the layout)
    stream.frames[stamp] = path
    np.save(path, array)
    return None


class FrameWriters:
    """Frame encodings run on `workers` threads (OpenCV's encoders release the GIL), at most 2 per thread
    in flight, so memory holds a bounded number of frames; the first failure is raised in the main thread."""

    def __init__(self, workers: int, bag: Path):
        self.workers, self.bag = workers, bag
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="async-nerf-convert") if workers > 1 else None
        self.pending: Deque[Tuple[Future, str]] = deque()

    def submit(self, work: Callable[[], None], where: str, done: Callable[[], None]) -> None:
        """Runs `work`, then `done` (the journal entry: only a finished file is resumable)."""
        if self.pool is None:
            self._run(work, where, done)
            return
        self.pending.append((self.pool.submit(self._run, work, where, done), where))
        while len(self.pending) > 2 * self.workers:
            self.pending.popleft()[0].result()

    def _run(self, work: Callable[[], None], where: str, done: Callable[[], None]) -> None:
        with message_errors(self.bag, where):  # e.g. a colour conversion rosbags-image does not have
            work()
        done()

    def finish(self) -> None:
        while self.pending:
            self.pending.popleft()[0].result()

    def close(self) -> None:
        """Waits for (or cancels) every write, so nothing writes into the staging folder after this."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def worker_count(requested: int) -> int:
    return requested if requested > 0 else max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


class FrameJournal:
    """The frames a conversion has finished writing into its resumable folder, one JSON line each; a
    rerun with the same bag and options skips them. A file without its line (cut off mid-write) is
    written again."""

    def __init__(self, folder: Path):
        self.path = folder / JOURNAL_FILE
        self.lock = threading.Lock()
        self.done: Dict[Tuple[str, int], Dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    key = (str(entry["stream"]), int(entry["stamp"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut off by the interruption
                if (folder / entry["stream_folder"] / entry["file"]).is_file():
                    self.done[key] = entry
        self.file = self.path.open("a")

    def add(self, stream: FrameStream, stamp: int) -> None:
        entry = {"stream": stream.name, "stamp": stamp, "stream_folder": stream.folder.name,
                 "file": stream.frames[stamp].name, **stream.journal_fields(stamp)}
        with self.lock:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()

    def restore(self, stream: FrameStream, stamp: int, bag: Path) -> bool:
        """Registers a frame an earlier run wrote; False if there is none."""
        entry = self.done.get((stream.name, stamp))
        if entry is None:
            return False
        stream.restore_fields(entry, bag, stamp)
        stream.frames[stamp] = stream.folder / entry["file"]
        stream.resumed += 1
        return True

    def close(self) -> None:
        self.file.close()


class NoJournal:
    """extract_frames resumes nothing: no frame to restore, none to record."""

    def restore(self, stream: FrameStream, stamp: int, bag: Path) -> bool:
        return False

    def add(self, stream: FrameStream, stamp: int) -> None:
        """Records nothing: a frame extraction is not resumed."""

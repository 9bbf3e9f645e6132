"""A small file system that fills up, for tests of full disks: a tmpfs of a few MB mounted in the test
(needs root, as on this machine and CI), else a fault-injecting wrapper of ``open``/``os.fdopen`` that
raises ENOSPC past a byte budget for files under the folder (the same error the kernel gives)."""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest


class _BudgetedFile:
    def __init__(self, raw: Any, disk: "SmallDisk") -> None:
        self._raw, self._disk = raw, disk

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes if not isinstance(data, str) else len(data.encode())
        if self._disk.used + size > self._disk.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.used += size
        return self._raw.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self._raw.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class SmallDisk:
    """``folder`` on a file system of ``megabytes`` MB; ``grow(megabytes)`` frees space keeping the files."""

    def __init__(self, folder: Path, megabytes: float, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mounted = False
        self.budget = int(megabytes * 1e6)
        self.used = 0
        if shutil.which("mount") and os.geteuid() == 0 and not os.environ.get("ASYNC_NERF_TEST_NO_MOUNT"):
            result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(megabytes * 1024)}k", "tmpfs", str(self.folder)],
                                    capture_output=True, text=True)
            self.mounted = result.returncode == 0
        if not self.mounted:
            self._patch(monkeypatch)

    def _inside(self, path: Any) -> bool:
        try:
            return Path(os.fspath(path)).resolve().is_relative_to(self.folder.resolve())
        except TypeError:
            return False

    def _patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open, real_fdopen = builtins.open, os.fdopen
        disk = self

        def budgeted_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            return _BudgetedFile(handle, disk) if any(m in mode for m in "wax+") and disk._inside(file) else handle

        def budgeted_fdopen(fd, mode="r", *args, **kwargs):
            handle = real_fdopen(fd, mode, *args, **kwargs)
            inside = disk._inside(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists(f"/proc/self/fd/{fd}") else False
            return _BudgetedFile(handle, disk) if inside and any(m in mode for m in "wax+") else handle

        monkeypatch.setattr(builtins, "open", budgeted_open)
        monkeypatch.setattr(os, "fdopen", budgeted_fdopen)

    def grow(self, megabytes: float) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,size={int(megabytes * 1024)}k", str(self.folder)], check=True)
        self.budget = int(megabytes * 1e6)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Factory: ``small_disk(megabytes)`` -> a `SmallDisk` under tmp_path (unmounted after the test)."""
    disks = []

    def make(megabytes: float, name: str = "disk") -> SmallDisk:
        disk = SmallDisk(tmp_path / name, megabytes, monkeypatch)
        disks.append(disk)
        return disk

    yield make
    for disk in disks:
        disk.close()

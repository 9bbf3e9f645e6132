"""Writing a generated folder into place without ever deleting something a user made.

A tool writes its whole output into a staging folder beside OUT (same file system, so the final
move is a rename), records every file it wrote in a manifest, and only then moves it to OUT. OUT
may be new, empty, or (with `overwrite`) an earlier output of the same tool: a folder whose every
file and sub-folder is listed in that tool's manifest. Anything else in OUT stops the tool before
it deletes a single file; a failure before the move leaves OUT as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Set

from async_nerf_ns.layout import LayoutError

MANIFEST_FILE = "conversion.json"
"""Written into OUT: what the tool recorded, plus `tool` and `files` (every file it wrote)."""


class OutputFolderError(LayoutError):
    """OUT cannot be written or replaced; `path` is the folder or the file in the way."""

    def __reduce__(self):
        return (OutputFolderError, (self.path, self.problem))


def files_to_replace(out: Path, overwrite: bool, tool: str) -> List[Path]:
    """Files of an earlier output of `tool` in `out` that may be deleted ([] for a new or empty OUT)."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise OutputFolderError(out, "exists and is not a folder")
    if not any(out.iterdir()):
        return []
    if not overwrite:
        raise OutputFolderError(
            out, f"exists and is not empty; pick a new folder, or pass --overwrite to replace an earlier output "
            f"of {tool}"
        )
    ours = _manifest_files(out, tool)
    our_dirs = {parent for path in ours for parent in path.parents}
    found: List[Path] = []
    for root, dirs, files in os.walk(out):
        relative = Path(root).relative_to(out)
        for name in dirs + files:
            path = Path(root) / name
            is_file = name in files or path.is_symlink()  # walk lists links to folders with the folders
            if (relative / name) not in (ours if is_file else our_dirs):
                raise OutputFolderError(path, f"was not written by {tool}; --overwrite will not delete it")
            if is_file:
                found.append(path)
    return found


def _manifest_files(out: Path, tool: str) -> Set[Path]:
    """Relative paths listed in out's manifest (and the manifest itself), if `tool` wrote it."""
    refusal = (
        f"--overwrite replaces only an earlier output of {tool}, and this folder has no valid {MANIFEST_FILE}; "
        "delete it yourself or pick another folder"
    )
    try:
        listed = json.loads((out / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        raise OutputFolderError(out, refusal) from None
    if not isinstance(listed, dict) or listed.get("tool") != tool:
        raise OutputFolderError(out, refusal)
    files = listed.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise OutputFolderError(out, refusal)
    return {Path(f) for f in files} | {Path(MANIFEST_FILE)}


def staging_folder(out: Path) -> Path:
    """A new empty hidden folder beside `out` (its parent is created if needed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))


def write_manifest(folder: Path, tool: str, record: Mapping[str, Any]) -> None:
    """`record` plus the tool's name and every file now in `folder`, as folder/MANIFEST_FILE."""
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    manifest: Dict[str, Any] = {"tool": tool, **record, "files": files}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


def move_into_place(staged: Path, out: Path, overwrite: bool, tool: str) -> None:
    """Replace `out` by `staged`, checking `out` again first (the user may have added files meanwhile)."""
    old_files = files_to_replace(out, overwrite, tool)
    if out.exists():
        for path in old_files:
            path.unlink()
        for root, dirs, _ in os.walk(out, topdown=False):
            for name in dirs:
                if not (Path(root) / name).is_symlink():
                    (Path(root) / name).rmdir()  # fails (rather than deletes) if anything new appeared
        out.rmdir()
    staged.rename(out)


def discard(staged: Path) -> None:
    """Remove a staging folder this process made (after a failure, or if the move did not happen)."""
    if staged.exists():
        shutil.rmtree(staged)

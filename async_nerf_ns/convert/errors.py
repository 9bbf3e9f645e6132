"""The converter's error type (re-exported by `raw_capture`, where it was first defined)."""

from __future__ import annotations

from async_nerf_ns.layout import LayoutError


class RawDataError(LayoutError):
    """The raw capture cannot be converted; `path` is the offending file or folder (or the bag)."""

    def __reduce__(self):
        return (RawDataError, (self.path, self.problem))

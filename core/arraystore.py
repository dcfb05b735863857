"""A folder of ``.npy`` arrays opened memory-mapped, committed by a ``meta.json`` written last.

Why: long clips give whole-clip arrays (flow, masks, baked maps) of hundreds of MB. An
``.npz`` must be read whole into memory; a plain ``.npy`` can be memory-mapped, so readers
touch only the frames they use and the OS may drop those pages again. Several arrays make
one consistent set only when ``meta.json`` is present: writers fill temporary files, then
remove the old marker, rename the arrays into place (a reader that still maps an old file
keeps reading the old data) and write ``meta.json`` last as the commit marker.
A folder without it is an interrupted write and reads as absent.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core import fsutil

META = "meta.json"


class StoreWriter:
    """Create arrays in ``folder`` (memory-mapped, filled by the caller), then :meth:`commit`."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._pending: dict[str, tuple[Path, np.memmap]] = {}

    def create(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.memmap:
        """A writable memory-mapped array that becomes ``name.npy`` on commit (zero-filled)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".npy", dir=self.folder)
        os.close(fd)
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(int(s) for s in shape))
        self._pending[name] = (Path(tmp), arr)
        return arr

    def has(self, name: str) -> bool:
        """Whether ``name`` was created in this writer (and is waiting for the commit)."""
        return name in self._pending

    def put(self, name: str, array: np.ndarray, dtype: Any | None = None) -> None:
        """Store a whole array (converted to ``dtype``) under ``name``."""
        array = np.asarray(array)
        out = self.create(name, array.shape, dtype or array.dtype)
        out[...] = array

    def discard(self, name: str) -> None:
        """Drop an array created in this writer (it will not be committed)."""
        tmp, arr = self._pending.pop(name)
        del arr
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # still mapped elsewhere (Windows): a dot-file that readers ignore
            pass

    def commit(self, meta: dict[str, Any], remove: Sequence[str] = ()) -> None:
        """Flush, move every array into place, then write ``meta.json`` (the commit marker).

        Until here the old set stays valid (new arrays live in temporary files); from the
        first rename on it is not, so its marker goes first. ``remove``: arrays of the old
        set that the new one does not have (deleted once the old marker is gone).
        """
        (self.folder / META).unlink(missing_ok=True)
        for name in remove:
            if name not in self._pending:
                (self.folder / f"{name}.npy").unlink(missing_ok=True)
        for name in list(self._pending):
            tmp, arr = self._pending.pop(name)
            arr.flush()
            del arr  # our mapping goes before the rename (Windows cannot rename a mapped file)
            os.chmod(tmp, 0o666 & ~fsutil._umask())
            os.replace(tmp, self.folder / f"{name}.npy")
        fsutil.write_json(self.folder / META, {**meta, "arrays": sorted(self._names())})
        self._sweep()

    def _sweep(self) -> None:
        """Remove temporary arrays an earlier writer could not delete (Windows keeps a file that
        is still mapped, see :meth:`discard`; a killed writer leaves its own). Writers of one
        folder never overlap (the project lock), so every dot-file left now is stale; one that is
        still mapped somewhere stays until a later commit."""
        for p in self.folder.glob(".*.npy"):
            try:
                p.unlink()
            except OSError:
                pass

    def _names(self) -> list[str]:
        return [p.stem for p in self.folder.glob("*.npy") if not p.name.startswith(".")]

    def abort(self) -> None:
        """Remove the arrays written so far (the folder stays invalid: no meta.json)."""
        for tmp, _ in self._pending.values():
            tmp.unlink(missing_ok=True)
        self._pending.clear()


def read_meta(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The committed ``meta.json`` of a store, or None (absent, interrupted or damaged)."""
    p = Path(folder) / META
    if not p.is_file():
        return None
    try:
        meta = fsutil.read_json(p, "store metadata")
    except Exception:  # noqa: BLE001 - a damaged marker means "not committed"
        return None
    return meta if isinstance(meta, dict) else None


def open_array(folder: str | os.PathLike, name: str, mmap: bool = True) -> np.ndarray:
    """``folder/name.npy``, memory-mapped read-only (or read into memory)."""
    return np.load(Path(folder) / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)


def folder_size(folder: str | os.PathLike) -> int:
    """Bytes of every file under ``folder`` (what the project costs on disk)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total

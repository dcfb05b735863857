"""Atomic file writes and THE output rule.

Why: a crash, a cancel or a full disk must never leave a half-written checkpoint, map or PNG
where a good one was, and a tool run must never overwrite something a user made. Every
writer of inve goes through this module:

* **Atomic**: a file is written to a temporary name in the same folder
  (``.NAME.inve-tmp-PID-XXXX``) and moved over the target with ``os.replace``; on any error
  the temporary file is removed (a killed run's leftovers go when the next run into the
  folder begins, once their pid is gone). Errors of the destination (read-only, full, no
  permission) become one :class:`OutputError` line naming the file.
* **The output rule**: a file inve wrote may be replaced only while it is byte-identical to
  what inve wrote. inve records the SHA-256 of every output file it writes: in the folder's
  marker ``.inve-output`` (JSON) for output folders (PNG sequences, atlas folders, project
  folders), or in a sidecar ``.NAME.inve`` next to a single output file (a movie, a
  TRACKS.json). Anything else (a user's file, or an inve file the user changed, such as an
  atlas painted and saved in place) is never overwritten: the writer refuses with one line.
* **Sequences know whether they are complete**: while a folder is being filled the marker
  says ``"complete": false`` and a journal (``.inve-output.journal``) records each file as it
  lands, so a killed run leaves a folder that says it is incomplete and which frames it has;
  the next run into the same folder replaces it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from core.errors import InveError
from core.lock import pid_alive


class OutputError(InveError):
    """A destination cannot be written (read-only, full, not ours to replace)."""


TMP_TAG = ".inve-tmp-"
OUTPUT_MARKER = ".inve-output"
JOURNAL = ".inve-output.journal"
SIDECAR_SUFFIX = ".inve"
MARKER_VERSION = 2
_HIDDEN_OURS = re.compile(r"^\..+" + re.escape(TMP_TAG) + r"(?:(\d+)-)?.+$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def describe_os_error(exc: OSError) -> str:
    """The reason of an OSError as a user reads it (disk full gets its own words)."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "the disk is full"
    if exc.errno == errno.EROFS:
        return "the destination is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def output_error(path: str | os.PathLike, exc: OSError, doing: str = "cannot write") -> OutputError:
    return OutputError(f"{doing} {path}: {describe_os_error(exc)}; nothing half-written was left there")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    Destination errors (read-only, full disk, permissions) raise :class:`OutputError`; the
    temporary file never stays behind.
    """
    path = Path(path)
    suffix = suffix if suffix is not None else "".join(path.suffixes) or ".tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}{tmp_tag()}", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", -1)):
            raise output_error(path, exc) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def probe_writable(folder: str | os.PathLike, what: str = "output folder") -> None:
    """Fail up front, before any heavy work, when ``folder`` cannot receive files.

    Creates the folder (and its parents) and a small temporary file in it. Running as root,
    permission bits do not stop writes, so only a real attempt tells.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".probe{tmp_tag()}", dir=folder)
        try:
            os.write(fd, b"inve")
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write to {what} {folder}: {describe_os_error(exc)}") from None


# -- plain atomic writers (project internals, written under the project lock) ---------------

def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomically write ``path`` with ``writer(tmp_path)`` (keeps the final extension)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def png_writer(image: np.ndarray) -> Callable[[Path], None]:
    """A writer for :func:`atomic_path` / :func:`write_output_file` / ``OutputFolder.write``
    that encodes ``image`` (HxW, HxWx3 or HxWx4; floats in 0..1 are converted) as an 8-bit PNG
    with inve's one PNG encoder (:mod:`core.png`, also used for frame sequences and overlays)."""
    from core import png  # noqa: PLC0415

    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    data = png.encode(img)
    return lambda tmp: Path(tmp).write_bytes(data)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an 8-bit PNG (HxW, HxWx3 or HxWx4; floats in 0..1 are converted) atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        png_writer(image)(tmp)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise InveError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InveError(f"{what} {path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise InveError(f"cannot read {what} {path}: {describe_os_error(exc)}") from None


# -- the output rule -----------------------------------------------------------------------

def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's marker with the journal applied; ``None`` when the folder has none.

    A marker from inve 0.1 (plain text, no checksums) reads as a marker that records no
    files: its files are then left alone like a user's.
    """
    p = folder / OUTPUT_MARKER
    if not p.is_file():
        return None
    try:
        doc = json.loads(p.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError, OSError):
        doc = {"files": {}, "complete": True, "legacy": True}
    files: dict[str, str | None] = dict(doc["files"])
    j = folder / JOURNAL
    if j.is_file():
        with contextlib.suppress(OSError):
            for line in j.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, AttributeError):
                    rec = json.loads(line)
                    # "pending" without a later checksum: the run died around os.replace, so
                    # the file is either the previous (ours, checked) or the new one (ours).
                    files[rec["name"]] = rec.get("sha256")
        doc["complete"] = False
    doc["files"] = files
    return doc


def _sidecar(path: Path) -> Path:
    return path.parent / f".{path.name}{SIDECAR_SUFFIX}"


def recorded_checksum(path: Path) -> tuple[bool, str | None]:
    """(recorded?, sha256) of ``path`` as inve wrote it; sha ``None`` = written by a killed run."""
    marker = _read_marker(path.parent)
    if marker is not None and path.name in marker["files"]:
        return True, marker["files"][path.name]
    side = _sidecar(path)
    if side.is_file():
        with contextlib.suppress(ValueError, OSError, AttributeError, TypeError):
            return True, json.loads(side.read_text())["sha256"]
    return False, None


def is_ours(path: str | os.PathLike) -> bool:
    """True when ``path`` is missing, or is byte-identical to what inve last wrote there."""
    path = Path(path)
    if not path.exists():
        return True
    if not path.is_file():
        return False
    recorded, sha = recorded_checksum(path)
    if not recorded:
        return False
    return sha is None or sha256_file(path) == sha


def check_replaceable(path: str | os.PathLike, what: str = "file") -> None:
    """Refuse (one line) to replace anything that is not an unchanged file inve wrote."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder")
    if is_ours(path):
        return
    recorded, _ = recorded_checksum(path)
    if recorded:
        raise OutputError(f"{what} {path} was changed after inve wrote it; not replacing it "
                          "(move it away or choose another output)")
    raise OutputError(f"{what} {path} already exists and inve did not write it; not replacing it "
                      "(move it away or choose another output)")


def check_output_file(path: str | os.PathLike, overwrite: bool, what: str = "output file") -> None:
    """Up-front checks for a single output file (a movie, a TRACKS.json): refuse a folder,
    an existing file without ``overwrite``, anything not ours-and-unchanged, a project
    folder's files, and an unwritable destination."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; -o must name the file to write")
    if (path.parent / "project.json").is_file():
        raise OutputError(f"{path} is inside an inve project folder; write outputs somewhere else")
    if path.exists():
        if not overwrite:
            if is_ours(path):
                raise OutputError(f"{path} already exists; pass --overwrite to replace it")
            raise OutputError(f"{path} already exists and inve did not write it (or it was changed since); "
                              "choose another output")
        check_replaceable(path, what)
    probe_writable(path.parent, "output folder")


def write_output_file(path: str | os.PathLike, writer: Callable[[Path], None], what: str = "file") -> None:
    """Write one output file under the rule; its checksum goes to its sidecar ``.NAME.inve``.

    Inside a folder that has a marker (an output or project folder) the checksum goes to the
    marker instead.
    """
    path = Path(path)
    check_replaceable(path, what)
    with atomic_path(path) as tmp:
        writer(tmp)
        sha = sha256_file(tmp)
    _record(path, sha)


def write_output_bytes(path: str | os.PathLike, data: bytes, what: str = "file") -> str:
    """:func:`write_output_file` for contents already in memory (an encoded PNG): the checksum
    is taken from ``data`` rather than by reading the file back. Returns the checksum."""
    path = Path(path)
    check_replaceable(path, what)
    sha = hashlib.sha256(data).hexdigest()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    _record(path, sha)
    return sha


def record_output(path: str | os.PathLike, sha: str) -> None:
    """Record ``sha`` as what inve wrote at ``path`` (marker of its folder, or sidecar)."""
    _record(Path(path), sha)


def _record(path: Path, sha: str) -> None:
    folder = path.parent
    marker = _read_marker(folder)
    if marker is not None:
        marker["files"][path.name] = sha
        _write_marker(folder, marker["files"], complete=bool(marker.get("complete", True)) and
                      not (folder / JOURNAL).exists(), extra={k: v for k, v in marker.items()
                                                              if k not in ("files", "complete", "legacy")})
    else:
        write_json(_sidecar(path), {"written_by": "inve", "sha256": sha})


def _write_marker(folder: Path, files: dict[str, str | None], complete: bool,
                  extra: dict[str, Any] | None = None) -> None:
    doc = {"written_by": "inve", "version": MARKER_VERSION,
           "note": "inve replaces the files listed here only while they are unchanged",
           "complete": complete, **(extra or {}), "files": dict(sorted(files.items()))}
    write_json(folder / OUTPUT_MARKER, doc)


def mark_output_dir(folder: str | os.PathLike) -> None:
    """Give ``folder`` an (empty, complete) marker: files inve writes there get recorded."""
    folder = Path(folder)
    if _read_marker(folder) is None:
        _write_marker(folder, {}, complete=True)


def output_dir_state(folder: str | os.PathLike) -> dict[str, Any] | None:
    """What the folder's marker says (``complete``, ``files``, ...), or ``None``."""
    return _read_marker(Path(folder))


def tmp_tag() -> str:
    """What a temporary file's name holds after its stem: :data:`TMP_TAG` and the pid of the
    process that writes it (``.NAME.inve-tmp-PID-XXXX``), so that clearing a folder's
    leftovers spares the temporary files of another run still writing there."""
    return f"{TMP_TAG}{os.getpid()}-"


def _clear_temps(folder: Path) -> None:
    """Remove temporary files of runs that are gone (their pid is not a live process, or a
    name from before temporary names carried one). Another live run writing into the folder
    keeps its own: render workers write their frames ahead and move them into place later."""
    alive: dict[int, bool] = {}
    for p in folder.iterdir():
        m = _HIDDEN_OURS.match(p.name)
        if m and p.is_file():
            if m.group(1) is not None:
                pid = int(m.group(1))
                if pid not in alive:
                    alive[pid] = pid_alive(pid)
                if alive[pid] and not _older_than(p, TMP_STALE_SECONDS):
                    continue
            with contextlib.suppress(OSError):
                p.unlink()


#: a temporary file untouched this long is a leftover even where its pid is a live process
#: (a reused pid)
TMP_STALE_SECONDS = 24 * 3600.0


def _older_than(path: Path, seconds: float) -> bool:
    import time  # noqa: PLC0415

    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _refuse_project(path: Path, what: str) -> None:
    if (path / "project.json").is_file():
        raise OutputError(f"{what} {path} is an inve project folder; choose another folder for the output "
                          "(for example a new folder next to the project)")


def prepare_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Make sure ``path`` can receive generated files without clobbering a user's files.

    The folder may be missing, empty, or one inve wrote before (it holds the marker); any
    other non-empty folder is refused, and so is a project folder. Leftover temporary
    files of a killed run are removed. Writes nothing but a probe.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} exists and is not a folder")
    if path.is_dir():
        _refuse_project(path, what)
        _clear_temps(path)
        entries = [p for p in path.iterdir()]
        if entries and not (path / OUTPUT_MARKER).exists():
            raise OutputError(
                f"{what} {path} already holds {len(entries)} file(s) that inve did not write; "
                "choose an empty or new folder")
    probe_writable(path, what)
    return path


class OutputFolder:
    """A folder being filled with output files under the rule (streaming, one file at a time).

    ``begin()`` checks the folder and marks it incomplete; ``write(name, writer)`` refuses
    to replace a file that is not ours-and-unchanged, writes atomically and journals its
    checksum; ``finish(remove_stale=...)`` records everything in the marker, marks it
    complete and removes stale files of an earlier run that are still ours. An interrupted
    run calls ``abort()`` (or is killed): the marker says incomplete and lists what landed.
    """

    def __init__(self, path: str | os.PathLike, what: str = "output folder") -> None:
        self.path = Path(path)
        self.what = what
        self.files: dict[str, str | None] = {}
        self.written: list[str] = []
        self._journal_fh: Any = None  # the journal, open while the folder is being filled

    def begin(self) -> "OutputFolder":
        prepare_output_dir(self.path, self.what)
        marker = _read_marker(self.path)
        self.files = dict(marker["files"]) if marker else {}
        self.legacy = bool(marker and marker.get("legacy"))
        _write_marker(self.path, self.files, complete=False)
        self._close_journal()
        with contextlib.suppress(FileNotFoundError):
            (self.path / JOURNAL).unlink()
        return self

    def _journal(self, rec: dict[str, Any]) -> None:
        """Append one record; it is in the file (flushed) before the caller goes on. The
        journal stays open while the folder is filled (two records a frame: opening it for
        each cost more than writing the record)."""
        try:
            if self._journal_fh is None:
                self._journal_fh = open(self.path / JOURNAL, "a")
            self._journal_fh.write(json.dumps(rec) + "\n")
            self._journal_fh.flush()
        except OSError as exc:
            raise output_error(self.path / JOURNAL, exc) from None

    def _close_journal(self) -> None:
        fh, self._journal_fh = self._journal_fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()

    def check(self, name: str) -> None:
        """Refuse before writing ``name`` unless it is missing or ours and unchanged."""
        p = self.path / name
        if not p.exists():
            return
        if p.is_file() and name in self.files:
            sha = self.files[name]
            if sha is None or sha256_file(p) == sha:
                return
            raise OutputError(f"{p} was changed after inve wrote it; not replacing it "
                              "(move it away or choose another output folder)")
        check_replaceable(p, "output file")

    def write(self, name: str, writer: Callable[[Path], None]) -> Path:
        p = self.path / name
        self.check(name)
        self._journal({"name": name})
        with atomic_path(p) as tmp:
            writer(tmp)
            sha = sha256_file(tmp)
        self._journal({"name": name, "sha256": sha})
        self.files[name] = sha
        self.written.append(name)
        return p

    def write_bytes(self, name: str, data: bytes, sha: str | None = None) -> Path:
        """:meth:`write` for contents already in memory; ``sha`` (their SHA-256, if the caller
        hashed them already, say on an encoder thread) saves reading the file back."""
        p = self.path / name
        self.check(name)
        self._journal({"name": name})
        sha = sha or hashlib.sha256(data).hexdigest()
        with atomic_path(p) as tmp:
            tmp.write_bytes(data)
        self._journal({"name": name, "sha256": sha})
        self.files[name] = sha
        self.written.append(name)
        return p

    def adopt(self, name: str, tmp: str | os.PathLike, sha: str) -> Path:
        """Move ``tmp`` -- a complete file another process wrote into this folder under a
        temporary name (``.X.inve-tmp-Y``, see :data:`TMP_TAG`), whose SHA-256 is ``sha`` --
        into place as ``name``: the rule and the journal exactly as :meth:`write_bytes`, the
        bytes written elsewhere (a render worker writes its own PNGs). ``tmp`` is removed
        whatever happens; a refusal leaves ``name`` as it was."""
        p = self.path / name
        tmp = Path(tmp)
        try:
            if tmp.parent.resolve() != self.path.resolve():
                raise ValueError(f"{tmp} is not in {self.path}")  # a rename must not cross folders
            self.check(name)
            self._journal({"name": name})
            try:
                os.replace(tmp, p)
            except OSError as exc:
                raise output_error(p, exc) from None
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._journal({"name": name, "sha256": sha})
        self.files[name] = sha
        self.written.append(name)
        return p

    def write_png(self, name: str, image: np.ndarray) -> Path:
        return self.write(name, png_writer(image))

    def _adopt_records(self) -> None:
        """Keep what other writers recorded in this folder's marker since ``begin()``
        (``write_movie``/``write_output_file`` record single files there), so rewriting
        the marker never forgets a file inve wrote."""
        marker = _read_marker(self.path)
        if marker is not None:
            self.files = {**marker["files"], **self.files}

    def finish(self, stale: Callable[[str], bool] | None = None) -> None:
        """Mark the folder complete; files matching ``stale`` not written by this run go
        away when they are still ours and unchanged (a user's copy stays)."""
        keep = set(self.written)
        self._adopt_records()
        if stale is not None:
            for name in list(self.files):
                if name not in keep and stale(name):
                    p = self.path / name
                    if is_ours(p):
                        with contextlib.suppress(FileNotFoundError):
                            p.unlink()
                        del self.files[name]
        self._close_journal()
        _write_marker(self.path, self.files, complete=True)
        with contextlib.suppress(FileNotFoundError):
            (self.path / JOURNAL).unlink()

    def abort(self, reason: str) -> None:
        """Leave the folder marked incomplete, saying which files this run wrote."""
        self._close_journal()
        with contextlib.suppress(OSError, InveError):
            self._adopt_records()
            _write_marker(self.path, self.files, complete=False,
                          extra={"interrupted": reason, "written_this_run": sorted(self.written)})
            (self.path / JOURNAL).unlink()

"""Which trained project belongs to a movie strip: by the content of its source file and its
frames, never by the strip's name or the .blend's folder (no bpy).

Editors rename strips, blade-cut them (two strips named "clip" and "clip.001"), duplicate
them and Save As into other folders every day; none of that changes the file a strip plays or
the source frames it shows. So a project is keyed by the source file's content fingerprint
(``core/identity.py``, stdlib only, loaded from the bundled engine by file path: no torch)
and the half-open range of source frames it was trained on. A strip uses the project of its
source whose range covers what the strip shows; frames the strip shows outside that range
(after extending a trim) are reported, for *Train New Frames*.

Project folders are stored relative to the .blend (``//inve/...``) where Blender's
conventions allow, with the absolute path kept as a second guess: after Save As into another
folder the relative path points nowhere, the absolute one still finds the project.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

_IDENTITY: ModuleType | None = None
_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def load_identity(engine_root: Path) -> ModuleType:
    """``core/identity.py`` of the bundled engine, loaded by file path (stdlib only, no torch)."""
    global _IDENTITY
    if _IDENTITY is None:
        path = Path(engine_root) / "core" / "identity.py"
        spec = importlib.util.spec_from_file_location("inve_engine_identity", path)
        if spec is None or spec.loader is None or not path.is_file():
            raise FileNotFoundError(f"the engine's identity module is missing: {path}")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _IDENTITY = mod
    return _IDENTITY


def fingerprint(path: str, engine_root: Path) -> str:
    """Content fingerprint of a movie file (cached by path, size and modification time)."""
    st = os.stat(path)
    key = (os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns))
    fp = _FINGERPRINTS.get(key)
    if fp is None:
        fp = str(load_identity(engine_root).source_fingerprint(path))
        _FINGERPRINTS[key] = fp
    return fp


@dataclass(frozen=True)
class ProjectRef:
    """A trained project as the .blend records it."""

    fingerprint: str
    start: int  # first source frame trained
    end: int  # one past the last
    path: str = ""  # as stored (may be //relative)

    def covers(self, frames: tuple[int, int]) -> bool:
        return self.start <= frames[0] and frames[1] <= self.end

    def overlap(self, frames: tuple[int, int]) -> int:
        return max(0, min(self.end, frames[1]) - max(self.start, frames[0]))


@dataclass(frozen=True)
class Match:
    index: int  # into the list of refs
    ref: ProjectRef
    outside: tuple[tuple[int, int], ...]  # source ranges the strip shows but the project lacks

    @property
    def complete(self) -> bool:
        return not self.outside


def outside_ranges(ref: ProjectRef, frames: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    out = []
    if frames[0] < ref.start:
        out.append((frames[0], min(ref.start, frames[1])))
    if frames[1] > ref.end:
        out.append((max(ref.end, frames[0]), frames[1]))
    return tuple(out)


def find_project(refs: Sequence[ProjectRef], fp: str, frames: tuple[int, int]) -> Match | None:
    """The project for a strip of source ``fp`` showing source ``frames`` (half-open).

    A project covering all the frames wins (the smallest such: a blade cut's half keeps the
    project trained on the whole); else the one sharing the most frames, reporting what is
    missing; else None (a source never trained here).
    """
    same = [(i, r) for i, r in enumerate(refs) if r.fingerprint == fp]
    if not same:
        return None
    covering = [(i, r) for i, r in same if r.covers(frames)]
    if covering:
        i, r = min(covering, key=lambda ir: ir[1].end - ir[1].start)
        return Match(i, r, ())
    i, r = max(same, key=lambda ir: (ir[1].overlap(frames), -(ir[1].end - ir[1].start)))
    return Match(i, r, outside_ranges(r, frames))


def folder_name(source_path: str, fp: str, frames: tuple[int, int]) -> str:
    """Folder name of a new project: readable, and unique per source content and range."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source_path).stem).strip("._") or "clip"
    return f"{stem[:40]}_{fp[:8]}_{frames[0]}-{frames[1]}"


def resolve_folder(stored: str, absolute_hint: str, abspath: Callable[[str], str],
                   is_project: Callable[[str], bool]) -> str | None:
    """The project folder now: the stored (maybe relative) path, else the absolute one."""
    for cand in (stored, absolute_hint):
        if cand:
            p = os.path.normpath(abspath(cand))
            if is_project(p):
                return p
    return None


def relative_to_blend(path: str, blend_dir: str | None) -> str:
    """``//``-relative path when the .blend is saved and ``path`` is on the same drive."""
    if not blend_dir:
        return path
    try:
        rel = os.path.relpath(path, blend_dir)
    except ValueError:  # another drive on Windows
        return path
    return "//" + rel.replace(os.sep, "/")


def is_project_folder(path: str) -> bool:
    """A folder the engine made a project of (it has ``project.json``)."""
    return os.path.isfile(os.path.join(path, "project.json"))


def relink_candidates(folder: str, fp: str, frames: tuple[int, int], is_workspace: Callable[[str], bool],
                      read_info: Callable[[str], Any] | None = None) -> list[str]:
    """Workspace folders at or below ``folder`` (two levels) that may be the moved project.

    A folder matches when the engine's ``info`` for it (``read_info``; the add-on never
    parses project files itself) records source fingerprint ``fp``, or, without an answer,
    when its name is the one the add-on gave it (:func:`folder_name`: fingerprint and range).
    Picking the ``project`` folder inside a workspace means that workspace.
    """
    folder = os.path.normpath(folder)
    if os.path.basename(folder) == "project" and is_workspace(os.path.dirname(folder)):
        folder = os.path.dirname(folder)
    tag = f"_{fp[:8]}_{frames[0]}-{frames[1]}"
    found: list[str] = []
    level = [folder]
    for depth in range(3):
        nxt: list[str] = []
        for root in level:
            if is_workspace(root):
                info = read_info(root) if read_info is not None else None
                rfp = (info or {}).get("source_fingerprint")
                if rfp == fp or (rfp is None and os.path.basename(root).endswith(tag)):
                    found.append(root)
                continue
            if depth < 2 and os.path.isdir(root):
                nxt += [os.path.join(root, d) for d in sorted(os.listdir(root))
                        if os.path.isdir(os.path.join(root, d))]
        level = nxt
    return found


@dataclass(frozen=True)
class Workspace:
    """Folders of one movie strip's INVE work (the engine's project is one of them)."""

    base: str

    @property
    def project(self) -> str:
        return os.path.join(self.base, "project")

    @property
    def edits_file(self) -> str:
        return os.path.join(self.base, "edits", "EDITS.json")

    @property
    def edits_dir(self) -> str:
        return os.path.join(self.base, "edits")

    @property
    def frames(self) -> str:
        return os.path.join(self.base, "frames")

    @property
    def atlas(self) -> str:
        return os.path.join(self.base, "atlas")

    @property
    def tracks_dir(self) -> str:
        return os.path.join(self.base, "tracks")

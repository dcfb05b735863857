"""Live preview logic (no bpy): which frame to render with which edit stack, one at a time.

The add-on asks the engine service for the frame under the playhead whenever the playhead
moves or the layer stack changes. Requests must not pile up (scrubbing posts dozens a
second), so :class:`PreviewScheduler` keeps at most one render in flight and only the newest
wish waiting; the stack is sent (``set_edits``) only when it changed for that project since
the service last saw it (and again after the service restarted, as it lost its sessions).
The stack's key also names the folder of propagated frames (``io/results.py``), so the
add-on can tell when the result strip shows another stack than the layer list.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any



def stack_key(doc: dict[str, Any]) -> str:
    """A short key of an EDITS.json document (equal documents, equal keys)."""
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class PreviewTarget:
    project: str  # project folder
    frame: int  # source frame
    output: str  # PNG to write
    stack: str  # stack_key(edits)
    edits: dict[str, Any] = field(hash=False, compare=False, default_factory=dict)
    base: str = ""  # folder for relative image paths of the edits
    owner: str = ""  # the movie strip's id (whose preview strip shows it)

    @property
    def key(self) -> tuple[str, int, str]:
        return self.project, self.frame, self.stack


class PreviewScheduler:
    """At most one preview render in flight; the newest wish waits; nothing twice."""

    def __init__(self) -> None:
        self.wanted: PreviewTarget | None = None
        self.inflight: PreviewTarget | None = None
        self.shown: tuple[str, int, str] | None = None
        self.sent_stacks: dict[str, str] = {}

    def want(self, target: PreviewTarget) -> None:
        self.wanted = target

    def next_requests(self) -> tuple[list[tuple[str, dict[str, Any]]], PreviewTarget] | None:
        """The requests to send now (``set_edits`` if needed, then ``render_frame``), or None."""
        if self.inflight is not None or self.wanted is None:
            return None
        t, self.wanted = self.wanted, None
        if t.key == self.shown:
            return None
        ops: list[tuple[str, dict[str, Any]]] = []
        if self.sent_stacks.get(t.project) != t.stack:
            ops.append(("set_edits", {"project": t.project, "edits": t.edits, "base": t.base}))
            self.sent_stacks[t.project] = t.stack
        ops.append(("render_frame", {"project": t.project, "frame": t.frame, "output": t.output,
                                     "overlay": True, "overwrite": True}))
        self.inflight = t
        return ops, t

    def finished(self, target: PreviewTarget, ok: bool) -> None:
        self.inflight = None
        if ok:
            self.shown = target.key
        else:  # the service may not hold this stack (restarted, or set_edits failed)
            self.sent_stacks.pop(target.project, None)

    def forget(self) -> None:
        """The service restarted: it knows no stacks any more."""
        self.sent_stacks.clear()
        self.shown = None


def preview_path(folder: str, frame: int, counter: int) -> str:
    """A fresh file per render (Blender caches images by path), in the add-on's own folder."""
    return os.path.join(folder, f"preview_{frame:05d}_{counter % 4}.png")

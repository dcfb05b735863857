"""Which propagated frames show which edit stack (no bpy).

Each Propagate writes its frames into a folder of its own under the workspace's
``frames/``, named by the stack's key (:func:`inve_blender.io.preview.stack_key`), and notes
it in ``frames/results.json``. So the add-on always knows whether the result strip shows the
layer list as it is now: after Undo to a stack propagated before, its frames are still there
and shown again; after an unpropagated change the strip is marked stale (muted) instead of
showing edits the list no longer has. A cancelled Propagate keeps the frames it wrote
(``complete`` false). Only the newest few folders are kept.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

from .edit_stack import write_json_atomic

RESULTS_FILE = "results.json"
KEEP = 4


@dataclass(frozen=True)
class Result:
    folder: str
    stack: str
    complete: bool
    stale: bool  # shows another stack than the one asked for


def folder_for(frames_root: str, stack: str) -> str:
    return os.path.join(frames_root, stack)


_CACHE: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}  # path -> (stat, doc): handlers ask often


def load(frames_root: str) -> dict[str, Any]:
    path = os.path.join(frames_root, RESULTS_FILE)
    try:
        st = os.stat(path)
        mtime = (st.st_mtime_ns, st.st_ino, st.st_size)  # atomic writes replace the file: a new inode
        hit = _CACHE.get(path)
        if hit is not None and hit[0] == mtime:
            return json.loads(json.dumps(hit[1]))  # a copy: callers may change it
        with open(path, encoding="utf-8") as fh:
            got = json.load(fh)
        if isinstance(got, dict):
            _CACHE[path] = (mtime, got)
    except (OSError, ValueError):
        return {"results": {}, "latest": ""}
    if not isinstance(got, dict) or not isinstance(got.get("results"), dict):
        return {"results": {}, "latest": ""}
    return got


def record(frames_root: str, stack: str, complete: bool, keep: int = KEEP) -> None:
    """Note that ``frames_root/<stack>`` holds (all or some of) the frames of ``stack``;
    drop the oldest other folders beyond ``keep`` (only folders this module named)."""
    doc = load(frames_root)
    res = doc["results"]
    res[stack] = {"complete": bool(complete), "time": time.time()}
    doc["latest"] = stack
    for old in sorted((k for k in res if k != stack), key=lambda k: res[k].get("time", 0.0))[:-keep + 1 or None]:
        folder = folder_for(frames_root, old)
        if os.path.dirname(os.path.abspath(folder)) == os.path.abspath(frames_root) and os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)
        res.pop(old, None)
    write_json_atomic(os.path.join(frames_root, RESULTS_FILE), doc)


def lookup(frames_root: str, stack: str) -> Result | None:
    """The frames to show for ``stack``: its own, else the latest (stale), else None."""
    doc = load(frames_root)
    res = doc["results"]
    for key, stale in ((stack, False), (doc.get("latest", ""), True)):
        if key and key in res and os.path.isdir(folder_for(frames_root, key)):
            return Result(folder_for(frames_root, key), key, bool(res[key].get("complete")), stale)
    return None

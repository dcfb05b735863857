"""``inve serve``: a long-lived engine process speaking JSON lines on stdin/stdout.

Why: a cold ``inve edit`` re-imports torch, reloads the checkpoint and every baked map and
re-renders everything for each click, seconds per Propagate. The add-on instead starts one
service per Blender session; it keeps an :class:`~core.edits.EditSession` warm per open project
(at most ``max_projects``, least recently used closed first), so changing a layer and
re-rendering the frame under the playhead costs milliseconds.

Protocol (also in README, section *Engine service*): one request per line
``{"id": N, "op": ..., ...}``; every reply line is one JSON object with the same ``id`` and an
``event``: ``progress`` / ``frame`` while working, then exactly one ``done`` or ``error``
(``{"message", "cancelled"}``). A line that is not a JSON object with an ``op`` gets an
``error`` with ``"id": null``; nothing a client sends stops the service.

Threads: the main thread runs requests one at a time, in order. A reader thread reads stdin,
so ``cancel`` (and ``hello``, ``shutdown``) act at once while a long request runs; it also
drops a queued ``render_frame`` when a newer one for the same project arrives (the old one ends
with ``error`` ``cancelled``/``superseded``): a preview only needs the latest frame. While
propagating, PNG encoding and the optional movie run on writer threads, overlapped with
rendering. stdout carries only protocol lines: file descriptor 1 is pointed at stderr for
everything else (library prints, ffmpeg), the protocol writes to a private copy.
"""
from __future__ import annotations

import collections
import json
import math
import os
import platform
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TextIO

import numpy as np

from core import __version__, fsutil
from core.errors import Cancelled, InveError
from core.progress import CancelToken, Progress, _clean

PROTOCOL_VERSION = 1
OPS = ("hello", "open", "info", "set_edits", "render_frame", "propagate", "track", "atlas", "fingerprint",
       "cancel", "shutdown")
#: zlib level of preview PNGs (render_frame): a preview is rewritten at every change, so the
#: fastest level (``core.png`` at 1 encodes a 1080p overlay in ~15 ms).
PNG_LEVEL = 1
#: frames rendered ahead of the movie writer while propagating (bounds memory at 1080p)
WRITE_AHEAD = 8
#: default budget for the layers' kept frames, MB (all open projects together; ``--patch-cache-mb``)
PATCH_CACHE_MB = 256


class Emitter:
    """Writes protocol lines (one JSON object each), from any thread, never interleaved."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __call__(self, rid: Any, event: str, **fields: Any) -> None:
        line = json.dumps(_clean({"id": rid, "event": event, **fields}), default=_jsonable)
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the client went away; the reader sees EOF and the service stops


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays and paths in results become plain JSON values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


class RequestProgress(Progress):
    """``--progress json`` events of one request, tagged with its id."""

    def __init__(self, emit: Emitter, rid: Any, cancel: CancelToken) -> None:
        super().__init__("json", cancel=cancel, min_interval=0.1)
        self._emit, self._rid = emit, rid

    def _emit_json(self, obj: dict[str, Any]) -> None:
        obj = dict(obj)
        event = obj.pop("event")
        self._emit(self._rid, event, **obj)


@dataclass
class Request:
    id: Any
    op: str
    fields: dict[str, Any]
    cancel: CancelToken = field(default_factory=CancelToken)


def encode_png(img: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """PNG bytes of an 8-bit RGB or RGBA image at zlib ``level`` (``core.png``: ~3x faster than
    Pillow on a mostly transparent 1080p overlay)."""
    from core import png

    return png.encode(np.ascontiguousarray(img), int(level))


class OpenProject:
    """A project held by the service: its warm edit session and what it was opened from.

    ``geometry``: the layers' per-frame geometry the service keeps for this project folder
    (core/edits/geometry.py), with their rendered patches in the service's ``patches``
    (core/edits/patch_cache.py); it outlives a reload, and what belongs to another checkpoint
    (or source file) than the one opened now is dropped by identity, not by timing.
    """

    def __init__(self, path: Path, geometry: Any = None, patches: Any = None) -> None:
        from core.edits import EditSession
        from core.edits.context import RenderContext
        from core.edits.geometry import GeometryStore, geometry_identity, project_salt, source_stamp
        from core.project import Project

        self.path = path
        self.stamp = self.files_stamp(path)
        self.project = Project.open(path)
        self.geometry = geometry if geometry is not None else GeometryStore(patches=patches)
        self.salt = project_salt(self.project)
        self.geometry.set_salt(self.salt, source=source_stamp(self.project))
        if self.project.is_segmented:  # an edit session per segment, behind one interface
            from core.segments import SegmentedSession

            self.session = SegmentedSession(self.project, geometry=self.geometry)
        else:
            maps = self.project.maps()  # a clear InveError when it has none yet
            scope = self.geometry.scope("", geometry_identity(self.project, maps, RenderContext.REFINE))
            self.session = EditSession(self.project, [], maps=maps, geometry=scope)
        info = self.project.info
        T = self.session.ctx.T
        if T != info.n_frames or self.session.ctx.frames.shape[0] != T:
            raise InveError(f"{path} is inconsistent: {info.n_frames} frames in project.json, {T} in the "
                            f"baked maps, {self.session.ctx.frames.shape[0]} source frames; train it again")
        self.edits_doc: Any = None

    @staticmethod
    def files_stamp(path: Path) -> tuple:
        """Names, sizes and modification times of the project's entries: changes when it is retrained.

        Output folders inve wrote (they hold its marker) are left out, so propagating into the
        project folder does not make it look changed.
        """
        try:
            return tuple(sorted((p.name, st.st_size, st.st_mtime_ns) for p in path.iterdir()
                                if not p.name.startswith(".") and not (p / fsutil.OUTPUT_MARKER).exists()
                                and (st := p.stat())))
        except OSError:
            return ()

    def warm_mapping(self) -> None:
        """Load the networks now (if the project has them), so the first edit does not wait."""
        try:
            _ = self.session.ctx.mapping
        except InveError:
            pass


class Service:
    """The request loop; :func:`main` wires it to stdin/stdout."""

    def __init__(self, out: TextIO, max_projects: int = 4, patch_cache_mb: float | None = None) -> None:
        self.emit = Emitter(out)
        self.max_projects = max(1, int(max_projects))
        self.patch_cache_bytes = int((PATCH_CACHE_MB if patch_cache_mb is None else patch_cache_mb) * 2**20)
        self._patches: Any = None  # see :attr:`patches`
        # per project: the cache's epoch in which its stack was last marked used (:meth:`_use_stack`)
        self._stack_used: dict[str, int] = {}
        self.projects: collections.OrderedDict[str, OpenProject] = collections.OrderedDict()
        # per project folder: the layers' geometry kept across reloads (see OpenProject)
        self.geometry: dict[str, Any] = {}
        self._queue: collections.deque[Request | None] = collections.deque()
        self._cond = threading.Condition()
        self._running: Request | None = None
        self._stopping = False
        self._shutdown_id: Any = None

    @property
    def patches(self) -> Any:
        """Every open project's layers' rendered frames, within one budget
        (:class:`core.edits.patch_cache.PatchCache`). Made when a project first opens, not
        before: importing it imports torch, and ``hello`` is answered without."""
        if self._patches is None:
            from core.edits.patch_cache import PatchCache  # noqa: PLC0415

            self._patches = PatchCache(self.patch_cache_bytes)
        return self._patches

    def _use_stack(self, key: str, held: "OpenProject") -> None:
        """Mark every visible layer of the project's stack used by the cache's current epoch
        (``missing`` does, as a Propagate's start does): a preview renders one layer after
        another, and keeping a frame of a new layer must not drop an unchanged layer's kept
        frames (all of them) only because the preview had not reached that layer yet."""
        missing = getattr(held.session, "missing", None)
        if missing is not None:
            with self.patches.recording() as used:
                missing()
            self.patches.pin(key, used)  # (kept while other projects are worked on, if it can)
        self._stack_used[key] = self.patches.epoch

    # -- reader side -----------------------------------------------------------------------
    def feed(self, line: str) -> None:
        """Handle one stdin line (reader thread): parse, answer at once or queue."""
        line = line.strip()
        if not line:
            return
        try:
            msg = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.emit(None, "error", message=f"not a JSON line: {exc}", cancelled=False)
            return
        if not isinstance(msg, dict):
            self.emit(None, "error", message="a request must be a JSON object {\"id\": ..., \"op\": ...}",
                      cancelled=False)
            return
        rid, op = msg.get("id"), msg.get("op")
        if not isinstance(rid, (int, str)) or isinstance(rid, bool):
            self.emit(None, "error", message=f"request has no usable 'id' (a number or string): {line[:80]}",
                      cancelled=False)
            return
        if op not in OPS:
            self.emit(rid, "error", message=f"unknown op {json.dumps(op)[:40]}; ops are {', '.join(OPS)}",
                      cancelled=False)
            return
        fields = {k: v for k, v in msg.items() if k not in ("id", "op")}
        req = Request(rid, op, fields)
        if op == "hello":
            self.emit(rid, "done", **self.hello())
        elif op == "cancel":
            self.emit(rid, "done", cancelled=self.cancel(fields.get("target")))
        elif op == "shutdown":
            self.stop(rid)
        else:
            self.enqueue(req)

    def enqueue(self, req: Request) -> None:
        with self._cond:
            if self._stopping:
                self.emit(req.id, "error", message="the service is shutting down", cancelled=True)
                return
            if req.op == "render_frame":
                key = self._key(req.fields.get("project"))
                for old in list(self._queue):
                    if (old is not None and old.op == "render_frame"
                            and self._key(old.fields.get("project")) == key):
                        self._queue.remove(old)
                        self.emit(old.id, "error", message=f"superseded by request {req.id}", cancelled=True,
                                  superseded_by=req.id)
            self._queue.append(req)
            self._cond.notify()

    def cancel(self, target: Any) -> bool:
        """Cancel a queued or running request; True if there was one."""
        with self._cond:
            if self._running is not None and self._running.id == target:
                self._running.cancel.cancel()
                return True
            for req in list(self._queue):
                if req is not None and req.id == target:
                    self._queue.remove(req)
                    self.emit(req.id, "error", message="cancelled", cancelled=True)
                    return True
        return False

    def stop(self, rid: Any = None) -> None:
        """Shutdown (or stdin closed): cancel everything, let the worker end, then answer ``rid``."""
        with self._cond:
            if self._stopping:
                if rid is not None:  # a second shutdown: answered like the first
                    self.emit(rid, "done", closed=[])
                return
            self._stopping = True
            self._shutdown_id = rid
            if self._running is not None:
                self._running.cancel.cancel()
            for req in list(self._queue):
                if req is not None:
                    self.emit(req.id, "error", message="cancelled: the service is shutting down", cancelled=True)
            self._queue.clear()
            self._queue.append(None)
            self._cond.notify()

    def read_forever(self, stream: Any) -> None:
        """Reader thread body: lines from a binary stream until EOF, which stops the service."""
        try:
            for raw in iter(stream.readline, b""):
                try:
                    self.feed(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    self.emit(None, "error", message=f"not UTF-8 text: {exc}", cancelled=False)
                except Exception as exc:  # never let one line kill the reader
                    traceback.print_exc(file=sys.stderr)
                    self.emit(None, "error", message=f"internal error: {exc}", cancelled=False)
        finally:
            self.stop(None)

    # -- worker side ------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Run queued requests in order until shutdown (main thread)."""
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                req = self._queue.popleft()
                if req is None:
                    break
                self._running = req
            try:
                self.run(req)
            finally:
                with self._cond:
                    self._running = None
        if self._shutdown_id is not None:
            self.emit(self._shutdown_id, "done", closed=list(self.projects))
        self.projects.clear()

    def run(self, req: Request) -> None:
        """One request: exactly one ``done`` or ``error`` line, whatever happens."""
        handler = getattr(self, f"op_{req.op}")
        try:
            req.cancel.raise_if_cancelled()
            result = handler(req)
        except Cancelled:
            self.emit(req.id, "error", message="cancelled", cancelled=True)
        except InveError as exc:
            self.emit(req.id, "error", message=str(exc), cancelled=False)
        except MemoryError:
            self.emit(req.id, "error", message="out of memory; close other projects or use smaller ones",
                      cancelled=False)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self.emit(req.id, "error", message=f"internal error in {req.op}: {type(exc).__name__}: {exc}",
                      cancelled=False)
        else:
            self.emit(req.id, "done", **result)

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _key(project: Any) -> str:
        return str(Path(str(project)).expanduser().resolve()) if isinstance(project, str) and project else ""

    @staticmethod
    def _field(req: Request, name: str, kind: type | tuple, what: str) -> Any:
        if name not in req.fields:
            raise InveError(f"{req.op}: missing '{name}' ({what})")
        value = req.fields[name]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise InveError(f"{req.op}: '{name}' must be {what}, got {json.dumps(value)[:60]}")
        return value

    def _path(self, req: Request, name: str, what: str) -> Path:
        value = self._field(req, name, str, what)
        if not value.strip():
            raise InveError(f"{req.op}: '{name}' is empty")
        return Path(value).expanduser()

    def project(self, req: Request) -> OpenProject:
        """The request's project, opened (or reopened after retraining) and marked most recent."""
        path = self._path(req, "project", "a project folder path")
        key = self._key(str(path))
        held = self.projects.get(key)
        if held is not None and (OpenProject.files_stamp(Path(key)) != held.stamp or self._salt(held) != held.salt):
            del self.projects[key]  # retrained or changed on disk: reload, keep the edit stack
            doc = held.edits_doc
            held = None
        else:
            doc = None
        if held is None:
            held = OpenProject(Path(key), self.geometry.get(key), self.patches)
            self.geometry[key] = held.geometry
            if doc is not None:
                try:
                    held.session.set_edits(doc[0], doc[1])
                    held.edits_doc = doc
                except InveError:
                    pass  # the stack no longer fits the new project: the client sets it again
            self.projects[key] = held
            while len(self.projects) > self.max_projects:
                gone, _ = self.projects.popitem(last=False)
                store = self.geometry.pop(gone, None)
                if store is not None:
                    store.forget_patches()
                self.patches.pin(gone, None)
                self._stack_used.pop(gone, None)
        self.projects.move_to_end(key)
        return held

    @staticmethod
    def _salt(held: OpenProject) -> str:
        """The project's source file and (segmented) every segment's maps as now on disk: a
        change reloads the project (a segment re-baked alone leaves the top folder as it was)."""
        from core.edits.geometry import project_salt

        try:
            return project_salt(held.project)
        except Exception:  # noqa: BLE001 - unreadable now: reload, which says what is wrong
            return ""

    def hello(self) -> dict[str, Any]:
        from importlib import metadata

        versions = {}
        for pkg in ("torch", "numpy"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                versions[pkg] = None
        return {"engine": "inve", "version": __version__, "protocol": PROTOCOL_VERSION, "ops": list(OPS),
                "python": platform.python_version(), **versions, "pid": os.getpid(),
                "max_projects": self.max_projects, "patch_cache_mb": round(self.patch_cache_bytes / 2**20, 1)}

    def _info(self, held: OpenProject) -> dict[str, Any]:
        from core.cli import _info

        return {**_info(str(held.path)), "open": True}

    # -- operations ------------------------------------------------------------------------
    def op_open(self, req: Request) -> dict[str, Any]:
        held = self.project(req)
        held.warm_mapping()
        return self._info(held)

    def op_info(self, req: Request) -> dict[str, Any]:
        from core.cli import _info

        path = self._path(req, "project", "a project folder path")
        return {**_info(str(path)), "open": self._key(str(path)) in self.projects}

    def op_set_edits(self, req: Request) -> dict[str, Any]:
        held = self.project(req)
        doc = self._field(req, "edits", dict, "an EDITS.json document (an object)")
        base = self._path(req, "base", "a folder for relative image paths") if "base" in req.fields else held.path
        held.session.set_edits(doc, base, fname="edits")
        held.edits_doc = (doc, base)
        self.patches.begin_pass()  # a new stack: what it uses is kept before older layers
        self._use_stack(str(held.path), held)
        layers = held.session.layers
        return {"layers": len(layers), "visible_layers": sum(1 for l in layers if l.visible)}

    def op_render_frame(self, req: Request) -> dict[str, Any]:
        start, cpu = time.perf_counter(), time.process_time()
        held = self.project(req)
        frame = self._field(req, "frame", int, "a source frame index")
        out = self._path(req, "output", "a PNG file path")
        overlay = bool(req.fields.get("overlay", False))
        if out.suffix.lower() != ".png":
            raise InveError(f"render_frame: output must be a .png file, got {out}")
        if out.is_dir():
            raise InveError(f"render_frame: {out} is a folder; output must name a .png file")
        t = held.project.info.frame_index(frame)
        key = str(held.path)
        if self._stack_used.get(key) != self.patches.epoch:  # another project's request came between
            self._use_stack(key, held)
        img = held.session.render_frame(t, overlay=overlay)
        req.cancel.raise_if_cancelled()
        data = encode_png(img)
        # the output rule: replaces only a file inve wrote there and nobody changed since
        fsutil.write_output_bytes(out, data, "preview file")
        return {"frame": frame, "path": str(out.resolve()), "overlay": overlay,
                "ms": round((time.perf_counter() - start) * 1000.0, 1),
                "cpu_ms": round((time.process_time() - cpu) * 1000.0, 1)}

    def op_propagate(self, req: Request) -> dict[str, Any]:
        from core.edits import check_output
        from core.edits.render import alpha_over, composite, composite_overlay
        from core.video import write_movie, write_png_sequence

        start, cpu = time.perf_counter(), time.process_time() + _children_cpu()
        held = self.project(req)
        out = self._path(req, "output", "a folder for the PNG frames")
        overlay = bool(req.fields.get("overlay", False))
        overwrite = bool(req.fields.get("overwrite", False))
        movie = self._path(req, "movie", "a .mp4/.mov/.mkv path") if req.fields.get("movie") is not None else None
        if check_output(out) != "folder":
            raise InveError(f"propagate: output must be a folder (PNG frames), got {out}; "
                            "a movie goes in 'movie'")
        if movie is not None and check_output(movie, overwrite) != "movie":
            raise InveError(f"propagate: movie must end in .mp4, .mov or .mkv, got {movie}")
        session, info = held.session, held.project.info
        ctx = session.ctx
        progress = RequestProgress(self.emit, req.id, req.cancel)
        T = ctx.T
        self.patches.begin_pass()
        self._use_stack(str(held.path), held)  # (serial passes too render layer by layer)
        workers = render_workers(session)
        walk = getattr(session, "enter", None)  # a segmented project: one segment open at a time
        if workers == 1:
            progress.update("render", 0, T, force=True)
            if walk is None:
                session.prepare()
        written: list[int] = []

        def on_written(frame: int, path: Path) -> None:  # as each PNG lands
            written.append(frame)
            self.emit(req.id, "frame", frame=frame, path=str(Path(path).resolve()))

        movie_q: queue.Queue | None = queue.Queue(maxsize=WRITE_AHEAD) if movie is not None else None
        movie_error: list[BaseException] = []

        def movie_frames() -> Iterator[np.ndarray]:
            assert movie_q is not None
            while (item := movie_q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item

        def movie_writer() -> None:
            try:
                write_movie(movie, movie_frames(), info.fps, overwrite=overwrite)  # type: ignore[arg-type]
            except BaseException as exc:
                movie_error.append(exc)
                while not isinstance(movie_q.get(), (type(None), BaseException)):  # type: ignore[union-attr]
                    pass  # keep the render loop from blocking on a dead writer

        # PNGs encoded and written by the workers (as ``inve edit``: core.video.PNGFrameWriter)
        # unless a movie needs the pixels here too
        from core.video import PNGFrameWriter, stopped_then_swept  # noqa: PLC0415

        png_writer = PNGFrameWriter(out) if workers > 1 and movie_q is None else None

        def rendered() -> Iterator[tuple[int, Any]]:
            """Frames from the render workers (as ``inve edit``)."""
            stream = session.render_all(progress, overlay=overlay, workers=workers, encode=png_writer)
            try:
                for t, img in stream:
                    if movie_error:
                        raise movie_error[0]
                    if movie_q is not None:
                        movie_q.put(alpha_over(ctx.frames[t], img) if overlay else img)
                    yield info.frames[t], img
            finally:
                stream.close()

        def frames() -> Iterator[tuple[int, np.ndarray]]:
            current = -1
            for t in range(T):
                if walk is not None:
                    current = walk(t, current)
                patches = session.frame_patches(t)  # cached: a later propagate re-uses unchanged layers
                if overlay:
                    img = composite_overlay((ctx.H, ctx.W), patches)
                    full = alpha_over(ctx.frames[t], img) if movie_q is not None else None
                else:
                    img = full = composite(ctx.frames[t], patches)
                if movie_error:
                    raise movie_error[0]
                if movie_q is not None:
                    movie_q.put(full)
                yield info.frames[t], img
                progress.update("render", t + 1, T)  # raises Cancelled once a cancel arrived

        mover = threading.Thread(target=movie_writer, name="inve-movie-writer", daemon=True) if movie_q else None
        if mover is not None:
            mover.start()
        try:
            with stopped_then_swept(rendered() if workers > 1 else frames(), png_writer) as source:
                write_png_sequence(out, source, last_index=info.frames[-1], on_written=on_written)
        except BaseException as exc:
            if movie_q is not None:
                movie_q.put(exc if isinstance(exc, Cancelled) else InveError("propagate stopped"))
            raise
        finally:
            if mover is not None:
                movie_q.put(None)  # type: ignore[union-attr]
                mover.join()
        if movie_error:
            raise movie_error[0]
        seconds = time.perf_counter() - start
        return {"output": str(out.resolve()), "frames": len(written), "overlay": overlay,
                "movie": str(movie.resolve()) if movie is not None else None, "seconds": round(seconds, 3),
                "cpu_seconds": round(time.process_time() + _children_cpu() - cpu, 3), "layers": len(session.layers),
                "patch_cache_mb": round(self.patches.bytes / 2**20, 1),
                "visible_layers": sum(1 for l in session.layers if l.visible)}

    def op_track(self, req: Request) -> dict[str, Any]:
        from core.track import parse_points, track_points

        held = self.project(req)
        doc = self._field(req, "points", dict, "a POINTS.json document (an object)")
        points = parse_points(doc, held.project.info, "points")
        seg_track = getattr(held.session, "track", None)  # a segmented project tracks across its seams
        tracks = seg_track(points) if seg_track is not None else track_points(held.session.ctx, points)
        return {"tracks": {"frames": list(held.project.info.frames), "tracks": [tr.to_json() for tr in tracks]}}

    def op_atlas(self, req: Request) -> dict[str, Any]:
        """``inve atlas PROJECT -o OUTPUT`` without a new process (the add-on's Open Atlas)."""
        from core.atlas_io import export_atlases

        path = self._path(req, "project", "a project folder path")
        return export_atlases(path, self._path(req, "output", "a folder for the atlas PNGs"))

    def op_fingerprint(self, req: Request) -> dict[str, Any]:
        from core.identity import source_fingerprint

        path = self._path(req, "path", "a movie file or image folder")
        if not path.exists():
            raise InveError(f"fingerprint: {path} not found")
        return {"path": str(path.resolve()), "fingerprint": source_fingerprint(path)}


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (render workers, ffmpeg); 0 where unknown."""
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:
        return 0.0
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


#: a Propagate of at least this many frames renders in forked workers (fewer: in this process)
WORKERS_FROM_FRAMES = 120


def render_workers(session: Any) -> int:
    """Render processes for a Propagate of ``session``: as ``inve edit`` (one per core, at most 4,
    on Linux) for shots of WORKERS_FROM_FRAMES frames or more, except where the service keeps
    nearly all the work: the patches of the visible layers (core/edits/patch_cache.py) in all
    but fewer than WORKERS_FROM_FRAMES (layer, frame) pairs. Then this process composites what
    it kept (no fork, no frames sent between processes)."""
    from core.edits.parallel import default_workers  # noqa: PLC0415

    T = session.ctx.T
    n = default_workers(T) if T >= WORKERS_FROM_FRAMES else 1
    missing = getattr(session, "missing", None)
    if n > 1 and missing is not None and missing() < WORKERS_FROM_FRAMES:
        return 1
    return n


def protocol_stream() -> TextIO:
    """A private copy of stdout for protocol lines; fd 1 then points at stderr.

    Why: libraries and child processes (ffmpeg, warnings, prints) write to fd 1 at will; one
    stray line would corrupt the protocol. After this only the service writes to the pipe.
    """
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", encoding="utf-8", newline="\n", buffering=1)


def serve_command(max_projects: int = 4, patch_cache_mb: float | None = None) -> dict[str, Any]:
    """Run the service on this process's stdin/stdout until shutdown or EOF."""
    import signal

    given = f"--patch-cache-mb {patch_cache_mb!r}"
    if patch_cache_mb is None and os.environ.get("INVE_PATCH_CACHE_MB", "").strip():
        # the add-on starts the service without flags: its environment can still set the budget
        given = f"INVE_PATCH_CACHE_MB={os.environ['INVE_PATCH_CACHE_MB']!r}"
        try:
            patch_cache_mb = float(os.environ["INVE_PATCH_CACHE_MB"])
        except ValueError:
            raise InveError(f"INVE_PATCH_CACHE_MB must be a number of MB, got "
                            f"{os.environ['INVE_PATCH_CACHE_MB']!r}") from None
    if patch_cache_mb is not None and not (math.isfinite(patch_cache_mb) and patch_cache_mb >= 0):
        # (nan passes a "< 0" test, and int() of nan or inf raises: one line, not a traceback)
        raise InveError(f"the patch cache budget must be a finite number of MB, 0 or more; got {given}")
    service = Service(protocol_stream(), max_projects=max_projects, patch_cache_mb=patch_cache_mb)
    if threading.current_thread() is threading.main_thread():  # SIGINT/SIGTERM: stop like EOF
        for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), lambda signum, frame: service.stop(None))
    reader = threading.Thread(target=service.read_forever, args=(sys.stdin.buffer,), name="inve-serve-reader",
                              daemon=True)
    reader.start()
    service.serve_forever()
    reader.join(timeout=1.0)
    if reader.is_alive():
        # Shut down while the client keeps stdin open: the reader sits in readline() holding
        # stdin's buffer lock, and interpreter finalisation would abort on that lock (SIGABRT).
        # Everything is written and closed by now, so leave without finalisation.
        sys.stderr.flush()
        os._exit(0)
    return {}

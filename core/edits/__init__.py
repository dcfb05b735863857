"""Edit layers (sketch, paint, sticker, adjust, atlas) propagated through a trained project.

``inve edit PROJECT --edits EDITS.json -o OUT`` lands in :func:`edit_command`. Everything a
user can get wrong (the JSON, frames, images, the output path) is checked before any file
is written; then each frame is the original source frame with the layers composited.
Interactive callers use :class:`EditSession` directly.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from core import fsutil
from core.edits.session import EditSession, needs_networks
from core.edits.spec import EditLayer, load_edits, parse_edits
from core.errors import InveError
from core.progress import Progress
from core.project import Project

from core.video import MOVIE_EXTENSIONS  # noqa: E402,F401 - re-exported

__all__ = ["EditSession", "EditLayer", "edit_command", "load_edits", "parse_edits", "check_output"]


def check_output(out: Path, overwrite: bool = False) -> str:
    """Refuse an output we must not write, before any work: returns "movie" or "folder".

    The one output rule lives in ``core.fsutil``; this only asks it early, so a refusal
    comes before rendering rather than after.
    """
    from core.video import check_movie_output, output_kind

    out = Path(out)
    kind = output_kind(out)
    if kind == "movie":
        check_movie_output(out, overwrite)
    else:
        fsutil.prepare_output_dir(out, "output folder")
    return kind


def edit_command(project_dir: Path, edits_json: Path, out: Path, progress: Progress,
                 overwrite: bool = False, project: Project | None = None, overlay: bool = False,
                 render_workers: int | None = None) -> dict[str, Any]:
    """Render a project's frames with an edit stack to a PNG folder or a movie.

    ``overlay``: RGBA PNGs holding only the edits (transparent where no edit touches), for
    stacking above the original with Alpha Over; a movie cannot carry alpha, so it needs a folder.
    ``render_workers``: processes that render (default: one per core, up to 4, on Linux for
    clips of 16 frames or more; 1 renders here).
    """
    start = time.monotonic()
    project = project or Project.open(project_dir)
    if project.is_segmented:  # one edit session per segment, layers carried through the seams
        from core.segments import SegmentedSession  # noqa: PLC0415

        seg_session = SegmentedSession(project)
        seg_session.load_edits(Path(edits_json))
        return _render_out(seg_session, project, seg_session.layers, out, progress, overwrite, overlay, start,
                           render_workers=render_workers)
    maps = project.maps()
    layers = load_edits(Path(edits_json), project.info,
                        atlas_sizes=lambda: {L: int(a.shape[0]) for L, a in maps.atlas.items()})
    kind = check_output(Path(out), overwrite)
    if overlay and kind == "movie":
        raise InveError(f"--overlay writes RGBA PNGs, which {Path(out).suffix} movies cannot hold; "
                        "give a folder as -o (or drop --overlay for a full-frame movie)")
    mapping = project.mapping() if needs_networks(layers) else None
    frames = project.frames()
    session = EditSession(project, layers, mapping=mapping, maps=maps)
    info = project.info
    T = session.ctx.T
    if T != info.n_frames or frames.shape[0] != T:
        raise InveError(f"{project.path} is inconsistent: {info.n_frames} frames in project.json, "
                        f"{T} in the baked maps, {frames.shape[0]} in {Project.FRAMES}; train it again")
    return _render_out(session, project, layers, out, progress, overwrite, overlay, start, kind, render_workers)


def _render_out(session: Any, project: Project, layers: list[EditLayer], out: Path, progress: Progress,
                overwrite: bool, overlay: bool, start: float, kind: str | None = None,
                render_workers: int | None = None) -> dict[str, Any]:
    """Stream every frame of ``session`` (an EditSession, or a SegmentedSession) to ``out``."""
    if kind is None:
        kind = check_output(Path(out), overwrite)
        if overlay and kind == "movie":
            raise InveError(f"--overlay writes RGBA PNGs, which {Path(out).suffix} movies cannot hold; "
                            "give a folder as -o (or drop --overlay for a full-frame movie)")
    info = project.info
    T = session.ctx.T
    from core.edits.parallel import default_workers
    from core.video import PNGFrameWriter, stopped_then_swept

    # several render processes where the platform forks (the frames are the same, in order);
    # for PNGs each worker also encodes and writes its frames (core.video.PNGFrameWriter:
    # this process only moves them into place). A segmented session's workers each walk the
    # segments of their blocks, after the layers were carried through every seam here.
    workers = default_workers(T) if render_workers is None else max(1, int(render_workers))
    writer = PNGFrameWriter(Path(out)) if kind != "movie" else None
    with stopped_then_swept(session.render_all(progress, overlay=overlay, workers=workers, encode=writer),
                            writer) as stream:
        if kind == "movie":
            from core.video import write_movie

            write_movie(Path(out), (img for _, img in stream), info.fps, overwrite=overwrite)
        else:
            from core.video import write_png_sequence

            write_png_sequence(Path(out), ((info.frames[t], img) for t, img in stream), last_index=info.frames[-1])
    seconds = time.monotonic() - start
    shown = sum(1 for l in layers if l.visible)
    return {"output": str(Path(out).resolve()), "frames": T, "layers": len(layers), "visible_layers": shown,
            "seconds": round(seconds, 3), "overlay": overlay,
            "summary": f"wrote {T} {'overlay ' if overlay else ''}frame(s) with {shown} edit layer(s) to {out} in {seconds:.1f} s"}

"""Segments: a long shot as overlapping sub-projects, edited and tracked as one.

Why: one atlas and one set of mapping grids cannot hold a long handheld shot (box.mp4, 458
frames, stays near 27.6 dB however long it trains): the hand turns the box round, the
camera wanders, and the atlas runs out of room. Splitting the shot into overlapping
segments, each with its own atlases and mappings, gives each a short clip's quality.

Layout: ``project.json`` of a segmented project (format 3) lists the segments in frame
order, ``[{"name": "f000000-000124", "frames": [0, 124]}, ...]``; each one is a complete
project of its own in ``segments/<name>/`` (its project.json, checkpoint, baked maps,
atlases, metrics). Consecutive segments overlap by a few frames. Each source frame is
*owned* by one segment: the seam between segments k and k+1 is the **switch frame**
``s = (start_{k+1} + end_k) // 2`` inside their overlap; frames before it are rendered by
k, frames from it on by k+1.

Edits and tracks stay in the user's coordinates (EDITS.json, POINTS.json, TRACKS.json do
not change). An edit is attached in the segment that owns the frame it was drawn on and
carried into the neighbours *through the seam*: segment k renders what the edit looks like
at the switch frame (a stroke's carried vertices, a rigid sticker's pose, a paint layer's
pixels, an adjustment's region) and segment k+1 takes that as the same edit drawn at the
switch frame. At the switch frame both segments therefore agree, so a stroke crossing a
seam continues without a jump; the chain continues segment by segment in both directions.
A stroke or sticker hidden at the switch frame is carried from another frame of the overlap
(one hidden on all of them does not carry on). Paint, adjustment regions and painted atlases
also carry what the seam does not show (under the foreground, outside the frame): those texels
go from one atlas to the next through a warp fitted to what both segments show in the overlap
(:class:`AtlasWarp`).

A whole-shot pass in forked render workers does not wait for every seam: segment 0 is
prepared, the workers fork, and a thread carries the layers on seam by seam, handing each
segment to the workers when it is done (:class:`_SeamFeed`).

A new segment starts from its trained neighbour's networks (:func:`warm_start`) when
``TrainConfig.segment_warm_start`` is on.

This module is a layer *above* the per-segment code: every segment is rendered by an
ordinary :class:`~core.edits.session.EditSession` and tracked by :func:`core.track.track_points`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from core import fsutil
from core.errors import InveError
from core.lock import pid_alive
from core.progress import Progress
from core.project import SEGMENTS_DIR, Project, ProjectInfo

#: by default shots longer than SPLIT_ABOVE frames are split into segments of at most
#: DEFAULT_SEGMENT_FRAMES (``--segment-frames N`` splits above N into segments of N). Measured
#: on box.mp4 with a 10-minute budget shared by frames (README, *Segments*): 120-frame pieces
#: reach 27.4-28.5 dB, 60-frame ones 26.2-28.7 in the hard middle (the hand turns the box) and
#: 40-frame ones 30.4 there; short shots (the 48-frame bundled clip) stay one project.
SPLIT_ABOVE = 60
DEFAULT_SEGMENT_FRAMES = 40
#: frames shared by consecutive segments (``--segment-overlap``); the seam is in its middle.
#: Only the seam and its neighbours are used to carry edits; more would cost maps and training.
DEFAULT_OVERLAP = 4
MIN_OVERLAP = 2
MIN_SEGMENT_FRAMES = 8


# -- planning ------------------------------------------------------------------------------

def plan(start: int, end: int, length: int | None, overlap: int = DEFAULT_OVERLAP) -> list[tuple[int, int]]:
    """Split frames ``start:end`` into overlapping ranges of at most ``length`` frames.

    Equal lengths (the budget is split by frames), consecutive ranges sharing ``overlap``
    frames. ``length`` 0/None or a shot no longer than it: one range.
    """
    if length and length < MIN_SEGMENT_FRAMES:
        raise InveError(f"--segment-frames {length} is too short: use 0 (never split) or at least "
                        f"{MIN_SEGMENT_FRAMES} frames")
    n = end - start
    if not length or n <= length:
        return [(start, end)]
    overlap = max(MIN_OVERLAP, min(int(overlap), length // 2))
    count = math.ceil((n - overlap) / (length - overlap))
    stride = (n - overlap) / count
    out = []
    for k in range(count):
        a = start + int(round(k * stride))
        b = end if k == count - 1 else start + int(round((k + 1) * stride)) + overlap
        out.append((a, b))
    return out


def segment_name(a: int, b: int) -> str:
    return f"f{a:06d}-{b:06d}"


def switch_frames(ranges: Sequence[tuple[int, int]]) -> list[int]:
    """The seam between each pair of consecutive segments: the middle of their overlap."""
    return [(ranges[k + 1][0] + ranges[k][1]) // 2 for k in range(len(ranges) - 1)]


def owned(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The frames each segment renders (half-open source ranges tiling the project)."""
    s = switch_frames(ranges)
    return [(ranges[k][0] if k == 0 else s[k - 1], ranges[k][1] if k == len(ranges) - 1 else s[k])
            for k in range(len(ranges))]


def extension(ranges: Sequence[tuple[int, int]], start: int, end: int,
              length: int | None, overlap: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Ranges to add before and after trained ``ranges`` so they cover ``start:end``.

    A new range overlaps its trained neighbour by ``overlap`` frames (fewer when that
    segment is short); longer additions are split like a new shot.
    """
    before: list[tuple[int, int]] = []
    after: list[tuple[int, int]] = []
    lo, hi = ranges[0][0], ranges[-1][1]
    if start < lo:
        first = ranges[0]
        ov = max(1, min(overlap, (first[1] - first[0]) // 2))
        before = plan(start, lo + ov, length, overlap)
    if end > hi:
        last = ranges[-1]
        ov = max(1, min(overlap, (last[1] - last[0]) // 2))
        after = plan(hi - ov, end, length, overlap)
    return before, after


def split_plan(start: int, end: int, segment_frames: int | None, overlap: int | None) -> list[tuple[int, int]]:
    """The segments a new shot is trained as: ``segment_frames`` None is the default rule
    (split above SPLIT_ABOVE into DEFAULT_SEGMENT_FRAMES), 0 never splits, N splits above N."""
    overlap = overlap or DEFAULT_OVERLAP
    if segment_frames is None:
        return plan(start, end, DEFAULT_SEGMENT_FRAMES if end - start > SPLIT_ABOVE else 0, overlap)
    return plan(start, end, segment_frames, overlap)


def ranges_of(info: ProjectInfo) -> list[tuple[int, int]]:
    if info.segments:
        return [(int(s["frames"][0]), int(s["frames"][1])) for s in info.segments]
    return [(info.frames[0], info.frames[-1] + 1)]


# -- training --------------------------------------------------------------------------------

class SegmentProgress(Progress):
    """Progress of one segment inside the whole run: says which segment, and maps the
    training stage onto the whole run's budget (step 0..1000 over all segments)."""

    def __init__(self, inner: Progress, index: int, count: int, frames: tuple[int, int],
                 done_share: float, share: float, run_start: float | None = None) -> None:
        super().__init__("none", cancel=inner.cancel)
        self.inner, self.index, self.count, self.frames = inner, index, count, frames
        self.done_share, self.share = done_share, share
        self.run_start = time.monotonic() if run_start is None else run_start

    def update(self, stage: str, step: int, total: int, force: bool = False, **extra: Any) -> None:
        tag: dict[str, Any] = {"segment": f"{self.index + 1}/{self.count}",
                               "segment_frames": f"{self.frames[0]}:{self.frames[1]}"}
        if stage == "train" and total:
            frac = self.done_share + self.share * min(1.0, step / total)
            step, total = int(round(1000 * frac)), 1000
            if frac > self.done_share and frac > 0:  # the whole run's: every segment's stages count
                tag["eta"] = round((time.monotonic() - self.run_start) / frac * (1.0 - frac), 1)
        self.inner.update(stage, step, total, force, **tag, **extra)

    def message(self, text: str) -> None:
        a, b = self.frames
        self.inner.message(f"segment {self.index + 1}/{self.count} (frames {a}:{b}): {text}")


def budget_shares(ranges: Sequence[tuple[int, int]], iters: int | None, minutes: float | None
                  ) -> list[tuple[int | None, float | None]]:
    """The whole run's budget split by work (frames) over the segments."""
    lens = [b - a for a, b in ranges]
    total = float(sum(lens))
    out = []
    for n in lens:
        f = n / total
        out.append((None if iters is None else max(1, int(round(iters * f))),
                    None if minutes is None else round(minutes * f, 4)))
    return out


def _relative(path: str, folder: Path) -> str | None:
    try:
        return os.path.relpath(path, folder.resolve())
    except ValueError:
        return None


#: what a plain project keeps in its folder: moved into its segment when it is extended
_PLAIN_ENTRIES = (Project.CHECKPOINT, Project.MAPS, Project.MAPS_LEGACY, Project.FRAMES, Project.METRICS,
                  Project.CONFIRMED, "cache", "atlas_bg.png", "atlas_fg.png", fsutil.OUTPUT_MARKER)


def _adopt_plain(project_dir: Path, info: ProjectInfo) -> str:
    """Move a plain project's trained state into ``segments/<name>/`` (renames, no copies)
    and return the segment's name. Idempotent: a run stopped half-way finishes it."""
    a, b = info.frames[0], info.frames[-1] + 1
    name = segment_name(a, b)
    dest = project_dir / SEGMENTS_DIR / name
    dest.mkdir(parents=True, exist_ok=True)
    sub = dataclasses.replace(info, settings=dict(info.settings), segments=None)
    if sub.source_relative:
        sub.source_relative = _relative(str((project_dir / sub.source_relative).resolve()), dest) \
            if (project_dir / sub.source_relative).exists() else _relative(sub.source, dest)
    Project(dest, sub).save_info()  # first: the segment is a project before anything moves
    for entry in _PLAIN_ENTRIES:
        src = project_dir / entry
        if src.exists():
            if (dest / entry).exists():
                raise InveError(f"cannot move {src} into segment {name}: {dest / entry} exists already; "
                                "the project is damaged")
            os.replace(src, dest / entry)
    return name


def train_segmented(video: str | Path, project_dir: Path, existing: Project | None, cfg: Any, progress: Progress,
                    monitor: Any, given: set[str] | None) -> Project:
    """Train a project as segments (new, resumed, or extended to more frames); under the lock.

    New: the shot is planned into segments of at most ``cfg.segment_frames``. Resumed with the
    same frames: every segment not trained to its share of the budget continues. Resumed with
    ``--frames`` that contain the trained ones: segments are added for the new frames,
    trained segments stay untouched (their edits keep working).
    """
    from core import train as tr  # noqa: PLC0415
    from core import video as vio  # noqa: PLC0415
    from core.identity import source_fingerprint  # noqa: PLC0415

    if existing is not None:
        source, ranges, new = _resume_plan(video, project_dir, existing, cfg, given)
    else:
        source = str(Path(video).resolve())
        vinfo = vio.probe(source)
        start, end = vio.resolve_range(vinfo, cfg.frames)
        ranges = plan(start, end, cfg.segment_frames, cfg.segment_overlap)
        new = set(ranges)
    vinfo = vio.probe(source)
    work = vio.working_size(vinfo.width, vinfo.height, cfg.max_side)
    start, end = ranges[0][0], ranges[-1][1]
    if cfg.iters is None and cfg.minutes is None:
        cfg.minutes = tr.default_minutes(end - start, work)
        progress.message(f"training budget {cfg.minutes:g} min for {end - start} frames at {work[0]}x{work[1]} "
                         "(the default grows with frames x pixels; set --minutes or --iters to choose)")
    fingerprint = (existing.info.source_fingerprint if existing is not None and existing.info.source_fingerprint
                   else source_fingerprint(source))
    segs = [{"name": segment_name(a, b), "frames": [a, b]} for a, b in ranges]
    if existing is not None and existing.is_segmented:  # trained segments keep their names
        old = {(int(s["frames"][0]), int(s["frames"][1])): s["name"] for s in existing.info.segments or []}
        for s in segs:
            s["name"] = old.get(tuple(s["frames"]), s["name"])
    elif existing is not None:  # a plain project extended: it becomes the first trained segment
        old_range = (existing.info.frames[0], existing.info.frames[-1] + 1)
        name = _adopt_plain(project_dir, existing.info)
        for s in segs:
            if tuple(s["frames"]) == old_range:
                s["name"] = name
    settings = {"train": tr._settings(cfg), "segments": {"frames": cfg.segment_frames, "overlap": cfg.segment_overlap}}
    layers = list(existing.info.layers) if existing is not None else (["bg"] if cfg.single_layer else ["bg", "fg"])
    info = ProjectInfo(source=source, frames=list(range(start, end)), source_size=(vinfo.width, vinfo.height),
                       work_size=work, fps=vinfo.fps, layers=layers, settings=settings,
                       source_relative=_relative(source, project_dir), source_fingerprint=fingerprint, segments=segs)
    fsutil.mark_output_dir(project_dir)
    top = Project(project_dir, info)
    top.save_info()  # the plan first: a run cancelled in any segment resumes with --resume

    shares = budget_shares(ranges, cfg.iters, cfg.minutes)
    total_share = [(b - a) for a, b in ranges]
    done = 0.0
    whole = float(sum(total_share))
    run_start = time.monotonic()
    extending = existing is not None and any(r not in set(ranges_of(existing.info)) for r in ranges)
    for k, (s, (a, b), (iters, minutes)) in enumerate(zip(segs, ranges, shares)):
        share = (b - a) / whole
        sub_dir = top.segment_path(s["name"])
        seg_progress = SegmentProgress(progress, k, len(ranges), (a, b), done, share, run_start)
        done += share
        sub_exists = (sub_dir / Project.INFO).is_file()
        if sub_exists:
            sub = Project.open(sub_dir)
            stored = sub.info.settings.get("train", {})
            trained = sub.state()[0] == "trained"
            if trained and (extending or (stored.get("iters"), stored.get("minutes")) == (iters, minutes)):
                continue  # finished to its share (or extending: trained segments stay untouched)
        seg_cfg = dataclasses.replace(cfg, frames=(a, b), iters=iters, minutes=minutes, segment_frames=0,
                                      compact_checkpoint=True, atlas_images=False,
                                      short_minutes=0.0,  # the short-budget step is unmeasured on segments
                                      weights=dataclasses.replace(cfg.weights), model=dict(cfg.model))
        if cfg.fg_hint and not cfg.masks:
            seg_cfg.fg_hint = _segment_hints(Path(cfg.fg_hint), sub_dir, a, b)
        if cfg.segment_warm_start and not (sub_dir / Project.CHECKPOINT).is_file():
            seg_cfg.warm_start = warm_source(top, segs, ranges, k)
        seg_progress.message(f"training ({'resuming' if sub_exists else 'new'})")
        tr._train_locked(source, sub_dir, seg_cfg, seg_progress, sub_exists, monitor, {"frames", "max_side", "video"})
    top = Project.open(project_dir)
    subs = top.segments()
    top.info.layers = [L for L in ("bg", "fg") if any(L in p.info.layers for p in subs)]
    top.save_info()
    fsutil.write_json(project_dir / Project.METRICS, aggregate_metrics(top))
    return Project.open(project_dir)


#: a warm start distils the neighbour's networks at WARM_POINTS points (evaluated once), in
#: WARM_STEPS steps of WARM_BATCH of them: 2-3 s of a segment's budget on 2 cores
WARM_POINTS = 8192
WARM_STEPS = 40
WARM_BATCH = 1024


def warm_source(top: Project, segs: Sequence[dict[str, Any]], ranges: Sequence[tuple[int, int]], k: int
                ) -> dict[str, Any] | None:
    """The trained neighbour a new segment k starts from (the previous one first): its
    checkpoint, the frames from k's first frame to its first frame, and its frame count."""
    for j in (k - 1, k + 1):
        if not 0 <= j < len(segs):
            continue
        d = top.segment_path(segs[j]["name"])
        if (d / Project.INFO).is_file() and (d / Project.CHECKPOINT).is_file():
            try:
                if Project.open(d).state()[0] != "trained":
                    continue
            except InveError:
                continue
            return {"checkpoint": str((d / Project.CHECKPOINT).resolve()), "offset": ranges[k][0] - ranges[j][0],
                    "frames": ranges[j][1] - ranges[j][0], "segment": segs[j]["name"]}
    return None


def warm_start(model: Any, src: dict[str, Any], device: Any, progress: Progress | None = None) -> float:
    """Start a new segment's networks from its trained neighbour's; returns the seconds spent.

    Why: the neighbour has already learnt the scene the overlap shows, what is foreground,
    and how colours decode; starting from the similarity and an empty atlas, the new segment
    spends the start of its budget relearning that. The atlases have no time axis and the same
    parametrisation in every segment of a shot, so they are copied. The mappings and alpha are
    indexed by the segment's own frames (a time axis of another length), so they are
    *distilled*: at frame t the new networks learn to give what the neighbour's give at the same
    source frame (t + offset), and beyond the neighbour's frames what they give at its last
    (first) frame -- the nearest known placement of the scene, which training then moves on.
    A neighbour with other networks (another working size, model version or backend) is not used.
    """
    import torch  # noqa: PLC0415

    from core.model import load_model  # noqa: PLC0415

    t0 = time.monotonic()
    try:
        teacher, _ = load_model(src["checkpoint"], str(device))
    except InveError:
        return 0.0
    tc, sc = teacher.cfg, model.cfg
    if (tuple(tc.work_size) != tuple(sc.work_size) or tc.backend != sc.backend
            or tc.grid_configs()["atlas"] != sc.grid_configs()["atlas"] or tc.hidden != sc.hidden):
        return 0.0
    layers = [L for L in sc.layers if L in tc.layers]
    if not layers:
        return 0.0
    for L in layers:
        model.atlases[L].load_state_dict(teacher.atlases[L].state_dict())
    fields = [f[L] for f in (model.forward_maps, model.inverse_maps) for L in layers]
    alpha = model.alpha_field is not None and teacher.alpha_field is not None
    if alpha:
        fields.append(model.alpha_field)
    tables = [p for f in fields for p in f.grid.parameters()]
    mlps = [p for f in fields for p in f.mlp.parameters()]
    fused = torch.device(device).type in ("cpu", "cuda")
    opt = torch.optim.Adam([{"params": tables, "lr": 2e-2}, {"params": mlps, "lr": 1e-2}], betas=(0.9, 0.99),
                           eps=1e-15, fused=fused)
    gen = torch.Generator().manual_seed(1234)
    n, offset, last = sc.n_frames, float(src["offset"]), float(max(0, int(src["frames"]) - 1))
    if progress is not None:
        progress.message(f"starting from segment {src.get('segment', '?')} (atlases copied, mappings distilled)")
    # the neighbour is evaluated once, at fixed points; each step fits a random part of them
    P = ((torch.rand(WARM_POINTS, 2, generator=gen) * 2 - 1) * model.aspect_v.cpu()).to(device)
    T = (torch.rand(WARM_POINTS, generator=gen) * max(1, n - 1)).to(device)
    with torch.no_grad():
        TT = (T + offset).clamp(0.0, last)
        want = {L: teacher.uv(L, P, TT) for L in layers}
        want_a = teacher.alpha(P, TT) if alpha else None
    del teacher
    for _ in range(WARM_STEPS):
        idx = torch.randint(0, WARM_POINTS, (WARM_BATCH,), generator=gen).to(device)
        p, t = P[idx], T[idx]
        loss = 0.0
        for L in layers:
            w = want[L][idx]
            loss = loss + ((model.uv(L, p, t) - w) ** 2).sum(1).mean()
            loss = loss + ((model.inverse(L, w, t) - p) ** 2).sum(1).mean()
        if alpha:
            loss = loss + ((model.alpha(p, t) - want_a[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return time.monotonic() - t0


def _segment_hints(path: Path, sub_dir: Path, a: int, b: int) -> str | None:
    """The hints of HINTS.json on frames ``a:b`` as the segment's own file (None when it has no
    foreground outline there: that segment finds its foreground by itself)."""
    doc = fsutil.read_json(path, "hints file")
    hints = [h for h in doc.get("hints", []) if isinstance(h, dict) and isinstance(h.get("frame"), int)
             and a <= h["frame"] < b]
    if not any(h.get("label", "fg") == "fg" for h in hints):
        return None
    sub_dir.parent.mkdir(parents=True, exist_ok=True)
    out = sub_dir.parent / f"{sub_dir.name}.hints.json"  # next to the segment: its folder must start empty
    fsutil.write_json(out, {**doc, "hints": hints})
    return str(out.resolve())


def _resume_plan(video: str | Path, project_dir: Path, existing: Project, cfg: Any, given: set[str] | None
                 ) -> tuple[str, list[tuple[int, int]], set[tuple[int, int]]]:
    """Source, segment ranges and the new ones, for ``--resume`` of ``existing``."""
    from core import train as tr  # noqa: PLC0415
    from core import video as vio  # noqa: PLC0415

    info = existing.info
    start, end = info.frames[0], info.frames[-1] + 1
    want = cfg.frames if (given is None or "frames" in given) else None
    stored = info.settings.get("segments") or {}
    if cfg.segment_frames is None:
        cfg.segment_frames = stored.get("frames", DEFAULT_SEGMENT_FRAMES)
    if not cfg.segment_overlap:
        cfg.segment_overlap = stored.get("overlap", DEFAULT_OVERLAP)
    keep = dataclasses.replace(cfg)
    cfg.frames = None
    source = tr._resume_settings(existing, video, cfg, (given or {"max_side", "video"}) - {"frames"})
    if Path(source).resolve() == Path(info.source).resolve():
        source = str(existing.source_path())
    if keep.iters is not None or keep.minutes is not None:
        cfg.iters, cfg.minutes = keep.iters, keep.minutes
    ranges = ranges_of(info)
    if want is None:
        cfg.frames = (start, end)
        return source, ranges, set()
    vinfo = vio.probe(source)
    a, b = vio.resolve_range(vinfo, want)
    if a > start or b < end:
        raise InveError(f"--resume --frames {a}:{b} does not contain the trained frames {start}:{end} of "
                        f"{project_dir}: a resume can only add frames; train other frames into a new folder")
    before, after = extension(ranges, a, b, cfg.segment_frames, cfg.segment_overlap)
    cfg.frames = (a, b)
    return source, before + ranges + after, set(before + after)


# -- metrics -------------------------------------------------------------------------------

def _psnr_mean(values: Sequence[float]) -> float | None:
    mse = [10 ** (-v / 10.0) for v in values if v is not None and math.isfinite(v)]
    return None if not mse else round(10 * math.log10(1.0 / max(float(np.mean(mse)), 1e-12)), 3)


def aggregate_metrics(project: Project) -> dict[str, Any]:
    """The whole project's metrics.json: each frame's figures from the segment that renders it."""
    ranges = ranges_of(project.info)
    own = owned(ranges)
    per_psnr: list[float | None] = []
    cyc: dict[str, list[float | None]] = {"bg": [], "fg": []}
    segs, iters, secs, atlas = [], 0, 0.0, []
    first: dict[str, Any] = {}
    sources: list[str] = []
    for sub, (a, b), (lo, hi) in zip(project.segments(), ranges, own):
        m = sub.metrics()
        first = first or m
        if m.get("mask_source") and m["mask_source"] not in sources:
            sources.append(m["mask_source"])
        pf = m.get("per_frame") or {}
        fr = list(pf.get("frame") or [])
        idx = [fr.index(f) if f in fr else None for f in range(lo, hi)]
        ps = list(pf.get("psnr") or [])
        per_psnr += [ps[i] if i is not None and i < len(ps) else None for i in idx]
        for L in cyc:
            vals = list((pf.get("cycle_error_px") or {}).get(L) or [])
            cyc[L] += [vals[i] if i is not None and i < len(vals) else None for i in idx]
        iters += int(m.get("iterations", 0))
        secs += float(m.get("train_seconds", 0.0))
        if m.get("atlas_psnr") is not None:
            atlas += [float(m["atlas_psnr"])] * (hi - lo)
        segs.append({"name": sub.path.name, "frames": [a, b], "owns": [lo, hi], "psnr": m.get("psnr"),
                     "atlas_psnr": m.get("atlas_psnr"), "iterations": m.get("iterations"),
                     "train_seconds": m.get("train_seconds"), "layers": sub.info.layers,
                     "mask_source": m.get("mask_source")})
    cycle = {L: v for L, v in cyc.items() if any(x is not None for x in v)}
    med = {L: round(float(np.median([x for x in v if x is not None])), 4) for L, v in cycle.items()}
    return {"psnr": _psnr_mean([p for p in per_psnr if p is not None]), "atlas_psnr": _psnr_mean(atlas),
            "iterations": iters, "train_seconds": round(secs, 2), "cycle_error_px": med,
            "device": first.get("device"), "backend": first.get("backend"), "layers": project.info.layers,
            # each segment finds its own masks (a hand may enter only halfway through the shot):
            # the shot's source lists every kind, "user" or "auto" first
            "mask_source": "+".join(sorted(sources, key=lambda v: ("user", "auto", "none", v).index(v))) if sources else None,
            "segments": segs,
            "per_frame": {"frame": list(project.info.frames), "psnr": per_psnr, "cycle_error_px": cycle}}


def segments_info(project: Project) -> list[dict[str, Any]]:
    """What ``inve info`` says about each segment (cheap: no maps or networks are opened)."""
    ranges = ranges_of(project.info)
    out = []
    for s, (lo, hi) in zip(project.info.segments or [], owned(ranges)):
        p = project.segment_path(s["name"])
        d: dict[str, Any] = {"name": s["name"], "frames": list(s["frames"]), "owns": [lo, hi],
                             "path": str(p.resolve())}
        if (p / Project.INFO).is_file():
            try:
                sub = Project.open(p)
                d["state"], why = sub.state()
                if why:
                    d["state_reason"] = why
                m = sub.metrics()
                d.update({k: m.get(k) for k in ("psnr", "iterations", "train_seconds")})
                d["layers"] = sub.info.layers
            except InveError as exc:
                d["state"], d["state_reason"] = "damaged", str(exc)
        else:
            d["state"] = "untrained"
        out.append(d)
    return out


# -- edits across segments -------------------------------------------------------------------

def _key(*parts: Any) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:20]


def _carried_types() -> dict[str, type]:
    """Layer types that only a seam creates: paint and an adjustment region arriving as a ready
    texture of the segment's atlas (:meth:`SegmentedSession._carry_texture`)."""
    from core.edits.paint import AdjustRenderer, TextureRenderer  # noqa: PLC0415
    from core.edits.spec import AdjustLayer, PaintLayer  # noqa: PLC0415

    class TextureAdjustRenderer(AdjustRenderer):
        def build(self, ctx):  # type: ignore[override]
            return [self.spec.texture]

    @dataclass
    class TextureAdjustLayer(AdjustLayer):
        texture: Any = None  # AtlasTexture of the region's coverage in this segment's atlas
        # the key it was carried under (recolouring keeps the texture, changes ``key``): what
        # the region's per-frame lookups are kept under (core/edits/session.py)
        mask_key: str = ""

        def make_renderer(self, stroke_cache: Any) -> Any:
            return TextureAdjustRenderer(self)

    class TexturePaintRenderer(TextureRenderer):
        def __init__(self, spec: Any) -> None:
            super().__init__()
            self.spec = spec

        def build(self, ctx):  # type: ignore[override]
            return [self.spec.texture]

    @dataclass
    class TexturePaintLayer(PaintLayer):
        texture: Any = None  # AtlasTexture (premultiplied RGBA) in this segment's atlas

        def make_renderer(self, stroke_cache: Any) -> Any:
            return TexturePaintRenderer(self)

    # module-level names (``__getattr__`` below): carried layers are pickled to the render
    # workers of a pipelined pass (:class:`_SeamFeed`)
    for cls in (TextureAdjustLayer, TexturePaintLayer):
        cls.__qualname__ = cls.__name__
        cls.__module__ = __name__
    return {"texture_adjust": TextureAdjustLayer, "texture_paint": TexturePaintLayer}


_CARRIED: dict[str, type] | None = None
_CARRIED_NAMES = {"TextureAdjustLayer": "texture_adjust", "TexturePaintLayer": "texture_paint"}


def _carried_type(kind: str) -> type:
    global _CARRIED
    if _CARRIED is None:
        _CARRIED = _carried_types()
    return _CARRIED[kind]


def __getattr__(name: str) -> Any:
    """The carried layer types by name (built on first use: they import the renderers)."""
    if name in _CARRIED_NAMES:
        return _carried_type(_CARRIED_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- atlas to atlas ----------------------------------------------------------------------------

#: correspondences between two segments' atlases: every WARP_STRIDE-th working pixel of the
#: overlap frames that both show on the layer; at least WARP_MIN_POINTS of them
WARP_STRIDE = 4
WARP_MIN_POINTS = 64
#: cells across the atlas of the warp's residual field (atlases are ~500-1000 texels: ~20-30 each)
WARP_GRID = 32
#: RANSAC tolerance of the warp's homography, source pixels
WARP_RANSAC_PX = 3.0
#: texels carried by the warp must show the same surface in both atlases: mean colour
#: difference below SAME_SURFACE_TOL (0..1) after a blur of SAME_SURFACE_BLUR texels
SAME_SURFACE_TOL = 0.1
SAME_SURFACE_BLUR = 2.0
#: texels across the atlas of a segment's coverage map (what its frames show, every other
#: working pixel: dilated by two texels), and the alpha beyond which a pixel counts as showing
#: the background (below COVERAGE_ALPHA) or the foreground (above 1 - COVERAGE_ALPHA)
COVERAGE_SIZE = 512
COVERAGE_ALPHA = 0.1


@dataclass
class AtlasWarp:
    """Atlas uv of one segment -> atlas uv of another, for one layer.

    Why: where an edit is hidden at the seam (under the foreground, outside the frame) no
    pixel carries it across; the two atlases still describe the same surface, related over the
    overlap by what both segments show. A homography (camera motion over a distant or flat
    surface) fitted to those correspondences, plus a smooth residual field (what the learnt
    unwrappings add), carries the rest: by interpolation under an occluder, extrapolated
    (homography + the nearest residual) outside the frame.
    """

    H: np.ndarray  # [3, 3] on uv
    residual: np.ndarray  # [G, G, 2] over the source atlas [-1, 1]^2 (cell centres)

    def __call__(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        h = np.c_[uv, np.ones(len(uv))] @ self.H.T
        w = np.where(np.abs(h[:, 2:3]) > 1e-9, h[:, 2:3], 1e-9)
        return h[:, :2] / w + _bilinear(self.residual, uv)


def _bilinear(grid: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a [G, G, C] field with cell centres at -1 + (i + 0.5) 2/G (clamped)."""
    G = grid.shape[0]
    g = np.clip((uv + 1.0) * 0.5 * G - 0.5, 0.0, G - 1.0)
    i0 = np.minimum(np.floor(g).astype(np.int64), G - 2)
    f = g - i0
    x0, y0, fx, fy = i0[:, 0], i0[:, 1], f[:, 0:1], f[:, 1:2]
    return (grid[y0, x0] * (1 - fx) * (1 - fy) + grid[y0, x0 + 1] * fx * (1 - fy)
            + grid[y0 + 1, x0] * (1 - fx) * fy + grid[y0 + 1, x0 + 1] * fx * fy)


def fit_warp(src: np.ndarray, dst: np.ndarray, px_per_uv: float) -> AtlasWarp | None:
    """The :class:`AtlasWarp` taking ``src`` uv [N, 2] to ``dst`` uv [N, 2] (None: too few)."""
    import cv2  # noqa: PLC0415

    if len(src) < WARP_MIN_POINTS:
        return None
    k = float(px_per_uv)
    Hs, inl = cv2.findHomography((src * k).astype(np.float32), (dst * k).astype(np.float32), cv2.RANSAC,
                                 WARP_RANSAC_PX)
    if Hs is None:
        return None
    S, Si = np.diag([k, k, 1.0]), np.diag([1.0 / k, 1.0 / k, 1.0])
    warp = AtlasWarp(Si @ Hs @ S, np.zeros((WARP_GRID, WARP_GRID, 2)))
    ok = inl.reshape(-1).astype(bool) if inl is not None else np.ones(len(src), bool)
    # residuals of every correspondence that the homography does not explain grossly
    r = dst - warp(src)
    ok |= np.linalg.norm(r, axis=1) * k < 8 * WARP_RANSAC_PX
    G = WARP_GRID
    cell = np.clip(((src[ok] + 1.0) * 0.5 * G).astype(np.int64), 0, G - 1)
    flat = cell[:, 1] * G + cell[:, 0]
    cnt = np.bincount(flat, minlength=G * G).reshape(G, G).astype(np.float32)
    sums = np.stack([np.bincount(flat, r[ok, c], minlength=G * G).reshape(G, G) for c in (0, 1)], -1)
    sums = sums.astype(np.float32)
    out = np.zeros((G, G, 2), np.float32)
    done = np.zeros((G, G), bool)
    # normalised convolution, finest first: each cell takes the narrowest blur that reaches it
    for sigma in (0.75, 1.5, 3.0, 6.0, 12.0, 24.0, 48.0):
        w = cv2.GaussianBlur(cnt, (0, 0), sigma)
        v = cv2.GaussianBlur(sums, (0, 0), sigma)
        take = ~done & (w > 1e-3)
        out[take] = v[take] / w[take][:, None]
        done |= take
    warp.residual = out.astype(np.float64)
    return warp


# -- helpers ----------------------------------------------------------------------------------

def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open index ranges of consecutive True values."""
    out, i, n = [], 0, len(mask)
    while i < n:
        if mask[i]:
            j = i
            while j < n and mask[j]:
                j += 1
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


def _seen(ctx: Any, layer: str, t: int, rect: tuple[float, float, float, float], Rw: int, Rh: int) -> Any:
    """[Rh, Rw] bool: the texels of an Rh x Rw grid over uv ``rect`` that frame t shows on
    ``layer`` -- the test ``frame_to_atlas`` applies, so a seam's two carries meet without a
    gap or an overlap."""
    from core.edits.atlas_edit import texels_seen  # noqa: PLC0415

    return texels_seen(ctx, layer, t, rect, Rw, Rh)[0]


class _FrameSlice:
    """Frames ``offset:offset+n`` of the whole project's frame source: every segment reads the
    one decoder the compositing reads (no second decode of the same frames)."""

    def __init__(self, frames: Any, offset: int, n: int) -> None:
        self._frames, self._offset, self._n = frames, int(offset), int(n)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n, *tuple(self._frames.shape)[1:])

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            return self[key[0]][key[1:]]
        t = int(key)
        if not 0 <= t < self._n:
            raise IndexError(f"frame {t} outside 0..{self._n - 1}")
        return self._frames[t + self._offset]


def _private_frames(frames: Any) -> Any:
    """Frames with a decoder of their own (another thread reads ``frames`` meanwhile); an
    array (a format-1 project's stored frames) is shared as it is."""
    from core.video import FrameSource  # noqa: PLC0415

    if isinstance(frames, FrameSource):
        mine = frames.clone()
        mine.decode_threads = 1  # beside the render workers (FrameSource.decode_threads)
        return mine
    return frames


class _Facade:
    """What callers read from ``session.ctx`` of a segmented session (serve, edit)."""

    def __init__(self, owner: "SegmentedSession") -> None:
        self._owner = owner
        info = owner.project.info
        self.info = info
        self.W, self.H = info.source_size
        self.T = info.n_frames
        self.frames = owner.project.frames()
        self.layers = list(info.layers)

    @property
    def refine_enabled(self) -> bool:
        """Drift refinement is on in the segments (render workers then read ahead for its chain links)."""
        from core.edits.context import RenderContext  # noqa: PLC0415

        return bool(RenderContext.REFINE)

    @property
    def mapping(self) -> Any:
        """Loads every segment's networks (the service warms them on open)."""
        maps = [self._owner.session(k).ctx.mapping for k in range(len(self._owner.subs))]
        return maps[0]


class _SeamFeed:
    """Layers carried through the seams, handed segment by segment from the process that
    carries them (a thread of the parent) to its forked render workers.

    Why: carrying a new layer across a long shot's seams is sequential (segment k takes the
    layer from k - 1) and took seconds before any worker started (box.mp4, 13 seams: 2.5 s
    after adding a stroke, 9 s on a cold service). Pipelined, the workers render the first
    segments while the later seams are carried: a worker entering segment k waits for k's
    package (usually long there: a seam costs a fraction of a segment's rendering).

    Package k is published once segment k is carried into, prepared and carried *out of*
    (into k + 1): it holds the ``_carried`` entries made since the workers forked (carried
    sketches, sticker poses, atlas textures), and what carrying out of k found that rendering
    k needs again: the drift refinement's chain links of its strokes (matched at the seam
    frame's chain, which spans the segment) and its strokes carried into every frame. A
    worker given those matches only what is new in each frame, as it did when it forked
    after every seam was carried. A package is pickled whole into a private folder, renamed
    into place, then announced by an event. A worker loads every package up to the segment
    it enters, in order, once. :meth:`fail` tells waiting workers that carrying stopped
    (they end with its message).
    """

    PREFIX = "inve-seams-"
    #: a package folder this old is another pass's leftover even if its pid is in use again
    STALE_SECONDS = 24 * 3600

    def __init__(self, n: int) -> None:
        import multiprocessing as mp  # noqa: PLC0415
        import tempfile  # noqa: PLC0415

        self.sweep(Path(tempfile.gettempdir()))
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-"))
        self.ready = [mp.get_context("fork").Event() for _ in range(n)]
        self.parent = os.getpid()
        self.taken = 0  # (in a worker) packages 1..taken are loaded; segment 0 came with the fork

    @classmethod
    def sweep(cls, tmp: Path) -> list[Path]:
        """Remove package folders left by passes that were killed (SIGKILL, a crash: no
        cleanup ran): this user's, whose owning process is gone or that are older than
        STALE_SECONDS. Best effort (another pass may sweep the same folder meanwhile).
        Returns the folders removed."""
        import shutil  # noqa: PLC0415

        gone = []
        try:
            found = list(tmp.glob(cls.PREFIX + "*"))
        except OSError:
            return gone
        now = time.time()
        for d in found:
            try:
                st = d.stat()
                if not d.is_dir() or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
                    continue
                pid = d.name[len(cls.PREFIX):].split("-", 1)[0]
                dead = pid.isdigit() and not pid_alive(int(pid))  # (no pid in the name: by age only)
                if dead or now - st.st_mtime > cls.STALE_SECONDS:
                    shutil.rmtree(d, ignore_errors=True)
                    gone.append(d)
            except OSError:
                continue
        return gone

    def consumer(self) -> bool:
        """True in a forked worker (which takes packages), False in the carrying process."""
        return os.getpid() != self.parent

    def _write(self, name: str, data: bytes) -> None:
        """Write file ``name`` of the package folder whole (a part file renamed into place)."""
        tmp = self.dir / f"{name}.part"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.dir / name)

    def publish(self, k: int, package: dict[str, Any]) -> None:
        """Hand package k to the workers. A package that cannot be written (the temporary
        folder's disk full) is a clear error of the pass, raised here (the caller fails)."""
        import pickle  # noqa: PLC0415

        try:
            self._write(f"{k}.pkl", pickle.dumps(package, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            raise InveError(f"could not hand the edits carried through the seams to the render workers "
                            f"(writing {self.dir}: {exc.strerror or exc})") from exc
        self.ready[k].set()

    def fail(self, message: str) -> None:
        """Tell the waiting workers that carrying stopped. Their events are set whatever
        happens (a worker must never wait forever); the message reaches them if it can be
        written (otherwise they end with a generic line, and the pass raises the carrying
        thread's own error: :func:`~core.edits.parallel.render_parallel`'s ``check``)."""
        try:
            self._write("error", message.encode("utf-8"))
        except BaseException:  # noqa: BLE001,S110 - best effort: the events below matter
            pass
        finally:
            for ev in self.ready:
                ev.set()

    def take(self, k: int) -> tuple[dict[Any, Any], dict[str, Any] | None]:
        """(In a worker) every package up to segment k not loaded yet, waiting for them: the
        carried entries of them all, and package k itself (None: loaded before, or k = 0)."""
        import pickle  # noqa: PLC0415

        entries: dict[Any, Any] = {}
        last = None
        while self.taken < k:
            n = self.taken + 1
            while not self.ready[n].wait(1.0):
                if os.getppid() != self.parent:
                    raise InveError("the engine stopped while carrying the edits through the seams")
            path = self.dir / f"{n}.pkl"
            if not path.is_file():
                err = self.dir / "error"
                raise InveError(err.read_text(encoding="utf-8") if err.is_file()
                                else "carrying the edits through the seams stopped")
            with open(path, "rb") as fh:
                last = pickle.load(fh)
            entries.update(last["carried"])
            self.taken = n
        return entries, (last if self.taken == k else None)

    def close(self) -> None:
        import shutil  # noqa: PLC0415

        shutil.rmtree(self.dir, ignore_errors=True)


class SegmentedSession:
    """An edit session over a segmented project: the interface of :class:`EditSession`.

    Each segment has its own EditSession (opened on first use); a layer lives in the segment
    owning its drawing frame and reaches the others through the seams (module docstring).
    """

    #: segment sessions kept open (least recently used closed first): a preview that visits
    #: the whole shot holds this many segments' maps, networks and caches, not all of them
    MAX_OPEN = 3
    #: layers no longer in the stack whose seam carries are kept (hidden, then shown again)
    KEEP_CARRIED = 16
    #: networks of closed segments kept loaded, in bytes of their checkpoints (:meth:`release`)
    NETWORKS_KEPT_BYTES = 256 * 2**20

    def __init__(self, project: Project, layers: list[Any] | None = None, cache_bytes: int = 512 * 2**20,
                 max_open: int | None = None, geometry: Any = None) -> None:
        from core.edits.geometry import GeometryStore  # noqa: PLC0415

        self.project = project
        # each segment's per-frame geometry of the layers (core/edits/geometry.py): kept when a
        # segment is closed, and by the service across reloads while the checkpoint is the same
        self.store = geometry if geometry is not None else GeometryStore()
        self.max_open = max(1, int(max_open if max_open is not None else self.MAX_OPEN))
        self._recent: list[int] = []  # open segments, least recently used first
        self._depth = 0  # nesting of session() (opening k carries from a neighbour it opens)
        self._pinned = False  # render_all's workers share every segment: none is closed meanwhile
        self.subs = project.segments()
        self.ranges = ranges_of(project.info)
        self.owns = owned(self.ranges)
        self.switch = switch_frames(self.ranges)
        self.cache_bytes = cache_bytes
        self._sessions: list[Any] = [None] * len(self.subs)
        self._scopes: list[Any] = [None] * len(self.subs)
        self._set: list[bool] = [False] * len(self.subs)
        # (the layer's geometry key, segment) -> (the layer when carried, the layers carried there)
        self._carried: dict[tuple[str, int], tuple[Any, list[Any]]] = {}
        self._home_cache: dict[str, int] = {}
        self._warps: dict[tuple[int, int, str], tuple[AtlasWarp, AtlasWarp] | None] = {}
        self._coverage: dict[tuple[int, str], np.ndarray] = {}
        self.layers: list[Any] = []
        self.ctx = _Facade(self)
        # a pipelined pass (:meth:`_render_pipelined`): the seams' packages for the workers, the
        # frames the carrying thread reads (its own decoder), geometry held until it is done
        self._feed: _SeamFeed | None = None
        self._source: Any = None
        self._held: list[Any] | None = None
        self._pid = os.getpid()  # the process keeping networks of closed segments (release)
        if layers:
            self.set_layers(layers)

    # -- segments --------------------------------------------------------------------------
    def owner(self, source_frame: int) -> int:
        for k, (lo, hi) in enumerate(self.owns):
            if lo <= source_frame < hi:
                return k
        raise InveError(f"frame {source_frame} is outside the project's frames "
                        f"{self.ranges[0][0]}..{self.ranges[-1][1] - 1}")

    def session(self, k: int) -> Any:
        """Segment k's EditSession with the stack as that segment sees it."""
        from core.edits.context import RenderContext  # noqa: PLC0415
        from core.edits.geometry import geometry_identity  # noqa: PLC0415
        from core.edits.session import EditSession  # noqa: PLC0415

        self._depth += 1
        try:
            if self._sessions[k] is None:
                sub = self.subs[k]
                maps = sub.maps()
                self._scopes[k] = self.store.scope(sub.path.name, geometry_identity(sub, maps, RenderContext.REFINE))
                s = EditSession(sub, [], maps=maps,
                                cache_bytes=self.cache_bytes // max(1, min(len(self.subs), self.max_open)),
                                geometry=self._scopes[k])
                if s.ctx.T != sub.info.n_frames:
                    raise InveError(f"{sub.path} is inconsistent: {sub.info.n_frames} frames in project.json, "
                                    f"{s.ctx.T} in the baked maps; train it again")
                a = self.ranges[k][0]
                s.ctx.frames = _FrameSlice(self._source if self._source is not None else self.ctx.frames,
                                           a - self.ranges[0][0], sub.info.n_frames)
                self._sessions[k] = s
            s = self._sessions[k]
            if k in self._recent:
                self._recent.remove(k)
            self._recent.append(k)
            if not self._set[k]:
                self._set[k] = True  # before computing: carrying into k asks only the neighbours
                try:
                    s.set_layers(self.layers_for(k))
                except BaseException:
                    self._set[k] = False
                    raise
        finally:
            self._depth -= 1
        if self._depth == 0:
            self._trim(keep=k)
        return s

    def _trim(self, keep: int | None = None) -> None:
        """Close the least recently used segments beyond ``max_open`` (never ``keep``).

        Only between requests for a segment (not while one is being opened: its carry holds
        the neighbour it reads), and not while render workers are being handed the sessions.
        What was carried into each segment stays (``_carried``): reopening one costs its
        maps, networks and per-frame work, not the seams again.
        """
        if self._pinned:
            return
        while len(self._recent) > self.max_open:
            j = next((j for j in self._recent if j != keep), None)
            if j is None:
                break
            self.release(j)

    # -- the stack -------------------------------------------------------------------------
    def set_layers(self, layers: list[Any]) -> None:
        """Replace the stack. What was carried through the seams is kept for the layers in it
        and for the KEEP_CARRIED layers that left it last (a layer hidden and shown again)."""
        from core.edits.geometry import geometry_key  # noqa: PLC0415

        self.layers = list(layers)
        live = {geometry_key(l) for l in self.layers}
        gone = list(dict.fromkeys(k[0] for k in self._carried if k[0] not in live))  # oldest first
        drop = set(gone[:max(0, len(gone) - self.KEEP_CARRIED)])
        self._carried = {**{k: v for k, v in self._carried.items() if k[0] not in live and k[0] not in drop},
                         **{k: v for k, v in self._carried.items() if k[0] in live}}
        self._set = [False] * len(self.subs)

    def _atlas_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for sub in self.subs:
            for L in sub.info.layers:
                if L not in sizes:
                    sizes[L] = int(self._maps(sub).atlas[L].shape[0])
        return sizes

    @staticmethod
    def _maps(sub: Project) -> Any:
        return sub.maps()

    def set_edits(self, doc: Any, base: Path, fname: str = "edits") -> None:
        from core.edits.spec import parse_edits  # noqa: PLC0415

        self.set_layers(parse_edits(doc, Path(base), self.project.info, fname, self._atlas_sizes))

    def load_edits(self, path: Path) -> None:
        from core.edits.spec import load_edits  # noqa: PLC0415

        self.set_layers(load_edits(Path(path), self.project.info, self._atlas_sizes))

    def layers_for(self, k: int) -> list[Any]:
        out = []
        for spec in self.layers:
            out += self._layer_in(spec, k)
        return out

    def _home(self, spec: Any) -> int:
        """The segment a layer was drawn in (an atlas layer: the segment whose atlas it was painted on)."""
        if spec.frame is not None:
            return self.owner(int(spec.frame))
        if spec.key not in self._home_cache:
            best, err = 0, float("inf")
            img = np.asarray(spec.image[..., :3], np.float32)
            for k, sub in enumerate(self.subs):
                if spec.layer not in sub.info.layers:
                    continue
                atlas = self._maps(sub).atlas[spec.layer]
                if atlas.shape[:2] != img.shape[:2]:
                    continue
                e = float(np.mean(np.abs(np.clip(atlas, 0, 1) - img)))
                if e < err:
                    best, err = k, e
            self._home_cache[spec.key] = best
        return self._home_cache[spec.key]

    def _layer_in(self, spec: Any, k: int) -> list[Any]:
        """The layer as segment k renders it: its own (home) or carried through the seams."""
        home = self._home(spec)
        a = self.ranges[k][0]
        if k == home:
            if spec.frame is None and spec.layer not in self.subs[k].info.layers:
                return []  # an atlas of a layer no segment has
            layer = spec.layer if spec.layer is None or spec.layer in self.subs[k].info.layers else None
            return [dataclasses.replace(spec, t=None if spec.frame is None else int(spec.frame) - a, layer=layer)]
        from core.edits.geometry import geometry_key  # noqa: PLC0415
        from core.edits.spec import AdjustLayer  # noqa: PLC0415

        gkey = geometry_key(spec)
        key = (gkey, k)
        if key not in self._carried:
            if not spec.visible:
                return []  # carried when shown
            src = k - 1 if k > home else k + 1
            prev = self._layer_in(spec, src)
            s = self.switch[min(src, k)]
            out = []
            for p in prev:
                out += self._carry(p, src, k, s)
            self._carried[key] = (spec, out)
        then, carried = self._carried[key]
        if gkey == spec.key:
            return [dataclasses.replace(c, visible=spec.visible, name=spec.name, index=spec.index) for c in carried]
        # carried by its geometry key, which leaves out fields that do not move it: those, and
        # the key the rendered patches are cached under, come from the layer as it is now
        now = dict(visible=spec.visible, name=spec.name, index=spec.index)
        if isinstance(spec, AdjustLayer):  # recoloured, say
            return [dataclasses.replace(c, key=_key(spec.key, c.key), hue=spec.hue, saturation=spec.saturation,
                                        brightness=spec.brightness, contrast=spec.contrast, **now)
                    for c in carried]
        # a rigid sticker turned or given another image of the same size: every hop subtracts
        # its segment's track angle from the rotation, so the turn adds on as it is
        return [dataclasses.replace(c, key=_key(spec.key, c.key), image=spec.image,
                                    rotation=float(c.rotation + (spec.rotation - then.rotation)), **now)
                for c in carried]

    def _overlap_frames(self, i: int, j: int, s: int) -> list[int]:
        """Frames of the overlap of segments i and j, the switch frame ``s`` first, then by distance."""
        lo, hi = max(self.ranges[i][0], self.ranges[j][0]), min(self.ranges[i][1], self.ranges[j][1])
        return sorted(range(lo, hi), key=lambda f: (abs(f - s), f))

    def _carry(self, spec: Any, i: int, j: int, s: int) -> list[Any]:
        """Layer ``spec`` of segment i as layers of segment j drawn at a frame of their overlap."""
        from core.edits.spec import AdjustLayer, SketchLayer, StickerLayer  # noqa: PLC0415

        src = self.session(i)
        ai, aj = self.ranges[i][0], self.ranges[j][0]
        frames = self._overlap_frames(i, j, s)
        t0 = getattr(spec, "t", None)
        if t0 is not None and src.ctx.refine_enabled:
            # the drawing frame, the chain links and the seam frame, decoded in frame order
            # now: matching the seam first and then its links would restart the decoder for
            # every link behind it (each restart decodes the clip from its start)
            from core.refine import chain_ancestors  # noqa: PLC0415

            src.ctx.warm(sorted({int(t0), frames[0] - ai, *chain_ancestors(np.array([frames[0] - ai]), int(t0))}))
        layers_j = self.subs[j].info.layers
        fix = lambda L: L if L in layers_j else None  # noqa: E731
        common = dict(index=spec.index, visible=spec.visible, name=spec.name)
        if isinstance(spec, SketchLayer):
            return self._carry_sketch(src, spec, ai, aj, frames, fix, common, j)
        if isinstance(spec, StickerLayer) and spec.mode == "rigid":
            track = src.renderer(spec).track
            for f in frames:
                t = f - ai
                if track.visible[t]:
                    return [StickerLayer(type="sticker", frame=f, t=f - aj, layer=fix(track.layer),
                                         key=_key(spec.key, j, f), image=spec.image,
                                         center=(float(track.center[t, 0]), float(track.center[t, 1])),
                                         scale=float(spec.scale * track.scale[t]),
                                         rotation=float(spec.rotation - track.angle[t]), mode="rigid", **common)]
            return []
        # everything else is a texture carried by the atlas: its pixels at a frame of the
        # overlap (the switch frame first), and what that frame does not show atlas to atlas
        from core.edits.atlas_edit import sample_texture  # noqa: PLC0415

        r = src.renderer(spec)
        out = []
        for n, tex in enumerate(r.textures or []):
            for f in frames:
                res = sample_texture(src.ctx, tex, f - ai)
                if res is not None:
                    break
            else:
                f, res = None, None
            carried = self._carry_texture(tex, i, j, f if f is not None else s, res)
            if carried is None:
                continue
            t_j = (f if f is not None else s) - aj
            key = _key(spec.key, j, f, n, "texture")
            if isinstance(spec, AdjustLayer):
                out.append(_carried_type("texture_adjust")(
                    type="adjust", frame=t_j + aj, t=t_j, layer=carried.layer, key=key, polygon=None, hue=spec.hue,
                    saturation=spec.saturation, brightness=spec.brightness, contrast=spec.contrast,
                    feather=spec.feather, texture=carried, mask_key=key, **common))
            else:
                out.append(_carried_type("texture_paint")(type="paint", frame=t_j + aj, t=t_j, layer=carried.layer,
                                                          key=key, texture=carried, **common))
        return out

    def _carry_texture(self, tex: Any, i: int, j: int, f: int, res: Any) -> Any:
        """Segment i's atlas texture ``tex`` as a texture of segment j's atlas (None: nothing of it
        reaches j), where ``res`` is what frame ``f`` of the overlap shows of it (``sample_texture``'s
        box and premultiplied values; None: no overlap frame shows any of it).

        Texels of j's atlas that frame f shows (inside the frame, cycle-consistent, on the layer:
        the test ``frame_to_atlas`` applies) take the frame's pixels there: exact at the seam,
        so both segments agree on it. Every other texel -- paint under the foreground or
        outside the frame at the seam -- comes straight from i's texture through the atlas warp
        (:class:`AtlasWarp`). One texture per seam, so carrying on through more seams does not
        multiply layers.
        """
        import torch  # noqa: PLC0415
        import torch.nn.functional as F  # noqa: PLC0415

        from core.edits.atlas_edit import AtlasTexture, edit_rect, reference_frame  # noqa: PLC0415

        ctx_j = self.session(j).ctx
        L = tex.layer if tex.layer in self.subs[j].info.layers else "bg"
        t = f - self.ranges[j][0]
        C = tex.tex.shape[0]
        image = None
        rects = []
        if res is not None:
            (x0, y0, x1, y1), vals = res
            image = torch.zeros(C, ctx_j.H, ctx_j.W)
            image[:, y0:y1, x0:x1] = torch.from_numpy(np.clip(vals, 0.0, 1.0).astype(np.float32)).permute(2, 0, 1)
            r0 = edit_rect(ctx_j, L, t, image[-1])
            if r0 is not None:
                rects.append(r0)
        warps = self._warp(i, j, L) if L == tex.layer and tex.bounds is not None else None
        if warps is not None:
            cov = tex.tex[-1]
            nz = (cov > 1e-4).nonzero()
            if len(nz):
                Rh, Rw = cov.shape
                u0, v0, u1, v1 = tex.rect
                rows, cols = nz[:, 0].numpy().astype(np.float64), nz[:, 1].numpy().astype(np.float64)
                uv_j = warps[0](np.stack([u0 + (cols + 0.5) * (u1 - u0) / Rw, v0 + (rows + 0.5) * (v1 - v0) / Rh], -1))
                m = 4.0 / ctx_j.px_per_uv(L)
                lo, hi = np.clip(uv_j.min(0) - m, -1.0, 1.0), np.clip(uv_j.max(0) + m, -1.0, 1.0)
                if np.all(hi > lo):
                    rects.append((float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])))
        if not rects:
            return None
        rect = (min(r[0] for r in rects), min(r[1] for r in rects), max(r[2] for r in rects), max(r[3] for r in rects))
        density = ctx_j.px_per_uv(L) * ctx_j.TEXELS_PER_PX
        Rw2 = int(np.clip(np.ceil((rect[2] - rect[0]) * density), 4, ctx_j.MAX_TEXTURE))
        Rh2 = int(np.clip(np.ceil((rect[3] - rect[1]) * density), 4, ctx_j.MAX_TEXTURE))
        out = torch.zeros(C, Rh2, Rw2)
        seen = torch.zeros(Rh2, Rw2, dtype=torch.bool)
        if image is not None:
            seen = _seen(ctx_j, L, t, rect, Rw2, Rh2)
            xy = ctx_j.inverse_rect(L, t, rect, Rw2, Rh2)
            grid = torch.stack([xy[0] * (2.0 / ctx_j.W) - 1.0, xy[1] * (2.0 / ctx_j.H) - 1.0], -1)[None]
            out += F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False)[0] * seen.float()[None]
        if warps is not None:
            cu = rect[0] + (np.arange(Rw2) + 0.5) * (rect[2] - rect[0]) / Rw2
            cv = rect[1] + (np.arange(Rh2) + 0.5) * (rect[3] - rect[1]) / Rh2
            gu, gv = np.meshgrid(cu, cv)
            src_uv = warps[1](np.stack([gu, gv], -1).reshape(-1, 2)).reshape(Rh2, Rw2, 2)
            grid = tex.grid(torch.from_numpy(src_uv.astype(np.float32)))
            hidden = F.grid_sample(tex.tex[None], grid[None], mode="bilinear", padding_mode="zeros",
                                   align_corners=False)[0]
            uv_j = np.stack([gu, gv], -1)
            keep = self._same_surface(i, j, L, src_uv, uv_j) & self._shown(j, L, uv_j)
            out += hidden * ((~seen) & torch.from_numpy(keep)).float()[None]
        if float(out[-1].max()) <= 1e-3:
            return None
        carried = AtlasTexture.from_tensor(L, out.contiguous(), rect, t0=t if image is not None else None)
        if image is None and reference_frame(ctx_j, carried) is None:
            # no overlap frame shows it and neither does any frame of j: it stops here, rather
            # than be extrapolated from seam to seam (and rendered, for nothing, in every segment)
            return None
        return carried

    def _shown(self, j: int, layer: str, uv: np.ndarray) -> np.ndarray:
        """[h, w] bool: the texels at ``uv`` [h, w, 2] that some frame of segment j shows on
        ``layer`` (its atlas coverage, cached). Only those take paint through the warp: j renders
        nothing else of it, and what j never shows (a surface its foreground always hides, which
        its atlas only guesses) is not handed on from seam to seam."""
        import cv2  # noqa: PLC0415

        from core.layers import VISIBLE_ALPHA, shows  # noqa: PLC0415

        key = (j, layer)
        if key not in self._coverage:
            maps = self.subs[j].maps()
            two = "fg" in self.subs[j].info.layers
            used = np.zeros((COVERAGE_SIZE, COVERAGE_SIZE), bool)
            for t in range(maps.n_frames):
                m = np.asarray(maps.uv[layer][t, ::2, ::2], np.float32).reshape(-1, 2)
                ok = np.isfinite(m).all(1)
                if two:  # clearly on the layer: a leaky alpha does not make a hidden surface shown
                    a = np.asarray(maps.alpha[t, ::2, ::2], np.float32).reshape(-1)
                    ok &= shows(layer, a, slack=COVERAGE_ALPHA - VISIBLE_ALPHA)
                at = np.clip(((m[ok] + 1.0) * 0.5 * COVERAGE_SIZE).astype(np.int64), 0, COVERAGE_SIZE - 1)
                used[at[:, 1], at[:, 0]] = True
            self._coverage[key] = cv2.dilate(used.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        cov = self._coverage[key]
        idx = np.clip(((uv + 1.0) * 0.5 * COVERAGE_SIZE).astype(np.int64), 0, COVERAGE_SIZE - 1)
        return cov[idx[..., 1], idx[..., 0]]

    def _same_surface(self, i: int, j: int, layer: str, uv_i: np.ndarray, uv_j: np.ndarray) -> np.ndarray:
        """[h, w] bool: where the warp's texel pairs (``uv_i`` of i's atlas, ``uv_j`` of j's, both
        [h, w, 2]) hold the same surface, judged by the two baked atlases' colours (blurred over a
        few texels, so a pixel of misregistration on texture does not count).

        Why: segments need not agree on what is foreground. Where j has no foreground layer, or
        its alpha lets the object into the background there, the background texel the warp finds
        shows the object that hides the surface, and paint carried there would be drawn on it
        (box.mp4: the paint behind the box, on the box). Both atlases reconstruct the same video,
        so the same surface has the same colours in both (within a few levels)."""
        import cv2  # noqa: PLC0415
        import torch  # noqa: PLC0415
        import torch.nn.functional as F  # noqa: PLC0415

        def colours(sub: Project, uv: np.ndarray) -> np.ndarray:
            atlas = torch.from_numpy(np.ascontiguousarray(sub.maps().atlas[layer], np.float32)).permute(2, 0, 1)
            g = torch.from_numpy(uv.astype(np.float32))[None]
            c = F.grid_sample(atlas[None], g, mode="bilinear", padding_mode="border", align_corners=False)[0]
            c = c.permute(1, 2, 0).numpy()
            return cv2.GaussianBlur(np.ascontiguousarray(c), (0, 0), SAME_SURFACE_BLUR)

        diff = np.abs(colours(self.subs[i], uv_i) - colours(self.subs[j], uv_j)).mean(-1)
        return diff < SAME_SURFACE_TOL

    def _warp(self, i: int, j: int, layer: str) -> tuple[AtlasWarp, AtlasWarp] | None:
        """Atlas warps i -> j and j -> i of ``layer`` from the pixels both segments show on
        it in their overlap frames (cached; None when they share too few)."""
        from core.layers import shows  # noqa: PLC0415

        key = (i, j, layer)
        if key not in self._warps:
            mi, mj = self.subs[i].maps(), self.subs[j].maps()
            ai, aj = self.ranges[i][0], self.ranges[j][0]
            lo, hi = max(ai, aj), min(self.ranges[i][1], self.ranges[j][1])
            S = WARP_STRIDE
            src, dst = [], []
            for f in range(lo, hi):
                ui = np.asarray(mi.uv[layer][f - ai, ::S, ::S], np.float64).reshape(-1, 2)
                uj = np.asarray(mj.uv[layer][f - aj, ::S, ::S], np.float64).reshape(-1, 2)
                ok = np.isfinite(ui).all(1) & np.isfinite(uj).all(1)
                for m, sub in ((mi, self.subs[i]), (mj, self.subs[j])):
                    if "fg" in sub.info.layers:
                        t = f - (ai if m is mi else aj)
                        ok &= np.asarray(shows(layer, np.asarray(m.alpha[t, ::S, ::S], np.float32))).reshape(-1)
                src.append(ui[ok])
                dst.append(uj[ok])
            src_a, dst_a = np.concatenate(src), np.concatenate(dst)
            ki = self.session(i).ctx.px_per_uv(layer)
            kj = self.session(j).ctx.px_per_uv(layer)
            fwd, back = fit_warp(src_a, dst_a, kj), fit_warp(dst_a, src_a, ki)
            self._warps[key] = None if fwd is None or back is None else (fwd, back)
        return self._warps[key]

    def _carry_sketch(self, src: Any, spec: Any, ai: int, aj: int, frames: list[int], fix: Any,
                      common: dict[str, Any], j: int) -> list[Any]:
        from core.edits.sketch import carry_stroke, stroke_key  # noqa: PLC0415
        from core.edits.spec import SketchLayer, Stroke  # noqa: PLC0415

        ctx = src.ctx
        groups: dict[tuple[str | None, int], list[Stroke]] = {}
        for stroke in spec.strokes:
            # kept with segment i's geometry (a layer recoloured or shown again is carried over
            # the seam without refining the overlap again), apart from the stroke i renders:
            # the seam's positions are those of the stroke matched on its own, as always
            sk = "seam|" + stroke_key(stroke, spec.t, spec.layer)
            c = src.geometry.carried.get(sk)
            if c is None:
                c = src.geometry.carried[sk] = carry_stroke(ctx, stroke, spec.t, spec.layer)
            best = None
            for f in frames:
                c.ensure(ctx, np.array([f - ai]))
                n = int(c.visible[f - ai].sum())
                if best is None or n > best[1]:
                    best = (f, n)
                if n == len(c.dense):
                    break
            if best is None or best[1] == 0:
                continue
            f = best[0]
            xy, vis = c.xy[f - ai], c.visible[f - ai]
            for lo, hi in _runs(vis):
                groups.setdefault((fix(c.layer), f), []).append(
                    Stroke(points=np.array(xy[lo:hi], np.float64), color=stroke.color, width=stroke.width))
        return [SketchLayer(type="sketch", frame=f, t=f - aj, layer=L, key=_key(spec.key, j, f, L),
                            strokes=strokes, **common)
                for (L, f), strokes in groups.items()]

    # -- rendering ---------------------------------------------------------------------------
    def _local(self, t: int) -> tuple[Any, int]:
        f = self.project.info.frames[int(t)]
        k = self.owner(f)
        return self.session(k), f - self.ranges[k][0]

    def release(self, k: int) -> None:
        """Close segment k's session and memory-mapped maps (a streaming pass that has left it
        behind: memory stays that of a few segments, not of the whole shot). What its layers'
        geometry is per frame stays in the store (strokes and tracks are small; atlas textures
        are kept within ``GeometryStore.max_texture_bytes``).

        Its networks stay loaded while all kept ones fit NETWORKS_KEPT_BYTES (a segment's are a
        few MB: box.mp4's 13 take 40 MB): the next pass that carries a layer through the seams
        runs them in every segment, and loading them again cost 0.5 s of each such pass. Only
        in the process that made the session: a forked render worker only moves forward and
        ends with its pass, so what it let go it never needs again."""
        if k in self._recent:
            self._recent.remove(k)
        if self._sessions[k] is not None:
            self._sessions[k] = None
            self._set[k] = False
            sub = self.subs[k]
            sub._maps = None
            kept = sum(self._network_bytes(j) for j, other in enumerate(self.subs)
                       if j != k and other._mapping is not None and self._sessions[j] is None)
            if os.getpid() != self._pid or kept + self._network_bytes(k) > self.NETWORKS_KEPT_BYTES:
                sub._mapping = None

    def _network_bytes(self, k: int) -> int:
        """Size of segment k's networks (that of its checkpoint file)."""
        try:
            return int((self.subs[k].path / Project.CHECKPOINT).stat().st_size)
        except OSError:
            return 0

    def prepare(self) -> None:
        for k in range(len(self.subs)):
            self.session(k).prepare()

    def enter(self, t: int, current: int) -> int:
        """A pass in frame order reached frame index ``t`` (``current``: the segment it was in,
        -1 at the start): open t's segment, close those left behind; returns t's segment.

        Entering segment k, its layers come from k - 1, which is then done: a whole-shot pass
        (``inve edit``, the service's Propagate) holds one or two segments, not all of them.
        """
        k = self.owner(self.project.info.frames[t])
        if k != current:
            fresh = self._sessions[k] is None
            if self._feed is not None and self._feed.consumer():
                # a render worker of a pipelined pass: what the parent carried into k
                entries, package = self._feed.take(k)
                for key, (idx, out) in entries.items():
                    self._carried[key] = (self.layers[idx], out)
                s = self.session(k)
                if package is not None:
                    if any(key[1] == k for key in entries) and not fresh:
                        s.set_layers(self.layers_for(k))  # open since the fork: the layers as carried out
                    s.ctx.take_over(package["refine"])
                    for key, c in package["strokes"].items():
                        if key not in s.geometry.carried:
                            s.geometry.carried[key] = c
            else:
                s = self.session(k)
            s.prepare()
            if fresh and self._feed is not None and self._feed.consumer():
                s.start_pass()  # opened in a worker after the fork: it reports what it adds from here
            for j in range(k):
                self.release(j)
        return k

    def frame_patches(self, t: int, cache: bool = True) -> list[Any]:
        s, tl = self._local(t)
        return s.frame_patches(tl, cache)

    def settle_block(self, frames: Any) -> None:
        """:meth:`EditSession.settle_block` of the frames (indices, consecutive) that the
        segment owning the first one renders (a block that crosses into the next segment is
        settled there when the pass enters it)."""
        frames = [int(t) for t in frames]
        if not frames:
            return
        info = self.project.info
        k = self.owner(info.frames[frames[0]])
        a = self.ranges[k][0]
        local = []
        for t in frames:
            if self.owner(info.frames[t]) != k:
                break
            local.append(info.frames[t] - a)
        self.session(k).settle_block(local)

    def render_frame(self, t: int, cache: bool = True, overlay: bool = False) -> np.ndarray:
        from core.edits.render import composite, composite_overlay  # noqa: PLC0415

        patches = self.frame_patches(t, cache)
        if overlay:
            return composite_overlay((self.ctx.H, self.ctx.W), patches)
        return composite(self.ctx.frames[t], patches)

    def start_pass(self) -> None:
        """:meth:`EditSession.start_pass` in every open segment."""
        for s in self._sessions:
            if s is not None:
                s.start_pass()

    def visit(self, t: int) -> None:
        """:meth:`EditSession.visit` in the segment owning frame index t, if it is open."""
        f = self.project.info.frames[int(t)]
        k = self.owner(f)
        if self._sessions[k] is not None and self._set[k]:
            self._sessions[k].visit(f - self.ranges[k][0])

    def prepare_stack(self) -> None:
        """Every segment's layers, carried through the seams in order, and prepared (strokes
        carried into every frame, textures built), here: forked render workers then share
        them instead of each doing it again, and what they refine comes back into this
        process's geometry (:meth:`merge_geometry`). All segments stay open until
        :meth:`render_all` ends."""
        for k in range(len(self.subs)):
            self.session(k).prepare()

    def settled(self) -> bool:
        """Every segment has the geometry of its visible layers in the frames it renders (those
        it owns), the segments being open (:meth:`prepare_stack`)."""
        return all(s is not None and self._set[k]
                   and s.settled(range(self.owns[k][0] - self.ranges[k][0], self.owns[k][1] - self.ranges[k][0]))
                   for k, s in enumerate(self._sessions))

    def frame_geometry(self, t: int) -> Any:
        """(In a render worker) :meth:`EditSession.frame_geometry` of the segment owning frame
        index t, tagged with the segment."""
        f = self.project.info.frames[int(t)]
        k = self.owner(f)
        s = self._sessions[k]
        found = s.frame_geometry(f - self.ranges[k][0]) if s is not None else None
        return (k, found) if found is not None else None

    def merge_geometry(self, found: Any) -> None:
        if self._held is not None:  # the carrying thread still uses the scopes: merged after it
            k, got = found
            cache = self.store.patches
            if cache is not None and got.get("patches"):
                # rendered patches go to the owner's cache now (the carrying thread never uses
                # it): held to the end of the pass they would be a whole shot's, beyond its budget
                for token, key, t, kept in got["patches"]:
                    cache.add(token, key, t, kept)
                found = (k, {**got, "patches": []})
            self._held.append(found)
            return
        k, got = found
        if self._scopes[k] is not None:
            self._scopes[k].merge(got)

    def render_all(self, progress: Progress | None = None, cache: bool = False,
                   overlay: bool = False, workers: int = 1,
                   encode: Any = None) -> Iterator[tuple[int, Any]]:
        """Yield (project frame index, frame) for every frame, in order (as
        :meth:`EditSession.render_all`): ``workers`` > 1 renders in forked processes
        (core.edits.parallel), each walking the segments of its blocks (:meth:`enter`) and
        applying ``encode`` there; the frames are those of the one-process pass."""
        T = self.ctx.T
        if progress is not None:
            progress.update("render", 0, T, force=True)
        if workers > 1 and T > 1:
            from core.edits.parallel import can_fork, render_parallel  # noqa: PLC0415

            if can_fork():
                self._pinned = True
                try:
                    if self._carried_all():
                        self.prepare_stack()
                        self.start_pass()
                        stream = render_parallel(self, workers, overlay=overlay, encode=encode)
                    else:  # a layer to carry through the seams: while the workers render
                        stream = self._render_pipelined(workers, overlay, encode)
                    try:
                        for t, out in stream:
                            if progress is not None:
                                progress.update("render", t + 1, T)
                            yield t, out
                    finally:
                        stream.close()
                finally:
                    self._pinned = False
                    last = self.owner(self.project.info.frames[-1])
                    for j in range(len(self.subs)):  # as a pass in one process leaves them
                        if j != last:
                            self.release(j)
                return
        from core.edits.parallel import block_frames, settle_cache_frames  # noqa: PLC0415

        self.start_pass()
        current = -1
        B = block_frames(self.ctx.W, self.ctx.H)
        if hasattr(self.ctx.frames, "cache_frames"):  # the block's frames are read twice (parallel._worker)
            self.ctx.frames.cache_frames = max(self.ctx.frames.cache_frames, settle_cache_frames(self.ctx.W, self.ctx.H))
        for t in range(T):
            before, current = current, self.enter(t, current)
            if t % B == 0 or current != before:  # as a render worker does (parallel._worker)
                self.settle_block(range(t, min(T, t - t % B + B)))
            img = self.render_frame(t, cache=cache, overlay=overlay)
            self.visit(t)
            if progress is not None:
                progress.update("render", t + 1, T)
            yield t, img

    def missing(self) -> int:
        """(Visible layer, frame) pairs whose patches the owner's cache does not keep (as
        :meth:`EditSession.missing`), over the frames each segment renders. A layer not yet
        carried into every segment counts all its frames (it is new or changed). Opens no
        segment: a segment never opened under the current checkpoint counts as missing."""
        from core.edits.geometry import geometry_key, lookup_key  # noqa: PLC0415
        from core.edits.spec import AdjustLayer  # noqa: PLC0415

        cache = self.store.patches
        T = self.ctx.T
        if cache is None:
            return T * sum(1 for l in self.layers if l.visible)
        total = 0
        for spec in self.layers:
            if not spec.visible:
                continue
            home, g = self._home(spec), geometry_key(spec)
            if any(k != home and (g, k) not in self._carried for k in range(len(self.subs))):
                total += T
                continue
            for k, sub in enumerate(self.subs):
                lo, hi = self.owns[k]
                a = self.ranges[k][0]
                scope = self._scopes[k] if self._scopes[k] is not None else self.store.peek(sub.path.name)
                layers = self._layer_in(spec, k)
                if scope is None:
                    total += (hi - lo) * len(layers)
                    continue
                token = scope.token
                for l in layers:
                    kept = cache.kept_frames(token, l.key)  # (marked used by this pass)
                    total += sum(f - a not in kept for f in range(lo, hi))
                    if isinstance(l, AdjustLayer):  # its region's lookups: used once recoloured
                        cache.kept_frames(token, lookup_key(l))
        return total

    def _carried_all(self) -> bool:
        """Every visible layer is already carried into every segment (a warm pass after hiding,
        showing or recolouring one: nothing to carry, nothing to pipeline)."""
        from core.edits.geometry import geometry_key  # noqa: PLC0415

        for spec in self.layers:
            if spec.visible:
                home, g = self._home(spec), geometry_key(spec)
                if any(k != home and (g, k) not in self._carried for k in range(len(self.subs))):
                    return False
        return True

    def _render_pipelined(self, workers: int, overlay: bool, encode: Any) -> Iterator[tuple[int, Any]]:
        """:func:`~core.edits.parallel.render_parallel` with the seams carried meanwhile.

        Segment 0 is prepared here first (with whatever reaches it backwards: a layer drawn in
        a later segment is carried down to it now), the workers fork, and a thread of this
        process carries the layers into segments 1, 2, ... in order, handing each segment's
        carried layers to the workers (:class:`_SeamFeed`) as soon as they are made, then
        preparing the segment here too (what the workers find of its geometry lands in it).
        The frames are those of the serial path: a segment's layers are the same objects,
        carried the same way, only earlier for the workers than for this process.
        """
        import threading  # noqa: PLC0415

        from core.edits.geometry import geometry_key  # noqa: PLC0415
        from core.edits.parallel import render_parallel  # noqa: PLC0415
        from core.edits.session import torch_threads  # noqa: PLC0415

        from core.edits.sketch import stroke_key  # noqa: PLC0415
        from core.edits.spec import SketchLayer  # noqa: PLC0415

        K = len(self.subs)
        before = set(self._carried)  # carried in earlier passes: the workers have them
        self.session(0).prepare()
        if K > 1:
            self.session(1)  # carried out of 0 here: the workers share its chain links
        self.start_pass()
        feed = _SeamFeed(K)
        self._feed = feed
        stop = threading.Event()
        failed: list[BaseException] = []

        def package(k: int) -> dict[str, Any]:
            # segment k's layers once carried out of k (textures with their anchors and seam
            # corrections), and what came before it; later segments' in their own packages
            index = {geometry_key(l): i for i, l in reversed(list(enumerate(self.layers)))}
            carried = {}
            for key, (then, out) in list(self._carried.items()):
                if key not in before and 0 < key[1] and (key[1] <= k or k == K - 1):
                    idx = next((i for i, l in enumerate(self.layers) if l is then), index.get(key[0]))
                    if idx is not None:
                        carried[key] = (idx, out)
                        before.add(key)
            s = self._sessions[k]
            strokes = {}
            for spec in s.layers:
                if isinstance(spec, SketchLayer) and spec.visible:
                    for st in spec.strokes:
                        sk = stroke_key(st, spec.t, spec.layer)
                        if sk in s.geometry.carried:
                            strokes[sk] = s.geometry.carried[sk]
            drawn = sorted({int(spec.t) for spec in s.layers if getattr(spec, "t", None) is not None})
            return {"carried": carried, "refine": s.ctx.handover(drawn), "strokes": strokes}

        def carry() -> None:
            try:
                with torch_threads(1):  # the workers have the cores
                    for k in range(1, K):
                        if stop.is_set():
                            return
                        s = self.session(k)  # carried into k (k = 1: before the fork)
                        s.prepare()
                        if stop.is_set():  # a cancel: not the next seam too
                            return
                        if k + 1 < K:
                            self.session(k + 1)  # out of k: its chain links, seam textures' corrections
                        feed.publish(k, package(k))
            except BaseException as exc:  # noqa: BLE001 - the workers end with its message
                failed.append(exc)
                feed.fail(str(exc) if isinstance(exc, InveError)
                          else f"carrying the edits through the seams failed: {type(exc).__name__}: {exc}")

        def check() -> None:
            # (render_parallel, while it waits and when a worker fails) the carrying thread's
            # own error first: a worker waiting for a package it stopped ends with a second-hand
            # line, and an internal error (a bug) must keep its type and traceback
            if failed:
                raise failed[0]

        threads: list[threading.Thread] = []

        def start() -> None:
            # (render_parallel, right after forking the workers: they inherit segment 0 and
            # the frames as they were) the carrying thread reads frames with a decoder of its
            # own: this one may be read here meanwhile (a movie composites the original frames)
            self._source = _private_frames(self.ctx.frames)
            for s in self._sessions:
                if s is not None and isinstance(s.ctx.frames, _FrameSlice):
                    s.ctx.frames._frames = self._source
            self._held = []
            thread = threading.Thread(target=carry, name="inve-seams", daemon=True)
            thread.start()
            threads.append(thread)

        stream = render_parallel(self, workers, overlay=overlay, encode=encode, check=check, after_fork=start)
        try:
            yield from stream
            if failed:
                raise failed[0]
        finally:
            stop.set()
            stream.close()
            for thread in threads:
                thread.join()
            if self._source is not None and self._source is not self.ctx.frames:
                getattr(self._source, "close", lambda: None)()
            self._source = None
            for s in self._sessions:
                if s is not None and isinstance(s.ctx.frames, _FrameSlice):
                    s.ctx.frames._frames = self.ctx.frames
            held, self._held = self._held or [], None
            for found in held:
                self.merge_geometry(found)
            self._feed = None
            feed.close()

    # -- tracking ----------------------------------------------------------------------------
    def track(self, points: Sequence[Any]) -> list[Any]:
        """``core.track.track_points`` over the segments: each point is tracked in the segment
        owning its frame and re-placed at the seams, where the neighbour continues it."""
        from core.track import PointSpec, Track, track_points  # noqa: PLC0415

        n, T = len(self.subs), self.ctx.T
        f0 = self.ranges[0][0]
        per: dict[int, dict[int, Any]] = {k: {} for k in range(n)}  # segment -> point index -> Track
        todo: dict[int, dict[int, Any]] = {k: {} for k in range(n)}
        homes = [self.owner(p.frame) for p in points]
        for i, (p, h) in enumerate(zip(points, homes)):
            todo[h][i] = dataclasses.replace(p, t=p.frame - self.ranges[h][0])

        def run(k: int) -> None:
            if not todo[k]:
                return
            idx = list(todo[k])
            ctx = self.session(k).ctx
            for i, tr in zip(idx, track_points(ctx, [todo[k][i] for i in idx])):
                per[k][i] = tr
            todo[k] = {}

        def hand_over(k: int, j: int) -> None:
            s = self.switch[min(k, j)]
            frames = self._overlap_frames(k, j, s)
            a = self.ranges[k][0]
            for i, tr in per[k].items():
                if i in per[j] or i in todo[j] or (j > k and homes[i] > k) or (j < k and homes[i] < k):
                    continue  # done there, or k got the point from j's side
                f = next((f for f in frames if tr.visible[f - a]), s)
                L = tr.layer if tr.layer in self.subs[j].info.layers else None
                x, y = tr.xy[f - a]
                todo[j][i] = PointSpec(points[i].id, f, f - self.ranges[j][0], (float(x), float(y)), L)

        for k in range(n):  # forward: from each point's home to the last segment
            run(k)
            if k + 1 < n:
                hand_over(k, k + 1)
        for k in range(n - 1, -1, -1):  # backward: to the first segment
            run(k)
            if k > 0:
                hand_over(k, k - 1)
        out = []
        for i, p in enumerate(points):
            xy, vis = np.zeros((T, 2)), np.zeros(T, bool)
            err = np.zeros(T) if self.ctx.refine_enabled else None
            layer = per[homes[i]][i].layer
            for k, (lo, hi) in enumerate(self.owns):
                tr = per[k].get(i)
                if tr is None:
                    continue
                a = self.ranges[k][0]
                xy[lo - f0:hi - f0] = tr.xy[lo - a:hi - a]
                vis[lo - f0:hi - f0] = tr.visible[lo - a:hi - a]
                if err is not None and tr.error_px is not None:
                    err[lo - f0:hi - f0] = tr.error_px[lo - a:hi - a]
            out.append(Track(p.id, layer, xy, vis, err))
        return out



# -- corrections -----------------------------------------------------------------------------

def correct_segmented(project: Project, doc: Any, fname: str, minutes: float, progress: Progress) -> dict[str, Any]:
    """``inve correct`` on a segmented project (the caller holds the project lock).

    Each segment is fine-tuned with the keys inside its frames (a track needs two keys in a
    segment to constrain it there); the budget is shared among the segments that get keys.
    """
    from core.correct import _fine_tune, parse_corrections  # noqa: PLC0415

    parse_corrections(doc, project.info, None, fname)  # every problem named against the whole project
    subs = project.segments()
    jobs = []
    for sub, (a, b) in zip(subs, ranges_of(project.info)):
        tracks = []
        for tr in doc["tracks"]:
            keys = [k for k in tr["keys"] if a <= int(k["frame"]) < b]
            if len(keys) >= 2:
                tracks.append({**tr, "keys": keys})
        if tracks:
            jobs.append((sub, parse_corrections({"tracks": tracks}, sub.info, sub.maps().alpha, fname)))
    if not jobs:
        raise InveError(f"{fname}: no track has two keys inside one segment of {project.path} "
                        f"(segments {', '.join(f'{a}:{b}' for a, b in ranges_of(project.info))}); "
                        "confirm each point on two frames of the same segment")
    results = []
    for n, (sub, tracks) in enumerate(jobs):
        k = subs.index(sub)
        a, b = ranges_of(project.info)[k]
        sp = SegmentProgress(progress, k, len(subs), (a, b), 0.0, 1.0)
        r = _fine_tune(sub, tracks, minutes / len(jobs), sp, segment=True)
        results.append({"segment": sub.path.name, **{x: r[x] for x in ("tracks", "keys", "error_before_px",
                                                                    "error_after_px", "psnr")}})
    metrics = aggregate_metrics(Project.open(project.path))
    history = list(project.metrics().get("corrections", []))
    history.append({"segments": results})
    metrics["corrections"] = history
    fsutil.write_json(project.path / Project.METRICS, metrics)
    used = sum(r["tracks"] for r in results)
    return {"project": str(project.path.resolve()), "psnr": metrics["psnr"], "segments": results,
            "summary": f"corrected {used} track part(s) in {len(results)} segment(s): "
                       + "; ".join(f"{r['segment']} {r['error_before_px']:.2f} px -> {r['error_after_px']:.2f} px"
                                   for r in results) + f"; PSNR {metrics['psnr']:.2f} dB; maps re-baked"}

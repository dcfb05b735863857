"""Where an edit is likely to slide: the engine's confidence near each edit, per frame (no bpy).

The panel answers "on which frames should I look, and correct?" for the active strip's edit
layers. The engine estimates its own error at any tracked position (TRACKS.json's
``error_px``: the photometric match where one was found, the measured drift elsewhere, plus
the mapping's cycle error), so the add-on tracks a few *anchor points* of each visible layer
— a sticker's centre, points spread along a stroke, an adjust region's outline — through the
clip with the service's ``track`` operation, and flags the source frames where the worst
visible anchor is estimated more than :data:`SLIDE_PX` off. Layers without positions to
carry (``paint``, ``atlas``), and an engine that gives no per-point estimate, fall back on
the project's whole-frame read-out (``inve info``'s ``confidence.check_frames``: frames
whose cycle error or reconstruction is far worse than the clip's).

Nothing here waits: :class:`ConfidenceFetcher` decides which request to send and keeps the
answers; the Blender glue (``blender/confidence.py``) sends it to the service and polls.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence

#: a frame is flagged when an edit's anchor there is estimated this far (source px) off: a
#: slide of a pixel or more is what a viewer notices on a sticker or a thin line
SLIDE_PX = 1.0
#: anchor points per layer and in all: the service tracks (and refines) each one in every
#: frame, so the cost grows with points x frames (measured in the e2e test, up to 17 points over
#: 11 frames at 160x96 on the shared 2-core CPU: 0.06-0.8 s depending on the load), and a layer
#: mostly slides as a whole: a few per layer tell
POINTS_PER_LAYER = 6
MAX_POINTS = 32


class LayerLike(Protocol):
    name: str
    kind: str
    visible: bool
    data: str
    attach: str


@dataclass(frozen=True)
class Anchor:
    """One point of one edit layer, tracked to learn how far that layer may slide."""

    id: str
    layer: str  # the layer's name (for the panel)
    frame: int  # source frame it was drawn on
    x: float
    y: float
    attach: str | None = None  # "fg" / "bg" when the layer names one


def spread(points: Sequence[Sequence[float]], n: int) -> list[tuple[float, float]]:
    """At most ``n`` of ``points``, evenly spaced along the list (first and last kept)."""
    pts = [(float(p[0]), float(p[1])) for p in points]
    if len(pts) <= n:
        return pts
    if n <= 1:
        return pts[:1]
    step = (len(pts) - 1) / (n - 1)
    return [pts[int(round(i * step))] for i in range(n)]


def layer_points(layer: dict[str, Any], n: int = POINTS_PER_LAYER) -> list[tuple[float, float]]:
    """The positions an EDITS.json layer is carried by (empty for paint/atlas layers)."""
    kind = layer.get("type")
    if kind == "sticker" and isinstance(layer.get("center"), (list, tuple)) and len(layer["center"]) == 2:
        return [(float(layer["center"][0]), float(layer["center"][1]))]
    if kind == "sketch":
        strokes = [s.get("points") or [] for s in layer.get("strokes") or [] if isinstance(s, dict)]
        strokes = [s for s in strokes if s]
        if not strokes:
            return []
        per = max(1, n // len(strokes))
        out: list[tuple[float, float]] = []
        for s in strokes:
            out += spread(s, per)
        return spread(out, n)
    if kind == "adjust":
        poly = (layer.get("region") or {}).get("polygon") or []
        return spread(poly, n)
    return []


def anchors(items: Iterable[LayerLike], frames: Sequence[int], size: Sequence[int],
            per_layer: int = POINTS_PER_LAYER, limit: int = MAX_POINTS,
            layers: Sequence[str] = ("fg", "bg")) -> tuple[list[Anchor], list[str]]:
    """Anchor points of the visible layers (inside the frame, on one of the project's
    ``frames``), and the names of visible layers that have none to track (paint, atlas, or
    drawn outside the project's frames): those are judged by the whole-frame read-out.
    ``layers``: the project's own (an attachment it lacks is left to the engine's choice)."""
    W, H = float(size[0]), float(size[1])
    known = set(int(f) for f in frames)
    out: list[Anchor] = []
    without: list[str] = []
    for it in items:
        if not it.visible:
            continue
        try:
            layer = json.loads(it.data) if it.data else {}
        except json.JSONDecodeError:
            layer = {}
        if not isinstance(layer, dict):
            layer = {}
        layer["type"] = it.kind
        frame = layer.get("frame")
        pts = []
        if isinstance(frame, int) and not isinstance(frame, bool) and frame in known:
            pts = [(x, y) for x, y in layer_points(layer, per_layer)
                   if math.isfinite(x) and math.isfinite(y) and 0.0 <= x <= W and 0.0 <= y <= H]
        if not pts:
            without.append(it.name)
            continue
        attach = it.attach if it.attach in ("fg", "bg") and it.attach in layers else None
        for k, (x, y) in enumerate(pts):
            out.append(Anchor(f"a{len(out)}", it.name, int(frame), round(x, 3), round(y, 3), attach))
    if len(out) > limit:  # keep every layer represented: thin each layer's share evenly
        by_layer: dict[str, list[Anchor]] = {}
        for a in out:
            by_layer.setdefault(a.layer, []).append(a)
        share = max(1, limit // len(by_layer))
        out = [a for group in by_layer.values() for a in spread_anchors(group, share)][:limit]
        out = [Anchor(f"a{i}", a.layer, a.frame, a.x, a.y, a.attach) for i, a in enumerate(out)]
        kept = {a.layer for a in out}
        without += [name for name in by_layer if name not in kept]  # more layers than points
    return out, without


def spread_anchors(group: list[Anchor], n: int) -> list[Anchor]:
    if len(group) <= n:
        return group
    if n <= 1:
        return group[:1]
    step = (len(group) - 1) / (n - 1)
    return [group[int(round(i * step))] for i in range(n)]


def points_doc(items: Sequence[Anchor]) -> dict[str, Any]:
    """POINTS.json of the anchors (the service's ``track`` takes it as ``points``)."""
    pts = []
    for a in items:
        p: dict[str, Any] = {"id": a.id, "frame": a.frame, "x": a.x, "y": a.y}
        if a.attach:
            p["layer"] = a.attach
        pts.append(p)
    return {"points": pts}


def anchors_key(items: Sequence[Anchor], without: Sequence[str] = (), state: str = "") -> str:
    """Equal anchors (and layers without any) of the same trained ``state`` of the project,
    equal keys: a new request only when one of them changes (retraining changes the state)."""
    doc = {"p": [[a.layer, a.frame, a.x, a.y, a.attach] for a in items], "w": list(without), "s": state}
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()[:16]


# -- the engine's answer -> frames to check -----------------------------------------------------

@dataclass
class SlideReport:
    """Per source frame, how far the edits may be off; the frames to check."""

    frames: list[int]  # the project's source frames
    error: dict[int, float] = field(default_factory=dict)  # worst visible anchor's estimate (px)
    layer: dict[int, str] = field(default_factory=dict)  # whose anchor that was
    flagged: list[int] = field(default_factory=list)  # source frames where an edit is likely to slide
    whole_frame: list[int] = field(default_factory=list)  # flagged by the whole-frame read-out only
    threshold: float = SLIDE_PX
    estimated: bool = True  # False: the engine gave no per-point estimate (whole-frame only)
    layers_without: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float | None:
        vals = [self.error[f] for f in self.flagged if f in self.error]
        return max(vals) if vals else None

    def ranges(self) -> list[tuple[int, int, float | None]]:
        """Runs of consecutive flagged source frames: (first, last, worst error or None)."""
        out: list[tuple[int, int, float | None]] = []
        for f in sorted(self.flagged):
            errs = [self.error[f]] if f in self.error and f not in self.whole_frame else []
            if out and f == out[-1][1] + 1:
                a, _, e = out[-1]
                es = [v for v in (e, *errs) if v is not None]
                out[-1] = (a, f, max(es) if es else None)
            else:
                out.append((f, f, errs[0] if errs else None))
        return out

    def summary(self) -> str:
        n = len(self.flagged)
        if not n:
            return (f"No frame where an edit is likely to slide (estimates under {self.threshold:g} px)"
                    if self.estimated else "No frame flagged by the engine's read-out")
        worst = self.worst
        return (f"{n} of {len(self.frames)} frame(s) where an edit is likely to slide"
                + (f" (up to {worst:.1f} px)" if worst is not None else ""))


def slide_report(tracks_doc: dict[str, Any] | None, items: Sequence[Anchor], check_frames: Iterable[int] = (),
                 frames: Sequence[int] | None = None, layers_without: Sequence[str] = (),
                 threshold: float | None = None) -> SlideReport:
    """Frames where an edit is likely to slide, from the service's ``track`` answer for the
    anchors (``tracks_doc``: TRACKS.json) and the project's whole-frame ``check_frames``.

    A frame counts for an anchor only where the anchor is visible (hidden, the edit does not
    show there, so it cannot be seen to slide). The whole-frame read-out is used for layers
    without anchors and when the engine gave no ``error_px``.
    """
    threshold = SLIDE_PX if threshold is None else float(threshold)
    tracks_doc = tracks_doc or {}
    proj_frames = [int(f) for f in (tracks_doc.get("frames") or frames or [])]
    rep = SlideReport(frames=proj_frames, threshold=threshold, layers_without=list(layers_without))
    by_id = {a.id: a for a in items}
    estimated = False
    for tr in tracks_doc.get("tracks") or []:
        errs = tr.get("error_px")
        a = by_id.get(str(tr.get("id")))
        if a is None or not isinstance(errs, list) or len(errs) != len(proj_frames):
            continue
        estimated = True
        vis = tr.get("visible") or [True] * len(proj_frames)
        for f, e, v in zip(proj_frames, errs, vis):
            if not v or e is None or not isinstance(e, (int, float)) or not math.isfinite(e):
                continue
            if e > rep.error.get(f, -1.0):
                rep.error[f], rep.layer[f] = float(e), a.layer
    rep.estimated = estimated or not items
    flagged = {f for f, e in rep.error.items() if e > threshold}
    known = set(proj_frames)
    if layers_without or (items and not estimated):
        extra = {int(f) for f in check_frames if not known or int(f) in known} - flagged
        rep.whole_frame = sorted(extra)
        flagged |= extra
    rep.flagged = sorted(flagged)
    return rep


# -- source frames -> the strip's frames -----------------------------------------------------------

class TimingLike(Protocol):
    final_start: int
    final_end: int

    def source_to_scene(self, source_frame: int) -> int: ...

    def scene_to_source(self, scene_frame: float) -> int | None: ...


@dataclass(frozen=True)
class SlideRange:
    """A run of flagged frames as the strip shows them."""

    scene_first: int
    scene_last: int
    source_first: int
    source_last: int
    error: float | None  # worst estimate in the run (None: flagged by the whole-frame read-out)

    def line(self) -> str:
        scene = f"{self.scene_first}" if self.scene_first == self.scene_last else f"{self.scene_first}-{self.scene_last}"
        src = (f"{self.source_first}" if self.source_first == self.source_last
               else f"{self.source_first}-{self.source_last}")
        err = f"{self.error:.1f} px" if self.error is not None else "whole frame"
        return f"Frames {scene} (source {src}): {err}"


def strip_ranges(report: SlideReport, timing: TimingLike) -> tuple[list[SlideRange], int]:
    """The report's flagged frames that the strip shows, as runs of scene frames, and how many
    flagged frames it does not show (trimmed away)."""
    shown: list[tuple[int, int]] = []  # (scene frame, source frame)
    hidden = 0
    for f in report.flagged:
        sf = timing.source_to_scene(f)
        if timing.final_start <= sf < timing.final_end and timing.scene_to_source(sf) == f:
            shown.append((sf, f))
        else:
            hidden += 1
    out: list[SlideRange] = []
    for sf, f in sorted(shown):
        e = report.error.get(f) if f not in report.whole_frame else None
        if out and sf == out[-1].scene_last + 1 and f == out[-1].source_last + 1:
            r = out[-1]
            es = [v for v in (r.error, e) if v is not None]
            out[-1] = SlideRange(r.scene_first, sf, r.source_first, f, max(es) if es else None)
        else:
            out.append(SlideRange(sf, sf, f, f, e))
    return out, hidden


def next_frame(ranges: Sequence[SlideRange], current: int) -> int | None:
    """The first flagged scene frame after ``current`` (wrapping round to the first)."""
    frames = sorted(f for r in ranges for f in range(r.scene_first, r.scene_last + 1))
    if not frames:
        return None
    return next((f for f in frames if f > current), frames[0])


# -- what to ask, one request at a time ------------------------------------------------------------

@dataclass(frozen=True)
class ConfidenceWish:
    """What the panel wants to know: the project and the anchors of its visible layers."""

    project: str
    key: str  # anchors_key
    anchors: tuple[Anchor, ...]
    frames: tuple[int, ...]
    check_frames: tuple[int, ...] = ()
    layers_without: tuple[str, ...] = ()

    @property
    def cache_key(self) -> tuple[str, str]:
        return self.project, self.key


@dataclass
class Answer:
    report: SlideReport | None = None
    error: str = ""
    at: float = 0.0  # when it arrived (the fetcher's clock): a failure is asked again after a while


class ConfidenceFetcher:
    """At most one ``track`` request in flight; the newest wish waits until it has settled;
    answers are kept per (project, anchors) so going back to an earlier stack (Undo) costs
    nothing.

    Why settle: the service runs requests in order, so a ``track`` sent while a sticker is
    being dragged would hold up the live preview's next frame; the read-out is asked for once
    the layers have stayed the same for ``settle`` seconds (an explicit check asks at once).
    """

    KEEP = 16
    #: a failed answer (the service could not start, a request failed) is shown, and asked for
    #: again once it is this old, so one bad moment does not blank the panel for good
    RETRY_FAILED = 10.0

    def __init__(self, settle: float = 0.4, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle, self.clock = settle, clock
        self.wanted: ConfidenceWish | None = None
        self.wanted_at = 0.0
        self.inflight: ConfidenceWish | None = None
        self.answers: OrderedDict[tuple[str, str], Answer] = OrderedDict()

    def want(self, wish: ConfidenceWish, force: bool = False) -> None:
        """Ask for ``wish`` (``force``: again, even if answered, and at once)."""
        old = self.answers.get(wish.cache_key)
        if force or (old is not None and old.error and self.clock() - old.at >= self.RETRY_FAILED):
            self.answers.pop(wish.cache_key, None)
        busy_with_it = self.inflight is not None and self.inflight.cache_key == wish.cache_key
        if wish.cache_key in self.answers or busy_with_it:
            self.wanted = None
            return
        if force:
            self.wanted_at = -math.inf
        elif self.wanted is None or self.wanted.cache_key != wish.cache_key:
            self.wanted_at = self.clock()  # a new wish: wait for it to settle
        self.wanted = wish

    def due_in(self) -> float:
        """Seconds until the waiting wish may be sent (0: now)."""
        return max(0.0, self.wanted_at + self.settle - self.clock()) if self.wanted is not None else 0.0

    def next_request(self) -> tuple[dict[str, Any] | None, ConfidenceWish] | None:
        """The ``track`` fields to send now (None: no anchors, answered at once), or None."""
        if self.inflight is not None or self.wanted is None or self.due_in() > 0:
            return None
        w, self.wanted = self.wanted, None
        if w.cache_key in self.answers:
            return None
        if not w.anchors:  # nothing to track: the whole-frame read-out is the answer
            self.store(w, Answer(slide_report(None, [], w.check_frames, w.frames, w.layers_without)))
            return None, w
        self.inflight = w
        return {"project": w.project, "points": points_doc(w.anchors)}, w

    def finished(self, wish: ConfidenceWish, result: dict[str, Any] | None, error: str = "") -> Answer:
        """The service answered (``result``: the ``track`` op's done, ``{tracks: TRACKS.json}``)."""
        if self.inflight is not None and self.inflight.cache_key == wish.cache_key:
            self.inflight = None
        if error:
            ans = Answer(error=error)
        else:
            ans = Answer(slide_report((result or {}).get("tracks"), list(wish.anchors), wish.check_frames,
                                      wish.frames, wish.layers_without))
        self.store(wish, ans)
        return ans

    def store(self, wish: ConfidenceWish, ans: Answer) -> None:
        ans.at = self.clock()
        self.answers[wish.cache_key] = ans
        self.answers.move_to_end(wish.cache_key)
        while len(self.answers) > self.KEEP:
            self.answers.popitem(last=False)

    def answer(self, project: str, key: str) -> Answer | None:
        return self.answers.get((project, key))

    def pending(self, project: str, key: str) -> bool:
        return any(w is not None and w.cache_key == (project, key) for w in (self.wanted, self.inflight))

    def forget(self) -> None:
        """The service restarted (or a project was retrained): ask again."""
        self.answers.clear()
        self.inflight = None


__all__ = ["SLIDE_PX", "Anchor", "layer_points", "anchors", "points_doc", "anchors_key", "SlideReport",
           "slide_report", "SlideRange", "strip_ranges", "next_frame", "ConfidenceWish", "ConfidenceFetcher"]

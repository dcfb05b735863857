"""Plain-Python tests of the panel's slide read-out (``inve_blender/io/confidence.py``): which
points of the edit layers are tracked, which frames are flagged, how they map to the strip's
frames, and the one-request-at-a-time fetcher (no bpy, no torch)."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inve_blender.io import confidence as conf  # noqa: E402
from inve_blender.io.strip_map import StripTiming  # noqa: E402


@dataclass
class Item:
    name: str
    kind: str
    data: str
    visible: bool = True
    attach: str = "AUTO"


def sticker(name: str, frame: int, x: float, y: float, **kw) -> Item:
    return Item(name, "sticker", json.dumps({"frame": frame, "image": "s.png", "center": [x, y], "scale": 1.0}), **kw)


def sketch(name: str, frame: int, strokes: list[list[list[float]]], **kw) -> Item:
    return Item(name, "sketch", json.dumps({"frame": frame, "strokes": [{"points": s, "color": [1, 0, 0, 1],
                                                                         "width": 3} for s in strokes]}), **kw)


FRAMES = list(range(10, 20))
SIZE = (200, 100)


def test_anchor_points_follow_each_visible_layer_and_skip_what_cannot_be_tracked() -> None:
    line = [[float(x), 50.0] for x in range(0, 200, 5)]  # 40 points
    items = [sticker("logo", 12, 100.0, 40.0, attach="fg"),
             sketch("line", 15, [line]),
             sticker("hidden", 12, 10.0, 10.0, visible=False),
             Item("paint", "paint", json.dumps({"frame": 12, "image": "p.png"})),
             Item("atlas", "atlas", json.dumps({"layer": "bg", "image": "a.png"})),
             sticker("elsewhere", 3, 10.0, 10.0),  # drawn on a frame the project does not have
             sticker("outside", 12, 500.0, 10.0)]  # off the frame
    anchors, without = conf.anchors(items, FRAMES, SIZE)
    assert [a.layer for a in anchors].count("logo") == 1
    logo = anchors[0]
    assert (logo.frame, logo.x, logo.y, logo.attach) == (12, 100.0, 40.0, "fg")
    strokes = [a for a in anchors if a.layer == "line"]
    assert len(strokes) == conf.POINTS_PER_LAYER and all(a.frame == 15 and a.attach is None for a in strokes)
    xs = [a.x for a in strokes]
    assert xs[0] == 0.0 and xs[-1] == 195.0 and xs == sorted(xs), "spread along the whole stroke, ends kept"
    assert without == ["paint", "atlas", "elsewhere", "outside"]
    assert len({a.id for a in anchors}) == len(anchors)
    doc = conf.points_doc(anchors)
    assert doc["points"][0] == {"id": logo.id, "frame": 12, "x": 100.0, "y": 40.0, "layer": "fg"}
    assert "layer" not in doc["points"][1]
    bg_only, _ = conf.anchors(items[:1], FRAMES, SIZE, layers=["bg"])
    assert bg_only[0].attach is None, "a project without a foreground layer: the engine picks (no refusal)"


def test_many_layers_are_thinned_but_each_keeps_points() -> None:
    items = [sketch(f"s{i}", 10, [[[float(x), 20.0] for x in range(40)]]) for i in range(10)]
    anchors, _ = conf.anchors(items, FRAMES, SIZE)
    assert len(anchors) <= conf.MAX_POINTS
    assert {a.layer for a in anchors} == {f"s{i}" for i in range(10)}
    assert len({a.id for a in anchors}) == len(anchors)
    many = [sticker(f"k{i}", 12, 10.0 + i, 40.0) for i in range(conf.MAX_POINTS + 3)]
    anchors, without = conf.anchors(many, FRAMES, SIZE)
    assert len(anchors) == conf.MAX_POINTS and len(without) == 3, "a layer left out is said, not dropped silently"


def test_the_key_changes_with_the_anchors_and_the_projects_state_only() -> None:
    a, _ = conf.anchors([sticker("logo", 12, 100.0, 40.0)], FRAMES, SIZE)
    b, _ = conf.anchors([sticker("logo", 12, 101.0, 40.0)], FRAMES, SIZE)
    assert conf.anchors_key(a) == conf.anchors_key(list(a))
    assert conf.anchors_key(a) != conf.anchors_key(b), "a moved sticker is asked about again"
    assert conf.anchors_key(a, state="s1") != conf.anchors_key(a, state="s2"), "so is a retrained project"


def _tracks(anchors, errors, visible=None) -> dict:
    return {"frames": FRAMES, "tracks": [
        {"id": a.id, "xy": [[a.x, a.y]] * len(FRAMES), "visible": (visible or {}).get(a.id, [True] * len(FRAMES)),
         "error_px": errors[a.id]} for a in anchors]}


def test_flagged_frames_are_where_a_visible_anchor_is_estimated_off() -> None:
    anchors, _ = conf.anchors([sticker("logo", 12, 100.0, 40.0), sticker("badge", 12, 20.0, 40.0)], FRAMES, SIZE)
    a, b = anchors
    err_a = [0.2, 0.3, 0.05, 0.4, 0.9, 1.5, 2.5, 1.2, 0.6, 0.4]  # frames 15-17 off
    err_b = [0.1] * 9 + [3.0]  # frame 19 off, but hidden there
    vis_b = [True] * 9 + [False]
    rep = conf.slide_report(_tracks(anchors, {a.id: err_a, b.id: err_b}, {b.id: vis_b}), anchors,
                            check_frames=[11])
    assert rep.flagged == [15, 16, 17], "hidden positions do not count; whole-frame flags are not needed here"
    assert rep.error[16] == 2.5 and rep.layer[16] == "logo"
    assert rep.worst == 2.5
    assert rep.ranges() == [(15, 17, 2.5)]
    assert "3 of 10 frame(s)" in rep.summary() and "2.5 px" in rep.summary()
    calm = conf.slide_report(_tracks(anchors, {a.id: [0.1] * 10, b.id: [0.2] * 10}), anchors)
    assert calm.flagged == [] and "No frame" in calm.summary()


def test_without_estimates_or_for_untrackable_layers_the_whole_frame_read_out_counts() -> None:
    anchors, _ = conf.anchors([sticker("logo", 12, 100.0, 40.0)], FRAMES, SIZE)
    no_err = {"frames": FRAMES, "tracks": [{"id": anchors[0].id, "xy": [[0, 0]] * 10, "visible": [True] * 10}]}
    rep = conf.slide_report(no_err, anchors, check_frames=[11, 12, 18, 99])
    assert not rep.estimated and rep.flagged == [11, 12, 18] and rep.whole_frame == [11, 12, 18]
    assert rep.ranges() == [(11, 12, None), (18, 18, None)]
    # a paint layer (nothing to track) next to a calm sticker: its frames come from the read-out
    rep = conf.slide_report(_tracks(anchors, {anchors[0].id: [0.1] * 10}), anchors, check_frames=[14],
                            layers_without=["paint"])
    assert rep.flagged == [14] and rep.whole_frame == [14] and rep.layers_without == ["paint"]


def test_flagged_source_frames_become_the_strips_scene_frames_and_the_jump_wraps() -> None:
    rep = conf.SlideReport(frames=FRAMES, error={12: 1.5, 13: 2.0, 17: 1.1, 19: 4.0}, flagged=[12, 13, 17, 19])
    # the strip starts at scene frame 100 with source frame 10, trimmed to show source 10..17
    timing = StripTiming(frame_start=100, final_start=100, final_end=108, anim_offset=10)
    ranges, hidden = conf.strip_ranges(rep, timing)
    assert [(r.scene_first, r.scene_last, r.source_first, r.source_last, r.error) for r in ranges] == \
        [(102, 103, 12, 13, 2.0), (107, 107, 17, 17, 1.1)]
    assert hidden == 1, "source frame 19 is trimmed away"
    assert ranges[0].line() == "Frames 102-103 (source 12-13): 2.0 px"
    assert conf.next_frame(ranges, 100) == 102
    assert conf.next_frame(ranges, 102) == 103
    assert conf.next_frame(ranges, 103) == 107
    assert conf.next_frame(ranges, 107) == 102, "wraps round to the first"
    assert conf.next_frame([], 5) is None


def _wish(project: str, x: float = 100.0, check: tuple = ()) -> conf.ConfidenceWish:
    items = [sticker("logo", 12, x, 40.0)] if x is not None else []
    anchors, without = conf.anchors(items, FRAMES, SIZE)
    return conf.ConfidenceWish(project, conf.anchors_key(anchors, without), tuple(anchors), tuple(FRAMES), check,
                               tuple(without))


def test_the_fetcher_sends_one_request_at_a_time_keeps_the_newest_wish_and_caches_answers() -> None:
    f = conf.ConfidenceFetcher(settle=0.0)
    w1, w2, w3 = _wish("/p", 100.0), _wish("/p", 110.0), _wish("/p", 120.0)
    f.want(w1)
    fields, sent = f.next_request()
    assert sent is w1 and fields == {"project": "/p", "points": conf.points_doc(w1.anchors)}
    f.want(w2)
    f.want(w3)  # scrubbing a sticker: only the newest waits
    assert f.next_request() is None, "one in flight at a time"
    assert f.pending("/p", w1.key) and f.pending("/p", w3.key) and not f.pending("/p", w2.key)
    tracks = _tracks(list(w1.anchors), {w1.anchors[0].id: [0.1, 0.1, 0.1, 2.0] + [0.1] * 6})
    ans = f.finished(w1, {"tracks": tracks})
    assert ans.report.flagged == [13] and f.answer("/p", w1.key) is ans
    fields, sent = f.next_request()
    assert sent is w3
    err = f.finished(w3, None, "the engine service stopped")
    assert err.error and err.report is None
    f.want(w1)  # back to the first stack (Undo): answered already, nothing sent
    assert f.wanted is None and f.next_request() is None
    f.want(w1, force=True)  # Check again
    assert f.next_request()[1] is w1
    f.forget()
    assert f.answer("/p", w1.key) is None and f.inflight is None


def test_a_stack_without_trackable_points_is_answered_from_the_read_out_without_a_request() -> None:
    f = conf.ConfidenceFetcher(settle=0.0)
    items = [Item("paint", "paint", json.dumps({"frame": 12, "image": "p.png"}))]
    anchors, without = conf.anchors(items, FRAMES, SIZE)
    w = conf.ConfidenceWish("/p", conf.anchors_key(anchors, without), (), tuple(FRAMES), (14, 15), tuple(without))
    f.want(w)
    fields, sent = f.next_request()
    assert fields is None and sent is w and f.inflight is None
    assert f.answer("/p", w.key).report.flagged == [14, 15]


def test_a_wish_is_sent_once_the_layers_settled_unless_asked_explicitly() -> None:
    """While a sticker is dragged the wish changes every event: nothing is sent (the service
    would render the preview after it); once it stays put for ``settle`` seconds it is."""
    now = [100.0]
    f = conf.ConfidenceFetcher(settle=0.4, clock=lambda: now[0])
    f.want(_wish("/p", 100.0))
    now[0] += 0.3
    f.want(_wish("/p", 101.0))  # dragged on: the wait starts again
    now[0] += 0.3
    assert f.next_request() is None and 0.0 < f.due_in() <= 0.1 + 1e-9
    f.want(_wish("/p", 101.0))  # the same wish again (another redraw): the wait goes on
    now[0] += 0.11
    fields, sent = f.next_request()
    assert sent.key == _wish("/p", 101.0).key
    f.finished(sent, {"tracks": {"frames": FRAMES, "tracks": []}})
    f.want(_wish("/p", 130.0), force=True)  # Check Where Edits Slide: at once
    assert f.next_request()[1].key == _wish("/p", 130.0).key


def test_a_failed_answer_is_shown_then_asked_for_again_after_a_while() -> None:
    """One failure (the service could not start, a request failed) must not blank the panel
    for that stack until the user presses Check Again."""
    now = [50.0]
    f = conf.ConfidenceFetcher(settle=0.0, clock=lambda: now[0])
    w = _wish("/p", 100.0)
    f.want(w)
    f.finished(f.next_request()[1], None, "cannot start the engine service: no Python")
    assert f.answer("/p", w.key).error
    now[0] += 1.0
    f.want(w)  # a redraw soon after: the error stays shown, nothing is sent
    assert f.wanted is None and f.answer("/p", w.key).error
    now[0] += conf.ConfidenceFetcher.RETRY_FAILED
    f.want(w)  # later: asked again
    assert f.next_request()[1] is w
    f.finished(w, {"tracks": {"frames": FRAMES, "tracks": []}})
    now[0] += 3 * conf.ConfidenceFetcher.RETRY_FAILED
    f.want(w)  # a good answer is kept however old
    assert f.wanted is None and not f.answer("/p", w.key).error

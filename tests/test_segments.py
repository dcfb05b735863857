"""Segments (core/segments.py): a shot as overlapping sub-projects, edited and tracked as one.

Ground-truth checks run on synthetic segmented projects whose segments have *different*
atlas parametrisations (tests/synth.py ``make_gt_segmented_project``), so an edit that is
not re-anchored at a seam lands in the wrong place; the truth is the same edit rendered on
a single-atlas ground-truth project of the same clip. The CLI and the service run in-process
with each segment's analytic mapping in place of its networks.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from synth import make_clip, make_gt_project, make_gt_segmented_project
from core import cli, fsutil
from core.edits.context import RenderContext
from core.edits.session import EditSession
from core.edits.spec import parse_edits
from core.errors import InveError
from core.project import Project, ProjectInfo
from core.segments import SegmentedSession, extension, owned, plan, switch_frames
from core.track import parse_points, track_points

W, H, T = 128, 96, 24
RANGES = [(0, 14), (10, 24)]  # switch frame 12
STROKE = {"type": "sketch", "frame": 5,
          "strokes": [{"points": [[70, 8], [90, 10], [110, 12]], "color": [1, 0, 0, 1], "width": 3}]}


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    root = tmp_path_factory.mktemp("segments")
    clip = make_clip(T=T, size=(W, H), camera="pan_zoom")
    plain = make_gt_project(clip, root / "plain")
    seg = make_gt_segmented_project(clip, root / "seg", RANGES)
    three = make_gt_segmented_project(clip, root / "three", [(0, 9), (6, 16), (13, 24)])
    st = np.zeros((12, 16, 4), np.float32)
    st[..., 1] = st[..., 3] = 1.0
    st[:4, :, 0] = 1.0  # a top edge, so a wrong rotation shows
    fsutil.write_png(root / "sticker.png", st)
    paint = np.zeros((H, W, 4), np.float32)
    paint[30:40, 100:118] = (0, 0, 1, 1)
    fsutil.write_png(root / "paint.png", paint)
    mappings = {sub.path.resolve(): sub._mapping for p in (seg, three) for sub in p.segments()}
    mappings[plain.path.resolve()] = clip.gt
    return root, clip, plain, seg, three, mappings


def centroid(img: np.ndarray) -> tuple[np.ndarray, float]:
    a = img[..., 3].astype(np.float64)
    ys, xs = np.mgrid[:a.shape[0], :a.shape[1]]
    return np.array([(a * xs).sum(), (a * ys).sum()]) / max(a.sum(), 1e-9), a.sum() / 255.0


def sessions(root: Path, plain: Project, seg: Project, doc: dict) -> tuple[EditSession, SegmentedSession]:
    ss = SegmentedSession(seg)
    ss.set_edits(doc, root)
    return EditSession(plain, parse_edits(doc, root, plain.info)), ss


# -- planning ------------------------------------------------------------------------------

def test_plan_tiles_the_shot_with_overlaps_and_seams_in_them():
    r = plan(0, 458, 120, 8)
    assert r[0][0] == 0 and r[-1][1] == 458 and all(b - a <= 120 for a, b in r)
    assert all(r[k + 1][0] == r[k][1] - 8 for k in range(len(r) - 1))
    s = switch_frames(r)
    assert all(r[k + 1][0] < s[k] < r[k][1] for k in range(len(s)))
    o = owned(r)
    assert o[0][0] == 0 and o[-1][1] == 458 and all(o[k][1] == o[k + 1][0] for k in range(len(o) - 1))
    assert plan(10, 100, 120) == [(10, 100)] and plan(0, 500, 0) == [(0, 500)]
    for length in (8, 9, 13):
        for n in (9, 20, 57):
            r = plan(0, n, length, 4)
            assert r[0][0] == 0 and r[-1][1] == n and all(b - a <= max(length, n if len(r) == 1 else 0) for a, b in r)
            assert all(r[k][0] < r[k + 1][0] < r[k][1] for k in range(len(r) - 1))
    with pytest.raises(InveError, match="too short"):
        plan(0, 100, 2)
    before, after = extension([(20, 60)], 0, 200, 120, 8)
    assert before == [(0, 28)] and after[0] == (52, 200)[0:1] + (after[0][1],) and after[-1][1] == 200


def test_segmented_project_json_round_trips_and_plain_projects_stay_format_2(tmp_path):
    info = ProjectInfo(source="v.mp4", frames=list(range(0, 30)), source_size=(64, 48), work_size=(64, 48), fps=24.0)
    d = info.to_json()
    assert d["format"] == 2 and "segments" not in d  # what inve before segments writes and reads
    info.segments = [{"name": "a", "frames": [0, 20]}, {"name": "b", "frames": [15, 30]}]
    d = info.to_json()
    assert d["format"] == 3 and ProjectInfo.from_json(d).segments == info.segments
    for bad in ([{"name": "a", "frames": [0, 20]}, {"name": "b", "frames": [20, 30]}],  # no overlap
                [{"name": "a", "frames": [0, 20]}, {"name": "b", "frames": [15, 29]}],  # does not cover
                [{"name": "../x", "frames": [0, 30]}]):
        with pytest.raises(InveError, match="damaged"):
            ProjectInfo.from_json({**d, "segments": bad})
    Project(tmp_path, info).save_info()
    proj = Project.open(tmp_path)
    assert proj.is_segmented and proj.state()[0] == "untrained"
    with pytest.raises(InveError, match="split into 2 segments"):
        proj.maps()


# -- edits across seams (ground truth) -------------------------------------------------------

def test_stroke_crossing_a_seam_stays_continuous_within_a_pixel(gt):
    root, clip, plain, seg, three, _ = gt
    for project in (seg, three):
        ps, ss = sessions(root, plain, project, {"layers": [STROKE]})
        for t in range(T):
            (c1, m1), (c2, m2) = centroid(ps.render_frame(t, overlay=True)), centroid(ss.render_frame(t, overlay=True))
            assert m1 > 50 and abs(m2 - m1) < 0.05 * m1, (t, m1, m2)
            assert np.linalg.norm(c1 - c2) < 1.0, (t, c1, c2)
    # the stroke moves between the frames on both sides of the seam as the truth does
    s = switch_frames(RANGES)[0]
    ps, ss = sessions(root, plain, seg, {"layers": [STROKE]})
    step_seg = centroid(ss.render_frame(s, overlay=True))[0] - centroid(ss.render_frame(s - 1, overlay=True))[0]
    step_gt = centroid(ps.render_frame(s, overlay=True))[0] - centroid(ps.render_frame(s - 1, overlay=True))[0]
    assert np.linalg.norm(step_seg - step_gt) < 0.5


def test_a_stroke_drawn_in_the_second_segment_reaches_back_into_the_first(gt):
    root, clip, plain, seg, three, _ = gt
    late = {**STROKE, "frame": 20}
    ps, ss = sessions(root, plain, three, {"layers": [late]})
    for t in (0, 7, 8, 14, 15, 23):
        (c1, m1), (c2, _) = centroid(ps.render_frame(t, overlay=True)), centroid(ss.render_frame(t, overlay=True))
        assert m1 > 50 and np.linalg.norm(c1 - c2) < 1.0, (t, c1, c2)


def test_sticker_paint_and_adjust_carry_through_the_seam(gt):
    root, clip, plain, seg, three, _ = gt
    layers = [
        {"type": "sticker", "frame": 20, "image": "sticker.png", "center": [100, 20], "scale": 1.0, "rotation": 0.3},
        {"type": "sticker", "frame": 20, "image": "sticker.png", "center": [100, 20], "mode": "deform"},
        {"type": "paint", "frame": 2, "image": "paint.png"},
        {"type": "adjust", "frame": 2, "layer": "bg", "region": {"polygon": [[100, 30], [118, 30], [118, 40], [100, 40]]},
         "hue": 0.3},
    ]
    for layer in layers:
        ps, ss = sessions(root, plain, seg, {"layers": [layer]})
        for t in range(0, T, 3):
            a, b = ps.render_frame(t, overlay=True), ss.render_frame(t, overlay=True)
            (c1, m1), (c2, m2) = centroid(a), centroid(b)
            assert m1 > 20 and abs(m2 - m1) < 0.1 * m1, (layer["type"], t, m1, m2)
            assert np.linalg.norm(c1 - c2) < 1.0, (layer["type"], t, c1, c2)
            assert np.abs(a.astype(float) - b.astype(float)).mean() < 1.0


def test_tracks_cross_seams_within_tolerance_of_the_truth(gt):
    root, clip, plain, seg, three, _ = gt
    doc = {"points": [{"id": "bg", "frame": 3, "x": 30.0, "y": 10.0}, {"id": "late", "frame": 20, "x": 100.0, "y": 85.0},
                      {"id": "disc", "frame": 12, "x": float(clip.gt.object_params(np.array([12.0]))[0][0, 0]),
                       "y": float(clip.gt.object_params(np.array([12.0]))[0][0, 1])}]}
    for project in (seg, three):
        tracks = SegmentedSession(project).track(parse_points(doc, project.info))
        for p, tr in zip(doc["points"], tracks):
            uv = clip.gt.forward(tr.layer, np.array([[p["x"], p["y"]]]), np.array([float(p["frame"])]))
            truth = clip.gt.inverse(tr.layer, np.repeat(uv, T, 0), np.arange(T, dtype=float))
            err = np.linalg.norm(tr.xy - truth, axis=1)[tr.visible]
            assert tr.visible.sum() >= T // 2 and err.max() < 0.75, (p["id"], err.max())
        assert tracks[2].layer == "fg"
    plain_tracks = track_points(RenderContext(plain, mapping=plain._mapping), parse_points(doc, plain.info))
    seg_tracks = SegmentedSession(seg).track(parse_points(doc, seg.info))
    for a, b in zip(plain_tracks, seg_tracks):
        assert (a.visible == b.visible).mean() > 0.9


def test_an_atlas_painted_on_one_segment_is_recognised_and_carried(gt, tmp_path):
    root, clip, plain, seg, three, _ = gt
    sub = seg.segments()[1]
    atlas = np.clip(np.array(sub.maps().atlas["bg"], np.float32), 0, 1)
    # paint where frame 12 (the seam) shows the background near (30, 70)
    uv = sub._mapping.forward("bg", np.array([[30.0, 70.0]]), np.array([12.0 - RANGES[1][0]]))[0]
    A = atlas.shape[0]
    i, j = (int((uv[1] + 1) / 2 * A), int((uv[0] + 1) / 2 * A))
    painted = atlas.copy()
    painted[i - 6:i + 6, j - 6:j + 6] = (1.0, 0.0, 1.0)
    fsutil.write_png(tmp_path / "painted.png", painted)
    ss = SegmentedSession(seg)
    ss.set_edits({"layers": [{"type": "atlas", "layer": "bg", "image": "painted.png"}]}, tmp_path)
    assert ss._home(ss.layers[0]) == 1
    for t in (12, 11, 8):  # the seam, and frames of the first segment
        c, m = centroid(ss.render_frame(t, overlay=True))
        truth = clip.gt.inverse("bg", clip.gt.forward("bg", np.array([[30.0, 70.0]]), np.array([12.0])),
                                np.array([float(t)]))[0]
        assert m > 20 and np.linalg.norm(c - (truth - 0.5)) < 2.0, (t, c, truth)


def _square(x: float, y: float, r: int = 3) -> np.ndarray:
    img = np.zeros((H, W, 4), np.float32)
    img[int(y) - r:int(y) + r, int(x) - r:int(x) + r] = (1, 0, 1, 1)
    return img


def test_paint_and_adjust_hidden_under_the_foreground_at_the_seam_carry_on(gt, tmp_path):
    """A background region drawn at frame 2 is under the disc on every overlap frame (10..13)
    and shows again from frame 16: the later segment still renders it, where the truth does."""
    root, clip, plain, seg, three, _ = gt
    at2 = clip.gt.inverse("bg", clip.gt.forward("bg", np.array([[64.0, 48.0]]), np.array([12.0])), np.array([2.0]))[0]
    fsutil.write_png(tmp_path / "hidden.png", _square(*at2))
    poly = [[at2[0] - 3, at2[1] - 3], [at2[0] + 3, at2[1] - 3], [at2[0] + 3, at2[1] + 3], [at2[0] - 3, at2[1] + 3]]
    for layer in ({"type": "paint", "frame": 2, "image": "hidden.png", "layer": "bg"},
                  {"type": "adjust", "frame": 2, "region": {"polygon": poly}, "hue": 0.5, "layer": "bg"}):
        ps, ss = sessions(tmp_path, plain, seg, {"layers": [layer]})
        for t in range(10, 14):
            assert centroid(ps.render_frame(t, overlay=True))[1] < 0.5  # hidden on every overlap frame
        for t in (18, 20, 23):  # rendered by the second segment
            (c1, m1), (c2, m2) = centroid(ps.render_frame(t, overlay=True)), centroid(ss.render_frame(t, overlay=True))
            assert m1 > 20 and abs(m2 - m1) < 0.2 * m1, (layer["type"], t, m1, m2)
            assert np.linalg.norm(c1 - c2) < 1.0, (layer["type"], t, c1, c2)


def test_paint_outside_the_frame_at_the_seam_carries_on(tmp_path):
    """The camera pans down and back: rows at the top of frame 0 are outside the frame on every
    overlap frame and come back at the end; the last segment renders them where the truth does."""
    clip = make_clip(T=T, size=(W, H), camera="pan", seed=5)
    root = tmp_path
    plain = make_gt_project(clip, root / "plain")
    seg = make_gt_segmented_project(clip, root / "seg", RANGES)
    img = np.zeros((H, W, 4), np.float32)
    img[0:3, 30:60] = (0, 1, 1, 1)
    fsutil.write_png(root / "top.png", img)
    ps, ss = sessions(root, plain, seg, {"layers": [{"type": "paint", "frame": 0, "image": "top.png", "layer": "bg"}]})
    for t in range(10, 14):
        assert centroid(ps.render_frame(t, overlay=True))[1] < 0.5  # outside the frame there
    seen = 0
    for t in range(14, T):
        (c1, m1), (c2, m2) = centroid(ps.render_frame(t, overlay=True)), centroid(ss.render_frame(t, overlay=True))
        if m1 < 5:
            continue
        seen += 1
        assert abs(m2 - m1) < 0.2 * m1 + 2, (t, m1, m2)
        assert np.linalg.norm(c1 - c2) < 1.0, (t, c1, c2)
    assert seen >= 2


def test_hidden_layers_and_changes_re_use_carried_work(gt):
    root, clip, plain, seg, three, _ = gt
    ss = SegmentedSession(seg)
    ss.set_edits({"layers": [STROKE]}, root)
    before = ss.render_frame(20, overlay=True)
    carried = dict(ss._carried)
    ss.set_edits({"layers": [{**STROKE, "visible": False}]}, root)
    assert ss.render_frame(20, overlay=True)[..., 3].max() == 0
    ss.set_edits({"layers": [STROKE]}, root)
    assert ss._carried.keys() == carried.keys()
    assert np.array_equal(ss.render_frame(20, overlay=True), before)


# -- the commands on a segmented project ------------------------------------------------------

@pytest.fixture()
def gt_networks(gt, monkeypatch):
    """Each segment's analytic mapping in place of its (absent) networks."""
    mappings = gt[5]
    monkeypatch.setattr(Project, "mapping", lambda self, device="cpu": mappings[self.path.resolve()])
    return gt


@pytest.mark.skipif(not __import__("core.edits.parallel", fromlist=["can_fork"]).can_fork(),
                    reason="forked render workers are Linux-only")
def test_render_workers_walk_the_segments_and_give_the_frames_of_one_process(gt_networks):
    """A segmented pass through forked workers (blocks of 2 frames, so every segment and seam
    is split between them) gives the bytes of the pass in one process, paint and strokes --
    with the seams carried while the workers render (a package per segment handed to them)
    and, after a layer is added, again; a pass with nothing to carry forks at once."""
    from core import segments
    from core.edits import parallel

    root, clip, plain, seg, three, _ = gt_networks
    late = {**STROKE, "frame": 20, "strokes": [{**STROKE["strokes"][0], "color": [0, 1, 0, 1]}]}
    doc = {"layers": [STROKE, {"type": "paint", "frame": 2, "image": "paint.png", "layer": "bg"}]}
    doc2 = {"layers": doc["layers"] + [late]}  # drawn in the last segment: carried back to the first
    seq = {}
    for name, d in (("doc", doc), ("doc2", doc2)):
        one = SegmentedSession(three)
        one.set_edits(d, root)
        seq[name] = [img for _, img in one.render_all(overlay=True)]
    published = []
    mp = pytest.MonkeyPatch()
    mp.setattr(parallel, "AHEAD_BYTES", 1)  # blocks of 2 frames
    publish = segments._SeamFeed.publish
    mp.setattr(segments._SeamFeed, "publish", lambda self, k, e: (published.append((k, len(e["carried"]))), publish(self, k, e)))
    try:
        par_s = SegmentedSession(three)
        runs = {}
        # a pass stopped after two frames (a cancel) leaves nothing behind that the next misrenders
        par_s.set_edits(doc, root)
        stopped = par_s.render_all(overlay=True, workers=2)
        next(stopped), next(stopped)
        stopped.close()
        assert par_s._feed is None and par_s._source is None
        for name, d in (("doc", doc), ("doc2", doc2), ("again", doc2)):
            par_s.set_edits(d, root)
            published.clear()
            pipelined = not par_s._carried_all()
            runs[name] = (list(par_s.render_all(overlay=True, workers=2)), list(published), pipelined)
    finally:
        mp.undo()
    for name, want in (("doc", "doc"), ("doc2", "doc2"), ("again", "doc2")):
        par = runs[name][0]
        assert [t for t, _ in par] == list(range(T))
        assert all(np.array_equal(a, b) for a, (_, b) in zip(seq[want], par)), name
    # doc's two layers reach each later segment in its package (once carried out of it), unless
    # the stopped pass carried them everywhere already (it is stopped between seams: how far it
    # got depends on timing); doc2's late stroke was carried down to segment 0 before the fork
    # (segment 1's package hands it over as carried out of 1); the repeat carries nothing and
    # forks at once
    assert [k for k, _ in runs["doc"][1]] == ([1, 2] if runs["doc"][2] else [])
    assert runs["doc2"][1] == [(1, 1), (2, 0)] and runs["doc2"][2]
    assert runs["again"][1] == [] and not runs["again"][2]
    assert seq["doc"][20][..., 3].max() > 0 and seq["doc"][3][..., 3].max() > 0
    assert not np.array_equal(seq["doc"][3], seq["doc2"][3])  # the late stroke reached frame 3
    assert sum(s is not None for s in par_s._sessions) == 1  # earlier segments closed after the pass
    assert par_s._feed is None and par_s._source is None and par_s._held is None


@pytest.mark.skipif(not __import__("core.edits.parallel", fromlist=["can_fork"]).can_fork(),
                    reason="forked render workers are Linux-only")
@pytest.mark.parametrize("fault", ["user", "internal", "disk full"])
def test_a_seam_that_fails_to_carry_ends_the_pass_with_its_message(gt_networks, monkeypatch, fault):
    """Carrying runs beside the render workers: a failure there ends the pass with one clear
    error (the workers waiting for that segment stop), not a hang -- a user error with its
    message, a bug with its own type (the CLI prints its traceback), and a package that
    cannot be written (nor the error for the workers: disk full) with a line saying so."""
    import signal

    from core import segments

    root, clip, plain, seg, three, _ = gt_networks
    carry = SegmentedSession._carry

    def failing(self, spec, i, j, s):
        if j == 2:
            raise InveError("the seam 1|2 cannot be carried") if fault == "user" else KeyError("seam-2")
        return carry(self, spec, i, j, s)

    def full(self, name, data):
        raise OSError(28, "No space left on device")

    if fault == "disk full":
        monkeypatch.setattr(segments._SeamFeed, "_write", full)
        want = pytest.raises(InveError, match=re.escape("could not hand the edits carried through the seams "
                                                        "to the render workers") + ".*No space left on device")
    else:
        monkeypatch.setattr(SegmentedSession, "_carry", failing)
        want = (pytest.raises(InveError, match="^" + re.escape("the seam 1|2 cannot be carried") + "$")
                if fault == "user" else pytest.raises(KeyError, match="seam-2"))

    def hung(signum, frame):
        raise TimeoutError("the pass hangs")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        ss = SegmentedSession(three)
        ss.set_edits({"layers": [STROKE]}, root)
        with want:
            list(ss.render_all(overlay=True, workers=2))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert ss._feed is None


def test_seam_packages_left_by_a_killed_pass_are_swept(tmp_path):
    """A pass killed without cleanup leaves its package folder in the temporary folder: the
    next pipelined pass removes those whose process is gone, or older than a day, not a
    running pass's."""
    import os
    import subprocess
    import sys
    import time

    from core.segments import _SeamFeed

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    mine = tmp_path / f"inve-seams-{os.getpid()}-live"
    killed = tmp_path / f"inve-seams-{dead}-gone"
    old = tmp_path / f"inve-seams-{os.getpid()}-old"
    other = tmp_path / "not-ours"
    unnamed = tmp_path / "inve-seams-abc"  # no pid in its name: removed only once a day old
    for d in (mine, killed, old, other, unnamed):
        d.mkdir()
        (d / "1.pkl").write_bytes(b"x")
    a_day_ago = time.time() - _SeamFeed.STALE_SECONDS - 60
    os.utime(old, (a_day_ago, a_day_ago))
    assert sorted(_SeamFeed.sweep(tmp_path)) == sorted([killed, old])
    assert mine.is_dir() and other.is_dir() and unnamed.is_dir() and not killed.exists() and not old.exists()


def test_open_segments_are_bounded_least_recently_used_first(gt_networks):
    """A preview that visits every segment keeps at most ``max_open`` open, and a segment
    closed and reopened renders the same frame."""
    root, clip, plain, seg, three, _ = gt_networks
    ss = SegmentedSession(three, max_open=2)
    ss.set_edits({"layers": [STROKE]}, root)
    first = ss.render_frame(20, overlay=True)
    for t in (3, 10, 20, 3):
        ss.render_frame(t, overlay=True)
        assert sum(s is not None for s in ss._sessions) <= 2
    assert ss._sessions[1] is None  # 10's segment was used least recently
    assert np.array_equal(ss.render_frame(20, overlay=True), first)
    # a closed segment keeps its networks while they fit the budget (the maps are let go)
    net = object()
    ss.session(1)
    ss.subs[1]._mapping = net
    ss.release(1)
    assert ss.subs[1]._mapping is net and ss.subs[1]._maps is None
    ss.session(1)
    ss.NETWORKS_KEPT_BYTES = -1
    ss.release(1)
    assert ss.subs[1]._mapping is None
    # a forked render worker (another process than the session's) keeps none: it only moves on
    ss.NETWORKS_KEPT_BYTES = 2**40
    ss.session(1)
    ss.subs[1]._mapping = net
    ss._pid = -1
    ss.release(1)
    assert ss.subs[1]._mapping is None


def test_cli_info_edit_track_atlas_on_a_segmented_project(gt_networks, tmp_path, capsys):
    root, clip, plain, seg, three, _ = gt_networks
    assert cli.main(["info", str(three.path)]) == 0
    info = json.loads(capsys.readouterr().out)
    # ground-truth segments have maps but no checkpoint: each says so, and so does the whole
    assert info["state"] == plain.state()[0] == "needs bake" and "segment f000000-000009" in info["state_reason"]
    assert [s["frames"] for s in info["segments"]] == [[0, 9], [6, 16], [13, 24]]
    assert [s["owns"] for s in info["segments"]] == [[0, 7], [7, 14], [14, 24]]
    edits = tmp_path / "EDITS.json"
    edits.write_text(json.dumps({"version": 1, "layers": [STROKE]}))
    out = tmp_path / "out"
    assert cli.main(["edit", str(three.path), "--edits", str(edits), "-o", str(out), "--overlay",
                     "--progress", "none"]) == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i:04d}.png" for i in range(T)]
    ps = EditSession(plain, parse_edits({"layers": [STROKE]}, root, plain.info))
    for t in (6, 7, 13, 14, 23):
        c1, c2 = centroid(ps.render_frame(t, overlay=True))[0], centroid(iio.imread(files[t]))[0]
        assert np.linalg.norm(c1 - c2) < 1.0
    points = tmp_path / "POINTS.json"
    points.write_text(json.dumps({"points": [{"id": "p", "frame": 3, "x": 30, "y": 10}]}))
    assert cli.main(["track", str(three.path), "--points", str(points), "-o", str(tmp_path / "TRACKS.json")]) == 0
    doc = json.loads((tmp_path / "TRACKS.json").read_text())
    assert doc["frames"] == list(range(T)) and len(doc["tracks"][0]["xy"]) == T
    assert cli.main(["atlas", str(three.path), "-o", str(tmp_path / "atlas")]) == 0
    names = sorted(p.name for p in (tmp_path / "atlas").glob("*.png"))
    assert "f000006-000016_atlas_bg.png" in names and len(names) == 3 * 4
    capsys.readouterr()
    edits.write_text(json.dumps({"version": 1, "layers": [{**STROKE, "frame": 99}]}))
    assert cli.main(["edit", str(three.path), "--edits", str(edits), "-o", str(tmp_path / "o2"),
                     "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside the project's frames 0..23" in err[0]


def test_service_renders_and_tracks_a_segmented_project(gt_networks):
    from core.serve import Request, Service

    root, clip, plain, seg, three, _ = gt_networks
    stream = io.StringIO()
    svc = Service(stream)
    svc.run(Request(1, "open", {"project": str(three.path)}))
    svc.run(Request(2, "set_edits", {"project": str(three.path), "edits": {"layers": [STROKE]}, "base": str(root)}))
    out = root / "svc_frame.png"
    svc.run(Request(3, "render_frame", {"project": str(three.path), "frame": 15, "output": str(out), "overlay": True}))
    svc.run(Request(4, "track", {"project": str(three.path),
                                 "points": {"points": [{"id": "p", "frame": 3, "x": 30, "y": 10}]}}))
    folder = root / "svc_propagate"
    svc.run(Request(5, "propagate", {"project": str(three.path), "output": str(folder), "overlay": True}))
    replies = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = [r for r in replies if r["event"] in ("done", "error")]
    assert [r["event"] for r in done] == ["done"] * 5, done
    assert sorted(r["frame"] for r in replies if r["event"] == "frame") == list(range(T))
    held = next(iter(svc.projects.values())).session
    assert sum(s is not None for s in held._sessions) == 1  # Propagate left earlier segments closed
    ps = EditSession(plain, parse_edits({"layers": [STROKE]}, root, plain.info))
    assert np.linalg.norm(centroid(ps.render_frame(15, overlay=True))[0] - centroid(iio.imread(out))[0]) < 1.0
    assert len(done[3]["tracks"]["tracks"][0]["xy"]) == T
    for t in (6, 7, 13, 14):  # both sides of both seams
        assert np.linalg.norm(centroid(ps.render_frame(t, overlay=True))[0]
                              - centroid(iio.imread(folder / f"{t:04d}.png"))[0]) < 1.0


# -- training: segments, resume, adding frames -------------------------------------------------

@pytest.mark.slow
def test_train_segments_then_add_frames_with_resume(tmp_path, capsys):
    clip = make_clip(T=20, size=(64, 48), camera="pan", seed=3)
    from synth import write_clip

    video = write_clip(clip, tmp_path / "clip")
    proj = tmp_path / "proj"
    base = ["--iters", "30", "--progress", "none", "--max-side", "64"]
    assert cli.main(["train", str(video), "-o", str(proj), "--frames", "0:16", "--segment-frames", "10",
                     "--segment-overlap", "4", *base]) == 0
    project = Project.open(proj)
    assert [s["frames"] for s in project.info.segments] == [[0, 10], [6, 16]]
    assert project.state()[0] == "trained" and not (proj / "checkpoint.pt").exists()
    metrics = project.metrics()
    assert [s["owns"] for s in metrics["segments"]] == [[0, 8], [8, 16]] and metrics["iterations"] == 30
    first_ckpt = proj / "segments" / "f000000-000010" / "checkpoint.pt"
    import torch

    state = torch.load(first_ckpt, weights_only=False)
    assert state["optimizer"] is None and state["model"]["atlases.bg.grid.table"].dtype == torch.float16
    assert state["model"]["inverse_maps.bg.grid.table"].dtype == torch.float16  # every hash table
    assert not list((proj / "segments").glob("*/atlas_*.png"))  # their 8-bit atlases are in maps/ already
    assert not list((proj / "segments").glob("*/cache/masks_preview.png"))  # nor a masks preview
    # a segment an older inve wrote (float32 mapping tables) is compacted in place, still trained
    from core import arraystore, checkpoint

    seg0 = Project.open(proj / "segments" / "f000000-000010")
    old = {**state, "model": {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}}
    checkpoint.save_checkpoint(first_ckpt, old, seg0.info)
    meta = arraystore.read_meta(seg0.path / Project.MAPS)
    meta["meta"]["checkpoint"] = checkpoint.checkpoint_record(first_ckpt, state["step"])
    fsutil.write_json(seg0.path / Project.MAPS / "meta.json", meta)
    assert Project.open(seg0.path).state()[0] == "trained"
    import importlib.util

    spec = importlib.util.spec_from_file_location("compact_project", Path(__file__).parents[1] / "scripts" / "compact_project.py")
    compact_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compact_mod)
    big = first_ckpt.stat().st_size
    compact_mod.compact(proj)
    assert first_ckpt.stat().st_size < big and Project.open(proj).state()[0] == "trained"
    again = torch.load(first_ckpt, weights_only=False)["model"]
    assert all(torch.equal(again[k].float(), state["model"][k].float()) for k in again)  # the same numbers
    assert json.loads((proj / "segments" / "f000000-000010" / "maps" / "meta.json").read_text())["store"] == 2
    # more budget: every segment continues from its compact checkpoint
    assert cli.main(["train", str(video), "-o", str(proj), "--resume", *base[:1], "40", *base[2:]]) == 0
    assert Project.open(proj).metrics()["iterations"] == 40 and Project.open(proj).state()[0] == "trained"
    stamp = first_ckpt.stat().st_mtime_ns
    # a range that does not contain the trained one: one line, nothing changes
    capsys.readouterr()
    assert cli.main(["train", str(video), "-o", str(proj), "--resume", "--frames", "2:20", *base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not contain the trained frames 0:16" in err[0]
    # a wider range adds a segment for the new frames; trained segments stay untouched
    assert cli.main(["train", str(video), "-o", str(proj), "--resume", "--frames", "0:20", *base]) == 0
    project = Project.open(proj)
    assert [s["frames"] for s in project.info.segments] == [[0, 10], [6, 16], [12, 20]]
    assert project.info.frames == list(range(20)) and project.state()[0] == "trained"
    assert first_ckpt.stat().st_mtime_ns == stamp
    edits = tmp_path / "EDITS.json"
    edits.write_text(json.dumps({"version": 1, "layers": [
        {"type": "sketch", "frame": 2, "strokes": [{"points": [[10, 10], [50, 14]], "color": [1, 0, 0, 1], "width": 3}]}]}))
    out = tmp_path / "out"
    assert cli.main(["edit", str(proj), "--edits", str(edits), "-o", str(out), "--overlay", "--progress", "none"]) == 0
    cov = [iio.imread(out / f"{i:04d}.png")[..., 3].sum() / 255.0 for i in range(20)]
    assert min(cov) > 0.5 * max(cov)  # the stroke reaches the new frames
    # corrections: each segment is fine-tuned with the keys in its frames
    corr = tmp_path / "CORRECTIONS.json"
    corr.write_text(json.dumps({"tracks": [{"id": "a", "keys": [{"frame": 1, "x": 20.0, "y": 12.0},
                                                                {"frame": 4, "x": 22.0, "y": 12.0}]},
                                           {"id": "b", "keys": [{"frame": 3, "x": 30.0, "y": 30.0},
                                                                {"frame": 18, "x": 31.0, "y": 30.0}]}]}))
    stamp3 = (proj / "segments" / "f000012-000020" / "checkpoint.pt").stat().st_mtime_ns
    assert cli.main(["correct", str(proj), "--corrections", str(corr), "--minutes", "0.02", "--progress", "none"]) == 0
    history = Project.open(proj).metrics()["corrections"][-1]["segments"]
    assert [h["segment"] for h in history] == ["f000000-000010"] and history[0]["tracks"] == 1
    assert (proj / "segments" / "f000012-000020" / "checkpoint.pt").stat().st_mtime_ns == stamp3
    assert Project.open(proj).state()[0] == "trained"
    # a corrected segment keeps the segment layout: compact checkpoint, no atlas PNGs, its keys
    state = torch.load(first_ckpt, weights_only=False)
    assert state["optimizer"] is None and state["model"]["atlases.bg.grid.table"].dtype == torch.float16
    assert not list((proj / "segments").glob("*/atlas_*.png"))
    assert (proj / "segments" / "f000000-000010" / Project.CONFIRMED).is_file()
    # a plain project extended: its trained state moves into a segment, unchanged
    plain = tmp_path / "plain"
    assert cli.main(["train", str(video), "-o", str(plain), "--frames", "0:8", *base]) == 0
    assert (plain / "atlas_bg.png").is_file()  # a plain project still has its atlas images
    plain_corr = tmp_path / "PLAIN_CORRECTIONS.json"
    plain_corr.write_text(json.dumps({"tracks": [{"id": "a", "keys": [{"frame": 1, "x": 20.0, "y": 12.0},
                                                                      {"frame": 4, "x": 22.0, "y": 12.0}]}]}))
    assert cli.main(["correct", str(plain), "--corrections", str(plain_corr), "--minutes", "0.02",
                     "--progress", "none"]) == 0
    keys = (plain / Project.CONFIRMED).read_bytes()
    ck = (plain / "checkpoint.pt").read_bytes()
    assert cli.main(["train", str(video), "-o", str(plain), "--resume", "--frames", "0:12", *base]) == 0
    # the user's confirmed keys move with the trained state they belong to
    assert not (plain / Project.CONFIRMED).exists()
    assert (plain / "segments" / "f000000-000008" / Project.CONFIRMED).read_bytes() == keys
    from core.correct import read_confirmed

    sub = Project.open(plain / "segments" / "f000000-000008")
    assert [tr.id for tr in read_confirmed(sub.path, sub.info, sub.maps().meta)] == ["a"]  # and still apply
    project = Project.open(plain)
    assert [s["frames"] for s in project.info.segments] == [[0, 8], [4, 12]] and project.state()[0] == "trained"
    assert (plain / "segments" / "f000000-000008" / "checkpoint.pt").read_bytes() == ck
    capsys.readouterr()
    assert cli.main(["info", str(plain)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == 3 and [s["state"] for s in info["segments"]] == ["trained", "trained"]


def test_each_segment_gets_the_hints_on_its_own_frames(tmp_path):
    from core.segments import _segment_hints

    poly = [[1, 1], [9, 1], [9, 9]]
    hints = tmp_path / "HINTS.json"
    hints.write_text(json.dumps({"version": 1, "hints": [{"frame": 3, "polygon": poly, "label": "fg"},
                                                         {"frame": 30, "polygon": poly, "label": "bg"}]}))
    sub = tmp_path / "proj" / "segments" / "f000000-000020"
    got = _segment_hints(hints, sub, 0, 20)
    assert got and json.loads(Path(got).read_text())["hints"] == [{"frame": 3, "polygon": poly, "label": "fg"}]
    assert not sub.exists()  # the segment's own folder starts empty (a new project goes there)
    assert _segment_hints(hints, tmp_path / "proj" / "segments" / "f000020-000040", 20, 40) is None  # no outline


def test_budget_is_split_by_frames_and_progress_names_the_segment():
    from core.progress import Progress
    from core.segments import SegmentProgress, budget_shares

    assert budget_shares([(0, 60), (52, 112), (104, 124)], 1000, 10.0) == [(429, 4.2857), (429, 4.2857), (143, 1.4286)]
    stream = io.StringIO()
    inner = Progress("json", stream=stream, min_interval=0.0)
    p = SegmentProgress(inner, 1, 3, (52, 112), 0.4, 0.4)
    p.update("train", 500, 1000, force=True, psnr=30.0)
    p.update("bake", 3, 10, force=True)
    p.message("hello")
    ev = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert ev[0]["stage"] == "train" and ev[0]["step"] == 600 and ev[0]["total"] == 1000 and ev[0]["segment"] == "2/3"
    assert ev[0]["eta"] is not None and ev[0]["eta"] >= 0  # the whole run's estimate, not this segment's
    assert ev[1]["stage"] == "bake" and ev[1]["step"] == 3 and ev[1]["segment_frames"] == "52:112"
    assert ev[2]["message"] == "segment 2/3 (frames 52:112): hello"

"""--fg-hint: one outline of the foreground grows into masks for the whole clip."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import InveError
from core.flow import compute_flow
from core.hints import grow_masks, parse_hints


@pytest.fixture(scope="module")
def clip():
    from tests.synth import make_clip

    return make_clip(T=16, size=(96, 64), camera="pan_zoom", seed=4)


def _outline(clip, t, n=24, slack=1.0):
    q, _ = clip.gt.object_params(np.array([float(t)]))
    r = clip.gt.radius + slack
    return [[float(q[0, 0] + r * math.cos(a)), float(q[0, 1] + r * math.sin(a))]
            for a in np.linspace(0, 2 * math.pi, n, endpoint=False)]


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_one_outline_grows_into_masks_for_every_frame(clip):
    frames = list(range(clip.n_frames))
    doc = {"version": 1, "hints": [{"frame": 8, "polygon": _outline(clip, 8), "label": "fg"}]}
    hints = parse_hints(doc, None, clip.size, frames)
    flow = compute_flow(clip.frames)
    masks = grow_masks(clip.frames, flow, hints, clip.size)
    truth = clip.masks > 0.5
    ious = [_iou(masks[t] > 0, truth[t]) for t in range(clip.n_frames)]
    assert min(ious) > 0.8, np.round(ious, 3)
    assert np.mean(ious) > 0.88, np.round(ious, 3)
    # without flow the outline stays where it was drawn: far frames miss the moving disc
    still = grow_masks(clip.frames, None, hints, clip.size, refit=False)
    assert _iou(still[0] > 0, truth[0]) < 0.5


def test_bad_hints_are_refused_clearly(clip):
    frames = list(range(clip.n_frames))
    bad = [({"hints": []}, "at least one 'fg'"),
           ({"hints": [{"frame": 99, "polygon": [[0, 0], [1, 0], [1, 1]]}]}, "outside"),
           ({"hints": [{"frame": 0, "polygon": [[0, 0], [1, 0]]}]}, "at least 3"),
           ({"hints": [{"frame": 0, "polygon": [[0, 0], [1, 0], [1, 1]], "label": "x"}]}, "label")]
    for doc, words in bad:
        with pytest.raises(InveError, match=words):
            parse_hints(doc, None, clip.size, frames)


def test_train_with_a_foreground_hint(clip, tmp_path, capsys):
    import json

    from core.cli import main
    from tests.synth import write_clip

    video = write_clip(clip, tmp_path / "frames")
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps({"version": 1, "hints": [{"frame": 5, "polygon": _outline(clip, 5), "label": "fg"}]}))
    # contradictory options: one line, nothing created
    assert main(["train", str(video), "-o", str(tmp_path / "bad"), "--fg-hint", str(hints),
                 "--masks", str(video), "--iters", "2", "--progress", "none"]) != 0
    assert "--fg-hint and --masks" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    proj = tmp_path / "proj"
    assert main(["train", str(video), "-o", str(proj), "--fg-hint", str(hints), "--iters", "3",
                 "--progress", "none"]) == 0
    metrics = json.loads((proj / "metrics.json").read_text())
    assert metrics["mask_source"] == "user" and metrics["layers"] == ["bg", "fg"]
    from core.masks import load_masks

    grown = load_masks(proj / "cache" / "hint_masks", clip.n_frames, 0, clip.size)
    ious = [_iou(grown[t] > 0, clip.masks[t] > 0.5) for t in range(clip.n_frames)]
    assert min(ious) > 0.8
    # training it more keeps the hint as its masks source (not the automatic masks)
    assert main(["train", str(video), "-o", str(proj), "--resume", "--iters", "6", "--progress", "none"]) == 0
    metrics = json.loads((proj / "metrics.json").read_text())
    assert metrics["iterations"] == 6 and metrics["mask_source"] == "user", metrics


# ---------------------------------------------------------------------------------------
# the bundled clip: a background stroke behind the bunny's ear and raised arms
#: one outline of the bunny on the last frame (source px of the 480x270 clip, drawn by hand
#: around the standing bunny: raised left arm and hand, the ear sticking out left of the head,
#: the raised right arm, the body down to the feet; the grey rocks on the left are not his)
BUNNY_OUTLINE = [[60, 44], [68, 35], [90, 38], [100, 44], [114, 42], [114, 33], [125, 30], [150, 28],
                 [162, 22], [185, 22], [190, 17], [208, 18], [215, 28], [212, 60], [224, 95], [232, 140],
                 [232, 190], [222, 222], [200, 236], [165, 234], [138, 220], [124, 185], [119, 140],
                 [121, 95], [128, 72], [110, 66], [90, 60], [66, 58]]
#: a background stroke drawn on frame 47 from the grass on the left, through the raised hand,
#: the ear, the head and the raised right hand, to the trees on the right
BUNNY_STROKE = [[20, 50], [75, 45], [105, 42], [132, 36], [200, 33], [250, 33]]
#: hand-checked on frame 47 (x0, y0, x1, y1): the stroke passes over the bunny here ...
BUNNY_HIDDEN = {"ear": (124, 34, 140, 38), "raised right hand": (193, 31, 205, 35),
                "raised left hand": (71, 44, 81, 47)}
#: ... and over the background here
BUNNY_SHOWN = {"grass left of the hand": (30, 47, 50, 50), "trees right of the head": (226, 31, 246, 35)}
#: far from the outline: background strokes drawn on frames 40, 32, 24 and 8 (7 to 39 frames
#: before it), from the grass through his raised left hand, his ear (lying flat on 40 and
#: 32), his head and his raised right hand to the trees (40, 32), and through both ears,
#: standing up as he rises from a crouch (24, 8); hidden / shown regions hand-checked on
#: those frames, each a strip the 4 px stroke covers
FAR_STROKES = {40: [[30, 42], [85, 38], [135, 36], [165, 28], [200, 22], [250, 20]],
               32: [[50, 48], [100, 43], [140, 37], [170, 30], [218, 22], [260, 18]],
               24: [[140, 38], [184, 38], [200, 44], [218, 44], [250, 44]],
               8: [[140, 85], [230, 85]]}
FAR_HIDDEN = {40: {"raised left hand": (76, 37, 92, 40), "ear": (126, 34, 142, 37),
                   "raised right hand": (192, 21, 204, 24)},
              32: {"raised left hand": (92, 41, 108, 44), "ear": (134, 35, 148, 38),
                   "raised right hand": (206, 21, 222, 24)},
              24: {"left ear": (179, 37, 188, 40), "right ear": (204, 43, 220, 46)},
              8: {"left ear": (168, 84, 180, 87), "right ear": (199, 84, 207, 87)}}
FAR_SHOWN = {40: {"grass left of the hand": (36, 40, 60, 42), "trees right of the hand": (220, 20, 244, 22)},
             32: {"grass left of the hand": (60, 45, 76, 47), "trees right of the hand": (236, 19, 248, 21)},
             24: {"grass left of the ear": (146, 37, 164, 39), "leaves right of the head": (236, 43, 248, 45)},
             8: {"grass left of the ears": (140, 84, 158, 86), "grass right of the ears": (220, 84, 230, 86)}}


def _stroke_checks(project, tmp_path, frame, stroke, hidden, shown):
    from core.edits import EditSession, parse_edits

    doc = {"version": 1, "layers": [{"type": "sketch", "frame": frame, "layer": "bg", "strokes": [
        {"points": stroke, "color": [1, 0, 0, 1], "width": 4.0}]}]}
    session = EditSession(project, parse_edits(doc, tmp_path, project.info))
    out = session.render_frame(frame).astype(int)
    orig = np.asarray(project.frames()[frame]).astype(int)
    for name, (x0, y0, x1, y1) in hidden.items():
        diff = np.abs(out[y0:y1, x0:x1] - orig[y0:y1, x0:x1]).max(-1)
        assert diff.mean() < 24, (frame, name, diff.mean())
    for name, (x0, y0, x1, y1) in shown.items():
        px = out[y0:y1, x0:x1].reshape(-1, 3)
        assert (px[:, 0] > 200).mean() > 0.9 and (px[:, 1] < 60).mean() > 0.9, (frame, name, px.mean(0))


@pytest.mark.slow
def test_bunny_background_stroke_is_hidden_behind_ear_and_raised_arms(tmp_path):
    """Issue #9 "How it is checked": with one foreground outline (frame 47), a background
    stroke across the bunny's ear and raised hands is hidden there and shows beside them,
    on the outline's frame and on frames 7 to 39 frames away, where his ears lie flat or
    stand up (a short fit at 240 px: ~50 s). Without
    the hint the automatic masks leave those thin parts in the background atlas; with the
    hint's masks fading out like automatic ones the alpha network gave them up again (ear
    alpha 0.18: the stroke was drawn over ear, hands and head), and at the masks' full
    weight the ear still ended at 0.6-0.8 (core/objectives.py). Before the grown masks kept
    thin parts by their own colours (core/hints.py), they lost the ears from frame 46 on and
    the stroke was drawn over them far from the outline."""
    import json
    from pathlib import Path

    import core
    from core.cli import main
    from core.project import Project

    video = Path(core.__file__).parent / "data" / "bbb_excerpt.mp4"
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps({"version": 1, "hints": [{"frame": 47, "polygon": BUNNY_OUTLINE, "label": "fg"}]}))
    proj = tmp_path / "bunny"
    assert main(["train", str(video), "-o", str(proj), "--fg-hint", str(hints), "--max-side", "240",
                 "--iters", "300", "--seed", "0", "--progress", "none"]) == 0
    project = Project.open(proj)
    _stroke_checks(project, tmp_path, 47, BUNNY_STROKE, BUNNY_HIDDEN, BUNNY_SHOWN)
    for frame, stroke in FAR_STROKES.items():
        _stroke_checks(project, tmp_path, frame, stroke, FAR_HIDDEN[frame], FAR_SHOWN[frame])


#: hand-checked points (source px) on frames 7 to 47 frames from the outline on frame 47: the
#: bunny (his ears above all: lying flat on 40 and 32, standing up from 24 on, while he rises
#: from a crouch with his arms up) and the scene right next to them
BUNNY_POINTS = {
    40: {"ear": (135, 36), "ear tip": (124, 35), "raised left hand": (85, 37), "left arm": (110, 50),
         "raised right hand": (198, 26), "belly": (180, 150)},
    32: {"ear": (138, 37), "ear tip": (130, 36), "raised left hand": (100, 42), "raised right hand": (220, 22),
         "belly": (180, 150)},
    24: {"left ear": (184, 35), "right ear": (215, 42), "left hand": (85, 100), "face": (190, 80)},
    16: {"left ear": (193, 75), "right ear": (222, 80), "hand": (75, 105)},
    8: {"left ear": (172, 80), "right ear": (202, 85), "hand": (75, 105)},
    0: {"left ear": (160, 72), "right ear": (195, 88), "hand": (75, 105)},
}
SCENE_POINTS = {
    40: {"grass": (40, 60), "trees": (250, 60), "rocks": (60, 180), "above the ear": (130, 26),
         "below the ear": (125, 45)},
    32: {"sky": (150, 15), "leaves": (100, 20), "trees": (250, 40), "above the ear": (140, 28),
         "below the ear": (130, 46)},
    24: {"between the ears": (200, 25), "grass": (240, 60), "leaves": (150, 40), "left of the left ear": (170, 30)},
    16: {"between the ears": (207, 70), "left of the left ear": (178, 70), "above the ears": (200, 55)},
    8: {"between the ears": (190, 80), "left of the left ear": (155, 75), "right of the right ear": (215, 80)},
    0: {"above the ears": (150, 55), "between the ears": (180, 75), "right of the right ear": (215, 75)},
}


def bunny_masks(w=240):
    """Masks grown from the outline on frame 47 over frames 0..47 at working width ``w``."""
    import cv2

    from core.video import default_clip, iter_frames

    h = round(w * 270 / 480)
    frames = np.stack([cv2.resize(np.asarray(f), (w, h), interpolation=cv2.INTER_AREA)
                       for f in iter_frames(default_clip(), 0, 48)])
    doc = {"version": 1, "hints": [{"frame": 47, "polygon": BUNNY_OUTLINE, "label": "fg"}]}
    hints = parse_hints(doc, None, (480, 270), list(range(len(frames))))
    return grow_masks(frames, compute_flow(frames), hints, (480, 270))


def held(masks, t, points):
    """{name: 1 if the point lies inside frame t's mask}."""
    h, w = masks.shape[1:]
    return {k: int(masks[t, int(y * h / 270), int(x * w / 480)]) for k, (x, y) in points.items()}


def test_bunny_outline_keeps_his_ears_and_hands_far_from_the_outline():
    """Grown from the outline on frame 47 of the bundled clip, the masks hold the bunny's
    ears and raised hands on frames 40 to 0 (7 to 47 frames away; hand-checked points) and
    leave out the grass, leaves and trees right next to them. GrabCut alone gave the ears
    away from frame 46 on (2/5, 3/5, 2/4, 1/2, 1/2, 1/2 of the README's points); thin parts
    now follow the flow while they still look like themselves (core/hints.py)."""
    masks = bunny_masks()
    missed = {t: [k for k, v in held(masks, t, BUNNY_POINTS[t]).items() if not v] for t in BUNNY_POINTS}
    leaked = {t: [k for k, v in held(masks, t, SCENE_POINTS[t]).items() if v] for t in SCENE_POINTS}
    # measured: every point held but his right ear on frame 0 (47 frames away; lost since a
    # carried pixel with no background nearby is GrabCut's to decide), one scene point inside
    # (the grass between his ears on frame 16, which GrabCut fills in); at 256 px every point
    # held and 3 scene points in. The tolerance of one point on frames 16..0 is for other
    # OpenCV builds (the figures move by a point or two with the colour tests' settings)
    assert not any(missed[t] for t in (40, 32, 24)), missed
    assert sum(len(v) for v in missed.values()) <= 1, missed
    assert not any(leaked[t] for t in (40, 32, 24)), leaked
    assert sum(len(v) for v in leaked.values()) <= 2, leaked


# ---------------------------------------------------------------------------------------
# review cases: the local colour tests must not hold on to the background where they have
# no background samples nearby (a gap inside a solid object, the interior of a wide leak)
def _red_square_on_grass(T=1, size=120, hole=None, seed=0):
    """Frames [T, size, size, 3] of a noisy red 80x80 square on noisy green grass, and its
    true masks; ``hole(t)`` gives a slice pair of the square that shows the grass on frame t."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((T, size, size, 3), np.uint8)
    truth = np.zeros((T, size, size), np.uint8)
    for t in range(T):
        m = np.zeros((size, size), np.uint8)
        m[20:100, 20:100] = 1
        if hole is not None and hole(t) is not None:
            m[hole(t)] = 0
        grass = np.array((40, 150, 50), np.float32) + rng.normal(0, 6, (size, size, 3))
        red = np.array((200, 40, 40), np.float32) + rng.normal(0, 6, (size, size, 3))
        frames[t] = np.clip(np.where(m[..., None] > 0, red, grass), 0, 255).astype(np.uint8)
        truth[t] = m
    return frames, truth


def test_a_gap_grabcut_opens_inside_a_solid_object_is_not_kept():
    """The reviewer's case: GrabCut removed a 30x30 grass hole from an 80x80 red square; the
    hole lies further from the square's outside than the background window, so "nearer its
    own colours than the background around it" had no background to compare with and kept
    all 900 hole pixels (the mask then covered the grass for the rest of the clip)."""
    from core.hints import _keep_own

    hole = (slice(45, 75), slice(45, 75))
    before, _ = _red_square_on_grass()
    now, truth = _red_square_on_grass(hole=lambda t: hole, seed=1)
    square = np.zeros(truth.shape[1:], np.uint8)
    square[20:100, 20:100] = 1
    kept = _keep_own(now[0], before[0], square, square, np.zeros((120, 120, 2), np.float32), truth[0])
    assert kept[hole].sum() == 0, kept[hole].sum()


def test_a_hole_that_opens_in_a_solid_object_opens_in_the_grown_masks():
    """Grown from an outline of the whole square on frame 0, the masks open where the grass
    shows through the square from frame 1 on: a 30x30 hole in its middle (an occluder's gap,
    arm and body parting) and a notch growing 12 px a frame between two legs. Before, the
    middle hole stayed covered on every frame (GrabCut was told it was sure foreground, and
    the thin-part rule kept what it gave away)."""
    from core.hints import grow_masks

    def centre(t):
        return (slice(45, 75), slice(45, 75)) if t >= 1 else None

    def legs(t):
        return (slice(100 - min(60, 12 * t), 100), slice(48, 72)) if t >= 1 else None

    doc = {"version": 1, "hints": [{"frame": 0, "polygon": [[20, 20], [100, 20], [100, 100], [20, 100]]}]}
    for gap in (centre, legs):
        frames, truth = _red_square_on_grass(T=6, hole=gap)
        hints = parse_hints(doc, None, (120, 120), list(range(6)))
        masks = grow_masks(frames, compute_flow(frames), hints, (120, 120))
        for t in range(1, 6):  # open on the first frame the gap shows, and stay open
            assert masks[t][gap(t)].mean() < 0.05, (gap.__name__, t, masks[t][gap(t)].mean())
            assert _iou(masks[t] > 0, truth[t] > 0) > 0.95, (gap.__name__, t)


def test_a_look_alike_leak_does_not_survive_as_an_island():
    """The reviewer's case: GrabCut added a 60x80 patch of grass next to a red square; its
    interior lies further from the background outside it than the background window, so it
    had no background to be compared with and 2144 px stayed, an island the thin-part rule
    then carried on to later frames."""
    from core.hints import _drop_leaks

    frames, truth = _red_square_on_grass()
    carried = truth[0].copy()
    leak = np.zeros_like(carried)
    leak[30:90, 100:120] = 1  # grass along the square's right side, to the frame's edge ...
    leak[10:20, 20:120] = 1  # ... and above it
    cut = carried | leak
    mask = _drop_leaks(frames[0], carried, cut, cut)
    far = leak & (1 - cv2_dilate(carried, 3))
    assert mask[far > 0].sum() <= 0.02 * far.sum(), (mask[far > 0].sum(), far.sum())
    assert (mask & carried).sum() == carried.sum()


def cv2_dilate(m, r):
    import cv2

    return cv2.dilate(m, np.ones((2 * r + 1, 2 * r + 1), np.uint8))


@pytest.mark.parametrize("slack", [-2.0, 4.0])
def test_a_tight_or_loose_outline_fits_the_object_on_its_frame(slack):
    """On the hint frame a tight outline (2 px inside the disc) grows to the disc's edge and a
    loose one (4 px outside, taking in textured background) loses that background. Before,
    the mask could not leave the outline and kept the band by colour alone whatever GrabCut
    said: IoU 0.72-0.73 tight, 0.83-0.93 loose on these clips (now 0.94-0.99 both; the
    outline as drawn: 0.85 tight, 0.68 loose)."""
    from core.hints import _fit_outline, _raster
    from tests.synth import make_clip

    for seed in (0, 7):
        clip = make_clip(T=6, size=(128, 96), camera="pan_zoom", seed=seed)
        for t in (0, 5):
            seed_mask = _raster(np.array(_outline(clip, t, slack=slack)), clip.size, clip.size)
            truth = clip.masks[t] > 0.5
            fitted = _fit_outline(clip.frames[t], seed_mask, None) > 0
            assert _iou(fitted, truth) > 0.93, (seed, t, slack, _iou(fitted, truth))
            assert _iou(fitted, truth) > _iou(seed_mask > 0, truth) + 0.05

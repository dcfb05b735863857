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


@pytest.mark.slow
def test_bunny_background_stroke_is_hidden_behind_ear_and_raised_arms(tmp_path):
    """Issue #9 "How it is checked": with one foreground outline, a background stroke across
    the bunny's ear and raised hands is hidden there and shows beside them (a short fit at
    200 px: ~45 s). Without the hint the automatic masks leave those thin parts in the
    background atlas; with the hint's masks fading out like automatic ones the alpha network
    gave them up again (ear alpha 0.18: the stroke was drawn over ear, hands and head), and
    at the masks' full weight the ear still ended at 0.6-0.8 (core/objectives.py)."""
    import json
    from pathlib import Path

    import core
    from core.cli import main
    from core.edits import EditSession, parse_edits
    from core.project import Project

    video = Path(core.__file__).parent / "data" / "bbb_excerpt.mp4"
    hints = tmp_path / "hints.json"
    hints.write_text(json.dumps({"version": 1, "hints": [{"frame": 47, "polygon": BUNNY_OUTLINE, "label": "fg"}]}))
    proj = tmp_path / "bunny"
    assert main(["train", str(video), "-o", str(proj), "--fg-hint", str(hints), "--max-side", "200",
                 "--iters", "300", "--seed", "0", "--progress", "none"]) == 0
    project = Project.open(proj)
    doc = {"version": 1, "layers": [{"type": "sketch", "frame": 47, "layer": "bg", "strokes": [
        {"points": BUNNY_STROKE, "color": [1, 0, 0, 1], "width": 4.0}]}]}
    session = EditSession(project, parse_edits(doc, tmp_path, project.info))
    out = session.render_frame(47).astype(int)
    orig = np.asarray(project.frames()[47]).astype(int)
    for name, (x0, y0, x1, y1) in BUNNY_HIDDEN.items():
        diff = np.abs(out[y0:y1, x0:x1] - orig[y0:y1, x0:x1]).max(-1)
        assert diff.mean() < 24, (name, diff.mean())
    for name, (x0, y0, x1, y1) in BUNNY_SHOWN.items():
        px = out[y0:y1, x0:x1].reshape(-1, 3)
        assert (px[:, 0] > 200).mean() > 0.9 and (px[:, 1] < 60).mean() > 0.9, (name, px.mean(0))


def test_bunny_outline_keeps_his_raised_hands_seven_frames_away():
    """Grown from the outline on frame 47 of the bundled clip, frame 40's mask still holds
    the raised hands and arm (hand-checked points, source px) and none of the grass, trees
    or rocks. Thin parts have no sure core after the band's erosion; without their carried
    centre line GrabCut gave both hands to the look-alike background within 3 frames."""
    import cv2

    from core.video import default_clip, iter_frames

    W, H = 480, 270
    w, h = 240, 135
    frames = np.stack([cv2.resize(np.asarray(f), (w, h), interpolation=cv2.INTER_AREA)
                       for f in iter_frames(default_clip(), 0, 48)])
    doc = {"version": 1, "hints": [{"frame": 47, "polygon": BUNNY_OUTLINE, "label": "fg"}]}
    hints = parse_hints(doc, None, (W, H), list(range(len(frames))))
    masks = grow_masks(frames, compute_flow(frames), hints, (W, H))

    def at(x, y):
        return int(masks[40, int(y * h / H), int(x * w / W)])

    bunny = {"raised left hand": (85, 37), "left arm": (110, 50), "raised right hand": (198, 26), "belly": (180, 150)}
    scene = {"grass": (40, 60), "trees": (250, 60), "rocks": (60, 180)}
    assert all(at(*p) == 1 for p in bunny.values()), {k: at(*p) for k, p in bunny.items()}
    assert all(at(*p) == 0 for p in scene.values()), {k: at(*p) for k, p in scene.items()}
    # further away (hand-checked on frames 32 and 24: he raises his arms from a crouch) the
    # hands still hold and the sky and grass beside them stay out; the ears do not (README)
    far = {32: ({"raised left hand": (100, 42), "raised right hand": (220, 22)},
                {"sky": (150, 15), "leaves": (100, 20), "trees": (250, 40)}),
           24: ({"left hand": (85, 100), "right ear": (215, 42)},
                {"between the ears": (200, 25), "grass": (240, 60), "leaves": (150, 40)})}
    for t, (on, off) in far.items():
        got = {k: int(masks[t, int(y * h / H), int(x * w / W)]) for k, (x, y) in {**on, **off}.items()}
        assert all(got[k] == 1 for k in on) and all(got[k] == 0 for k in off), (t, got)

"""Edit propagation on ground-truth projects (no training): every check is against the
synthetic clip's analytic motion and true occlusion masks, with the tolerance stated."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from synth import make_clip, make_gt_project
from core import fsutil
from core.edits import EditSession, parse_edits
from core.edits.adjust import adjust_colors
from core.edits.raster import polygon_mask

T = 24
W, H = 128, 96


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    clip = make_clip(T=T, size=(W, H), camera="pan_zoom", seed=3)
    folder = tmp_path_factory.mktemp("gtproj")
    proj = make_gt_project(clip, folder / "proj")
    return clip, proj, folder


def session(gt, layers_doc, base=None):
    clip, proj, folder = gt
    layers = parse_edits({"version": 1, "layers": layers_doc}, base or folder, proj.info)
    return EditSession(proj, layers, mapping=clip.gt)


def carry(clip, layer, xy, f, t):
    """True position at frame t of the surface point at xy in frame f."""
    g = clip.gt
    uv = g.forward(layer, np.asarray(xy, float).reshape(-1, 2), f)
    return g.inverse(layer, uv, t).astype(np.float64)


def changed(a, b, thr=0):
    return np.abs(a.astype(int) - b.astype(int)).max(-1) > thr


# ---------------------------------------------------------------------------------------
def test_ground_truth_matches_the_rendered_frames(gt):
    """The analytic mapping really describes the pixels (else every other test is moot)."""
    clip, _, _ = gt
    rng = np.random.default_rng(0)
    xy = rng.uniform([10, 10], [W - 10, H - 10], (400, 2))
    xt = carry(clip, "bg", xy, 0, T - 1)
    ok = ((xt > 2) & (xt < [W - 2, H - 2])).all(1)
    ok &= (clip.gt.alpha(xy, 0) == 0) & (clip.gt.alpha(xt, T - 1) == 0)
    def at(img, p):
        return cv2.remap(img.astype(np.float32), p[:, :1].astype(np.float32) - 0.5,
                         p[:, 1:].astype(np.float32) - 0.5, cv2.INTER_LINEAR)[:, 0]
    err = np.abs(at(clip.frames[0], xy[ok]) - at(clip.frames[T - 1], xt[ok])).mean()
    assert ok.sum() > 100 and err < 6.0  # 8-bit levels; textures differ by resampling only


def test_sketch_vertices_follow_the_surface(gt):
    clip, _, _ = gt
    pts = [[70.0, 20.0], [95.0, 30.0], [110.0, 70.0]]
    s = session(gt, [{"type": "sketch", "frame": 0, "strokes": [{"points": pts, "color": [1, 0, 1, 1], "width": 3}]}])
    s.prepare()
    carried = s.renderer(s.layers[0])._carried[0]
    assert carried.layer == "bg"
    # the original vertices are the densified stroke's vertices 0, n1, n1+n2
    dense0 = carried.xy[0]
    idx = [int(np.argmin(np.linalg.norm(dense0 - p, axis=1))) for p in pts]
    for t in (5, 12, T - 1):
        truth = carry(clip, "bg", pts, 0, t)
        err = np.linalg.norm(carried.xy[t][idx] - truth, axis=1)
        assert np.median(err) < 1.0, (t, err)


def test_stroke_pixels_appear_at_the_true_place_with_their_width(gt):
    clip, _, _ = gt
    a, b = np.array([72.0, 14.0]), np.array([112.0, 24.0])
    color = [1.0, 0.0, 1.0, 1.0]
    s = session(gt, [{"type": "sketch", "frame": 0, "strokes": [{"points": [a.tolist(), b.tolist()],
                                                                  "color": color, "width": 3.0}]}])
    for t in (0, T // 2, T - 1):
        out = s.render_frame(t)
        orig = clip.frames[t]
        # points along the true (carried) segment are drawn in the stroke colour
        line = np.linspace(a, b, 30)
        pt = carry(clip, "bg", line, 0, t)
        vis = ((pt > 1) & (pt < [W - 1, H - 1])).all(1) & (clip.gt.alpha(pt, t) == 0)
        px = np.floor(pt[vis]).astype(int)
        got = out[px[:, 1], px[:, 0]].astype(int)
        assert vis.sum() > 10
        assert np.median(np.abs(got - [255, 0, 255]).max(1)) <= 2
        # nothing changes farther than width/2 + 1.5 px from the true segment
        yy, xx = np.mgrid[0:H, 0:W] + 0.5
        pc = np.stack([xx, yy], -1).reshape(-1, 1, 2)
        d = np.linalg.norm(pc - carry(clip, "bg", np.linspace(a, b, 200), 0, t)[None], axis=-1).min(1).reshape(H, W)
        diff = changed(out, orig)
        assert not diff[d > 3.0].any()
        # the drawn area matches length x width (the carried width stays 3 px)
        dc = np.array([255.0, 0.0, 255.0]) - orig
        cov = ((out.astype(float) - orig) * dc).sum(-1) / np.maximum((dc * dc).sum(-1), 1.0)
        area = cov[(dc * dc).sum(-1) > 100 ** 2].sum() / ((dc * dc).sum(-1) > 100 ** 2)[d < 3].mean()
        length = np.linalg.norm(carry(clip, "bg", b, 0, t) - carry(clip, "bg", a, 0, t))
        assert area == pytest.approx(length * 3.0, rel=0.25)


def test_foreground_stroke_moves_with_the_object(gt):
    clip, _, _ = gt
    q0, _ = clip.gt.object_params(np.array([0.0]))
    pts = (q0[0] + np.array([[-8.0, -3.0], [8.0, 3.0]])).tolist()
    s = session(gt, [{"type": "sketch", "frame": 0, "strokes": [{"points": pts, "color": [0, 1, 0, 1], "width": 2}]}])
    s.prepare()
    assert s.renderer(s.layers[0])._carried[0].layer == "fg"
    for t in (8, T - 1):
        out = s.render_frame(t)
        mid = carry(clip, "fg", np.mean(pts, 0), 0, t)[0]
        x, y = np.floor(mid).astype(int)
        assert abs(int(out[y, x, 1]) - 255) <= 3 and out[y, x, 0] <= 3


def test_background_paint_hides_behind_the_occluder_and_comes_back(gt):
    clip, _, folder = gt
    tm = T // 2
    q, _ = clip.gt.object_params(np.array([float(tm)]))
    p0 = carry(clip, "bg", q, tm, 0)[0]  # the bg point the disc centre covers at tm, in frame 0
    paint = np.zeros((H, W, 4), np.float32)
    cv2.circle(paint, (int(p0[0]), int(p0[1])), 4, (0.0, 0.0, 1.0, 1.0), -1)
    fsutil.write_png(folder / "blue.png", paint)
    s = session(gt, [{"type": "paint", "frame": 0, "image": "blue.png"}])
    states = []
    for t in range(T):
        out = s.render_frame(t)
        pt = carry(clip, "bg", p0, 0, t)[0]
        x, y = np.floor(pt).astype(int)
        a = clip.masks[t, y, x]
        if a >= 0.999:
            assert (out[y, x] == clip.frames[t][y, x]).all(), t  # hidden: the original occluder pixel
            states.append("hidden")
        elif a == 0:
            assert out[y, x, 2] >= 250 and out[y, x, :2].max() <= 5, t
            states.append("shown")
    first, last = states.index("hidden"), len(states) - 1 - states[::-1].index("hidden")
    assert "shown" in states[:first] and "shown" in states[last:]


def test_rigid_sticker_turns_and_scales_with_the_camera_without_warping(gt):
    clip, _, folder = gt
    img = np.zeros((8, 24, 4), np.float32)
    img[..., :3] = (1.0, 1.0, 0.0)
    img[..., 3] = 1.0
    fsutil.write_png(folder / "bar.png", img)
    center = [96.0, 78.0]  # the disc never comes near (its path is y = 48 +- 8, radius 20)
    rot = 0.3  # radians counter-clockwise
    s = session(gt, [{"type": "sticker", "frame": 0, "image": "bar.png", "center": center, "scale": 1.0,
                      "rotation": rot, "mode": "rigid"}])

    def coverage(t):
        """The sticker's composited opacity in frame t (its patch alpha), full frame."""
        cov = np.zeros((H, W))
        for p in s.layer_patches(s.layers[0], t):
            x0, y0, x1, y1 = p.box
            cov[y0:y1, x0:x1] += p.a
        return cov

    def measure(t):
        cov = coverage(t)
        ys, xs = np.nonzero(cov > 0)
        w = cov[ys, xs]
        cx, cy = np.average(xs + 0.5, weights=w), np.average(ys + 0.5, weights=w)
        m = np.cov(np.stack([xs + 0.5 - cx, ys + 0.5 - cy]), aweights=w)
        evals, evecs = np.linalg.eigh(m)
        major = evecs[:, 1]
        return np.array([cx, cy]), math.atan2(major[1], major[0]), math.sqrt(evals[1] / evals[0]), w.sum()

    c0, a0, r0, area0 = measure(0)
    assert np.allclose(c0, center, atol=0.05)
    assert area0 == pytest.approx(8 * 24, rel=0.01)
    assert math.remainder(a0 - (-rot), math.pi) == pytest.approx(0.0, abs=math.radians(2))
    for t in (T // 2, T - 1):
        ct, at, rt, area = measure(t)
        scale, turn = clip.gt.bg_similarity(0, t)
        assert np.linalg.norm(ct - carry(clip, "bg", center, 0, t)[0]) < 0.75
        assert math.remainder(at - (a0 + turn), math.pi) == pytest.approx(0.0, abs=math.radians(1.5))
        assert rt == pytest.approx(r0, rel=0.05)  # same aspect ratio: not warped
        assert math.sqrt(area / area0) == pytest.approx(scale, rel=0.02)
        # and the frame shows it: composited sticker colour where it is opaque
        out = s.render_frame(t)
        solid = coverage(t) > 0.999
        assert solid.sum() > 50 and (np.abs(out[solid].astype(int) - [255, 255, 0]).max(-1) <= 1).all()
    assert abs(clip.gt.bg_similarity(0, T - 1)[1]) > math.radians(5)  # the test has teeth: the camera turns


def test_adjust_changes_only_the_region(gt):
    clip, _, _ = gt
    poly = [[80.0, 60.0], [115.0, 62.0], [112.0, 90.0], [84.0, 88.0]]
    s = session(gt, [{"type": "adjust", "frame": 0, "region": {"polygon": poly}, "hue": 0.3,
                      "saturation": 1.6, "brightness": 0.05, "contrast": 1.2, "feather": 1.0}])
    for t in (0, T - 1):
        out = s.render_frame(t)
        orig = clip.frames[t]
        region = polygon_mask(carry(clip, "bg", poly, 0, t), W, H)
        outside = cv2.dilate((region > 0).astype(np.uint8), np.ones((7, 7), np.uint8)) == 0
        inside = cv2.erode((region >= 1).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        inside &= clip.masks[t] == 0
        assert inside.sum() > 200
        assert (out[outside] == orig[outside]).all()
        want = adjust_colors(orig[inside].astype(np.float32) / 255, 0.3, 1.6, 0.05, 1.2) * 255
        assert np.abs(out[inside] - want).max() <= 1.5


def test_atlas_layer_shows_where_its_texels_are_seen(gt):
    clip, proj, folder = gt
    atlas = (np.clip(proj.maps().atlas["bg"], 0, 1) * 255 + 0.5).astype(np.uint8)
    A = atlas.shape[0]
    painted = atlas.copy()
    i0, i1 = int(A * 0.55), int(A * 0.65)  # a square of the bg atlas
    painted[i0:i1, i0:i1] = (255, 0, 0)
    fsutil.write_png(folder / "atlas_painted.png", painted)
    s = session(gt, [{"type": "atlas", "layer": "bg", "image": "atlas_painted.png"}])
    lo, hi = 2 * i0 / A - 1, 2 * i1 / A - 1
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    xy = np.stack([xx, yy], -1).reshape(-1, 2)
    hits = 0
    for t in (0, T - 1):
        out = s.render_frame(t)
        uv = clip.gt.forward("bg", xy, t).reshape(H, W, 2)
        margin = 2.5 / clip.gt.world_scale  # 2.5 px in uv
        core_ = ((uv > lo + margin) & (uv < hi - margin)).all(-1) & (clip.masks[t] == 0)
        far = ~((uv > lo - margin) & (uv < hi + margin)).all(-1)
        hits += core_.sum()
        assert (np.abs(out[core_].astype(int) - [255, 0, 0]).max(-1) <= 3).all()
        assert (out[far] == clip.frames[t][far]).all()
    assert hits > 50


def test_layer_order_and_visibility(gt):
    clip, _, folder = gt
    red = np.zeros((H, W, 4), np.float32)
    red[20:40, 90:110] = (1, 0, 0, 1)
    green = np.zeros((H, W, 4), np.float32)
    green[30:50, 100:120] = (0, 1, 0, 1)
    fsutil.write_png(folder / "red.png", red)
    fsutil.write_png(folder / "green.png", green)
    lr = {"type": "paint", "frame": 0, "image": "red.png", "layer": "bg"}
    lg = {"type": "paint", "frame": 0, "image": "green.png", "layer": "bg"}
    y, x = 35, 105  # in both squares
    out = session(gt, [lr, lg]).render_frame(0)
    assert tuple(out[y, x]) == (0, 255, 0)
    out = session(gt, [lg, lr]).render_frame(0)
    assert tuple(out[y, x]) == (255, 0, 0)
    hidden = session(gt, [lg, dict(lr, visible=False)]).render_frame(0)
    assert (hidden == session(gt, [lg]).render_frame(0)).all()
    assert (session(gt, [dict(lg, visible=False)]).render_frame(5) == clip.frames[5]).all()


def test_session_rerenders_after_a_new_stroke_reusing_unchanged_layers(gt):
    clip, _, folder = gt
    red = np.zeros((H, W, 4), np.float32)
    red[20:40, 90:110] = (1, 0, 0, 0.5)
    fsutil.write_png(folder / "half_red.png", red)
    stroke1 = {"points": [[70, 20], [100, 30]], "color": [1, 1, 1, 1], "width": 2}
    stroke2 = {"points": [[60, 70], [90, 85]], "color": [0, 0, 0, 1], "width": 4}
    doc = [{"type": "paint", "frame": 0, "image": "half_red.png"},
           {"type": "sketch", "frame": 0, "strokes": [stroke1]}]
    s = session(gt, doc)
    s.render_frame(7)
    paint_renderer = s.renderer(s.layers[0])
    doc2 = [doc[0], {"type": "sketch", "frame": 0, "strokes": [stroke1, stroke2]}]
    s.set_layers(parse_edits({"layers": doc2}, folder, s.project.info))
    again = s.render_frame(7)
    assert s.renderer(s.layers[0]) is paint_renderer
    fresh = session(gt, doc2).render_frame(7)
    assert (again == fresh).all()
    assert changed(again, session(gt, doc).render_frame(7)).sum() > 20


def test_deformable_sticker_lands_where_the_rigid_one_does_on_a_similarity_camera(gt):
    """With a camera that only pans/zooms/turns, the surface map is a similarity: a sticker
    carried through the atlas (deform) must cover the same place as the rigid one."""
    clip, _, folder = gt
    img = np.zeros((10, 20, 4), np.float32)
    img[..., :3] = (0.0, 1.0, 1.0)
    img[..., 3] = 1.0
    fsutil.write_png(folder / "cyan.png", img)
    base = {"type": "sticker", "frame": 0, "image": "cyan.png", "center": [100.0, 80.0], "scale": 1.2, "rotation": -0.4}
    rigid = session(gt, [dict(base, mode="rigid")])
    deform = session(gt, [dict(base, mode="deform")])

    def cov(s, t):
        c = np.zeros((H, W))
        for p in s.layer_patches(s.layers[0], t):
            x0, y0, x1, y1 = p.box
            c[y0:y1, x0:x1] += p.a
        return c

    for t in (0, T - 1):
        a, b = cov(rigid, t), cov(deform, t)
        assert a.sum() > 100
        assert b.sum() == pytest.approx(a.sum(), rel=0.05)
        assert np.abs(a - b).sum() / a.sum() < 0.15  # same footprint up to resampling at the rim


def test_single_layer_project_edits_the_background_only(tmp_path):
    clip = make_clip(T=6, size=(64, 48), camera="pan", occluder=False, seed=2)
    proj = make_gt_project(clip, tmp_path / "p1", atlas_size=128)
    assert proj.info.layers == ["bg"] and not proj.maps().alpha.any()
    paint = np.zeros((48, 64, 4), np.float32)
    paint[10:20, 30:40] = (1, 0, 0, 1)
    fsutil.write_png(tmp_path / "p.png", paint)
    doc = [{"type": "paint", "frame": 0, "image": "p.png"},
           {"type": "sketch", "frame": 0, "strokes": [{"points": [[5, 40], [25, 40]], "width": 2}]}]
    s = EditSession(proj, parse_edits({"layers": doc}, tmp_path, proj.info), mapping=clip.gt)
    out = s.render_frame(5)
    c = carry(clip, "bg", [35.0, 15.0], 0, 5)[0]
    assert tuple(out[int(c[1]), int(c[0])]) == (255, 0, 0)
    with pytest.raises(Exception, match="layer 'fg' is not in this project"):
        parse_edits({"layers": [dict(doc[0], layer="fg")]}, tmp_path, proj.info)


def test_atlas_layer_with_alpha_uses_its_alpha(gt):
    clip, proj, folder = gt
    A = proj.maps().atlas["bg"].shape[0]
    rgba = np.zeros((A, A, 4), np.float32)
    rgba[..., :3] = 1.0  # white everywhere, but only this square is opaque
    i0, i1 = int(A * 0.45), int(A * 0.5)
    rgba[i0:i1, i0:i1, 3] = 1.0
    fsutil.write_png(folder / "atlas_rgba.png", rgba)
    s = session(gt, [{"type": "atlas", "layer": "bg", "image": "atlas_rgba.png"}])
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    uv = clip.gt.forward("bg", np.stack([xx, yy], -1).reshape(-1, 2), 0).reshape(H, W, 2)
    lo, hi = 2 * i0 / A - 1, 2 * i1 / A - 1
    m = 2.5 / clip.gt.world_scale
    inside = ((uv > lo + m) & (uv < hi - m)).all(-1) & (clip.masks[0] == 0)
    outside = ~((uv > lo - m) & (uv < hi + m)).all(-1)
    out = s.render_frame(0)
    assert inside.sum() > 5 and (out[inside] >= 252).all()
    assert (out[outside] == clip.frames[0][outside]).all()


def test_rigid_sticker_on_the_foreground_turns_with_the_object(gt):
    clip, _, folder = gt
    img = np.zeros((6, 16, 4), np.float32)
    img[..., :3] = (1.0, 0.5, 0.0)
    img[..., 3] = 1.0
    fsutil.write_png(folder / "bar_fg.png", img)
    q0, th0 = clip.gt.object_params(np.array([0.0]))
    s = session(gt, [{"type": "sticker", "frame": 0, "image": "bar_fg.png", "center": q0[0].tolist(),
                      "scale": 1.0, "rotation": 0.0, "mode": "rigid"}])

    def measure(t):
        cov = np.zeros((H, W))
        for p in s.layer_patches(s.layers[0], t):
            x0, y0, x1, y1 = p.box
            cov[y0:y1, x0:x1] += p.a
        ys, xs = np.nonzero(cov > 0)
        w = cov[ys, xs]
        c = np.array([np.average(xs + 0.5, weights=w), np.average(ys + 0.5, weights=w)])
        evals, evecs = np.linalg.eigh(np.cov(np.stack([xs + 0.5 - c[0], ys + 0.5 - c[1]]), aweights=w))
        return c, math.atan2(evecs[1, 1], evecs[0, 1])

    c0, a0 = measure(0)
    qT, thT = clip.gt.object_params(np.array([float(T - 1)]))
    cT, aT = measure(T - 1)
    assert np.linalg.norm(cT - qT[0]) < 0.75  # moved with the object (it travels ~77 px)
    assert math.remainder(aT - a0 - (thT[0] - th0[0]), math.pi) == pytest.approx(0.0, abs=math.radians(2))


def test_rendering_stops_when_cancelled(gt, tmp_path):
    from core.edits import edit_command
    from core.errors import Cancelled
    from core.progress import Progress

    clip, proj, folder = gt
    edits = folder / "cancel.json"
    edits.write_text('{"layers": [{"type": "sketch", "frame": 0, "strokes": [{"points": [[10, 10], [50, 20]]}]}]}')

    class StopAfter(Progress):
        def update(self, stage, step, total, force=False, **extra):
            if stage == "render" and step >= 3:
                self.cancel.cancel()
            super().update(stage, step, total, force, **extra)

    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        edit_command(proj.path, edits, out, StopAfter("none"), project=proj)
    assert len(list(out.glob("*.png"))) < T

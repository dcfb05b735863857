"""The fast render paths against their references: tiled compositing, tiled stroke rasters,
the PNG encoder. Speed must not change a pixel: every comparison here is exact (bytes)."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from synth import make_clip, make_gt_project
from core import png
from core.errors import InveError
from core.edits import EditSession, parse_edits
from core.edits.context import Patch
from core.edits.raster import stroke_coverage, stroke_coverage_tiles
from core.edits.render import (alpha_over, composite, composite_clusters, composite_overlay,
                               composite_overlay_clusters)
from core.edits.sketch import render_stroke, render_stroke_dense


def random_patches(rng: np.random.Generator, W: int, H: int, n: int) -> list[Patch]:
    """Overlapping premultiplied patches of many sizes, some at the frame's edges, some sparse."""
    out = []
    for _ in range(n):
        w, h = int(rng.integers(1, W)), int(rng.integers(1, H))
        x0, y0 = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        a = rng.random((h, w)).astype(np.float32)
        a[rng.random((h, w)) < 0.5] = 0.0  # holes: transparent pixels inside a patch
        if rng.random() < 0.3:
            a[:] = 1.0
        col = rng.random((h, w, 3)).astype(np.float32)
        out.append(Patch(x0, y0, col * a[..., None], a))
    return out


@pytest.mark.parametrize("W,H,tile", [(160, 90, 64), (101, 77, 16), (64, 64, 64), (33, 200, 7)])
def test_tiled_composite_equals_cluster_composite(W, H, tile):
    rng = np.random.default_rng(W * H + tile)
    frame = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    for n in (0, 1, 5, 12):
        patches = random_patches(rng, W, H, n)
        ref = composite_clusters(frame, patches)
        got = composite(frame, patches, tile=tile)
        assert np.array_equal(got, ref)
        assert np.array_equal(composite_overlay((H, W), patches, tile=tile),
                              composite_overlay_clusters((H, W), patches))
    # untouched pixels stay the source's bytes exactly
    p = Patch(3, 4, np.ones((2, 2, 3), np.float32), np.ones((2, 2), np.float32))
    got = composite(frame, [p], tile=tile)
    mask = np.ones((H, W), bool)
    mask[4:6, 3:5] = False
    assert np.array_equal(got[mask], frame[mask]) and (got[4:6, 3:5] == 255).all()


def test_alpha_over_bbox_equals_whole_frame_formula():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (50, 70, 3)).astype(np.uint8)
    ov = np.zeros((50, 70, 4), np.uint8)
    ov[10:20, 30:60] = rng.integers(0, 256, (10, 30, 4))
    a = ov[..., 3:4].astype(np.float32) * (1.0 / 255.0)
    ref = ((frame.astype(np.float32) * (1.0 - a) + ov[..., :3].astype(np.float32) * a) + 0.5).astype(np.uint8)
    assert np.array_equal(alpha_over(frame, ov), ref)
    assert np.array_equal(alpha_over(frame, np.zeros_like(ov)), frame)


@pytest.mark.parametrize("tile", [64, 13])
def test_stroke_tiles_equal_dense_stroke(tile):
    W, H = 300, 170
    rng = np.random.default_rng(tile)
    cases = [rng.uniform([-40, -40], [W + 40, H + 40], (6, 2)) for _ in range(6)]
    cases.append(np.array([[10.3, 20.7]] * 2))  # a dot
    cases.append(np.array([[-50.0, -50.0], [-20.0, -30.0]]))  # off the frame
    for pts in cases:
        a, b = pts[:-1], pts[1:]
        for radius in (0.4, 2.5, 9.0):
            dense = stroke_coverage(a, b, radius, W, H)
            boxes, cov = stroke_coverage_tiles(a, b, radius, W, H, tile)
            full = np.zeros((H, W), np.float32)
            for (x0, y0, x1, y1), c in zip(boxes, cov):
                assert x0 % tile == 0 and y0 % tile == 0 and x1 - x0 <= tile and y1 - y0 <= tile
                assert not (c[y1 - y0:] != 0).any() and not (c[:, x1 - x0:] != 0).any()
                full[y0:y1, x0:x1] = c[:y1 - y0, :x1 - x0]
            ref = np.zeros((H, W), np.float32)
            if dense is not None:
                (x0, y0, x1, y1), c = dense
                ref[y0:y1, x0:x1] = c
            assert np.array_equal(full, ref)
            assert len(boxes) == len({bx for bx in boxes})
            if dense is None:
                assert not boxes


@pytest.mark.parametrize("work_scale", [1.0, 0.5])
def test_tiled_strokes_render_like_dense_strokes(tmp_path, work_scale):
    """Through a real render context (occlusion by the baked alpha, at equal and smaller
    working size): the tiled stroke patches composite to the dense patch's bytes."""
    clip = make_clip(T=6, size=(200, 120), camera="pan_zoom", seed=5)
    proj = make_gt_project(clip, tmp_path / "p", atlas_size=128, work_scale=work_scale)
    doc = {"version": 1, "layers": [{"type": "sketch", "frame": 0, "strokes": [
        {"points": [[10, 100], [80, 20], [190, 60]], "color": [1, 0.2, 0.1, 0.8], "width": 5.0},
        {"points": [[100, 60], [105, 64]], "color": [0, 0, 1, 1], "width": 2.0, "layer": "fg"}]}]}
    s = EditSession(proj, parse_edits(doc, tmp_path, proj.info), mapping=clip.gt)
    s.prepare()
    rend = s.renderer(s.layers[0])
    frame = np.asarray(proj.frames()[3])
    for t in range(6):
        s.frame_patches(t)  # settles the strokes at t
        for stroke, carried in zip(rend.spec.strokes, rend._carried):
            tiles = render_stroke(s.ctx, stroke, carried, t)
            dense = render_stroke_dense(s.ctx, stroke, carried, t)
            ref = composite_clusters(frame, [dense] if dense is not None else [])
            assert np.array_equal(composite(frame, tiles), ref)
            assert np.array_equal(composite_overlay((120, 200), tiles),
                                  composite_overlay_clusters((120, 200), [dense] if dense is not None else []))
            if dense is not None:
                assert sum(p.a.size for p in tiles) < dense.a.size or dense.a.size <= 64 * 64 * 4


@pytest.mark.parametrize("shape", [(7, 5), (31, 17, 3), (31, 17, 4), (1, 1, 4), (9, 4, 2)])
def test_png_encoder_round_trips(shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape).astype(np.uint8)
    data = png.encode(img)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))).reshape(img.shape), img)
    dec = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        dec = dec[..., [2, 1, 0, 3][:img.shape[2]]]
    if img.ndim == 2 or img.shape[2] != 2:
        assert np.array_equal(dec.reshape(img.shape), img)
    with pytest.raises(TypeError):
        png.encode(img.astype(np.float32))


@pytest.mark.parametrize("backend", ["isal", "zlib"])
@pytest.mark.parametrize("level", [0, 1, 3])
def test_png_encoder_round_trips_with_either_deflate(backend, level, monkeypatch):
    """ISA-L's deflate (the fast one) and zlib's (where isal is missing) both give PNGs readers load
    exactly, a video-like frame and a mostly transparent overlay, at every effort level."""
    if backend == "zlib":
        monkeypatch.setattr(png, "_isal", None)
    elif png._isal is None:
        pytest.skip("isal is not installed")
    rng = np.random.default_rng(level)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3)).astype(np.uint8), (5, 5), 0)
    overlay = np.zeros((40, 70, 4), np.uint8)
    overlay[10:20, 5:60] = (200, 30, 40, 255)
    for img in (frame, overlay):
        data = png.encode(img, level)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), img)


@pytest.mark.skipif(not __import__("core.edits.parallel", fromlist=["can_fork"]).can_fork(),
                    reason="forked render workers are Linux-only")
def test_parallel_render_equals_sequential_and_writes_the_same_pngs(tmp_path, monkeypatch):
    """Forked render workers give the frames of the in-process path, in order; PNGs they
    encode are byte-identical to the writer's own, recorded under the output rule."""
    from core import fsutil
    from core.video import EncodedPNG, encode_png_frame, write_png_sequence

    clip = make_clip(T=20, size=(96, 64), camera="pan_zoom", seed=7)
    proj = make_gt_project(clip, tmp_path / "p", atlas_size=128)
    doc = {"version": 1, "layers": [
        {"type": "sketch", "frame": 0, "strokes": [{"points": [[10, 50], [50, 10], [90, 40]],
                                                    "color": [1, 0, 0, 1], "width": 3.0}]},
        {"type": "adjust", "frame": 0, "region": {"polygon": [[5, 5], [40, 8], [30, 40]]}, "hue": 0.3}]}
    layers = parse_edits(doc, tmp_path, proj.info)
    from core.edits import parallel

    for overlay in (False, True):
        # blocks of 8 frames; with overlays, blocks of 2 (what a large frame gets)
        monkeypatch.setattr(parallel, "AHEAD_BYTES", 1 if overlay else parallel.AHEAD_BYTES)
        seq = [img for _, img in EditSession(proj, layers, mapping=clip.gt).render_all(overlay=overlay)]
        par = list(EditSession(proj, layers, mapping=clip.gt).render_all(overlay=overlay, workers=2))
        assert [t for t, _ in par] == list(range(20))
        assert all(np.array_equal(a, b) for a, (_, b) in zip(seq, par))
    seq = [img for _, img in EditSession(proj, layers, mapping=clip.gt).render_all()]
    enc = list(EditSession(proj, layers, mapping=clip.gt).render_all(workers=3, encode=encode_png_frame))
    assert all(isinstance(e, EncodedPNG) for _, e in enc)
    write_png_sequence(tmp_path / "a", ((t, img) for t, img in enumerate(seq)))
    write_png_sequence(tmp_path / "b", enc)
    for t in range(20):
        name = f"{t:04d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert fsutil.is_ours(tmp_path / "b" / name)
    assert fsutil.output_dir_state(tmp_path / "b")["complete"]


def test_blender_loads_the_fast_pngs(tmp_path):
    """The preview and overlay PNGs are read by Blender itself (image strips): same pixels."""
    bpy = pytest.importorskip("bpy")
    rng = np.random.default_rng(3)
    img = np.zeros((37, 53, 4), np.uint8)
    img[5:30, 7:40] = rng.integers(0, 256, (25, 33, 4))
    path = tmp_path / "overlay.png"
    path.write_bytes(png.encode(img))
    im = bpy.data.images.load(str(path))
    try:
        assert tuple(im.size) == (53, 37)
        px = np.empty(53 * 37 * 4, np.float32)
        im.pixels.foreach_get(px)
        # Blender stores rows bottom-up, floats 0..1; 8-bit PNGs stay straight alpha
        got = np.round(px.reshape(37, 53, 4)[::-1] * 255.0).astype(np.uint8)
        assert np.array_equal(got, img)
    finally:
        bpy.data.images.remove(im)


@pytest.mark.skipif(not __import__("core.edits.parallel", fromlist=["can_fork"]).can_fork(),
                    reason="forked render workers are Linux-only")
def test_edit_command_with_workers_writes_what_one_process_writes(tmp_path, monkeypatch):
    """`inve edit` through render workers: the same PNG bytes and the same movie as in one process."""
    import json

    from core.edits import edit_command
    from core.progress import Progress
    from core.project import Project
    from core.video import iter_frames

    clip = make_clip(T=18, size=(80, 48), camera="pan_zoom", seed=9)
    proj = make_gt_project(clip, tmp_path / "p", atlas_size=128)
    monkeypatch.setattr(Project, "mapping", lambda self, device="cpu": clip.gt)
    from core import fsutil
    from core.video import write_movie

    # frames decoded from the source movie, as `inve train` leaves a project: the workers then
    # read them from the pass's one shared decoder (core.video.FrameRing)
    write_movie(tmp_path / "src.mp4", iter(clip.frames), clip.fps)
    (tmp_path / "p" / Project.FRAMES).unlink()
    proj.info.source = str(tmp_path / "src.mp4")
    proj.save_info()
    assert type(Project.open(tmp_path / "p").frames()).__name__ == "FrameSource"

    # a paint layer too: its drift correction chains far frames through link frames that lie
    # in the other worker's blocks (read ahead by each worker, never seeked back to)
    paint = np.zeros((48, 80, 4), np.float32)
    paint[10:24, 20:44] = (0.1, 0.9, 0.2, 0.8)
    fsutil.write_png(tmp_path / "paint.png", paint)
    doc = {"version": 1, "layers": [{"type": "paint", "frame": 0, "image": "paint.png", "layer": "bg"},
                                    {"type": "sketch", "frame": 0, "strokes": [
        {"points": [[5, 40], [40, 8], [75, 30]], "color": [0, 1, 0, 1], "width": 2.5}]}]}
    (tmp_path / "EDITS.json").write_text(json.dumps(doc))
    for w in (1, 2):
        edit_command(tmp_path / "p", tmp_path / "EDITS.json", tmp_path / f"png{w}", Progress("none"), render_workers=w)
        edit_command(tmp_path / "p", tmp_path / "EDITS.json", tmp_path / f"m{w}.mp4", Progress("none"),
                     render_workers=w)
    names = sorted(p.name for p in (tmp_path / "png1").glob("*.png"))
    assert len(names) == 18 and names == sorted(p.name for p in (tmp_path / "png2").glob("*.png"))
    assert all((tmp_path / "png1" / n).read_bytes() == (tmp_path / "png2" / n).read_bytes() for n in names)
    a = np.stack(list(iter_frames(tmp_path / "m1.mp4", 0, 18)))
    b = np.stack(list(iter_frames(tmp_path / "m2.mp4", 0, 18)))
    assert np.array_equal(a, b)
    assert fsutil.output_dir_state(tmp_path / "png2")["complete"]

    # the workers write their own PNGs (core.video.PNGFrameWriter); the rule holds as before:
    # a frame the user changed is not replaced, a cancel keeps what landed, and no temporary
    # file of a worker stays behind either way
    from core.errors import Cancelled, InveError

    def temps(folder):
        return [q.name for q in folder.iterdir() if fsutil.TMP_TAG in q.name]

    (tmp_path / "png2" / "0003.png").write_bytes(b"mine")
    with pytest.raises(InveError, match="changed after inve wrote it"):
        edit_command(tmp_path / "p", tmp_path / "EDITS.json", tmp_path / "png2", Progress("none"), render_workers=2)
    assert (tmp_path / "png2" / "0003.png").read_bytes() == b"mine" and not temps(tmp_path / "png2")

    class CancelAt(Progress):
        def update(self, stage, step, total, force=False, **extra):
            if stage == "render" and step >= 7:
                self.cancel.cancel()
            super().update(stage, step, total, force, **extra)

    with pytest.raises(Cancelled):
        edit_command(tmp_path / "p", tmp_path / "EDITS.json", tmp_path / "png3", CancelAt("none"), render_workers=2)
    state = fsutil.output_dir_state(tmp_path / "png3")
    landed = sorted(q.name for q in (tmp_path / "png3").glob("*.png"))
    assert state["complete"] is False and 5 <= len(landed) < 18 and set(landed) <= set(state["files"])
    assert all((tmp_path / "png3" / n).read_bytes() == (tmp_path / "png1" / n).read_bytes() for n in landed)
    assert not temps(tmp_path / "png3")


def test_frame_ring_memory_is_bounded_by_bytes_not_only_frames():
    """The shared decoder keeps two blocks of slack beyond the blocks handed out, within
    RING_BYTES: large frames keep only the (workers + 1) blocks it cannot do without."""
    from core.edits.parallel import RING_BYTES, block_frames, ring_slots

    for (W, H), workers in (((640, 480), 2), ((1920, 1080), 4), ((3840, 2160), 4), ((7680, 4320), 4)):
        B, fb = block_frames(W, H), 3 * W * H
        n = ring_slots(workers, B, fb)
        assert n >= (workers + 1) * B
        assert n * fb <= RING_BYTES or n == (workers + 1) * B
    assert ring_slots(2, 8, 3 * 640 * 480) == 5 * 8  # small frames: the slack kept
    assert ring_slots(4, 2, 3 * 3840 * 2160) == 10  # 4K: 249 MB, not 14 slots' 348 MB


@pytest.mark.skipif(not __import__("core.edits.parallel", fromlist=["can_fork"]).can_fork(),
                    reason="forked render workers are Linux-only")
def test_frame_ring_decodes_once_for_every_reader(tmp_path):
    """The pass's one decoder: each forked reader gets the frames of a straight decode, in
    order, whatever it skips; one that leaves early is not waited for; a frame the ring has
    passed is decoded by the reader itself; a failing decoder stops the readers."""
    import hashlib
    import multiprocessing as mp

    from core.video import FrameRing, FrameSource, iter_frames, write_movie

    clip = make_clip(T=20, size=(64, 48), camera="pan_zoom", seed=3)
    movie = tmp_path / "c.mp4"
    write_movie(movie, iter(clip.frames), clip.fps)
    want = [hashlib.sha1(f.tobytes()).hexdigest() for f in iter_frames(movie, 0, 20)]
    src = FrameSource(movie, list(range(20)), (64, 48))
    ctx = mp.get_context("fork")
    out = ctx.Queue()

    def reader(ring: FrameRing, i: int, frames: list[int]) -> None:
        ring.join(i)
        src.forget_decoder()
        src.read_from(ring)
        try:
            out.put((i, [(t, hashlib.sha1(src[t].tobytes()).hexdigest()) for t in frames], src.decoded))
        finally:
            ring.leave()

    ring = FrameRing(src, 2, 3)  # 3 slots: the readers hold the decoder back
    plan = {0: list(range(20)) + [1], 1: [2, 5, 6, 11]}  # 1 leaves at 11; 0 asks for 1 again at the end
    procs = [ctx.Process(target=reader, args=(ring, i, f)) for i, f in plan.items()]
    for p in procs:
        p.start()
    ring.start()
    got = {}
    for _ in procs:
        i, pairs, decoded = out.get(timeout=60)
        got[i] = (pairs, decoded)
    for p in procs:
        p.join(10)
    ring.close()
    assert ring.error is None
    for i, frames in plan.items():
        assert got[i][0] == [(t, want[t]) for t in frames]
    assert got[0][1] == 1 and got[1][1] == 0  # only frame 1, asked for after the ring passed it

    ring = FrameRing(FrameSource(tmp_path / "gone.mp4", list(range(20)), (64, 48)), 1, 3)
    p = ctx.Process(target=reader, args=(ring, 0, [0]))
    p.start()
    ring.start()
    p.join(30)
    ring.close()
    assert p.exitcode != 0 and isinstance(ring.error, InveError) and "gone" in str(ring.error)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="render workers are forked on Linux only")
def test_a_render_worker_dies_with_its_killed_parent(tmp_path):
    """A parent killed without cleanup (kill -9) must not leave its forked workers waiting."""
    import os
    import signal
    import subprocess
    import time

    pidfile = tmp_path / "child.pid"
    script = (
        "import os, sys, time\n"
        "from core.edits.parallel import _die_with_parent\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    _die_with_parent()\n"
        f"    open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=str(Path(__file__).resolve().parents[1]))
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pidfile.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            try:
                with open(f"/proc/{child}/stat") as f:  # a zombie waiting to be reaped is gone too
                    if f.read().split(")")[-1].split()[0] == "Z":
                        break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the worker outlived its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_pass_matches_chain_links_at_their_frames_and_renders_the_same(tmp_path, monkeypatch):
    """A pass in frame order keeps every chain link's pixels as it reaches the link's frame
    (the frame is decoded then; later, asking for it would restart the decoder from the
    clip's start), so a link needed later is matched without decoding; the frames are those
    of a pass that does not keep them, and of frames rendered out of order (a preview)."""
    from core import fsutil
    from core.edits.context import RenderContext
    from core.refine import CHAIN_STRIDE

    T = 28
    clip = make_clip(T=T, size=(96, 64), camera="pan_zoom", seed=5)
    proj = make_gt_project(clip, tmp_path / "p", atlas_size=128)
    paint = np.zeros((64, 96, 4), np.float32)
    paint[20:34, 30:60] = (0.1, 0.9, 0.2, 0.8)
    fsutil.write_png(tmp_path / "paint.png", paint)
    doc = {"version": 1, "layers": [{"type": "paint", "frame": 2, "image": "paint.png", "layer": "bg"},
                                    {"type": "sketch", "frame": 2, "strokes": [
                                        {"points": [[10, 50], [50, 12], [90, 40]], "color": [1, 0, 0, 1],
                                         "width": 3}]}]}
    layers = parse_edits(doc, tmp_path, proj.info)
    s = EditSession(proj, layers, mapping=clip.gt)
    eager = [img for _, img in s.render_all()]
    links = [2 + k * CHAIN_STRIDE for k in range(1, (T - 3) // CHAIN_STRIDE + 1)]  # 10, 18, 26
    for lv in s.ctx.levels():
        assert sorted(lv._pinned) == links  # kept as the pass reached them
    # a link needed after the pass: matched from the kept pixels, no frame decoded
    s.ctx.frames = None
    s.ctx._links.clear()
    c = s.renderer(layers[1])._carried[0]
    s.ctx._link(c.layer, c.dense[:4], c.t, links[-1])
    monkeypatch.setattr(RenderContext, "visit", lambda self, t: None)
    lazy = [img for _, img in EditSession(proj, layers, mapping=clip.gt).render_all()]
    assert all(np.array_equal(a, b) for a, b in zip(eager, lazy))
    jumpy = EditSession(proj, layers, mapping=clip.gt)
    for t in (27, 3, 19, 11):
        assert np.array_equal(jumpy.render_frame(t), eager[t])

"""The engine service (``inve serve``) through the pure-Python client, as the add-on drives it.

The service runs as a real subprocess on ground-truth synthetic projects (tests/serve_gt.py
swaps the trained networks for the clip's analytic mapping; everything else is the shipped
code), plus one plain ``python -m core serve`` for what needs no networks. Every frame the
service renders is checked against ``inve edit`` or against the source pixels.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from synth import make_clip, make_gt_project
from core import cli, fsutil
from core.edits.adjust import adjust_colors
from core.edits.raster import polygon_mask
from core.edits.render import alpha_over
from core.project import Project
from inve_blender.io.engine_client import EngineClient, EngineError

ROOT = Path(__file__).resolve().parents[1]
W, H, T, FIRST = 96, 64, 10, 100
CLIP = {"T": T, "size": [W, H], "camera": "pan_zoom", "seed": 7}
ADJ_POLY = [[4, 4], [30, 4], [30, 24], [4, 24]]
LAYERS = [
    {"type": "sketch", "frame": FIRST + 2, "strokes": [{"points": [[50, 10], [80, 20]], "color": [1, 0, 0, 1], "width": 3}]},
    {"type": "paint", "frame": FIRST, "image": "paint.png"},
    {"type": "sticker", "frame": FIRST, "image": "logo.png", "center": [60, 50], "scale": 1.0, "rotation": 0.2},
    {"type": "adjust", "frame": FIRST, "layer": "bg", "region": {"polygon": ADJ_POLY}, "hue": 0.3, "saturation": 1.5},
]
TIMEOUT = 120


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    clip = make_clip(T=T, size=(W, H), camera="pan_zoom", seed=7)
    project = make_gt_project(clip, folder / "proj", atlas_size=128, work_scale=0.5, first_frame=FIRST)
    assets = folder / "assets"
    assets.mkdir()
    paint = np.zeros((H, W, 4), np.float32)
    paint[36:46, 70:85] = (0, 0, 1, 1)
    fsutil.write_png(assets / "paint.png", paint)
    fsutil.write_png(assets / "logo.png", np.ones((6, 12, 4), np.float32))
    (assets / "EDITS.json").write_text(json.dumps({"version": 1, "layers": LAYERS}))
    delay = folder / "delay.txt"
    delay.write_text("0")
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"clip": CLIP, "delay_file": str(delay)}))
    client = EngineClient([sys.executable, str(ROOT / "tests" / "serve_gt.py"), str(spec)], env=env())
    yield clip, project, assets, client, delay
    client.shutdown(10)


@pytest.fixture
def gt_mapping(monkeypatch, setup):
    clip = setup[0]
    monkeypatch.setattr(Project, "mapping", lambda self, device="cpu": clip.gt)


def call(client, op, **fields):
    return client.request(op, **fields).result(TIMEOUT)


def wait(req, timeout=TIMEOUT):
    """Collect a request's events until it ends: (events, result or EngineError)."""
    events, end = [], time.monotonic() + timeout
    while not req.done():
        events += req.poll_events()
        assert time.monotonic() < end, "request did not finish"
        time.sleep(0.005)
    events += req.poll_events()
    try:
        return events, req.result(0)
    except EngineError as exc:
        return events, exc


def read(path) -> np.ndarray:
    return iio.imread(path)


# ---------------------------------------------------------------------------------------
def test_hello_open_info(setup):
    clip, project, assets, client, _ = setup
    hello = call(client, "hello")
    assert hello["engine"] == "inve" and hello["protocol"] == 1 and "render_frame" in hello["ops"]
    opened = call(client, "open", project=str(project.path))
    assert opened["open"] is True and opened["frames"] == list(range(FIRST, FIRST + T))
    info = call(client, "info", project=str(project.path))
    expect = json.loads(json.dumps(cli._info(str(project.path))))
    assert {k: v for k, v in info.items() if k != "open"} == expect and info["open"] is True


def test_render_frame_equals_cli_edit(setup, gt_mapping, tmp_path, capsys):
    clip, project, assets, client, _ = setup
    doc = json.loads((assets / "EDITS.json").read_text())
    r = call(client, "set_edits", project=str(project.path), edits=doc, base=str(assets))
    assert r == {"layers": 4, "visible_layers": 4}
    out = tmp_path / "preview.png"
    res = call(client, "render_frame", project=str(project.path), frame=FIRST + 5, output=str(out))
    assert res["frame"] == FIRST + 5 and Path(res["path"]) == out.resolve() and res["ms"] > 0
    assert cli.main(["edit", str(project.path), "--edits", str(assets / "EDITS.json"), "-o", str(tmp_path / "cli"),
                     "--progress", "none"]) == 0
    capsys.readouterr()
    served, batch = read(out), read(tmp_path / "cli" / f"{FIRST + 5:04d}.png")
    assert served.shape == (H, W, 3)
    np.testing.assert_array_equal(served, batch)
    assert (np.abs(served.astype(int) - clip.frames[5]).max(-1) > 0).any()  # the edits are in it
    # a second render of the same frame replaces the preview it wrote itself
    call(client, "render_frame", project=str(project.path), frame=FIRST + 5, output=str(out))
    # ... but never a file somebody else put there
    user = tmp_path / "mine.png"
    user.write_bytes(b"not ours")
    with pytest.raises(EngineError, match="inve did not write it"):
        call(client, "render_frame", project=str(project.path), frame=FIRST, output=str(user))
    assert user.read_bytes() == b"not ours"


def test_overlay_transparent_untouched_opaque_adjusted(setup, tmp_path):
    clip, project, assets, client, _ = setup
    doc = json.loads((assets / "EDITS.json").read_text())
    call(client, "set_edits", project=str(project.path), edits=doc, base=str(assets))
    full_p, over_p = tmp_path / "full.png", tmp_path / "over.png"
    call(client, "render_frame", project=str(project.path), frame=FIRST, output=str(full_p))
    call(client, "render_frame", project=str(project.path), frame=FIRST, output=str(over_p), overlay=True)
    full, over = read(full_p), read(over_p)
    assert over.shape == (H, W, 4)
    touched = np.abs(full.astype(int) - clip.frames[0]).max(-1) > 0
    # untouched pixels: fully transparent (and black, so nothing bleeds through filtering)
    assert (over[~touched][:, 3] == 0).mean() > 0.98 and (over[..., 3] == 0).mean() > 0.4
    assert (over[over[..., 3] == 0] == 0).all()
    # inside the adjust region (away from its edge and from the other layers): opaque, recoloured
    inside = polygon_mask(np.array(ADJ_POLY, float), W, H, 0.0) > 0.999
    inside[:, :6] = inside[:6] = False
    inside[20:] = False
    inside[:, 28:] = False
    alpha = clip.gt.alpha(np.stack(np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5), -1).reshape(-1, 2),
                          np.zeros(W * H)).reshape(H, W)
    import cv2

    inside &= cv2.dilate((alpha > 0).astype(np.uint8), np.ones((7, 7), np.uint8)) == 0  # clear of the fg disc
    assert inside.sum() > 50
    # opaque up to the atlas round trip of the region mask (8-bit: >= 250 of 255)
    assert (over[inside][:, 3] >= 250).all()
    expect = adjust_colors(clip.frames[0][inside].astype(np.float32) / 255.0, 0.3, 1.5) * 255.0
    assert np.abs(over[inside][:, :3].astype(float) - expect).max() <= 1.5
    # Alpha Over onto the original gives the full-frame result
    assert np.abs(alpha_over(clip.frames[0], over).astype(int) - full.astype(int)).max() <= 2


def test_propagate_streams_frames_and_movie(setup, tmp_path):
    clip, project, assets, client, _ = setup
    doc = json.loads((assets / "EDITS.json").read_text())
    call(client, "set_edits", project=str(project.path), edits=doc, base=str(assets))
    out, movie = tmp_path / "frames", tmp_path / "export.mp4"
    req = client.request("propagate", project=str(project.path), output=str(out), overlay=True, movie=str(movie))
    end = time.monotonic() + TIMEOUT
    events = []
    while not req.done() and time.monotonic() < end:
        for e in req.poll_events():
            events.append(e)
            if e["event"] == "frame":
                assert Path(e["path"]).is_file()  # on disk when announced
        time.sleep(0.002)
    events += req.poll_events()
    res = req.result(0)
    frames = sorted(e["frame"] for e in events if e["event"] == "frame")
    assert frames == list(range(FIRST, FIRST + T)) and res["frames"] == T and res["overlay"] is True
    assert any(e["event"] == "progress" and e["stage"] == "render" and e["step"] == T for e in events)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{f:04d}.png" for f in frames]
    for f in (FIRST, FIRST + T - 1):
        img = read(out / f"{f:04d}.png")
        assert img.shape == (H, W, 4) and (img[..., 3] == 0).any() and (img[..., 3] == 255).any()
    assert movie.is_file() and movie.stat().st_size > 0 and Path(res["movie"]) == movie.resolve()
    from core.video import probe

    assert probe(movie).n_frames == T


def test_cancel_mid_propagate_keeps_written_frames(setup, tmp_path):
    clip, project, assets, client, delay = setup
    doc = json.loads((assets / "EDITS.json").read_text())
    call(client, "set_edits", project=str(project.path), edits=doc, base=str(assets))
    out = tmp_path / "frames"
    delay.write_text("0.15")
    try:
        req = client.request("propagate", project=str(project.path), output=str(out), overlay=True)
        frames, end = [], time.monotonic() + TIMEOUT
        while len(frames) < 2 and time.monotonic() < end:
            frames += [e["frame"] for e in req.poll_events() if e["event"] == "frame"]
            time.sleep(0.005)
        req.cancel()
        events, res = wait(req)
    finally:
        delay.write_text("0")
    frames += [e["frame"] for e in events if e["event"] == "frame"]
    assert isinstance(res, EngineError) and res.cancelled
    assert 2 <= len(frames) < T
    on_disk = sorted(int(p.stem) for p in out.glob("*.png"))
    assert on_disk == sorted(frames)  # every frame on disk was announced, nothing half-written
    for f in frames:
        img = read(out / f"{f:04d}.png")
        assert img.shape == (H, W, 4)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != fsutil.OUTPUT_MARKER]
    assert call(client, "hello")["engine"] == "inve"  # still serving


def test_newer_render_frame_supersedes_queued_one(setup, tmp_path):
    clip, project, assets, client, delay = setup
    delay.write_text("0.3")
    try:
        reqs = []
        for i in range(3):
            reqs.append(client.request("render_frame", project=str(project.path), frame=FIRST + i,
                                       output=str(tmp_path / f"p{i}.png")))
            if i == 0:
                time.sleep(0.1)  # the first one is running (0.3 s) when the next two arrive
        results = [wait(r)[1] for r in reqs]
    finally:
        delay.write_text("0")
    assert isinstance(results[0], dict) and isinstance(results[2], dict)
    assert isinstance(results[1], EngineError) and results[1].cancelled
    assert results[1].reply.get("superseded_by") == reqs[2].id
    assert not (tmp_path / "p1.png").exists() and (tmp_path / "p2.png").is_file()


def test_changed_image_file_is_read_again(setup, tmp_path):
    """Edit images are cached between set_edits calls only while the file is unchanged."""
    clip, project, assets, client, _ = setup
    paint = np.zeros((H, W, 4), np.float32)
    paint[10:20, 10:30] = (1, 0, 0, 1)
    fsutil.write_png(tmp_path / "p.png", paint)
    doc = {"version": 1, "layers": [{"type": "paint", "frame": FIRST, "layer": "bg", "image": "p.png"}]}
    outs = []
    for k, colour in enumerate([(1, 0, 0, 1), (0, 1, 0, 1)]):
        paint[10:20, 10:30] = colour
        fsutil.write_png(tmp_path / "p.png", paint)
        call(client, "set_edits", project=str(project.path), edits=doc, base=str(tmp_path))
        res = call(client, "render_frame", project=str(project.path), frame=FIRST, output=str(tmp_path / f"{k}.png"),
                   overlay=True)
        outs.append(read(res["path"]))
    assert outs[0][15, 20].tolist() == [255, 0, 0, 255] and outs[1][15, 20].tolist() == [0, 255, 0, 255]


def test_cancel_a_queued_request(setup, tmp_path):
    clip, project, assets, client, delay = setup
    delay.write_text("0.1")
    try:
        long = client.request("propagate", project=str(project.path), output=str(tmp_path / "f"))
        time.sleep(0.05)
        queued = client.request("track", project=str(project.path),
                                points={"points": [{"id": "a", "frame": FIRST, "x": 20.5, "y": 50.5}]})
        queued.cancel()
        _, res = wait(queued)
        assert isinstance(res, EngineError) and res.cancelled and not long.done()
        _, done = wait(long)
    finally:
        delay.write_text("0")
    assert isinstance(done, dict) and done["frames"] == T


def test_client_reports_an_engine_that_cannot_start(tmp_path):
    client = EngineClient([str(tmp_path / "no-such-python"), "-m", "core", "serve"])
    try:
        assert not client.alive
        with pytest.raises(EngineError, match="cannot start the engine"):
            client.request("hello").result(5)
    finally:
        client.shutdown(1)


def test_bad_input_gets_errors_and_service_keeps_serving(setup, tmp_path):
    clip, project, assets, client, _ = setup
    proc = client._proc
    for raw in (b"this is not json\n", b"[1, 2]\n", b'{"op": "hello"}\n', b"\xff\xfe\n"):
        proc.stdin.write(raw)
        proc.stdin.flush()
    end = time.monotonic() + TIMEOUT
    while len(client.stray) < 4 and time.monotonic() < end:
        time.sleep(0.01)
    assert [m["id"] for m in client.stray][-4:] == [None] * 4
    assert all(m["event"] == "error" for m in list(client.stray)[-4:])
    with pytest.raises(EngineError, match="unknown op"):
        call(client, "explode")
    with pytest.raises(EngineError, match="not found"):
        call(client, "open", project=str(tmp_path / "missing"))
    with pytest.raises(EngineError, match="missing 'output'"):
        call(client, "render_frame", project=str(project.path), frame=FIRST)
    with pytest.raises(EngineError, match="frame"):
        call(client, "render_frame", project=str(project.path), frame=FIRST + T + 5, output=str(tmp_path / "x.png"))
    with pytest.raises(EngineError, match="edits"):
        call(client, "set_edits", project=str(project.path), edits={"version": 1, "layers": [{"type": "nope"}]})
    assert client.alive and client.restarts == 0
    assert call(client, "hello")["pid"] == proc.pid


def test_a_patch_cache_budget_that_is_no_finite_number_is_one_line(monkeypatch, capsys):
    """nan passes a "< 0" test and int() of nan or inf raises: a traceback, not a line."""
    for bad in ("nan", "inf", "-1"):
        assert cli.main(["serve", "--patch-cache-mb", bad]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"inve: error: the patch cache budget must be a finite number of MB, 0 or more; got "
                       f"--patch-cache-mb {float(bad)!r}"]
    monkeypatch.setenv("INVE_PATCH_CACHE_MB", "NaN")
    assert cli.main(["serve"]) != 0
    assert "INVE_PATCH_CACHE_MB='NaN'" in capsys.readouterr().err


def test_track_and_fingerprint(setup):
    clip, project, assets, client, _ = setup
    res = call(client, "track", project=str(project.path),
               points={"points": [{"id": "a", "frame": FIRST, "x": 20.5, "y": 50.5}]})
    tr = res["tracks"]
    assert tr["frames"] == list(range(FIRST, FIRST + T)) and tr["tracks"][0]["id"] == "a"
    layer = "fg" if clip.gt.alpha(np.array([[20.5, 50.5]]), np.zeros(1))[0] > 0.5 else "bg"
    uv = clip.gt.forward(layer, np.array([[20.5, 50.5]]), np.zeros(1))
    truth = clip.gt.inverse(layer, uv, np.full(1, T - 1.0))[0]
    assert np.linalg.norm(np.array(tr["tracks"][0]["xy"][-1]) - truth) < 1.0
    from core.identity import source_fingerprint

    fp = call(client, "fingerprint", path=str(assets / "paint.png"))
    assert fp["fingerprint"] == source_fingerprint(assets / "paint.png")


def test_atlas_writes_the_project_atlases(setup, tmp_path):
    """The add-on's Open Atlas asks the service (no new engine process): the same images as
    ``inve atlas`` writes, under the same output rule."""
    clip, project, assets, client, _ = setup
    res = call(client, "atlas", project=str(project.path), output=str(tmp_path / "atlas"))
    maps = Project.open(project.path).maps()
    assert sorted(Path(p).name for p in res["files"]) == sorted(
        n for layer in maps.layers for n in (f"atlas_{layer}.png", f"atlas_{layer}_used.png"))
    got = iio.imread(tmp_path / "atlas" / f"atlas_{maps.layers[0]}.png")
    assert got.shape[0] == res["atlas_size"] == maps.atlas[maps.layers[0]].shape[0]
    assert np.abs(got[..., :3].astype(np.float32) / 255 - maps.atlas[maps.layers[0]][..., :3]).max() < 1 / 255 + 1e-6
    with pytest.raises(EngineError, match="output"):
        call(client, "atlas", project=str(project.path))


def test_restart_after_kill(setup, tmp_path):
    clip, project, assets, client, delay = setup
    old = client.pid
    delay.write_text("0.3")
    try:
        req = client.request("propagate", project=str(project.path), output=str(tmp_path / "f"))
        time.sleep(0.2)
        os.kill(old, signal.SIGKILL)
        _, res = wait(req)
    finally:
        delay.write_text("0")
    assert isinstance(res, EngineError) and "exited" in res.message and "restarted" in res.message
    assert client.restarts == 1
    assert call(client, "hello")["pid"] != old and client.alive
    assert call(client, "open", project=str(project.path))["open"] is True


def test_plain_serve_module_atlas_edit_and_shutdown(setup, tmp_path):
    """``python -m core serve`` itself: an atlas layer needs no networks; shutdown and EOF end it."""
    clip, project, assets, _, _ = setup
    atlas = project.maps().atlas["bg"].copy()
    atlas[10:60, 10:60] = (1.0, 0.0, 1.0)
    fsutil.write_png(tmp_path / "bg_atlas.png", atlas)
    client = EngineClient([sys.executable, "-m", "core", "serve"], env=env(), cwd=str(tmp_path))
    try:
        call(client, "set_edits", project=str(project.path),
             edits={"version": 1, "layers": [{"type": "atlas", "layer": "bg", "image": "bg_atlas.png"}]},
             base=str(tmp_path))
        res = call(client, "render_frame", project=str(project.path), frame=FIRST + 1,
                   output=str(tmp_path / "a.png"), overlay=True)
        img = read(res["path"])
        assert img.shape == (H, W, 4) and (img[..., 3] == 255).any() and (img[..., 3] == 0).any()
        opaque = img[..., 3] == 255
        # the painted colour (its 1-texel dilated rim carries the atlas' own colours)
        assert (np.abs(img[opaque][:, :3].astype(int) - [255, 0, 255]).max(-1) <= 3).mean() > 0.8
    finally:
        proc = client._proc
        client.shutdown(20)
    assert proc.returncode == 0 and not client.alive
    # stdin EOF (Blender exiting) ends it cleanly too; hello is answered without importing
    # torch (README: at once), which only a project's opening needs
    p = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "core", "serve"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    out, err = p.communicate(b'{"id": 1, "op": "hello"}\n', timeout=60)
    assert p.returncode == 0 and json.loads(out.decode().splitlines()[0])["event"] == "done"
    imported = {line.rsplit("|", 1)[-1].strip() for line in err.decode().splitlines() if line.startswith("import time:")}
    assert "core.serve" in imported and "torch" not in imported


# ---------------------------------------------------------------------------------------
def test_cli_overlay(setup, gt_mapping, tmp_path, capsys):
    clip, project, assets, _, _ = setup
    edits = assets / "EDITS.json"
    rc = cli.main(["edit", str(project.path), "--edits", str(edits), "-o", str(tmp_path / "over"), "--overlay",
                   "--progress", "none"])
    rc2 = cli.main(["edit", str(project.path), "--edits", str(edits), "-o", str(tmp_path / "full"),
                    "--progress", "none"])
    assert rc == 0 and rc2 == 0
    for t in (0, T // 2, T - 1):
        over = read(tmp_path / "over" / f"{FIRST + t:04d}.png")
        full = read(tmp_path / "full" / f"{FIRST + t:04d}.png")
        assert over.shape == (H, W, 4) and full.shape == (H, W, 3)
        touched = np.abs(full.astype(int) - clip.frames[t]).max(-1) > 0
        assert (over[~touched][:, 3] == 0).mean() > 0.98
        assert np.abs(alpha_over(clip.frames[t], over).astype(int) - full.astype(int)).max() <= 2
    capsys.readouterr()
    rc = cli.main(["edit", str(project.path), "--edits", str(edits), "-o", str(tmp_path / "x.mp4"), "--overlay"])
    assert rc != 0 and "RGBA" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()


class _Stream:
    """The service's protocol stream in a test: records the replies; ``on_frame(n)`` runs after
    the n-th frame event (the reply arrives on the rendering thread, like the client reads it)."""

    def __init__(self, on_frame=None) -> None:
        self.replies: list[dict] = []
        self.on_frame = on_frame

    def write(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                self.replies.append(json.loads(line))
                if self.replies[-1]["event"] == "frame" and self.on_frame is not None:
                    self.on_frame(sum(r["event"] == "frame" for r in self.replies))

    def flush(self) -> None:
        pass


@pytest.mark.skipif(not __import__("core.edits.parallel", fromlist=["can_fork"]).can_fork()
                    or (os.cpu_count() or 1) < 2, reason="forked render workers: Linux, 2 cores or more")
def test_propagate_of_a_long_clip_renders_in_workers_streams_and_cancels(tmp_path, monkeypatch):
    """A Propagate of 16 frames or more renders in `inve edit`'s forked workers: the frame
    events come in order as each PNG lands, the overlays are the bytes of the in-process
    render, the export movie has every frame, and a cancel stops the workers and keeps
    exactly the frames announced. A second Propagate with every frame's patches cached here
    (hiding a layer) re-composites in this process."""
    import multiprocessing

    from core.edits import EditSession
    from core.edits.spec import parse_edits
    from core.serve import Request, Service, render_workers
    from core.video import probe

    n = 24
    clip = make_clip(T=n, size=(W, H), camera="pan_zoom", seed=11)
    project = make_gt_project(clip, tmp_path / "proj", atlas_size=128, work_scale=0.5)
    monkeypatch.setattr(Project, "mapping", lambda self, device="cpu": clip.gt)
    paint = np.zeros((H, W, 4), np.float32)
    paint[20:34, 30:60] = (0, 0, 1, 0.8)
    fsutil.write_png(tmp_path / "paint.png", paint)
    doc = {"version": 1, "layers": [{"type": "paint", "frame": 0, "image": "paint.png", "layer": "bg"},
                                    {"type": "sketch", "frame": 3, "strokes": [
                                        {"points": [[10, 50], [50, 12], [90, 40]], "color": [1, 0, 0, 1],
                                         "width": 3}]}]}
    import core.serve

    assert render_workers(EditSession(project, [], mapping=clip.gt)) == 1  # short: here, with its caches
    monkeypatch.setattr(core.serve, "WORKERS_FROM_FRAMES", 16)
    stream = _Stream()
    svc = Service(stream)
    svc.run(Request(1, "set_edits", {"project": str(project.path), "edits": doc, "base": str(tmp_path)}))
    held = next(iter(svc.projects.values()))
    assert render_workers(held.session) > 1
    out, movie = tmp_path / "frames", tmp_path / "export.mp4"
    svc.run(Request(2, "propagate", {"project": str(project.path), "output": str(out), "overlay": True,
                                     "movie": str(movie)}))
    done = [r for r in stream.replies if r["id"] == 2 and r["event"] in ("done", "error")]
    assert [r["event"] for r in done] == ["done"], done
    events = [r["frame"] for r in stream.replies if r["id"] == 2 and r["event"] == "frame"]
    assert events == list(range(n))  # in order, each once
    ref = EditSession(project, parse_edits(doc, tmp_path, project.info), mapping=clip.gt)
    for t in range(n):
        assert np.array_equal(read(out / f"{t:04d}.png"), ref.render_frame(t, overlay=True))
    assert probe(movie).n_frames == n
    assert not multiprocessing.active_children()

    # cancel after the third frame landed: the workers stop, the announced frames stay
    cancel_at = Request(3, "propagate", {"project": str(project.path), "output": str(tmp_path / "c"),
                                         "overlay": True})
    stream.on_frame = lambda k: cancel_at.cancel.cancel() if k >= 3 + n else None
    svc.run(cancel_at)
    end = [r for r in stream.replies if r["id"] == 3 and r["event"] in ("done", "error")]
    assert len(end) == 1 and end[0]["event"] == "error" and end[0]["cancelled"] is True
    announced = [r["frame"] for r in stream.replies if r["id"] == 3 and r["event"] == "frame"]
    assert 3 <= len(announced) < n
    assert sorted(int(p.stem) for p in (tmp_path / "c").glob("*.png")) == announced
    assert not [p.name for p in (tmp_path / "c").iterdir() if fsutil.TMP_TAG in p.name]  # no worker's leftovers
    assert not multiprocessing.active_children()

    # every frame's patches cached in the service (previews): hiding a layer re-composites here
    stream.on_frame = None
    for t in range(n):
        held.session.render_frame(t)
    doc2 = {"version": 1, "layers": [doc["layers"][0], {**doc["layers"][1], "visible": False}]}
    svc.run(Request(4, "set_edits", {"project": str(project.path), "edits": doc2, "base": str(tmp_path)}))
    assert render_workers(held.session) == 1
    svc.run(Request(5, "propagate", {"project": str(project.path), "output": str(tmp_path / "h"),
                                     "overlay": True}))
    assert [r["event"] for r in stream.replies if r["id"] == 5 and r["event"] in ("done", "error")] == ["done"]
    ref.set_layers(parse_edits(doc2, tmp_path, project.info))
    assert np.array_equal(read(tmp_path / "h" / "0005.png"), ref.render_frame(5, overlay=True))


@pytest.mark.skipif(not __import__("core.edits.parallel", fromlist=["can_fork"]).can_fork()
                    or (os.cpu_count() or 1) < 2, reason="forked render workers: Linux, 2 cores or more")
def test_the_service_process_propagates_through_workers_and_cancels(tmp_path):
    """The real service process (a reader thread waiting on stdin while the worker forks):
    a long Propagate streams every frame from render workers, and a cancel ends it."""
    n = 20
    clip = make_clip(T=n, size=(W, H), camera="pan_zoom", seed=7)
    project = make_gt_project(clip, tmp_path / "proj", atlas_size=128, work_scale=0.5)
    fsutil.write_png(tmp_path / "paint.png", np.full((H, W, 4), (0.0, 0.0, 1.0, 0.5), np.float32))
    doc = {"version": 1, "layers": [{"type": "paint", "frame": 0, "image": "paint.png", "layer": "bg"}]}
    delay = tmp_path / "delay.txt"
    delay.write_text("0")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"clip": {"T": n, "size": [W, H], "camera": "pan_zoom", "seed": 7},
                                "delay_file": str(delay), "workers_from": 16}))
    client = EngineClient([sys.executable, str(ROOT / "tests" / "serve_gt.py"), str(spec)], env=env())
    try:
        call(client, "set_edits", project=str(project.path), edits=doc, base=str(tmp_path))
        events, res = wait(client.request("propagate", project=str(project.path), output=str(tmp_path / "a"),
                                          overlay=True), timeout=60)
        assert isinstance(res, dict) and res["frames"] == n, res
        assert [e["frame"] for e in events if e["event"] == "frame"] == list(range(n))
        delay.write_text("0.2")
        req = client.request("propagate", project=str(project.path), output=str(tmp_path / "b"), overlay=True)
        got, end = [], time.monotonic() + 60
        while not got and time.monotonic() < end:
            got += [e for e in req.poll_events() if e["event"] == "frame"]
            time.sleep(0.01)
        req.cancel()
        events, res = wait(req, timeout=30)
        assert isinstance(res, EngineError) and res.cancelled
        assert call(client, "hello")["engine"] == "inve"
    finally:
        delay.write_text("0")
        client.shutdown(10)

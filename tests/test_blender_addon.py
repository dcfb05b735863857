"""The add-on in real Blender (the ``bpy`` module): build the zip, install it, use it.

Every Blender session runs in a child process (``python tests/test_blender_addon.py
SCENARIO ARGS.json``): ``BLENDER_USER_RESOURCES`` must point at a scratch folder before
``bpy`` is imported, and ``bpy`` can be imported only once per process. The child writes
what it measured to a JSON file; the assertions about ground truth live here in the parent.

Engine Python: ``INVE_TEST_ENGINE_PYTHON`` (scripts/test_blender_lts.sh points it at the
project's .venv, since the 4.5 venv has no torch), else this interpreter. The engine code is
always the copy bundled inside the installed extension, which is what users get.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ADDON_MODULE = "bl_ext.user_default.inve_blender"

try:  # the parent needs pytest; the child (run as a script) does not
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

HAVE_BPY = __import__("importlib").util.find_spec("bpy") is not None

if pytest is not None and __name__ != "__main__":
    pytestmark = [pytest.mark.blender,
                  pytest.mark.skipif(not HAVE_BPY, reason="needs the bpy module (pip install bpy)")]


# =======================================================================================
# parent side
def engine_python() -> str:
    return os.environ.get("INVE_TEST_ENGINE_PYTHON") or sys.executable


def run_child(scenario: str, args: dict[str, Any], tmp: Path, timeout: float = 600,
              script: Path | None = None) -> dict[str, Any]:
    """Run ``scenario`` of ``script`` (default: this file) in a child process with bpy."""
    user = tmp / "blender_user"
    user.mkdir(exist_ok=True)
    args = {**args, "result": str(tmp / f"{scenario}_result.json"), "engine_python": engine_python()}
    args_file = tmp / f"{scenario}_args.json"
    args_file.write_text(json.dumps(args))
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(user), OMP_NUM_THREADS="2")
    env.pop("PYTHONPATH", None)  # the add-on must find its bundled engine on its own
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(script or Path(__file__).resolve()), scenario, str(args_file)],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=str(tmp))
    log = f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, f"Blender child '{scenario}' failed (status {proc.returncode})\n{log}"
    result = json.loads(Path(args["result"]).read_text())
    result["_seconds"] = time.monotonic() - t0
    result["_log"] = log
    return result


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory: "pytest.TempPathFactory") -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_extension.py"), "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    zip_path = Path(proc.stdout.strip().splitlines()[-1])
    assert zip_path.is_file()
    return zip_path


def test_zip_bundles_addon_and_engine(extension_zip: Path) -> None:
    names = zipfile.ZipFile(extension_zip).namelist()
    for required in ("blender_manifest.toml", "__init__.py", "io/worker.py", "blender/panels.py", "engine/core/cli.py",
                     "engine/core/__main__.py", "engine/requirements.txt"):
        assert required in names, f"{required} missing from {extension_zip.name}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    reqs = zipfile.ZipFile(extension_zip).read("engine/requirements.txt").decode()
    assert "torch" in reqs and "numpy" in reqs


def test_install_ui_logic_and_clean_unregister(extension_zip: Path, tmp_path: Path) -> None:
    """Install from disk, operators/panels/poll messages, frame mapping and placement on real
    strips, Grease Pencil -> source pixels, the result strip updated in place, layer list
    operators, the 'engine missing' report, and a clean unregister."""
    import numpy as np

    from core.video import write_movie

    rng = np.random.default_rng(1)
    frames = [(rng.random((96, 160, 3)) * 255).astype(np.uint8) for _ in range(12)]
    clip = tmp_path / "noise.mp4"
    write_movie(clip, frames, fps=24.0)
    r = run_child("install", {"zip": str(extension_zip), "clip": str(clip), "tmp": str(tmp_path)}, tmp_path)
    print(f"install scenario: {r['_seconds']:.1f} s", {k: v for k, v in r.items() if k != "_log"})
    assert r["enabled"] and r["registered_ops"] >= 10
    assert r["engine_ok"], r["engine_message"]
    assert "inve_blender" in r["engine_path"] and "/engine/core/" in r["engine_path"].replace("\\", "/"), \
        "the worker runs the engine bundled in the extension"
    assert "No sequencer" in r["poll_no_sequencer"] or "no active" in r["poll_no_sequencer"].lower()
    assert "not a movie" in r["poll_image_strip"]
    assert "missing" in r["poll_missing_file"]
    # strip at scene frame 5, two frames trimmed at its start: shows source frames 2..11 at 7..16
    assert r["visible_range"] == [2, 12]
    assert r["scene7_source"] == 2 and r["scene16_source"] == 11 and r["scene6_source"] is None
    assert r["train_frames_arg"] == "2:12"
    # Grease Pencil stroke through an orthographic camera, 320x192 render, clip fitted (x2)
    got = np.array(r["gp_points"])
    assert np.allclose(got, r["gp_expected"], atol=1e-3), (got, r["gp_expected"])
    assert abs(r["gp_width"] - 4.0) < 1e-3, "radius 0.04 units = 4 render px = 2 source px -> width 4"
    assert np.allclose(r["gp_color"], [1.0, 0.0, 0.0, 1.0], atol=1e-4)
    # annotation-style View2D point -> source (the convention of ARCHITECTURE.md, scaled x0.5)
    assert np.allclose(r["view_to_source"], [(100 + 160) / 2, (96 - 40) / 2])
    # result strip: channel above, aligned in time, one element per frame, updated in place
    first, second = r["result_first"], r["result_second"]
    assert first["channel"] == r["movie_channel"] + 1
    assert first["frame_final_start"] == 7 and first["n_elements"] == 10
    assert second["name"] == first["name"] and second["channel"] == first["channel"]
    assert second["n_strips"] == first["n_strips"], "re-running updates the strip in place"
    assert second["n_elements"] == 10 and second["directory"] != first["directory"]
    assert r["render_pixel_result"][0] > 200 and r["render_pixel_result"][1] < 40, \
        "the render shows the image strip above the movie"
    assert r["layer_order_after_move"] == ["B", "A", "C"] and r["layers_after_remove"] == ["B", "C"]
    assert "Engine Python not found" in r["missing_engine_error"]
    assert "No visible layers" in r["poll_propagate_no_layers"] and "Nothing is running" in r["poll_cancel_idle"]
    assert "No trained project" in r["no_project_error"] and "Train" in r["no_project_error"]
    assert "moved or deleted" in r["propagate_no_folder"] and "Relink" in r["propagate_no_folder"]
    assert "Nothing to reorder" in r["layers_before_project"], "no project: no layers to move"
    assert r["fps30_range"] == [2, 12] and r["movieclips_left"] == 0
    assert r["unregistered"], "every class is gone after disabling"
    # the panels draw with Blender's real property names, operators and icons in every state
    assert any("No active strip" in e or "No sequencer" in e for e in r["draw_no_strip"])
    for expected in ("label:The engine needs torch: click Install", "op:inve.install_dependencies",
                     "op:inve.open_preferences", "op:inve.check_engine", "prop:python_path"):
        assert expected in r["draw_no_strip"], (expected, r["draw_no_strip"])
    drawn = r["draw_strip"]
    for expected in ("label:noise", "label:Source frames 2-11  (24 fps)", "prop:quality", "prop:minutes",
                     "op:inve.train", "progress:Training 'noise' | train 30/100 | PSNR 24.00 dB | 12s left",
                     "op:inve.cancel", "label:PSNR: 31.50 dB", "label:Iterations: 900", "list:layers",
                     "op:inve.propagate", "op:inve.layer_set_adjust", "op:inve.track", "op:inve.atlas_open",
                     "op:inve.check_engine", "prop:python_path"):
        assert expected in drawn, (expected, drawn)
    assert r["busy_while_running"] and r["orphan_stopped_s"] < 5, "disabling the add-on stops a running engine"
    # Install Dependencies: refused while online access is off; then pip puts the packages into
    # the extension's user folder and the engine runs Blender's Python with them on its path
    assert "Online access is disabled" in r["install_poll_offline"]
    assert r["deps_has_pkg"], r["install_outcome"]
    assert Path(r["deps_dir"]).is_relative_to(tmp_path / "blender_user"), r["deps_dir"]
    assert r["spec_after_install"][0] == "installed dependencies" and r["deps_dir"] in r["spec_after_install"][1]
    # ...and re-checks it: ready where this Python has torch (the 5.0 venv), else still the way out
    if os.path.abspath(engine_python()) == os.path.abspath(sys.executable):
        assert r["install_outcome"].startswith("Engine ready"), r["install_outcome"]
    else:
        assert r["install_outcome"].startswith("The engine needs torch"), r["install_outcome"]


# ---------------------------------------------------------------------------------------
# end to end: train, draw, propagate, render, track
CLIP_T, CLIP_SIZE = 12, (160, 96)
STRIP_START, TRIM = 3, 1  # strip at scene frame 3 with one frame trimmed: scene f shows source f - 3
STROKE_SCENE_FRAME = 6  # source frame 3
STROKE_SRC = [(52.0, 30.0), (68.0, 30.0), (84.0, 34.0), (98.0, 44.0)]  # source pixels on frame 3
STROKE_WIDTH = 4.0
CHECK_SOURCE_FRAMES = (1, 7, 11)
STICKER_CENTER = (130.0, 70.0)  # a 12x12 blue sticker on frame 3
PAINT_SRC = (40.0, 70.0)  # background point of frame 3 whose atlas texels get painted green
REGION = (125.0, 25.0, 9.0)  # centre and radius of a closed loop drawn on frame 3: brightness +0.4
# Ground truth says where the stroke must be; a network trained for a few seconds on two CPU
# cores is accurate to a few pixels (its PSNR is printed). Tolerance in source pixels:
TOL_PX = 3.0


def _over(png: Path, original: "np.ndarray") -> "np.ndarray":
    """A propagated overlay (RGBA, straight alpha) composited over the original frame."""
    import imageio.v3 as iio
    import numpy as np

    rgba = iio.imread(png).astype(np.float32)
    assert rgba.shape[-1] == 4, f"{png} is not an RGBA overlay"
    a = rgba[..., 3:] / 255.0
    return np.clip(rgba[..., :3] * a + original.astype(np.float32) * (1 - a) + 0.5, 0, 255).astype(np.uint8)


def _expected_polyline(clip: Any, k: int, j: int, step: float = 1.0) -> "np.ndarray":
    import numpy as np

    pts = np.array(STROKE_SRC, np.float64)
    dense = []
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(2, int(np.ceil(np.linalg.norm(b - a) / step)))
        dense += [a + (b - a) * i / n for i in range(n)]
    dense.append(pts[-1])
    dense = np.array(dense)
    uv = clip.gt.forward("bg", dense, np.full(len(dense), float(k)))
    return clip.gt.inverse("bg", uv, np.full(len(dense), float(j)))


def _stroke_mask(edited: "np.ndarray", original: "np.ndarray") -> "np.ndarray":
    """Pixels the red stroke changed: much redder than the original frame there."""
    import numpy as np

    e = edited.astype(np.float32)
    o = original.astype(np.float32)
    red_e = e[..., 0] - np.maximum(e[..., 1], e[..., 2])
    red_o = o[..., 0] - np.maximum(o[..., 1], o[..., 2])
    return (red_e > 120) & (red_e - red_o > 60)


def _coverage(mask: "np.ndarray", expected: "np.ndarray", tol: float) -> tuple[float, float]:
    """(fraction of expected stroke samples with a stroke pixel within tol, fraction of stroke
    pixels within tol + half the width of the expected stroke)."""
    import numpy as np

    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0, 0.0
    got = np.stack([xs + 0.5, ys + 0.5], -1)
    d = np.linalg.norm(got[:, None, :] - expected[None, :, :], axis=-1)
    recall = float((d.min(0) <= tol).mean())
    precision = float((d.min(1) <= tol + STROKE_WIDTH / 2).mean())
    return recall, precision


@pytest.mark.slow
def test_train_draw_propagate_render_track(extension_zip: Path, tmp_path: Path) -> None:
    """The user's path end to end in real Blender, checked against the synthetic clip's truth."""
    import imageio.v3 as iio
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    import synth
    from core.video import write_movie

    clip = synth.make_clip(T=CLIP_T, size=CLIP_SIZE, camera="pan", occluder=False, fps=24.0)
    movie = tmp_path / "pan.mp4"
    write_movie(movie, list(clip.frames), fps=24.0)
    minutes = float(os.environ.get("INVE_TEST_TRAIN_MINUTES", "1.5"))
    sticker = np.zeros((12, 12, 4), np.uint8)
    sticker[..., 2] = sticker[..., 3] = 255  # an opaque blue square
    iio.imwrite(tmp_path / "blue.png", sticker)
    r = run_child("e2e", {"zip": str(extension_zip), "clip": str(movie), "tmp": str(tmp_path),
                          "paint_src": PAINT_SRC, "paint_radius": 2, "region": REGION, "brightness": 0.4,
                          "rerender_source_frame": CHECK_SOURCE_FRAMES[1],
                          "sticker": str(tmp_path / "blue.png"), "sticker_center": STICKER_CENTER,
                          "minutes": minutes, "stroke_src": STROKE_SRC, "width": STROKE_WIDTH,
                          "strip_start": STRIP_START, "trim": TRIM, "stroke_frame": STROKE_SCENE_FRAME},
                  tmp_path, timeout=900)
    print(f"e2e scenario: {r['_seconds']:.1f} s, train {r['train_seconds']:.1f} s, PSNR {r['psnr']}")
    # the project lives next to the saved .blend
    # found by the source's content and frames, in a folder named after them, relative to the .blend
    rel, start, end, fp_len = r["project_record"]
    assert (start, end, fp_len) == (TRIM, CLIP_T, 32)
    assert Path(r["project_dir"]).parent.parent == tmp_path / "inve"
    assert rel == "//inve/" + Path(r["project_dir"]).parent.name and f"_{TRIM}-{CLIP_T}" in rel
    assert r["cancelled"] and "cancelled" in r["cancel_outcome"] and not r["busy_after_cancel"], \
        (r["progress_seen"], r["cancel_outcome"])
    assert r["train_ok"], r["train_state"]
    assert r["check_outcome"].startswith("Engine ready"), r["check_outcome"]
    assert "Trained 'pan'" in r["after_train_outcome"] and "trained" in r["after_train_outcome"].split(";")[-1]
    assert r["trained"] and isinstance(r["psnr"], (int, float))
    assert r["trained_minutes"] == pytest.approx(r["metrics_train_seconds"] / 60.0)
    assert r["trained_minutes"] > 0
    # a second Train on the finished project trained the panel's 0.1 minutes more
    s1, it1, s2, it2 = r["second_train"]
    assert r["second_train_ok"] and it2 > it1, r["second_train"]
    assert 0.1 * 60 - 0.5 <= s2 - s1 <= 0.1 * 60 + 5, r["second_train"]
    _check_identity(r)
    # the sketch layer sits on the source frame of the scene frame it was drawn on
    layer = r["layer"]
    assert layer["type"] == "sketch" and layer["frame"] == STROKE_SCENE_FRAME - STRIP_START
    assert np.allclose(layer["strokes"][0]["points"], STROKE_SRC, atol=1e-2)
    assert abs(layer["strokes"][0]["width"] - STROKE_WIDTH) < 1e-2
    assert np.allclose(layer["strokes"][0]["color"], [1, 0, 0, 1], atol=1e-3)
    # the image strip: channel above, aligned in time, one image per project frame
    res = r["result"]
    frames = list(range(TRIM, CLIP_T))
    assert res["channel"] == r["movie_channel"] + 1
    assert res["frame_final_start"] == STRIP_START + TRIM and res["n_elements"] == len(frames)
    assert res["elements"] == [f"{f:04d}.png" for f in frames]
    assert r["result_again"]["name"] == res["name"] and r["result_again"]["n_strips"] == res["n_strips"]
    k = STROKE_SCENE_FRAME - STRIP_START
    out_dir = Path(res["directory"])
    for j in CHECK_SOURCE_FRAMES:
        edited = _over(out_dir / f"{j:04d}.png", clip.frames[j])
        expected = _expected_polyline(clip, k, j)
        recall, precision = _coverage(_stroke_mask(edited, clip.frames[j]), expected, TOL_PX)
        print(f"frame {j}: stroke shift {np.mean(expected - np.array(_expected_polyline(clip, k, k)), 0)} px, "
              f"recall {recall:.2f}, precision {precision:.2f}")
        assert recall >= 0.9 and precision >= 0.9, (j, recall, precision)
    # an overlay: transparent wherever no edit touches (the top-left corner here), so the
    # movie strip's own look shows through under the edits
    for j in CHECK_SOURCE_FRAMES:
        alpha = iio.imread(out_dir / f"{j:04d}.png")[..., 3]
        assert alpha[:12, :24].max() == 0 and alpha.max() == 255, (j, alpha[:12, :24].max())
        assert (alpha == 0).mean() > 0.6, "most of an overlay is transparent"
    # the closed loop became an adjust region: brighter inside, wherever the motion carries it
    rl = r["region_layer"]
    assert rl["type"] == "adjust" and rl["frame"] == k and abs(rl["brightness"] - 0.4) < 1e-6
    assert len(rl["region"]["polygon"]) == 23
    assert "must be the source frame's size 160x96" in r["paint_wrong_size"]
    yy, xx = np.mgrid[0:96, 0:160] + 0.5
    for j in CHECK_SOURCE_FRAMES:
        edited = _over(out_dir / f"{j:04d}.png", clip.frames[j]).astype(np.float32)
        c = clip.gt.inverse("bg", clip.gt.forward("bg", np.array([REGION[:2]]), np.array([float(k)])),
                            np.array([float(j)]))[0]
        d = np.hypot(xx - c[0], yy - c[1])
        gain = (edited - clip.frames[j].astype(np.float32)).mean(-1)
        inside, ring = float(gain[d <= REGION[2] - 4].mean()), float(np.abs(gain[(d >= REGION[2] + 5) & (d <= REGION[2] + 9)]).mean())
        print(f"region frame {j}: +{inside:.1f} inside, {ring:.1f} around")
        assert inside >= 50 and ring <= 12, (j, inside, ring)
    # the sticker (placed on frame k, rigid) follows the background's known motion
    sl = r["sticker_layer"]
    assert sl["type"] == "sticker" and sl["frame"] == k and sl["center"] == list(STICKER_CENTER)
    assert Path(sl["image"]).parent == Path(r["project_dir"]).parent / "edits", "a copy is kept with the edits"
    for j in CHECK_SOURCE_FRAMES:
        edited = _over(out_dir / f"{j:04d}.png", clip.frames[j]).astype(np.int32)
        ys, xs = np.nonzero(edited[..., 2] - np.maximum(edited[..., 0], edited[..., 1]) > 150)
        want = clip.gt.inverse("bg", clip.gt.forward("bg", np.array([STICKER_CENTER]), np.array([float(k)])),
                               np.array([float(j)]))[0]
        got = np.array([xs.mean() + 0.5, ys.mean() + 0.5]) if len(xs) else np.array([np.nan, np.nan])
        print(f"sticker frame {j}: {len(xs)} px at {got}, truth {want}")
        assert 0.6 * 144 <= len(xs) <= 1.4 * 144 and np.linalg.norm(got - want) <= TOL_PX, (j, len(xs), got, want)
    # the rendered movie (VSE, 2x render size) shows the stroke at the same places
    video = iio.imread(r["render_path"], index=None)
    assert video.shape[0] == r["render_frames"] and video.shape[1:3] == (192, 320)
    for j in CHECK_SOURCE_FRAMES:
        scene_frame = j + STRIP_START
        rendered = video[scene_frame - r["render_start"]]
        small = rendered.reshape(96, 2, 160, 2, 3).mean(axis=(1, 3))
        recall, precision = _coverage(_stroke_mask(small, clip.frames[j]), _expected_polyline(clip, k, j), TOL_PX + 1)
        print(f"render frame {scene_frame}: recall {recall:.2f}, precision {precision:.2f}")
        assert recall >= 0.85 and precision >= 0.85, (scene_frame, recall, precision)
    # tracking markers: the stroke's centre, tracked, against the truth
    centre = np.mean(np.array(STROKE_SRC), 0)
    markers = {int(f): xy for f, xy in r["markers"].items()}
    assert sorted(markers) == [f + 1 for f in frames], "one marker per project frame (clip frames from 1)"
    for f in frames:
        want = clip.gt.inverse("bg", clip.gt.forward("bg", centre[None], np.array([float(k)])), np.array([float(f)]))[0]
        got = np.array(markers[f + 1][:2])
        assert np.linalg.norm(got - want) <= TOL_PX, (f, got, want)
    assert r["clip_frame_start"] == STRIP_START, "clip frames line up with the strip in the timeline"
    for f, (_, _, muted) in markers.items():
        assert muted == (not r["tracks_visible"][str(f)]), "markers are muted exactly where the point is hidden"
    assert not r["torch_in_blender"], "the add-on never imports torch into Blender"
    _check_service(r)
    _check_slides(r, frames, k)
    assert r["layers_after_reload"] == [r["layers_before_reload"]] and r["layers_before_reload"] >= 1, \
        "the layer stack is saved in the .blend, with its project"
    # the painted atlas: an atlas layer whose PNG is next to EDITS.json, and its green square
    # shows up in every frame where the painted background point is
    al = r["atlas_layer"]
    assert al["type"] == "atlas" and al["layer"] == "bg"
    assert Path(al["image"]) == Path(r["project_dir"]).parent / "edits" / "painted_bg_atlas.png"
    assert r["result_atlas"]["name"] == res["name"] and r["result_atlas"]["n_strips"] == res["n_strips"]
    atlas_dir = Path(r["result_atlas"]["directory"])  # each stack's frames have their own folder
    assert atlas_dir != out_dir and atlas_dir.parent == out_dir.parent
    for j in CHECK_SOURCE_FRAMES:
        edited = _over(atlas_dir / f"{j:04d}.png", clip.frames[j]).astype(np.int32)
        orig = clip.frames[j].astype(np.int32)
        green_e = edited[..., 1] - np.maximum(edited[..., 0], edited[..., 2])
        green_o = orig[..., 1] - np.maximum(orig[..., 0], orig[..., 2])
        ys, xs = np.nonzero((green_e > 120) & (green_e - green_o > 60))
        want = clip.gt.inverse("bg", clip.gt.forward("bg", np.array([PAINT_SRC]), np.array([float(k)])),
                               np.array([float(j)]))[0]
        got = np.array([xs.mean() + 0.5, ys.mean() + 0.5]) if len(xs) else np.array([np.nan, np.nan])
        print(f"atlas paint frame {j}: {len(xs)} px at {got}, truth {want}")
        assert len(xs) >= 4 and np.linalg.norm(got - want) <= TOL_PX + 1.0, (j, len(xs), got, want)
    # ...and a render after that second Propagate shows it (no stale Sequencer cache)
    j = CHECK_SOURCE_FRAMES[1]
    small = iio.imread(r["rerender_path"])[..., :3].astype(np.float32).reshape(96, 2, 160, 2, 3).mean(axis=(1, 3))
    green = small[..., 1] - np.maximum(small[..., 0], small[..., 2])
    green_o = clip.frames[j][..., 1].astype(np.float32) - np.maximum(clip.frames[j][..., 0], clip.frames[j][..., 2])
    ys, xs = np.nonzero((green > 120) & (green - green_o > 60))
    want = clip.gt.inverse("bg", clip.gt.forward("bg", np.array([PAINT_SRC]), np.array([float(k)])),
                           np.array([float(j)]))[0]
    assert len(xs) >= 4 and np.linalg.norm(np.array([xs.mean() + 0.5, ys.mean() + 0.5]) - want) <= TOL_PX + 1.0


# ---------------------------------------------------------------------------------------
# Train All Strips: two visible strips as one batch, a muted one left out
def test_train_all_strips_cancel_resume_and_identity(extension_zip: Path, tmp_path: Path) -> None:
    """Train All in real Blender (the engine's ``--local`` batch: a Ray cluster is too slow to
    start for a test): each strip's state in the panel from the batch's events, Cancel keeps
    the checkpoints, Train All again resumes; each project sits where the single-strip Train
    puts it and the usual identity rule finds it."""
    sys.path.insert(0, str(REPO / "tests"))
    import synth
    from core.video import write_movie

    clips = []
    for i in range(2):
        clip = synth.make_clip(T=4, size=(48, 32), camera="pan", occluder=False, fps=24.0, seed=30 + i)
        clips.append(str(tmp_path / f"shot {i}.mp4"))
        write_movie(clips[-1], list(clip.frames), fps=24.0)
    r = run_child("train_all", {"zip": str(extension_zip), "clips": clips, "tmp": str(tmp_path)}, tmp_path,
                  timeout=600)
    print(f"train_all scenario: {r['_seconds']:.1f} s", {k: v for k, v in r.items() if k != "_log"})
    assert "No visible (unmuted) movie strips in the sequencer" in r["poll_nothing"], r["poll_nothing"]
    assert "Ray is not installed" in r["notice"] and "--local" in r["argv"]
    # a duplicate strip shows the same project: one shot for both
    assert r["shots"] == {"shot_0": ["shot 0", "shot 0.002"], "shot_0.001": ["shot 0.001"], "shot_1": ["shot 1"]}
    assert any(line.startswith("progress:training train") for line in r["drawn_running"]), r["drawn_running"]
    assert any(line == "label:shot 1" for line in r["drawn_running"])
    assert r["cancelled"] and "Train All again resumes" in r["cancel_outcome"], r["cancel_outcome"]
    assert r["lines_cancelled"]["shot_0"].startswith("cancelled"), r["lines_cancelled"]
    assert r["checkpoint_after_cancel"], "a cancelled shot keeps its checkpoint"
    assert r["outcome"].startswith("Train All: 3 of 3 done"), r["outcome"]
    assert r["resumed"], r["resumed_from"]
    for strip, (line, project, expected, found, trained) in r["strips"].items():
        assert line.startswith("done | PSNR"), (strip, line)
        assert project == expected, (strip, project, expected)  # where Train puts it
        assert found and trained, strip  # the identity rule finds it, the engine's info says trained
    assert Path(r["strips"]["shot 0"][1]).parent.parent == tmp_path / "inve"
    assert "muted" not in r["strips"]
    assert "op:inve.train_all" in r["drawn_done"] and "label:shot 0.002" in r["drawn_done"]
    assert sum(line.startswith("label:done | PSNR") for line in r["drawn_done"]) == 4, r["drawn_done"]
    # saved in the .blend: after reopening, the panel shows every strip's end again
    assert sorted(r["saved_rows"]) == sorted([[n, "done"] for n in ("shot 0", "shot 0.001", "shot 0.002", "shot 1")])
    assert sum(line.startswith("label:done | PSNR") for line in r["drawn_reloaded"]) == 4, r["drawn_reloaded"]
    assert "label:Train All: 3 of 3 done" in r["drawn_reloaded"], r["drawn_reloaded"]
    # a strip widened after training: its own project resumes with the wider range
    assert r["widened_match"] == [[2, 3]], r["widened_match"]
    w = r["widened"]
    print("widened:", w)
    project = str(Path(w["before"]["folder"]) / "project")
    assert w["before"]["frames"] == [0, 2] and w["shots"]["shot_0"] == [[0, 3], project], w["shots"]
    assert w["folder"] == w["before"]["folder"] and w["frames"] == [0, 3] and w["complete"], w
    assert w["layers"] == ["kept"] and w["records"] == w["before"]["records"], "the same record, widened"
    assert w["trained"] and w["info_frames"] == [0, 1, 2], w
    assert w["lines"]["shot_0"].startswith("done") and "already trained" not in w["lines"]["shot_0"], w["lines"]
    assert all("already trained" in line for n, line in w["lines"].items() if n != "shot_0"), w["lines"]


def _check_slides(r: dict[str, Any], frames: list[int], k: int) -> None:
    """The panel's read-out of where edits may slide, from the engine's own estimates."""
    sl = r["slides"]
    print(f"slides: {sl['summary']} in {r['slides_seconds']:.2f} s; estimates {sl['errors']}")
    assert sl["error"] == "" and sl["estimated"], sl
    assert sl["frames"] == frames and sorted(int(f) for f in sl["errors"]) == frames, "an estimate per frame"
    visible = {name for name, kind in sl["layers"]}
    assert {a[0] for a in sl["anchors"]} | set(sl["without"]) == visible, "every visible layer is judged"
    assert {a[1] for a in sl["anchors"]} == {k}, "the anchors sit on the frame the layers were drawn on"
    assert sl["errors"][str(k)] <= sl["threshold"], "where it was drawn, an edit does not slide"
    assert sl["flagged"] == sorted(int(f) for f, e in sl["errors"].items() if e > sl["threshold"])
    assert r["key_changed"] and r["asks_after_change"] and r["answered_after_change"], "a moved sticker is re-checked"
    assert r["cached_back"], "moving it back asks nothing new"
    low = r["low"]
    assert len(low["flagged"]) >= len(frames) // 3, low
    flagged_scene = sorted(f for a, b, _, _ in low["ranges"] for f in range(a, b + 1))
    assert flagged_scene and low["hidden"] == 0, low
    want = (flagged_scene * 3)[1:4] if low["start"] in flagged_scene else (flagged_scene * 3)[:3]
    assert [j[0] for j in low["jumps"]] == want, low
    assert all(src in low["flagged"] for _, src in low["jumps"]), "each jump lands on a flagged source frame"
    assert len(r["slides_drawn"]) >= 2 and any(line.startswith("label:Frames ") for line in r["slides_drawn"]), \
        r["slides_drawn"]


def _check_service(r: dict[str, Any]) -> None:
    p = r["preview"]
    print(f"preview: {r['preview_ms']:.0f} ms from the change to the strip updated", p)
    assert p["frame"] == p["now"] and p["blend"] == "ALPHA_OVER" and p["shape"][2] == 4
    assert p["opaque"] > 0 and p["sticker_blue"] == 0, "the hidden sticker is gone from the preview"
    assert r["preview_sticker_back"] > 20, "shown again: the preview has it"
    assert r["result_stale_muted"] and r["result_current_unmuted"], "the result strip is muted while stale"
    c = r["cancel"]
    assert c["folder_is_stack"] and not c["muted"], c
    if c["cancelled"]:
        assert "kept" in c["outcome"] and c["events"], c
        assert all(f"{f:04d}.png" in c["on_disk"] for f in c["events"]), "every announced frame is on disk"
        assert len(c["on_disk"]) <= c["elements"], "the strip lists every frame; the written ones show"
    else:  # the engine finished before the cancel arrived: then it is a normal success
        assert c["ok"] and len(c["on_disk"]) == c["elements"], c
    assert r["restarts"] == 1 and r["new_pid"] and "restarted" in r["notice"] and r["notice_again"] == ""
    assert r["preview_after_restart"]
    assert r["service_stopped"], "disabling the add-on stops the engine service"


def _check_identity(r: dict[str, Any]) -> None:
    """Everyday editing (see _identity_checks): the project and the result stay with the strip."""
    moved, back = r["sticker_moved"], r["sticker_back"]
    assert moved["center"] == [STICKER_CENTER[0] + 6.0, STICKER_CENTER[1] - 4.0] and moved["scale"] == 2.0
    assert abs(moved["rotation"] - 0.5) < 1e-6 and back["center"] == list(STICKER_CENTER) and back["scale"] == 1.0
    # pressing Add Strokes twice: the second finds nothing to add (no duplicate layer)
    assert "No Grease Pencil strokes" in r["add_strokes_again"] and r["layers_after_again"] == 0
    b = r["before"]
    assert b["result"][:2] == b["movie"][:2] and b["result"][2] == b["movie"][2] + 1 and not b["result"][3]
    assert r["rename"][0] and r["rename"][1] >= 1, "renaming the strip keeps its project and layers"
    sl = r["slide"]
    assert sl["movie"][0] == b["movie"][0] + 10 and sl["result"][:2] == sl["movie"][:2], "the result slides along"
    left, right = r["cut"]
    assert left["same_project"] and right["same_project"], "both halves of a cut keep the project"
    assert left["ids_differ"]
    assert left["result"][:2] == left["movie"][:2] and right["result"][:2] == right["movie"][:2], \
        "each half has its own result strip, trimmed like it"
    assert r["after_uncut"][:2] == b["movie"][:2]
    assert r["duplicate_same_project"], "a duplicate of the strip finds the same project"
    assert r["retrim"][0] and r["retrim"][1] == [[0, 1]], "source frame 0 is shown but was not trained"
    tnf = r["train_new_frames"]
    assert tnf["same_folder"] and tnf["same_record"] and tnf["resume"], tnf
    assert tnf["frames"] == [0, CLIP_T] and tnf["frames_arg"] == f"0:{CLIP_T}" and "added to the project" in tnf["note"]
    assert r["train_all_new_folder"], "Train All keeps making a project for all the frames"
    assert not r["second_project"] and "No trained project" in r["second_add_strokes"]
    assert r["stale_muted"] and r["restored_unmuted"], "a result showing another stack is muted as stale"
    folder, rel, layers_ok = r["save_as"]
    assert folder and Path(folder).is_dir() and layers_ok
    assert rel.startswith("//") and ".." in rel, "stored relative to the .blend's new folder"
    assert r["moved_found"] is None and "Relink" in r["moved_error"]
    assert r["relinked"][0] == os.path.normpath(r["relinked_new_place"]) and r["relinked"][1].startswith("//")
    assert r["relinked_back"]


# =======================================================================================
# child side (runs inside the bpy module)
def _child_setup(args: dict[str, Any]) -> Any:
    import bpy

    bpy.ops.extensions.package_install_files(filepath=args["zip"], repo="user_default", enable_on_install=True)
    addon = sys.modules.get(ADDON_MODULE) or __import__(ADDON_MODULE, fromlist=["*"])
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    if os.path.abspath(args["engine_python"]) != os.path.abspath(sys.executable):
        prefs.python_path = args["engine_python"]
    return addon


def _child_teardown() -> bool:
    """Disable the add-on (4.5 hangs at exit with registered classes) and check it is gone."""
    import bpy

    bpy.ops.preferences.addon_disable(module=ADDON_MODULE)
    return not hasattr(bpy.types, "INVE_PT_main") and not hasattr(bpy.types.Scene, "inve") \
        and not hasattr(bpy.types, "INVE_OT_train")


def _poll_error(op: Any) -> str:
    try:
        op()
    except RuntimeError as exc:
        return str(exc)
    return ""


class RecordingLayout:
    """Stands in for ``UILayout`` (which only exists while Blender draws a window) and checks
    every call the panels make against Blender's RNA: property names, operator ids, icons."""

    def __init__(self, log: list[str], icons: set[str]) -> None:
        self._log, self._icons = log, icons

    def __setattr__(self, name: str, value: Any) -> None:  # use_property_split, scale_y, ...
        object.__setattr__(self, name, value)

    def _icon(self, icon: str) -> None:
        assert icon in self._icons, f"unknown icon {icon!r}"

    def _child(self, *args: Any, **kw: Any) -> "RecordingLayout":
        return RecordingLayout(self._log, self._icons)

    row = column = box = split = _child

    def label(self, text: str = "", icon: str = "NONE", **kw: Any) -> None:
        self._icon(icon)
        self._log.append(f"label:{text}")

    def prop(self, data: Any, name: str, text: str | None = None, icon: str = "NONE", **kw: Any) -> None:
        self._icon(icon)
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name!r}"
        self._log.append(f"prop:{name}")

    def operator(self, idname: str, text: str | None = None, icon: str = "NONE", **kw: Any) -> Any:
        import bpy
        from types import SimpleNamespace

        self._icon(icon)
        mod, name = idname.split(".")
        assert hasattr(getattr(bpy.ops, mod), name), f"no operator {idname}"
        getattr(getattr(bpy.ops, mod), name).get_rna_type()
        self._log.append(f"op:{idname}")
        return SimpleNamespace()

    def template_list(self, listtype: str, list_id: str, data: Any, prop: str, active_data: Any,
                      active_prop: str, **kw: Any) -> None:
        import bpy

        assert hasattr(bpy.types, listtype) and prop in data.bl_rna.properties
        assert active_prop in active_data.bl_rna.properties
        self._log.append(f"list:{prop}")

    def progress(self, factor: float = 0.0, type: str = "BAR", text: str = "") -> None:
        assert 0.0 <= factor <= 1.0
        self._log.append(f"progress:{text}")

    def separator(self, **kw: Any) -> None:
        pass


def _draw_all(bpy: Any, panels: Any, prefs: Any) -> list[str]:
    """Draw the panels, the list rows and the preferences into a RecordingLayout."""
    from types import SimpleNamespace

    icons = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())
    log: list[str] = []
    ctx = bpy.context
    for cls in (panels.INVE_PT_main, panels.INVE_PT_layers, panels.INVE_PT_slides, panels.INVE_PT_tools):
        cls.draw(SimpleNamespace(layout=RecordingLayout(log, icons), _draw_info=panels.INVE_PT_main._draw_info), ctx)
    for p in ctx.scene.inve.projects:
        for i, item in enumerate(p.layers):
            panels.INVE_UL_layers.draw_item(None, ctx, RecordingLayout(log, icons), p, item, 0, p, "active_layer", i)
    type(prefs).draw(SimpleNamespace(layout=RecordingLayout(log, icons), python_path=prefs.python_path,
                                     bl_rna=prefs.bl_rna), ctx)
    return log


def _tiny_wheel(folder: str) -> str:
    """A minimal pure-Python wheel, built by hand (no network, no build backend)."""
    import base64
    import hashlib

    files = {"inve_tiny_pkg/__init__.py": b"VALUE = 42\n",
             "inve_tiny_pkg-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: inve-tiny-pkg\nVersion: 0.1\n",
             "inve_tiny_pkg-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("inve_tiny_pkg-0.1.dist-info/RECORD,,")
    path = os.path.join(folder, "inve_tiny_pkg-0.1-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("inve_tiny_pkg-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def _add_gp_stroke(bpy: Any, scene: Any, frame: int, world_pts: list[tuple[float, float, float]],
                   radius: float, name: str = "Ink") -> Any:
    # v3 data: `grease_pencils_v3` in 4.x (where `grease_pencils` is the legacy type), `grease_pencils` in 5.0
    data_coll = bpy.data.grease_pencils_v3 if hasattr(bpy.data, "grease_pencils_v3") else bpy.data.grease_pencils
    gp = data_coll.new(name)
    obj = bpy.data.objects.new(name, gp)
    scene.collection.objects.link(obj)
    mat = bpy.data.materials.new(name + "Red")
    bpy.data.materials.create_gpencil_data(mat)
    mat.grease_pencil.show_stroke = True  # 5.2 leaves it False here (5.0.1: True): strokes would be hidden
    mat.grease_pencil.color = (1.0, 0.0, 0.0, 1.0)
    obj.data.materials.append(mat)
    layer = gp.layers.new("Lines")
    drawing = layer.frames.new(frame).drawing
    drawing.add_strokes([len(world_pts)])
    stroke = drawing.strokes[0]
    for p, co in zip(stroke.points, world_pts):
        p.position = co
        p.radius = radius
        p.opacity = 1.0
    return obj


def _ortho_camera(bpy: Any, scene: Any, ortho_scale: float) -> Any:
    import math

    cam_data = bpy.data.cameras.new("Cam")
    cam_data.type = "ORTHO"
    cam_data.ortho_scale = ortho_scale
    cam = bpy.data.objects.new("Cam", cam_data)
    cam.location = (0.0, -10.0, 0.0)
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)  # looks along +Y; world X right, Z up
    scene.collection.objects.link(cam)
    scene.camera = cam
    return cam


def child_install(args: dict[str, Any]) -> dict[str, Any]:
    import bpy
    import numpy as np

    addon = _child_setup(args)
    from importlib import import_module

    strips = import_module(ADDON_MODULE + ".blender.sequencer")
    strokes = import_module(ADDON_MODULE + ".blender.gp_strokes")
    engine_env = import_module(ADDON_MODULE + ".io.engine_env")
    ops_train = import_module(ADDON_MODULE + ".blender.ops_train")
    preferences = import_module(ADDON_MODULE + ".blender.preferences")
    out: dict[str, Any] = {"enabled": ADDON_MODULE in bpy.context.preferences.addons,
                           "registered_ops": len([n for n in dir(bpy.ops.inve) if not n.startswith("_")])}
    status = engine_env.check(preferences.engine_spec())
    engine_env.set_status(status)
    out.update(engine_ok=status.ok, engine_message=status.message, engine_path=status.versions.get("engine_path", ""))

    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 320, 192
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    panels = import_module(ADDON_MODULE + ".blender.panels")
    prefs_obj = bpy.context.preferences.addons[ADDON_MODULE].preferences
    engine_env.set_status(engine_env.EngineStatus(False, "The engine needs torch: click Install Dependencies"))
    out["draw_no_strip"] = _draw_all(bpy, panels, prefs_obj)  # and an engine that is not ready
    engine_env.set_status(status)
    out["poll_no_sequencer"] = _poll_error(bpy.ops.inve.train)
    coll = strips.strip_collection(scene)
    png = os.path.join(args["tmp"], "red.png")
    img = bpy.data.images.new("red", 160, 96)
    img.pixels = [1.0, 0.0, 0.0, 1.0] * (160 * 96)
    img.filepath_raw, img.file_format = png, "PNG"
    img.save()
    image_strip = coll.new_image("still", png, 1, 1)
    scene.sequence_editor.active_strip = image_strip
    out["poll_image_strip"] = _poll_error(bpy.ops.inve.train)
    coll.remove(image_strip)
    missing = coll.new_movie("gone", args["clip"], 1, 1)
    movie_path = missing.filepath
    missing.filepath = os.path.join(args["tmp"], "does_not_exist.mp4")
    scene.sequence_editor.active_strip = missing
    out["poll_missing_file"] = _poll_error(bpy.ops.inve.train)
    coll.remove(missing)

    movie = coll.new_movie("noise", movie_path, 2, 5, fit_method="FIT")
    movie.frame_offset_start = 2
    scene.sequence_editor.active_strip = movie
    timing = strips.strip_timing(movie)
    out["visible_range"] = list(timing.visible_source_range())
    out.update(scene7_source=timing.scene_to_source(7), scene16_source=timing.scene_to_source(16),
               scene6_source=timing.scene_to_source(6))
    s = scene.inve
    args_list = ops_train.train_args("v.mp4", "p", timing.visible_source_range(), s.working_side(), s.minutes,
                                     s.device, s.single_layer, False)
    out["train_frames_arg"] = args_list[args_list.index("--frames") + 1]
    out["movie_channel"] = movie.channel

    # Grease Pencil through an orthographic camera: 3.2 units across 320 px = 100 px per unit
    _ortho_camera(bpy, scene, 3.2)
    world = [(-0.5, 0.0, 0.2), (0.0, 0.0, 0.2), (0.3, 0.0, -0.1)]
    obj = _add_gp_stroke(bpy, scene, 1, world, radius=0.04)
    placement = strips.strip_placement(scene, movie)
    scene.frame_set(3)
    (st,) = strokes.read_gp_object_strokes(obj, scene, 3, placement)
    out["gp_points"] = st.points
    # world (X, Z) -> render px (160 + 100 X, 96 - 100 Z) -> source (halved: the clip is fitted x2)
    out["gp_expected"] = [((160 + 100 * x) / 2, (96 - 100 * z) / 2) for x, _, z in world]
    out["gp_width"], out["gp_color"] = st.width, list(st.color)
    out["view_to_source"] = list(placement.view_to_source(100, 40))

    # the result strip, from PNG folders this test writes (placement only; propagation is e2e)
    def write_folder(name: str, color: tuple[float, ...]) -> str:
        folder = os.path.join(args["tmp"], name)
        os.makedirs(folder, exist_ok=True)
        im = bpy.data.images.new(name, 160, 96)
        im.pixels = list(color) * (160 * 96)
        for f in range(2, 12):
            im.filepath_raw, im.file_format = os.path.join(folder, f"{f:04d}.png"), "PNG"
            im.save()
        return folder

    def describe(strip: Any) -> dict[str, Any]:
        return {"name": strip.name, "channel": strip.channel, "frame_final_start": strip.frame_final_start,
                "n_elements": len(strip.elements), "directory": strip.directory,
                "n_strips": len(list(strips.strip_collection(scene)))}

    res = strips.place_result_strip(scene, movie, write_folder("frames_a", (0.0, 1.0, 0.0, 1.0)),
                                    list(range(2, 12)), timing)
    out["result_first"] = describe(res)
    res = strips.place_result_strip(scene, movie, write_folder("frames_b", (1.0, 0.0, 0.0, 1.0)),
                                    list(range(2, 12)), timing)
    out["result_second"] = describe(res)
    # render one frame through the VSE: the red image strip covers the noise movie
    scene.render.use_sequencer = True
    if hasattr(scene.render.image_settings, "media_type"):
        scene.render.image_settings.media_type = "IMAGE"
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = os.path.join(args["tmp"], "still_render.png")
    scene.frame_set(9)
    bpy.ops.render.render(write_still=True)
    rendered = bpy.data.images.load(scene.render.filepath)
    px = np.array(rendered.pixels[:]).reshape(192, 320, 4)
    out["render_pixel_result"] = [float(v) * 255 for v in px[96, 160, :3]]

    # layer list operators, on the layers of the strip's project (recorded here, not trained)
    ops_common = import_module(ADDON_MODULE + ".blender.context")
    scene.sequence_editor.active_strip = movie
    out["layers_before_project"] = _poll_error(lambda: bpy.ops.inve.layer_move(direction="UP"))
    p = ops_common.record_project(bpy.context, movie, os.path.join(args["tmp"], "ws_noise"), (2, 12))
    for n in "ABC":
        p.layers.add().name = n
    p.active_layer = 1
    bpy.ops.inve.layer_move(direction="UP")
    out["layer_order_after_move"] = [it.name for it in p.layers]
    p.active_layer = 1
    bpy.ops.inve.layer_remove()
    out["layers_after_remove"] = [it.name for it in p.layers]

    # the panels with a movie strip, trained-project info, layers of every kind and a running job
    scene.sequence_editor.active_strip = movie
    p.info_json = json.dumps({"trained": True, "frames": list(range(2, 12)), "source_size": [160, 96],
                              "work_size": [160, 96], "metrics": {"psnr": 31.5, "iterations": 900,
                                                                  "train_seconds": 88.0}})
    for kind in ("sketch", "paint", "sticker", "adjust", "atlas"):
        item = p.layers.add()
        item.name, item.kind, item.data = kind.title(), kind, json.dumps({"frame": 2, "strokes": []})
    p.active_layer = len(p.layers) - 2  # the adjust layer
    jobs_mod = import_module(ADDON_MODULE + ".blender.jobs")
    worker_mod = import_module(ADDON_MODULE + ".io.worker")
    running = worker_mod.Worker(["true"], title="Training 'noise'")
    running.state.apply({"event": "progress", "stage": "train", "step": 30, "total": 100, "eta": 12.0, "psnr": 24.0})
    jobs_mod.SLOT.current = jobs_mod.Job("train", running)
    out["draw_strip"] = _draw_all(bpy, panels, prefs_obj)
    jobs_mod.SLOT.current = None
    p.layers.clear()
    for n in "ABC":
        p.layers.add().name = n
    p.info_json = ""

    # other refusals a user meets, each with its reason
    out["propagate_no_folder"] = _poll_error(bpy.ops.inve.propagate)  # layers B, C but no project folder
    p.layers.clear()
    out["poll_propagate_no_layers"] = _poll_error(bpy.ops.inve.propagate)
    out["poll_cancel_idle"] = _poll_error(bpy.ops.inve.cancel)
    scene.inve.projects.clear()
    out["no_project_error"] = _poll_error(bpy.ops.inve.add_strokes)
    # a 24 fps clip in a 30 fps scene: Blender's API adds it frame for frame (no retiming), and
    # finding that out leaves no Movie Clip datablock behind
    scene.render.fps = 30
    out["fps30_range"] = list(ops_common.timing(bpy.context, movie).visible_source_range())
    out["movieclips_left"] = len(bpy.data.movieclips)
    scene.render.fps = 24

    # engine missing: a clear report, not a traceback
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.python_path = os.path.join(args["tmp"], "no", "python")
    out["missing_engine_error"] = _poll_error(bpy.ops.inve.train)
    prefs.python_path = ""

    # Install Dependencies, offline: the same operator, pip and target folder, with the
    # requirements swapped for a tiny local wheel (the real ones are several GB of PyTorch)
    engine_env_mod = import_module(ADDON_MODULE + ".io.engine_env")
    wheel = _tiny_wheel(args["tmp"])
    real_requirements = engine_env_mod.requirements
    engine_env_mod.requirements = lambda root=None: [wheel]
    out["install_poll_offline"] = _poll_error(bpy.ops.inve.install_dependencies)
    bpy.context.preferences.system.use_online_access = True
    try:
        bpy.ops.inve.install_dependencies()
    finally:
        engine_env_mod.requirements = real_requirements
    jobs = import_module(ADDON_MODULE + ".blender.jobs")
    deps = preferences.deps_dir()
    out["deps_dir"] = deps
    out["deps_has_pkg"] = os.path.isfile(os.path.join(deps, "inve_tiny_pkg", "__init__.py"))
    out["install_outcome"] = jobs.last().outcome
    spec = preferences.engine_spec()
    out["spec_after_install"] = [spec.origin, list(spec.pythonpath)]

    # disabling the add-on while a job runs stops the engine process (no orphans)
    worker_mod = import_module(ADDON_MODULE + ".io.worker")
    real_interactive = jobs.interactive
    jobs.interactive = lambda: True
    try:
        sleeper = worker_mod.Worker([sys.executable, "-c", "import time; time.sleep(120)"], title="sleep")
        jobs.start(jobs.Job("train", sleeper))
        out["busy_while_running"] = jobs.busy()
    finally:
        jobs.interactive = real_interactive
    del addon
    out["unregistered"] = _child_teardown()
    t0 = time.monotonic()
    sleeper._proc.wait(timeout=30)
    out["orphan_stopped_s"] = time.monotonic() - t0
    return out


def child_e2e(args: dict[str, Any]) -> dict[str, Any]:
    import glob
    from importlib import import_module

    import bpy

    _child_setup(args)
    jobs = import_module(ADDON_MODULE + ".blender.jobs")
    strips = import_module(ADDON_MODULE + ".blender.sequencer")
    tracking = import_module(ADDON_MODULE + ".io.tracking")
    out: dict[str, Any] = {}
    blend = os.path.join(args["tmp"], "edit.blend")
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 320, 192, 100
    scene.render.fps, scene.render.fps_base = 24, 1.0
    scene.view_settings.view_transform = "Standard"
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    coll = strips.strip_collection(scene)
    movie = coll.new_movie("pan", args["clip"], 1, args["strip_start"], fit_method="FIT")
    movie.frame_offset_start = args["trim"]
    scene.sequence_editor.active_strip = movie
    out["movie_channel"] = movie.channel
    s = scene.inve
    s.quality, s.max_side, s.minutes, s.single_layer, s.device = "CUSTOM", 160, args["minutes"], True, "cpu"

    # the engine check is a job (blocking here, in background mode), as the first click starts it
    bpy.ops.inve.check_engine()
    out["check_outcome"] = jobs.last().outcome
    # Train, then Cancel, through the interactive path: timers never fire under the bpy module,
    # so this drives the timer callback by hand, as Blender's event loop would.
    real_interactive = jobs.interactive
    jobs.interactive = lambda: True
    try:
        bpy.ops.inve.train()
        job = jobs.current()
        deadline = time.monotonic() + 120
        while not job.state.stage and not job.state.finished and time.monotonic() < deadline:
            time.sleep(0.1)
            assert jobs._tick() is not None or job.state.finished
        out["progress_seen"] = job.state.status_text()
        bpy.ops.inve.cancel()
        while jobs._tick() is not None and time.monotonic() < deadline + 60:
            time.sleep(0.1)
        out["cancelled"], out["cancel_outcome"] = job.state.cancelled, job.outcome
        out["busy_after_cancel"] = jobs.busy()
    finally:
        jobs.interactive = real_interactive

    t0 = time.monotonic()
    bpy.ops.inve.train()  # background: the worker runs to completion right here
    out["train_seconds"] = time.monotonic() - t0
    out["after_train_outcome"] = jobs.last().outcome  # the engine's info, read by a chained job
    job = jobs.last().previous
    out["train_ok"], out["train_state"] = job.state.ok, job.state.status_text()
    ops_common = import_module(ADDON_MODULE + ".blender.context")
    proj = ops_common.active_project(bpy.context)
    info = json.loads(proj.info_json)
    out["trained"], out["psnr"] = info.get("trained"), (info.get("metrics") or {}).get("psnr")
    out["project_record"] = [proj.path, proj.frame_start, proj.frame_end, len(proj.fingerprint)]
    # pressing Train again on the finished project must train the panel's minutes *more*
    ops_train = import_module(ADDON_MODULE + ".blender.ops_train")
    out["trained_minutes"] = ops_train.finished_training_minutes(info)
    out["metrics_train_seconds"] = (info.get("metrics") or {}).get("train_seconds")
    out["project_dir"] = job.context_data["project"]
    # ... and it does: Train again with 0.1 minutes in the panel
    s.minutes = 0.1
    bpy.ops.inve.train()
    out["second_train_ok"] = jobs.last().previous.state.ok
    info2 = json.loads(ops_common.active_project(bpy.context).info_json)
    m1, m2 = info.get("metrics") or {}, info2.get("metrics") or {}
    out["second_train"] = [m1.get("train_seconds"), m1.get("iterations"), m2.get("train_seconds"), m2.get("iterations")]
    s.minutes = args["minutes"]

    # a red stroke on scene frame `stroke_frame`, as a Grease Pencil object seen by an ortho camera
    _ortho_camera(bpy, scene, 3.2)  # 100 render px per unit; the clip is fitted x2 into the render
    world = [((2 * x - 160) / 100.0, 0.0, (96 - 2 * y) / 100.0) for x, y in args["stroke_src"]]
    radius = args["width"] / 2 * 2 / 100.0  # half the width, in render px (x2), in units
    ink = _add_gp_stroke(bpy, scene, args["stroke_frame"], world, radius)
    scene.frame_set(args["stroke_frame"])
    bpy.ops.inve.add_strokes(source="GPENCIL", as_region="LINE")
    out["layer"] = {"type": proj.layers[-1].kind, **json.loads(proj.layers[-1].data)}
    # the strokes left the canvas with it: pressing Add Strokes again adds no second layer
    n_layers = len(proj.layers)
    out["add_strokes_again"] = _poll_error(lambda: bpy.ops.inve.add_strokes(source="GPENCIL", as_region="LINE"))
    out["layers_after_again"] = len(proj.layers) - n_layers

    # a nearly closed loop on another (selected) Grease Pencil object -> a brightening region
    import math

    cx, cy, rad = args["region"]
    loop_src = [(cx + rad * math.cos(a), cy + rad * math.sin(a)) for a in (i * 2 * math.pi / 24 for i in range(23))]
    loop_world = [((2 * x - 160) / 100.0, 0.0, (96 - 2 * y) / 100.0) for x, y in loop_src]
    loop = _add_gp_stroke(bpy, scene, args["stroke_frame"], loop_world, radius, name="Loop")
    for o in scene.objects:
        o.select_set(o == loop)
    s.brightness = args["brightness"]
    bpy.ops.inve.add_strokes(source="GPENCIL", as_region="REGION")
    out["region_layer"] = {"type": proj.layers[-1].kind, **json.loads(proj.layers[-1].data)}
    for o in scene.objects:
        o.select_set(o == ink)
    out["paint_wrong_size"] = _poll_error(lambda: bpy.ops.inve.add_paint(filepath=args["sticker"]))
    cx, cy = args["sticker_center"]
    bpy.ops.inve.add_sticker(filepath=args["sticker"], center_x=cx, center_y=cy, scale=1.0)
    out["sticker_layer"] = {"type": proj.layers[-1].kind, "image": proj.layers[-1].image, **json.loads(proj.layers[-1].data)}
    # moved, scaled and turned as by dragging (the values a drag produces), then put back
    bpy.ops.inve.sticker_transform(mode="G", offset=(6.0, -4.0), factor=2.0, angle=0.5)
    out["sticker_moved"] = json.loads(proj.layers[-1].data)
    bpy.ops.inve.sticker_transform(mode="G", offset=(-6.0, 4.0), factor=0.5, angle=-0.5)
    out["sticker_back"] = json.loads(proj.layers[-1].data)

    def describe(strip: Any) -> dict[str, Any]:
        return {"name": strip.name, "channel": strip.channel, "frame_final_start": strip.frame_final_start,
                "n_elements": len(strip.elements), "elements": [e.filename for e in strip.elements],
                "directory": bpy.path.abspath(strip.directory),
                "n_strips": len([s for s in coll if not s.get("inve_preview_of")])}  # the live preview's aside

    bpy.ops.inve.propagate()
    result = strips.find_result_strip(scene, movie)
    assert result is not None, jobs.last().state.status_text()
    out["result"] = describe(result)
    bpy.ops.inve.propagate()  # again: the same strip is updated in place
    out["result_again"] = describe(strips.find_result_strip(scene, movie))
    out.update(_slide_checks(bpy, scene, movie, proj, import_module))
    out.update(_service_checks(bpy, scene, movie, proj, import_module))

    # render the sequencer to a movie
    r = scene.render
    r.use_sequencer = True
    if hasattr(r.image_settings, "media_type"):
        r.image_settings.media_type = "VIDEO"
    r.image_settings.file_format = "FFMPEG"
    r.ffmpeg.format, r.ffmpeg.codec = "MPEG4", "H264"
    r.ffmpeg.constant_rate_factor = "PERC_LOSSLESS"
    scene.frame_start, scene.frame_end = movie.frame_final_start, movie.frame_final_end - 1
    r.filepath = os.path.join(args["tmp"], "render", "edit_")
    bpy.ops.render.render(animation=True)
    found = glob.glob(os.path.join(args["tmp"], "render", "edit_*.mp4"))
    assert len(found) == 1, found
    out.update(render_path=found[0], render_start=scene.frame_start,
               render_frames=scene.frame_end - scene.frame_start + 1)

    # track the stroke's centre into a Movie Clip (drawn again: Add Strokes took it off)
    scene.frame_set(args["stroke_frame"])
    for o in scene.objects:
        o.select_set(False)
    bpy.data.objects.remove(ink)
    ink = _add_gp_stroke(bpy, scene, args["stroke_frame"], world, radius, name="Points")
    ink.select_set(True)
    bpy.ops.inve.track(source="GPENCIL")
    clip = next(c for c in bpy.data.movieclips if c.tracking.tracks.get(tracking.TRACK_PREFIX + "p0"))
    track = clip.tracking.tracks[tracking.TRACK_PREFIX + "p0"]
    size = tuple(clip.size)
    out["markers"] = {m.frame: [*tracking.from_marker_co(m.co[0], m.co[1], size), m.mute] for m in track.markers}
    with open(os.path.join(os.path.dirname(out["project_dir"]), "tracks", "TRACKS.json")) as fh:
        tj = json.load(fh)
    out["tracks_visible"] = dict(zip([f + 1 for f in tj["frames"]], tj["tracks"][0]["visible"]))
    out["clip_frame_start"] = clip.frame_start

    # atlas painting round trip: open the atlas, paint a green square where the background
    # point `paint_src` of frame `stroke_frame` lands in it (from the baked uv map), apply it
    # as an atlas layer, propagate again
    import numpy as np

    atlas_paint = import_module(ADDON_MODULE + ".io.atlas_paint")
    bpy.ops.inve.atlas_open()
    img = next(im for im in atlas_paint.atlas_images(bpy.data, "pan") if im[atlas_paint.ATLAS_TAG] == "bg")
    A = img.size[0]
    project = out["project_dir"]
    uv_all = np.load(os.path.join(project, "maps", "uv_bg.npy"), mmap_mode="r")  # BakedMaps on disk
    uv_k = np.asarray(uv_all[info["frames"].index(args["stroke_frame"] - args["strip_start"])], np.float32)
    h, w = uv_k.shape[:2]
    W, H = info["source_size"]
    x, y = args["paint_src"]
    u, v = uv_k[int(y * h / H), int(x * w / W)]
    col, row = (u + 1) / 2 * A - 0.5, (v + 1) / 2 * A - 0.5  # texel centres at 2(i+0.5)/A - 1
    px = np.empty(A * A * 4, np.float32)
    img.pixels.foreach_get(px)
    px = px.reshape(A, A, 4)
    rad = args["paint_radius"]
    rows = slice(int(round(A - 1 - row)) - rad, int(round(A - 1 - row)) + rad + 1)  # Blender's rows go bottom-up
    cols = slice(int(round(col)) - rad, int(round(col)) + rad + 1)
    px[rows, cols, :3] = (0.0, 1.0, 0.0)
    img.pixels.foreach_set(px.ravel())
    img.update()
    bpy.ops.inve.atlas_apply()
    out["atlas_layer"] = {"type": proj.layers[-1].kind, "image": proj.layers[-1].image, **json.loads(proj.layers[-1].data)}
    out["atlas_size"] = A
    bpy.ops.inve.propagate()
    out["result_atlas"] = describe(strips.find_result_strip(scene, movie))
    # render one frame again: the updated images replace what the Sequencer had cached
    if hasattr(r.image_settings, "media_type"):
        r.image_settings.media_type = "IMAGE"
    r.image_settings.file_format = "PNG"
    r.filepath = os.path.join(args["tmp"], "after_atlas.png")
    scene.frame_set(args["strip_start"] + args["rerender_source_frame"])
    bpy.ops.render.render(write_still=True)
    out["rerender_path"] = r.filepath

    out.update(_identity_checks(bpy, scene, movie, args, import_module))
    proj = ops_common.active_project(bpy.context)
    blend = bpy.data.filepath

    # the layer stack survives saving and reopening the .blend
    out["layers_before_reload"] = len(proj.layers)
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.open_mainfile(filepath=blend)
    out["layers_after_reload"] = [len(p.layers) for p in bpy.context.scene.inve.projects]
    out["torch_in_blender"] = "torch" in sys.modules
    service = import_module(ADDON_MODULE + ".blender.service")
    pid = service.MANAGER.client.pid if service.MANAGER.client is not None else None
    out["unregistered"] = _child_teardown()
    if pid is not None:  # disabling the add-on stops the engine service
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        out["service_stopped"] = not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    return out


def _slide_checks(bpy: Any, scene: Any, movie: Any, proj: Any, import_module: Any) -> dict[str, Any]:
    """Where edits may slide: the engine's estimates for the layers' anchor points, the panel's
    list, a re-check when a layer changes (and none when it comes back), Next Slide."""
    confidence = import_module(ADDON_MODULE + ".blender.confidence")
    conf = import_module(ADDON_MODULE + ".io.confidence")
    seq = import_module(ADDON_MODULE + ".blender.sequencer")
    panels = import_module(ADDON_MODULE + ".blender.panels")
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    assert bpy.ops.inve.check_slides() == {"FINISHED"}
    out["slides_seconds"] = time.perf_counter() - t0
    wish, ans = confidence.current(scene)
    rep = ans.report
    out["slides"] = {"error": ans.error, "frames": rep.frames, "errors": {str(f): e for f, e in rep.error.items()},
                     "flagged": rep.flagged, "estimated": rep.estimated, "summary": rep.summary(),
                     "anchors": [[a.layer, a.frame] for a in wish.anchors], "without": list(rep.layers_without),
                     "layers": [[it.name, it.kind] for it in proj.layers if it.visible], "threshold": conf.SLIDE_PX}
    # moving the sticker asks again (the handler's schedule); moving it back is answered from the cache
    sticker = proj.layers[-1]
    before = sticker.data
    data = json.loads(before)
    data["center"][0] += 3.0
    sticker.data = json.dumps(data)
    w2 = confidence.schedule(scene)
    out["key_changed"] = w2 is not None and w2.key != wish.key
    out["asks_after_change"] = confidence.FETCH.wanted is not None and confidence.FETCH.wanted.key == w2.key
    confidence.pump(wait=True)
    out["answered_after_change"] = confidence.current(scene)[1] is not None
    sticker.data = before
    confidence.schedule(scene)
    out["cached_back"] = confidence.FETCH.wanted is None and confidence.current(scene)[1] is ans
    # Next Slide: with the threshold at the median estimate about half the frames are flagged
    errs = sorted(rep.error.values())
    saved = conf.SLIDE_PX
    conf.SLIDE_PX = errs[len(errs) // 2]
    try:
        assert bpy.ops.inve.check_slides() == {"FINISHED"}
        low = confidence.current(scene)[1].report
        ranges, hidden = confidence.strip_ranges(scene, confidence.current(scene)[1])
        timing = seq.strip_timing(movie)
        scene.frame_set(movie.frame_final_start)
        jumps = []
        for _ in range(3):
            bpy.ops.inve.next_slide()
            jumps.append([scene.frame_current, timing.scene_to_source(scene.frame_current)])
        out["low"] = {"threshold": conf.SLIDE_PX, "flagged": low.flagged, "jumps": jumps, "start": movie.frame_final_start,
                      "ranges": [[r.scene_first, r.scene_last, r.source_first, r.source_last] for r in ranges],
                      "hidden": hidden}
        out["slides_drawn"] = [line for line in _draw_all(bpy, panels, bpy.context.preferences.addons[
            ADDON_MODULE].preferences) if line.startswith("label:Frames ") or "likely to slide" in line]
    finally:
        conf.SLIDE_PX = saved
        confidence.FETCH.forget()
    return out


def _service_checks(bpy: Any, scene: Any, movie: Any, proj: Any, import_module: Any) -> dict[str, Any]:
    """Live preview, a cancelled streaming Propagate and a killed service, on the e2e project."""
    import signal

    import imageio.v3 as iio

    jobs = import_module(ADDON_MODULE + ".blender.jobs")
    preview = import_module(ADDON_MODULE + ".blender.preview")
    service = import_module(ADDON_MODULE + ".blender.service")
    seq = import_module(ADDON_MODULE + ".blender.sequencer")
    out: dict[str, Any] = {}
    # live preview: hide the sticker layer; the frame under the playhead is rendered at once
    sticker = proj.layers[-1]
    sticker.visible = False
    t0 = time.perf_counter()
    preview.schedule(scene)
    preview.pump(scene, wait=True)
    out["preview_ms"] = (time.perf_counter() - t0) * 1000.0
    strip = preview.find_preview_strip(scene, movie[seq.MOVIE_ID])
    png = os.path.join(bpy.path.abspath(strip.directory), strip.elements[0].filename)
    rgba = iio.imread(png)
    out["preview"] = {"frame": strip.frame_final_start, "now": scene.frame_current, "channel": strip.channel,
                      "blend": strip.blend_type, "shape": list(rgba.shape), "opaque": int((rgba[..., 3] > 0).sum()),
                      "sticker_blue": int(((rgba[..., 2] > 200) & (rgba[..., 0] < 60) & (rgba[..., 3] > 200)).sum())}
    out["result_stale_muted"] = bool(seq.find_result_strip(scene, movie).mute)
    sticker.visible = True
    preview.schedule(scene)
    preview.pump(scene, wait=True)
    png = os.path.join(bpy.path.abspath(strip.directory), strip.elements[0].filename)
    out["preview_sticker_back"] = int(((iio.imread(png)[..., 2] > 200) & (iio.imread(png)[..., 3] > 200)).sum())
    out["result_current_unmuted"] = not seq.find_result_strip(scene, movie).mute

    # a streaming Propagate cancelled after its first frame: the frames written stay and show
    client = service.MANAGER.client
    proj.layers[0].visible = False  # another stack: its own folder
    real_interactive = jobs.interactive
    jobs.interactive = lambda: True
    try:
        bpy.ops.inve.propagate()
        job = jobs.current()
        deadline = time.monotonic() + 60
        while not job.worker.frames and not job.state.finished and time.monotonic() < deadline:
            time.sleep(0.002)
            job.worker.poll()
        os.kill(client.pid, signal.SIGSTOP)  # hold the engine so the cancel lands mid-stream
        bpy.ops.inve.cancel()
        os.kill(client.pid, signal.SIGCONT)
        while jobs._tick() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        jobs.interactive = real_interactive
    res = seq.find_result_strip(scene, movie)
    folder = bpy.path.abspath(res.directory)
    out["cancel"] = {"cancelled": job.state.cancelled, "ok": job.state.ok, "outcome": job.outcome,
                     "events": [ev["frame"] for ev in job.worker.frames], "folder": folder,
                     "on_disk": sorted(n for n in os.listdir(folder) if n.endswith(".png")),
                     "folder_is_stack": folder.rstrip(os.sep) == job.context_data["frames_dir"].rstrip(os.sep),
                     "muted": bool(res.mute), "elements": len(res.elements)}
    proj.layers[0].visible = True

    # the service killed: it restarts by itself, says so once, and the preview works again
    pid = client.pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while client.restarts < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    out["restarts"], out["new_pid"] = client.restarts, client.pid != pid
    out["notice"] = service.MANAGER.take_notice()
    out["notice_again"] = service.MANAGER.take_notice()
    scene.frame_set(scene.frame_current + 1)
    preview.schedule(scene)
    preview.pump(scene, wait=True)
    out["preview_after_restart"] = preview.find_preview_strip(scene, movie[seq.MOVIE_ID]).frame_final_start \
        == scene.frame_current
    out["service_pid"] = client.pid
    return out


def _identity_checks(bpy: Any, scene: Any, movie: Any, args: dict[str, Any], import_module: Any) -> dict[str, Any]:
    """Everyday editing keeps the project and the result with the strip (trained once, in e2e)."""
    import shutil

    ctx = import_module(ADDON_MODULE + ".blender.context")
    seq = import_module(ADDON_MODULE + ".blender.sequencer")
    out: dict[str, Any] = {}
    coll = seq.strip_collection(scene)
    proj = ctx.active_project(bpy.context)
    n_layers = len(proj.layers)
    res = seq.find_result_strip(scene, movie)

    def span(strip: Any) -> list[Any]:
        return [strip.frame_final_start, strip.frame_final_end, strip.channel, bool(strip.mute)]

    out["before"] = {"movie": span(movie), "result": span(res)}
    # rename: same project, same layers
    movie.name = "renamed shot"
    out["rename"] = [ctx.active_project(bpy.context) == proj, len(ctx.active_project(bpy.context).layers)]
    # slide by 10 frames: the result moves with it
    movie.frame_start += 10
    ctx.follow(scene)
    out["slide"] = {"movie": span(movie), "result": span(res)}
    movie.frame_start -= 10
    ctx.follow(scene)
    # blade cut (as Blender's split leaves it: two strips, the custom properties copied)
    cut = movie.frame_final_start + 4
    right = coll.new_movie("renamed shot.001", movie.filepath, movie.channel, int(movie.frame_start))
    right.frame_offset_start = movie.frame_offset_start
    right.frame_final_start = cut
    right[seq.MOVIE_ID] = movie[seq.MOVIE_ID]
    movie.frame_final_end = cut
    ctx.follow(scene)
    halves = []
    for m in (movie, right):
        scene.sequence_editor.active_strip = m
        p = ctx.active_project(bpy.context)
        r = seq.find_result_strip(scene, m)
        halves.append({"same_project": p == proj, "movie": span(m), "result": span(r) if r else None,
                       "ids_differ": movie[seq.MOVIE_ID] != right[seq.MOVIE_ID]})
    out["cut"] = halves
    coll.remove(right)
    movie.frame_final_end = out["before"]["movie"][1]  # undo the cut
    scene.sequence_editor.active_strip = movie
    ctx.follow(scene)
    out["after_uncut"] = span(movie)
    # duplicate: another strip of the same file finds the project too
    dup = coll.new_movie("copy", movie.filepath, movie.channel + 3, int(movie.frame_start) + 40)
    dup.frame_offset_start = movie.frame_offset_start
    scene.sequence_editor.active_strip = dup
    out["duplicate_same_project"] = ctx.active_project(bpy.context) == proj
    coll.remove(dup)
    # re-trim: showing one more source frame than trained is flagged with what is missing
    scene.sequence_editor.active_strip = movie
    movie.frame_offset_start = 0
    item, match = ctx.strip_project(bpy.context, movie)
    out["retrim"] = [item == proj, list(map(list, match.outside))]
    # Train New Frames resumes the trained project with the wider range (the engine adds a
    # segment for the new frames; tests/test_segments.py trains that), not a new project
    ops_train = import_module(ADDON_MODULE + ".blender.ops_train")
    fp, shown = ctx.source_key(bpy.context, movie, exact=True)
    base, frames, _, target_item, note = ops_train.train_target(None, bpy.context, movie, fp, shown, extend=True)
    argv = ops_train.train_args("v.mp4", "p", frames, 64, 1.0, "cpu", False, True)
    out["train_new_frames"] = {"same_folder": base == ctx.started_folder(proj), "same_record": target_item == proj,
                               "frames": list(frames), "note": note,
                               "frames_arg": argv[argv.index("--frames") + 1], "resume": "--resume" in argv}
    batch_base = ops_train.train_target(None, bpy.context, movie, fp, shown)[0]
    out["train_all_new_folder"] = batch_base != base
    movie.frame_offset_start = args["trim"]
    # a second strip of other footage has no project and no layers of the first
    other = os.path.join(args["tmp"], "other.mp4")
    shutil.copy(args["clip"], other)
    with open(other, "r+b") as fh:  # other content: change some bytes of the file's header area
        fh.seek(64)
        fh.write(b"\x00\x01" * 16)
    second = coll.new_movie("second", other, movie.channel + 4, 1)
    scene.sequence_editor.active_strip = second
    out["second_project"] = ctx.active_project(bpy.context) is not None
    out["second_add_strokes"] = _poll_error(lambda: bpy.ops.inve.add_strokes(source="GPENCIL"))
    coll.remove(second)
    scene.sequence_editor.active_strip = movie
    # Undo-like change of the layer list without Propagate: the result strip is marked stale
    # (muted) and comes back when the list matches what it shows again
    proj.layers[0].visible = False
    ctx.follow(scene)
    out["stale_muted"] = bool(res.mute)
    proj.layers[0].visible = True
    ctx.follow(scene)
    out["restored_unmuted"] = not res.mute
    # Save As into another folder: found through the absolute path, stored relative again
    other_dir = os.path.join(args["tmp"], "elsewhere")
    os.makedirs(other_dir, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(other_dir, "moved.blend"))
    folder = ctx.project_folder(proj)
    out["save_as"] = [folder, proj.path, len(ctx.active_project(bpy.context).layers) == n_layers]
    # the project folder moved: not found, then Relink (one folder asked) finds it again
    moved_root = os.path.join(args["tmp"], "archive")
    os.makedirs(moved_root, exist_ok=True)
    new_place = os.path.join(moved_root, os.path.basename(folder))
    shutil.move(folder, new_place)
    out["moved_found"] = ctx.project_folder(proj)
    out["moved_error"] = _poll_error(lambda: bpy.ops.inve.propagate())
    bpy.ops.inve.relink_project(directory=moved_root)
    out["relinked"] = [ctx.project_folder(proj), proj.path]
    out["relinked_new_place"] = new_place
    # and back where it was (the parent reads the propagated frames there): relinked by its own folder
    shutil.move(new_place, folder)
    bpy.ops.inve.relink_project(directory=folder)
    out["relinked_back"] = ctx.project_folder(proj) == os.path.normpath(folder)
    return out


def child_train_all(args: dict[str, Any]) -> dict[str, Any]:
    from importlib import import_module

    import bpy

    _child_setup(args)
    jobs = import_module(ADDON_MODULE + ".blender.jobs")
    strips = import_module(ADDON_MODULE + ".blender.sequencer")
    ctx_mod = import_module(ADDON_MODULE + ".blender.context")
    panels = import_module(ADDON_MODULE + ".blender.panels")
    engine_env = import_module(ADDON_MODULE + ".io.engine_env")
    out: dict[str, Any] = {}
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(args["tmp"], "cut.blend"))
    out["poll_nothing"] = _poll_error(bpy.ops.inve.train_all)
    coll = strips.strip_collection(scene)
    a = coll.new_movie("shot 0", args["clips"][0], 1, 1, fit_method="FIT")  # source 0..3
    a.frame_final_duration = 2  # a cut: shows source frames 0-1 ...
    b = coll.new_movie("shot 0.001", args["clips"][0], 2, 3, fit_method="FIT")
    b.frame_offset_start = 2  # ... and 2-3: another project of the same file
    c = coll.new_movie("shot 1", args["clips"][1], 3, 10, fit_method="FIT")
    m = coll.new_movie("muted", args["clips"][1], 4, 20, fit_method="FIT")
    m.mute = True
    d = coll.new_movie("shot 0.002", args["clips"][0], 2, 30, fit_method="FIT")  # a duplicate of "shot 0"
    d.frame_final_duration = 2
    scene.sequence_editor.active_strip = c
    s = scene.inve
    s.quality, s.max_side, s.minutes, s.single_layer, s.device = "CUSTOM", 32, 0.08, True, "cpu"
    bpy.ops.inve.check_engine()
    status = engine_env.cached_status()
    assert status is not None and status.ok, status
    status.versions["ray"] = False  # the engine's --local batch (a Ray cluster takes long to start)

    real_interactive = jobs.interactive
    jobs.interactive = lambda: True
    try:
        bpy.ops.inve.train_all()
        job = jobs.current()
        out["argv"] = job.worker.cmd
        out["shots"] = job.context_data["strips"]
        deadline = time.monotonic() + 180
        tracker = job.worker.tracker
        while time.monotonic() < deadline and not job.state.finished:
            time.sleep(0.1)
            jobs._tick()
            if any(sh.stage == "train" and sh.step > 0 for sh in tracker.shots.values()):
                break
        time.sleep(1.5)
        jobs._tick()
        out["drawn_running"] = _draw_all(bpy, panels, bpy.context.preferences.addons[ADDON_MODULE].preferences)
        bpy.ops.inve.cancel()
        while jobs._tick() is not None and time.monotonic() < deadline + 60:
            time.sleep(0.1)
        out["cancelled"], out["cancel_outcome"] = job.state.cancelled, job.outcome
        out["lines_cancelled"] = {n: sh.line() for n, sh in tracker.shots.items()}
        out["checkpoint_after_cancel"] = any(
            os.path.isfile(os.path.join(ctx_mod.workspace_path(bpy.context, st)[0], "project", "checkpoint.pt"))
            for st in (a, b, c))
    finally:
        jobs.interactive = real_interactive
    ops_batch = import_module(ADDON_MODULE + ".blender.ops_batch")
    out["notice"] = " ".join(ops_batch._NOTICES)

    bpy.ops.inve.train_all()  # background: the batch runs to its end here, then the projects are read
    job = ops_batch.batch_job()
    tracker = job.worker.tracker
    out["outcome"] = jobs.last().outcome
    out["resumed_from"] = {n: sh.resumed_from for n, sh in tracker.shots.items()}
    out["resumed"] = any(v for v in out["resumed_from"].values())
    Workspace = import_module(ADDON_MODULE + ".io.projects").Workspace
    out["strips"] = {}
    for st in (a, b, c, d):
        shot = next(n for n, names in job.context_data["strips"].items() if st.name in names)
        fp, frames = ctx_mod.source_key(bpy.context, st)
        base, _ = ctx_mod.new_workspace_path(bpy.context, st, fp, frames)
        item, match = ctx_mod.strip_project(bpy.context, st)
        folder = ctx_mod.project_folder(item) if item is not None else None
        info = json.loads(item.info_json) if item is not None and item.info_json else {}
        out["strips"][st.name] = [tracker.shots[shot].line(), job.context_data["projects"][shot][2],
                                  Workspace(base).project,
                                  bool(match is not None and match.complete and folder == base),
                                  bool(info.get("trained"))]
    scene.sequence_editor.active_strip = a
    out["drawn_done"] = _draw_all(bpy, panels, bpy.context.preferences.addons[ADDON_MODULE].preferences)
    # each strip's end is saved with the .blend: reopened in a new session (no batch job in
    # memory), the panel still shows it
    bpy.ops.wm.save_mainfile()
    jobs.SLOT.last_job = None
    bpy.ops.wm.open_mainfile(filepath=bpy.data.filepath)
    scene = bpy.context.scene
    scene.sequence_editor.active_strip = next(st for st in strips.strip_collection(scene) if st.name == "shot 1")
    out["saved_rows"] = [[r.strip, r.state] for r in scene.inve.batch_strips]
    out["drawn_reloaded"] = _draw_all(bpy, panels, bpy.context.preferences.addons[ADDON_MODULE].preferences)

    # "shot 0"'s trim widened after training (source 0-2; its project has 0-1): Train All resumes
    # that project with the wider range (the engine adds a segment), as Train New Frames does;
    # the record (and its layers) widens with it, nothing else is retrained
    a = next(st for st in strips.strip_collection(scene) if st.name == "shot 0")
    item, _ = ctx_mod.strip_project(bpy.context, a)
    item.layers.add().name = "kept"
    before = {"folder": ctx_mod.project_folder(item), "frames": [item.frame_start, item.frame_end],
              "records": len(scene.inve.projects)}
    a.frame_final_duration = 3
    out["widened_match"] = list(ctx_mod.strip_project(bpy.context, a)[1].outside)
    bpy.ops.inve.train_all()
    job = ops_batch.batch_job()
    item, match = ctx_mod.strip_project(bpy.context, a)
    info = json.loads(item.info_json) if item.info_json else {}
    out["widened"] = {"before": before, "outcome": jobs.last().outcome,
                      "shots": {n: [list(v[1]), v[2]] for n, v in job.context_data["projects"].items()},
                      "lines": {n: sh.line() for n, sh in job.worker.tracker.shots.items()},
                      "folder": ctx_mod.project_folder(item), "frames": [item.frame_start, item.frame_end],
                      "complete": match.complete, "layers": [it.name for it in item.layers],
                      "records": len(scene.inve.projects), "info_frames": info.get("frames"),
                      "trained": info.get("trained")}
    _child_teardown()
    return out


SCENARIOS = {"install": child_install, "e2e": child_e2e, "train_all": child_train_all}


def child_main(scenario: str, args_file: str, scenarios: dict[str, Any] | None = None) -> int:
    """Run one scenario (of this file, or of ``scenarios``) and write its result, or fail."""
    args = json.loads(Path(args_file).read_text())
    try:
        result = (scenarios or SCENARIOS)[scenario](args)
    except Exception:  # noqa: BLE001 - report the child's failure to the parent
        traceback.print_exc()
        try:
            _child_teardown()
        except Exception:  # noqa: BLE001
            pass
        return 1
    Path(args["result"]).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    sys.exit(child_main(sys.argv[1], sys.argv[2]))

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


def run_child(scenario: str, args: dict[str, Any], tmp: Path, timeout: float = 600) -> dict[str, Any]:
    user = tmp / "blender_user"
    user.mkdir(exist_ok=True)
    args = {**args, "result": str(tmp / f"{scenario}_result.json"), "engine_python": engine_python()}
    args_file = tmp / f"{scenario}_args.json"
    args_file.write_text(json.dumps(args))
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(user), OMP_NUM_THREADS="2")
    env.pop("PYTHONPATH", None)  # the add-on must find its bundled engine on its own
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), scenario, str(args_file)],
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
    for required in ("blender_manifest.toml", "__init__.py", "worker.py", "panels.py", "engine/core/cli.py",
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
    assert r["unregistered"], "every class is gone after disabling"


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


def _new_scene_for_clip(bpy: Any, name: str, res: tuple[int, int]) -> Any:
    scene = bpy.data.scenes.new(name)
    bpy.context.window_manager.windows[0].scene = scene if bpy.context.window_manager.windows else None
    scene.render.resolution_x, scene.render.resolution_y = res
    scene.render.resolution_percentage = 100
    scene.render.fps, scene.render.fps_base = 24, 1.0
    scene.view_settings.view_transform = "Standard"
    return scene


def _add_gp_stroke(bpy: Any, scene: Any, frame: int, world_pts: list[tuple[float, float, float]],
                   radius: float, name: str = "Ink") -> Any:
    # v3 data: `grease_pencils_v3` in 4.x (where `grease_pencils` is the legacy type), `grease_pencils` in 5.0
    data_coll = bpy.data.grease_pencils_v3 if hasattr(bpy.data, "grease_pencils_v3") else bpy.data.grease_pencils
    gp = data_coll.new(name)
    obj = bpy.data.objects.new(name, gp)
    scene.collection.objects.link(obj)
    mat = bpy.data.materials.new(name + "Red")
    bpy.data.materials.create_gpencil_data(mat)
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

    strips = import_module(ADDON_MODULE + ".strips")
    strokes = import_module(ADDON_MODULE + ".strokes")
    engine_env = import_module(ADDON_MODULE + ".engine_env")
    ops_train = import_module(ADDON_MODULE + ".ops_train")
    preferences = import_module(ADDON_MODULE + ".preferences")
    out: dict[str, Any] = {"enabled": ADDON_MODULE in bpy.context.preferences.addons,
                           "registered_ops": len([n for n in dir(bpy.ops.inve) if not n.startswith("_")])}
    status = engine_env.check(preferences.engine_spec())
    engine_env.set_status(status)
    out.update(engine_ok=status.ok, engine_message=status.message, engine_path=status.versions.get("engine_path", ""))

    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 320, 192
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
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

    # layer list operators
    s.layers.clear()
    for n in "ABC":
        s.layers.add().name = n
    s.active_layer = 1
    bpy.ops.inve.layer_move(direction="UP")
    out["layer_order_after_move"] = [it.name for it in s.layers]
    s.active_layer = 1
    bpy.ops.inve.layer_remove()
    out["layers_after_remove"] = [it.name for it in s.layers]

    # engine missing: a clear report, not a traceback
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.python_path = os.path.join(args["tmp"], "no", "python")
    out["missing_engine_error"] = _poll_error(bpy.ops.inve.train)
    prefs.python_path = ""
    del addon
    out["unregistered"] = _child_teardown()
    return out


SCENARIOS = {"install": child_install}


def child_main(scenario: str, args_file: str) -> int:
    args = json.loads(Path(args_file).read_text())
    try:
        result = SCENARIOS[scenario](args)
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

"""Unit tests of the add-on's plain-Python logic (no bpy needed).

Under the bpy module timers and modal operators never run, so the functions that glue
relies on are tested here directly: worker JSON-lines parsing and progress state, the real
worker process with cancel, frame mapping (offsets, trims, frame rates), preview <-> source
coordinates, stroke -> layer conversion, EDITS.json building and TRACKS.json handling.
"""
from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inve_blender.io import edit_stack, engine_env, strokes, tracking  # noqa: E402
from inve_blender.io.strip_map import StripPlacement, StripTiming, fit_scale, playback_rate  # noqa: E402
from inve_blender.io.worker import (JsonLinesParser, ProgressState, Worker, engine_env as worker_env,  # noqa: E402
                                 format_seconds, parse_line)


# ---------------------------------------------------------------------------------------
# JSON lines
def test_parser_joins_partial_lines_and_split_utf8() -> None:
    p = JsonLinesParser()
    line = json.dumps({"event": "message", "message": "Größe ok"}, ensure_ascii=False).encode("utf-8")
    line2 = b'{"event": "progress", "stage": "fit", "step": 3, "total": 10}\n'
    cut = line.index("ö".encode("utf-8")) + 1  # in the middle of a two-byte character
    assert p.feed(line[:cut]) == []
    assert p.feed(line[cut:] + b"\n" + line2[:20]) == [{"event": "message", "message": "Größe ok"}]
    assert p.feed(line2[20:]) == [{"event": "progress", "stage": "fit", "step": 3, "total": 10}]
    assert p.feed('{"event": "done", "psnr": 30.5}') == []  # no newline yet
    assert p.flush() == [{"event": "done", "psnr": 30.5}]
    assert p.flush() == []


def test_parser_turns_noise_into_messages() -> None:
    assert parse_line("   ") is None
    assert parse_line("Warning: something") == {"event": "message", "message": "Warning: something"}
    assert parse_line("[1, 2]") == {"event": "message", "message": "[1, 2]"}
    assert parse_line('{"no_event": 1}') == {"event": "message", "message": '{"no_event": 1}'}
    assert parse_line('{"event": "error", "message": "bad"}') == {"event": "error", "message": "bad"}


def test_progress_state_folds_events() -> None:
    st = ProgressState(title="Training 'clip'")
    st.apply({"event": "progress", "stage": "fit", "step": 25, "total": 100, "elapsed": 5.0, "eta": 15.0,
              "psnr": 24.5})
    assert st.fraction == pytest.approx(0.25)
    assert st.psnr == 24.5 and st.eta == 15.0
    text = st.status_text()
    assert "fit 25/100" in text and "PSNR 24.50 dB" in text and "15s left" in text
    st.apply({"event": "progress", "stage": "bake", "step": 1, "total": 4, "eta": None})
    assert st.psnr == 24.5, "a stage without psnr keeps the last value"
    assert st.eta is None and st.stage == "bake"
    st.apply({"event": "progress", "stage": "x", "step": "bad", "total": None})  # malformed numbers
    assert st.step == 0 and st.fraction == 0.0
    st.apply({"event": "done", "psnr": 31.25, "project": "/p"})
    assert st.ok and st.result == {"psnr": 31.25, "project": "/p"}
    assert not st.finished, "finished only once the process has exited (the worker decides)"
    st.finished = True
    assert "done (PSNR 31.25 dB)" in st.status_text()
    err = ProgressState(title="t")
    err.apply({"event": "error", "message": "out of memory"})
    err.finished = True
    assert not err.ok and err.status_text() == "t: out of memory"
    assert format_seconds(None) == "--" and format_seconds(75) == "1m15s" and format_seconds(3700) == "1h01m"


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "fake_engine.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_worker_runs_process_to_completion(tmp_path: Path) -> None:
    cmd = _script(tmp_path, """
        import json, sys, time
        for i in range(1, 6):
            print(json.dumps({"event": "progress", "stage": "fit", "step": i, "total": 5, "psnr": 20.0 + i}),
                  flush=True)
            time.sleep(0.02)
        sys.stdout.write('not json\\n')
        sys.stdout.write(json.dumps({"event": "done", "psnr": 25.0}))  # last line without newline
    """)
    w = Worker(cmd, env=worker_env([str(REPO)]), title="t")
    st = w.run_to_completion(timeout=60)
    assert w.returncode == 0 and st.finished and st.ok
    assert st.psnr == 25.0 and st.step == 5 and st.total == 5
    assert st.message == "not json"


def test_worker_reports_engine_error_and_stderr(tmp_path: Path) -> None:
    # the real engine CLI: a project that does not exist
    w = Worker([sys.executable, "-m", "core", "info", str(tmp_path / "nope")], env=worker_env([str(REPO)]))
    st = w.run_to_completion(timeout=60)
    assert w.returncode == 2 and st.finished and not st.ok and not st.cancelled
    assert "project folder not found" in st.error
    missing = Worker([str(tmp_path / "no_python")], title="x")
    st2 = missing.run_to_completion(timeout=10)
    assert st2.finished and not st2.ok and "cannot start the engine" in st2.error


def test_worker_cancel_uses_engine_protocol(tmp_path: Path) -> None:
    """Cancel = SIGTERM; the engine's own Progress turns it into Cancelled and exit 130."""
    cmd = _script(tmp_path, """
        import sys, time
        from core.errors import Cancelled
        from core.progress import Progress
        p = Progress("json", min_interval=0.0)
        p.cancel.install_signal_handlers()
        try:
            for i in range(100000):
                p.update("fit", i, 100000)
                time.sleep(0.01)
        except Cancelled as exc:
            p.error(str(exc))
            sys.exit(130)
    """)
    w = Worker(cmd, env=worker_env([str(REPO)]), title="Training")
    w.start()
    import time

    deadline = time.monotonic() + 30
    while w.poll().step < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert w.state.step >= 3, "progress events arrive while the process runs"
    w.cancel()
    st = w.run_to_completion(timeout=30)
    assert w.returncode == 130 and st.cancelled and not st.ok
    assert st.status_text() == "Training: cancelled"


def test_worker_env_puts_engine_first() -> None:
    env = worker_env(["/a", "", "/b"], base={"PYTHONHOME": "/blender/python", "PATH": "/bin"})
    assert env["PYTHONPATH"] == os.pathsep.join(["/a", "/b"])
    assert "PYTHONHOME" not in env and env["PATH"] == "/bin" and env["PYTHONUNBUFFERED"] == "1"


# ---------------------------------------------------------------------------------------
# frames
def test_timing_honours_start_trims_and_hard_offsets() -> None:
    # strip placed at scene frame 10, 3 frames trimmed at the start (handle), file cut by 5
    t = StripTiming(frame_start=10, final_start=13, final_end=25, anim_offset=5, length=40)
    assert t.scene_to_source(12) is None, "inside the trim: nothing shown"
    assert t.scene_to_source(13) == 5 + 3
    assert t.scene_to_source(24) == 5 + 14
    assert t.scene_to_source(25) is None
    assert t.visible_source_range() == (8, 20)
    for scene_frame in range(13, 25):
        assert t.source_to_scene(t.scene_to_source(scene_frame)) == scene_frame


def test_timing_with_retimed_clip_of_other_frame_rate() -> None:
    # a 24 fps clip of 48 frames stretched to play at real speed in a 30 fps scene: 60 frames long
    rate = playback_rate(48, 60)
    assert rate == pytest.approx(0.8)
    t = StripTiming(frame_start=1, final_start=1, final_end=61, rate=rate, length=48)
    assert t.scene_to_source(1) == 0
    assert t.scene_to_source(31) == 24, "one second into the scene shows one second into the clip"
    assert t.scene_to_source(60) == 47
    assert t.visible_source_range() == (0, 48)
    for src in range(48):
        assert t.scene_to_source(t.source_to_scene(src)) == src
    assert playback_rate(None, 60) == 1.0 and playback_rate(60, 60) == 1.0


# ---------------------------------------------------------------------------------------
# space
def test_view_to_source_default_placement_matches_annotation_convention() -> None:
    W, H = 1920, 1080
    pl = StripPlacement(render_size=(W, H), source_size=(W, H))
    for x, y in [(0.0, 0.0), (-960.0, 540.0), (100.5, -20.25)]:
        col, row = pl.view_to_source(x, y)
        assert col == pytest.approx(x + W / 2) and row == pytest.approx(H / 2 - y)


def test_view_to_source_scales_render_to_source_resolution() -> None:
    # a 640x360 clip fitted into a 1920x1080 render: Blender scales it by 3
    f = fit_scale("FIT", (1920, 1080), (640, 360))
    assert f == (3.0, 3.0)
    pl = StripPlacement(render_size=(1920, 1080), source_size=(640, 360), scale=f)
    assert pl.view_to_source(0, 0) == pytest.approx((320, 180))
    assert pl.view_to_source(-960, 540) == pytest.approx((0, 0))
    assert pl.view_to_source(960, -540) == pytest.approx((640, 360))
    assert pl.pixels_per_source_pixel() == pytest.approx(3.0)
    # older Blender keeps the fit out of transform.scale: same result through `fit`
    pl4 = StripPlacement(render_size=(1920, 1080), source_size=(640, 360), fit=f)
    assert pl4.view_to_source(123, -45) == pytest.approx(pl.view_to_source(123, -45))


def test_placement_with_offset_rotation_flip_round_trips() -> None:
    pl = StripPlacement(render_size=(1280, 720), source_size=(640, 480), scale=(1.5, 1.2), offset=(40, -30),
                        rotation=math.radians(20), origin=(0.3, 0.6), flip_x=True)
    for x, y in [(0, 0), (10.5, 300.25), (639, 479), (320, 240)]:
        vx, vy = pl.source_to_view(x, y)
        assert pl.view_to_source(vx, vy) == pytest.approx((x, y), abs=1e-9)
    # with only an offset, the image moves by it (y up in the view, down in the source)
    moved = StripPlacement(render_size=(640, 480), source_size=(640, 480), offset=(40, -30))
    assert moved.view_to_source(40, -30) == pytest.approx((320, 240))
    # rotation of 90 degrees about the centre: view right of centre = source above centre
    rot = StripPlacement(render_size=(100, 100), source_size=(100, 100), rotation=math.pi / 2)
    # counter-clockwise (y up): what ends right of the centre was below it in the image
    assert rot.view_to_source(10, 0) == pytest.approx((50, 60))


# ---------------------------------------------------------------------------------------
# strokes
def test_strokes_to_sketch_and_region_layers() -> None:
    pl = StripPlacement(render_size=(1920, 1080), source_size=(960, 540), scale=(2.0, 2.0))
    pts = strokes.view_points_to_source([(0, 0), (200, 0), (200, -100)], pl)
    assert pts == [pytest.approx((480, 270)), pytest.approx((580, 270)), pytest.approx((580, 320))]
    line = strokes.Stroke(points=pts, color=(1, 0.5, 0, 1), width=3.0)
    assert not strokes.is_closed(line)
    layer = strokes.sketch_layer([line], frame=7)
    assert layer == {"type": "sketch", "frame": 7, "strokes": [
        {"points": [[480.0, 270.0], [580.0, 270.0], [580.0, 320.0]], "color": [1.0, 0.5, 0.0, 1.0], "width": 3.0}]}
    circle = [(100 + 40 * math.cos(a), 80 + 40 * math.sin(a)) for a in [i * 2 * math.pi / 24 for i in range(24)]]
    loop = strokes.Stroke(points=circle, width=2.0)
    assert strokes.is_closed(loop), "a loop whose ends nearly meet encloses a region"
    assert strokes.is_closed(strokes.Stroke(points=circle[:12], cyclic=True))
    assert not strokes.is_closed(strokes.Stroke(points=circle[:12], width=2.0)), "a half circle is open"
    adj = strokes.adjust_layer(loop, 3, hue=0.1, saturation=1.5)
    assert adj["type"] == "adjust" and adj["frame"] == 3 and len(adj["region"]["polygon"]) == 24
    assert adj["hue"] == 0.1 and adj["saturation"] == 1.5 and adj["contrast"] == 1.0
    with pytest.raises(ValueError):
        strokes.sketch_layer([], 0)


def test_grease_pencil_colour_is_srgb_mix() -> None:
    assert strokes.linear_to_srgb(0.0) == 0.0 and strokes.linear_to_srgb(1.0) == pytest.approx(1.0)
    assert strokes.linear_to_srgb(0.2140) == pytest.approx(0.5, abs=1e-3)
    # vertex colour with alpha 0 shows the material colour; alpha 1 replaces it
    assert strokes.mix_gp_color((1, 0, 0, 1), (0, 1, 0, 0), 1.0) == pytest.approx((1, 0, 0, 1))
    assert strokes.mix_gp_color((1, 0, 0, 1), (0, 0, 1, 1), 0.5) == pytest.approx((0, 0, 1, 0.5))
    assert strokes.camera_ndc_to_view(0.5, 0.5, (1920, 1080)) == (0, 0)
    assert strokes.camera_ndc_to_view(0.0, 1.0, (1920, 1080)) == (-960, 540)


# ---------------------------------------------------------------------------------------
# EDITS.json
class Item:
    def __init__(self, name: str, kind: str, data: dict, visible: bool = True, image: str = "",
                 attach: str = "AUTO") -> None:
        self.name, self.kind, self.data, self.visible = name, kind, json.dumps(data), visible
        self.image, self.attach = image, attach


def test_build_edits_keeps_order_skips_hidden_and_relativises_images(tmp_path: Path) -> None:
    edits_dir = tmp_path / "ws" / "edits"
    edits_dir.mkdir(parents=True)
    logo = tmp_path / "logo.png"
    logo.write_bytes(b"png")
    items = [
        Item("Sketch", "sketch", {"frame": 2, "strokes": [{"points": [[1, 2]], "color": [1, 0, 0, 1], "width": 4}]}),
        Item("Hidden", "sketch", {"frame": 3, "strokes": []}, visible=False),
        Item("Logo", "sticker", {"frame": 2, "center": [5, 6], "scale": 1.0, "rotation": 0.0, "mode": "rigid"},
             image=str(logo), attach="bg"),
        Item("Atlas", "atlas", {"layer": "fg"}, image=str(logo), attach="fg"),
    ]
    out = edit_stack.write_edits(items, str(edits_dir / "EDITS.json"))
    on_disk = json.loads((edits_dir / "EDITS.json").read_text())
    assert on_disk == out
    assert out["version"] == 1
    assert [layer["type"] for layer in out["layers"]] == ["sketch", "sticker", "atlas"]
    assert "layer" not in out["layers"][0]
    assert out["layers"][1]["image"] == "../../logo.png" and out["layers"][1]["layer"] == "bg"
    assert out["layers"][2] == {"type": "atlas", "layer": "fg", "image": "../../logo.png"}
    assert (edits_dir / out["layers"][1]["image"]).resolve() == logo.resolve()
    assert not list(edits_dir.glob(".edits.*")), "no temporary files left"


def test_build_edits_reports_missing_images_and_damage(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image of layer 'S' not found"):
        edit_stack.build_edits([Item("S", "sticker", {"frame": 0}, image=str(tmp_path / "none.png"))], str(tmp_path))
    bad = Item("B", "sketch", {})
    bad.data = "{broken"
    with pytest.raises(ValueError, match="layer 'B' is damaged"):
        edit_stack.build_edits([bad], str(tmp_path))
    with pytest.raises(ValueError, match="has no image"):
        edit_stack.build_edits([Item("P", "paint", {"frame": 0})], str(tmp_path))


def test_stack_moves_and_names() -> None:
    assert edit_stack.move_index(0, "UP", 3) == 0 and edit_stack.move_index(0, "DOWN", 3) == 1
    assert edit_stack.move_index(2, "DOWN", 3) == 2 and edit_stack.move_index(2, "UP", 3) == 1
    assert edit_stack.unique_name("Sketch f2", ["Sketch f2", "Sketch f2.001"]) == "Sketch f2.002"
    assert edit_stack.unique_name("New", ["Old"]) == "New"


# ---------------------------------------------------------------------------------------
# tracks and engine discovery
def test_tracks_json_to_marker_coordinates() -> None:
    obj = {"frames": [4, 5, 6], "tracks": [{"id": "p0", "xy": [[0, 0], [64, 48], [128, 96]],
                                             "visible": [True, False, True]}]}
    (t,) = tracking.parse_tracks(obj)
    assert t.id == "p0" and t.visible == [True, False, True]
    assert tracking.to_marker_co(64, 48, (128, 96)) == (0.5, 0.5)
    assert tracking.to_marker_co(0, 0, (128, 96)) == (0.0, 1.0), "top-left pixel corner is up in the clip"
    assert tracking.from_marker_co(*tracking.to_marker_co(10.5, 20.25, (128, 96)), (128, 96)) == \
        pytest.approx((10.5, 20.25))
    assert tracking.clip_frame(0) == 1
    with pytest.raises(ValueError, match="one entry per frame"):
        tracking.parse_tracks({"frames": [0, 1], "tracks": [{"id": "p", "xy": [[0, 0]]}]})
    pts = tracking.points_json([(1.0, 2.0), (3.5, 4.25)], 9)
    assert pts == {"points": [{"id": "p0", "frame": 9, "x": 1.0, "y": 2.0}, {"id": "p1", "frame": 9, "x": 3.5, "y": 4.25}]}


def test_engine_resolution_and_check(tmp_path: Path) -> None:
    deps = tmp_path / "deps"
    spec = engine_env.resolve("", str(deps), blender_python="/blender/python")
    assert spec.python == "/blender/python" and spec.origin == "this Python" and len(spec.pythonpath) == 1
    deps.mkdir()
    (deps / "torch").mkdir()
    spec = engine_env.resolve("", str(deps), blender_python="/blender/python")
    assert spec.pythonpath[1] == str(deps) and spec.origin == "installed dependencies"
    spec = engine_env.resolve(sys.executable, str(deps))
    assert spec.python == sys.executable and spec.origin == "preferences" and len(spec.pythonpath) == 1
    assert engine_env.engine_root() == REPO  # a checkout: the repository's core/
    missing = engine_env.check(engine_env.resolve(str(tmp_path / "nopython"), None))
    assert not missing.ok and "Engine Python not found" in missing.message
    reqs = engine_env.requirements()
    assert any(r.startswith("torch") for r in reqs)
    cmd = engine_env.install_command("/py", "/deps", reqs)
    assert cmd[:4] == ["/py", "-m", "pip", "install"] and "--target" in cmd and cmd[-len(reqs):] == reqs


def test_engine_check_explains_missing_torch(tmp_path: Path) -> None:
    """A bare Python (like Blender's own) gets the one-line way out, not a traceback."""
    import subprocess

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = tmp_path / "bare" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    status = engine_env.check(engine_env.resolve(str(bare), None))
    assert not status.ok
    assert status.message.startswith("The engine needs torch, numpy"), status.message
    assert "Install Dependencies" in status.message and "Engine Python" in status.message
    assert "core" not in status.message.split(":")[0], "the bundled engine itself is found via PYTHONPATH"


def test_annotation_reader_converts_layers_frames_and_points() -> None:
    """RNA cannot create annotation strokes, so this reads plain objects shaped like them
    (layers -> frames -> strokes -> points.co, in preview View2D coordinates)."""
    from types import SimpleNamespace as NS

    def stroke(*pts: tuple[float, float]) -> NS:
        return NS(points=[NS(co=(x, y, 0.0)) for x, y in pts])

    ink = NS(annotation_hide=False, color=(0.0, 0.5, 1.0), annotation_opacity=0.8, thickness=6, frames=[
        NS(frame_number=1, strokes=[stroke((0, 0), (100, 50))]),
        NS(frame_number=10, strokes=[stroke((-960, 540))]),
    ])
    hidden = NS(annotation_hide=True, color=(1, 1, 1), thickness=3, frames=[NS(frame_number=1, strokes=[stroke((5, 5))])])
    data = NS(layers=[ink, hidden])
    # 960x540 clip fitted (x2) into a 1920x1080 render
    pl = StripPlacement(render_size=(1920, 1080), source_size=(960, 540), scale=(2.0, 2.0))
    got = strokes.read_annotation_strokes(data, 5, pl)  # frame 5: the key drawn on frame 1 holds
    assert len(got) == 1
    assert got[0].points == [pytest.approx((480, 270)), pytest.approx((530, 245))]
    assert got[0].color == (0.0, 0.5, 1.0, 0.8) and got[0].width == pytest.approx(3.0)
    (late,) = strokes.read_annotation_strokes(data, 12, pl)
    assert late.points == [pytest.approx((0, 0))]
    assert strokes.read_annotation_strokes(data, 0, pl) == []
    assert strokes.read_annotation_strokes(None, 5, pl) == []
    # 5.0 keeps them in `annotation`, 4.x in `grease_pencil`
    assert strokes.annotation_data(NS(annotation=data)) is data
    assert strokes.annotation_data(NS(grease_pencil=data)) is data


# ---------------------------------------------------------------------------------------
# layout: io/ never imports bpy; no import cycles between the add-on's modules
def _relative_imports(path: Path) -> set[str]:
    """Modules of the add-on that ``path`` imports (at any depth, lazily or not)."""
    import ast

    pkg = path.parent.relative_to(REPO).parts
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg[: len(pkg) - node.level + 1])
            if node.module:
                out.add(".".join(base + node.module.split(".")))
            else:
                out.update(".".join(base + [a.name]) for a in node.names)
    return out


def test_io_modules_never_import_bpy_and_modules_have_no_import_cycles() -> None:
    import ast

    addon = REPO / "inve_blender"
    for path in (addon / "io").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n.split(".")[0] in ("bpy", "bpy_extras", "mathutils", "torch") for n in names), \
                f"{path.name} imports {names}"
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, f"io/{path.name} reaches outside io/"
    graph: dict[str, set[str]] = {}
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts): p for p in addon.rglob("*.py")
               if "engine" not in p.parts}
    for name, path in modules.items():
        graph[name] = {m for m in _relative_imports(path) if m in modules and m != name}

    def visit(node: str, stack: list[str]) -> None:
        assert node not in stack, "import cycle: " + " -> ".join(stack[stack.index(node):] + [node])
        for nxt in graph[node]:
            visit(nxt, stack + [node])

    for name in graph:
        if not name.endswith("__init__"):
            visit(name, [])


def test_job_slot_finishes_each_job_once_and_reports_failures_of_its_end() -> None:
    from inve_blender.io.jobs import Job, JobSlot

    class Task:
        def __init__(self, steps: int, fail: bool = False) -> None:
            self.state, self.steps, self.fail, self.started = ProgressState(title="t"), steps, fail, 0

        def start(self) -> "Task":
            self.started += 1
            return self

        def poll(self) -> ProgressState:
            self.steps -= 1
            if self.steps <= 0 and not self.state.finished:
                self.state.apply({"event": "done"})
                self.state.finished = True
            return self.state

        def cancel(self) -> None:
            self.state.apply({"event": "error", "message": "cancelled"})
            self.state.finished = self.state.cancelled = True

        def run_to_completion(self, timeout: float | None = None, interval: float = 0.05) -> ProgressState:
            while not self.poll().finished:
                pass
            return self.state

    ends: list[str] = []
    slot = JobSlot()
    job = Job("edit", Task(3), on_done=lambda j: ends.append("ok" if j.state.ok else "no"))
    slot.start(job, blocking=False)
    assert slot.busy()
    with pytest.raises(RuntimeError):
        slot.start(Job("edit", Task(1)), blocking=False)
    while slot.tick():
        pass
    assert ends == ["ok"] and not slot.busy() and slot.last() is job and not slot.tick()

    def boom(j: Job) -> None:
        raise OSError("disk full")

    bad = Job("edit", Task(1), on_done=boom)
    slot.start(bad, blocking=True)
    assert not bad.state.ok and "disk full" in bad.outcome and slot.last() is bad
    c = Job("train", Task(100), on_done=lambda j: ends.append("cancelled" if j.state.cancelled else "?"))
    slot.start(c, blocking=False)
    assert slot.cancel() and not slot.tick() and ends[-1] == "cancelled" and not slot.cancel()


def test_job_slot_keeps_polling_a_chain_of_jobs() -> None:
    """A job whose end starts the next (Train -> read the project; Apply Corrections -> track ->
    Propagate): the UI timer stops when ``tick`` says False, so it must say True while the next
    job runs, and the whole chain ends with each ``on_done`` called once."""
    from inve_blender.io.jobs import Job, JobSlot, ThreadTask

    ends: list[str] = []
    slot = JobSlot()
    second = Job("info", ThreadTask(lambda: {"n": 2}), on_done=lambda j: ends.append(f"second {j.state.result}"))
    first = Job("correct", ThreadTask(lambda: {"n": 1}), on_done=lambda j: ends.append("first"))
    first.then = lambda j: second
    slot.start(first, blocking=False)
    ticks = 0
    while slot.tick():
        ticks += 1
        assert ticks < 10_000
        import time

        time.sleep(0.001)
    assert ends == ["first", "second {'n': 2}"], ends
    assert second.previous is first and slot.last() is second and not slot.busy()

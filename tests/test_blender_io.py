"""Plain-Python tests of the add-on's new ``io`` modules: project identity and the engine
service's job adapter (no bpy, no torch)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inve_blender.io import projects  # noqa: E402
from inve_blender.io.service import ServiceManager, ServiceTask  # noqa: E402

FP = "a" * 32


# ---------------------------------------------------------------------------------------
# project identity
def test_fingerprint_is_by_content_and_loaded_without_torch(tmp_path: Path) -> None:
    a = tmp_path / "a.mp4"
    a.write_bytes(os.urandom(3 << 20))
    b = tmp_path / "renamed" / "b.mp4"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    fa, fb = projects.fingerprint(str(a), REPO), projects.fingerprint(str(b), REPO)
    assert fa == fb and len(fa) == 32, "the same content in another place is the same source"
    c = tmp_path / "c.mp4"
    c.write_bytes(os.urandom(3 << 20))
    assert projects.fingerprint(str(c), REPO) != fa
    assert projects.load_identity(REPO).__name__ == "inve_engine_identity"


def test_find_project_by_source_and_frames_not_by_name() -> None:
    refs = [projects.ProjectRef("b" * 32, 0, 100, "//inve/other"),
            projects.ProjectRef(FP, 4, 48, "//inve/whole"),
            projects.ProjectRef(FP, 10, 20, "//inve/part")]
    whole = projects.find_project(refs, FP, (4, 48))
    assert whole is not None and whole.ref.path == "//inve/whole" and whole.complete
    # blade cut: both halves lie inside the trained range -> the same project
    left, right = projects.find_project(refs, FP, (4, 30)), projects.find_project(refs, FP, (30, 48))
    assert left.ref.path == right.ref.path == "//inve/whole"
    # a strip inside the smaller project prefers it (the tightest fit)
    assert projects.find_project(refs, FP, (12, 18)).ref.path == "//inve/part"
    # trim extended past the trained frames: the project with the most frames, what is missing reported
    m = projects.find_project(refs, FP, (0, 52))
    assert m.ref.path == "//inve/whole" and not m.complete and m.outside == ((0, 4), (48, 52))
    assert projects.find_project(refs, "c" * 32, (0, 10)) is None


def test_paths_relative_to_the_blend_with_an_absolute_second_guess(tmp_path: Path) -> None:
    blend_dir = tmp_path / "shots"
    proj = blend_dir / "inve" / "clip_aaaaaaaa_0-48"
    proj.mkdir(parents=True)
    (proj / "project.json").write_text("{}")
    rel = projects.relative_to_blend(str(proj), str(blend_dir))
    assert rel == "//inve/clip_aaaaaaaa_0-48"
    assert projects.relative_to_blend(str(proj), None) == str(proj)

    def abspath_from(base: Path) -> Any:
        return lambda p: str(base / p[2:]) if p.startswith("//") else p

    found = projects.resolve_folder(rel, str(proj), abspath_from(blend_dir), projects.is_project_folder)
    assert found == os.path.normpath(str(proj))
    # Save As into another folder: the relative path misses, the absolute one finds it
    elsewhere = tmp_path / "elsewhere"
    assert projects.resolve_folder(rel, str(proj), abspath_from(elsewhere), projects.is_project_folder) == \
        os.path.normpath(str(proj))
    # moved away: nothing found (the panel offers Relink)
    moved = tmp_path / "moved"
    os.rename(blend_dir / "inve", moved)
    assert projects.resolve_folder(rel, str(proj), abspath_from(blend_dir), projects.is_project_folder) is None
    is_ws = projects.is_project_folder
    other = moved / "other"
    other.mkdir()
    (other / "project.json").write_text("{}")
    # by the engine's answer (the recorded source fingerprint) ...
    infos = {str(moved / "clip_aaaaaaaa_0-48"): {"source_fingerprint": FP}, str(other): {"source_fingerprint": "d" * 32}}
    assert projects.relink_candidates(str(tmp_path), FP, (0, 48), is_ws, infos.get) == \
        [str(moved / "clip_aaaaaaaa_0-48")]
    # ... or, without one, by the name the add-on gave the folder
    assert projects.relink_candidates(str(tmp_path), FP, (0, 48), is_ws) == [str(moved / "clip_aaaaaaaa_0-48")]
    assert projects.relink_candidates(str(tmp_path), FP, (0, 40), is_ws) == []
    assert projects.folder_name("/x/My Clip!.mp4", FP, (4, 48)) == "My_Clip_aaaaaaaa_4-48"


# ---------------------------------------------------------------------------------------
# the service as a job task (a scripted client stands in for svc's EngineClient here; the
# real service is exercised by tests/test_blender_addon.py)
class ScriptedRequest:
    def __init__(self, events: list[dict[str, Any]], end: dict[str, Any]) -> None:
        self.events, self.end, self.cancelled = list(events), end, False

    def poll_events(self) -> list[dict[str, Any]]:
        out, self.events = self.events[:2], self.events[2:]
        return out

    def done(self) -> bool:
        return not self.events

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        if self.cancelled:
            err = RuntimeError("cancelled")
            err.cancelled = True  # type: ignore[attr-defined]
            raise err
        if self.end.get("event") == "error":
            raise RuntimeError(self.end["message"])
        return self.end

    def cancel(self) -> None:
        self.cancelled, self.events = True, []


class ScriptedClient:
    def __init__(self, argv: list[str], env: dict[str, str] | None) -> None:
        self.argv, self.env, self.alive, self.restarts, self.stopped = argv, env, True, 0, False
        self.script: list[ScriptedRequest] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def request(self, op: str, **fields: Any) -> ScriptedRequest:
        self.sent.append((op, fields))
        return self.script.pop(0)

    def shutdown(self, timeout: float = 5.0) -> None:
        self.alive, self.stopped = False, True


def test_service_task_streams_frames_and_ends_once() -> None:
    made: list[ScriptedClient] = []
    mgr = ServiceManager(lambda argv, env: made.append(ScriptedClient(argv, env)) or made[-1])
    client = mgr.get(["py", "-m", "core", "serve"], {"PYTHONPATH": "/e"})
    assert mgr.get(["py", "-m", "core", "serve"], {"PYTHONPATH": "/e"}) is client and len(made) == 1
    client.script.append(ScriptedRequest(
        [{"event": "progress", "stage": "render", "step": 1, "total": 3}, {"event": "frame", "frame": 4, "path": "a"},
         {"event": "frame", "frame": 5, "path": "b"}, {"event": "frame", "frame": 6, "path": "c"}],
        {"frames": 3}))
    seen: list[int] = []
    task = ServiceTask(mgr, ["py", "-m", "core", "serve"], {"PYTHONPATH": "/e"}, "propagate",
                       {"project": "/p", "output": "/o", "overlay": True}, on_frame=lambda ev: seen.append(ev["frame"]))
    st = task.start().run_to_completion(timeout=5)
    assert st.finished and st.ok and st.result == {"frames": 3} and seen == [4, 5, 6]
    assert client.sent == [("propagate", {"project": "/p", "output": "/o", "overlay": True})]
    # a failure and a cancel end the job with the reason; frames seen so far stay listed
    client.script.append(ScriptedRequest([{"event": "frame", "frame": 4, "path": "a"}],
                                         {"event": "error", "message": "no such project"}))
    bad = ServiceTask(mgr, ["py", "-m", "core", "serve"], {"PYTHONPATH": "/e"}, "info", {"project": "/x"})
    st = bad.start().run_to_completion(timeout=5)
    assert not st.ok and not st.cancelled and "no such project" in st.error
    client.script.append(ScriptedRequest([{"event": "frame", "frame": 4, "path": "a"}] * 10, {}))
    c = ServiceTask(mgr, ["py", "-m", "core", "serve"], {"PYTHONPATH": "/e"}, "propagate", {})
    c.start().poll()
    c.cancel()
    st = c.run_to_completion(timeout=5)
    assert st.cancelled and not st.ok and len(c.frames) == 2
    # a restart by the client is told once; another interpreter gets another service
    client.restarts = 1
    assert "restarted" in mgr.take_notice() and mgr.take_notice() == ""
    other = mgr.get(["py2", "-m", "core", "serve"], None)
    assert other is not client and client.stopped and len(made) == 2
    mgr.stop()
    assert other.stopped and mgr.client is None


def test_service_that_cannot_start_fails_the_job_with_a_reason() -> None:
    def broken(argv: list[str], env: Any) -> Any:
        raise FileNotFoundError("no python at /nowhere")

    task = ServiceTask(ServiceManager(broken), ["/nowhere"], None, "hello", {})
    st = task.start().run_to_completion(timeout=1)
    assert st.finished and not st.ok and "no python at /nowhere" in st.error


# ---------------------------------------------------------------------------------------
# the result strip follows its movie strip
def test_overlay_span_follows_slide_trim_and_cut() -> None:
    from inve_blender.io.strip_map import StripTiming, assign_ids, overlay_span

    frames = list(range(1, 12))  # project trained on source frames 1..11
    # movie at scene frame 3, one frame trimmed: source f shows at scene f + 3, visible 4..15
    t = StripTiming(frame_start=3, final_start=4, final_end=15, anim_offset=0)
    span = overlay_span(t, frames)
    assert (span.frame_start, span.offset_start, span.offset_end, span.length) == (4, 0, 0, 11) and span.visible
    # slid by 10 frames: everything moves with it
    slid = overlay_span(StripTiming(frame_start=13, final_start=14, final_end=25), frames)
    assert (slid.frame_start, slid.offset_start, slid.offset_end) == (14, 0, 0)
    # blade cut at scene frame 9: the left half shows scene 4..8, the right half 9..14
    left = overlay_span(StripTiming(frame_start=3, final_start=4, final_end=9), frames)
    right = overlay_span(StripTiming(frame_start=3, final_start=9, final_end=15), frames)
    assert (left.offset_start, left.offset_end) == (0, 6) and (right.offset_start, right.offset_end) == (5, 0)
    assert left.frame_start + left.offset_start == 4 and right.frame_start + right.offset_start == 9
    # trim extended to show source frame 0 (untrained): the overlay starts where training did
    wider = overlay_span(StripTiming(frame_start=3, final_start=3, final_end=15), frames)
    assert wider.frame_start == 4 and wider.offset_start == 0
    # a strip showing none of the trained frames hides the overlay
    assert not overlay_span(StripTiming(frame_start=3, final_start=3, final_end=4), frames).visible
    ids = iter(["n1", "n2"])
    assert assign_ids(["a", None, "a", "b"], lambda: next(ids)) == ["a", "n1", "n2", "b"]


# ---------------------------------------------------------------------------------------
# sticker drag (G/S/R)
def test_sticker_drag_moves_scales_and_turns_like_blender() -> None:
    import math

    from inve_blender.io.sticker import StickerDrag, StickerPose

    pose = StickerPose(center=(100.0, 50.0), scale=1.0, rotation=0.0)
    g = StickerDrag(pose, start=(10.0, 10.0), mode="G")
    assert g.apply((25.0, 4.0)).center == (115.0, 44.0)
    assert g.apply((25.0, 4.0), precise=True).center == pytest.approx((101.5, 49.4))
    assert g.apply((25.3, 4.6), snap=True).center == (115, 45)
    s = StickerDrag(pose, start=(110.0, 50.0), mode="S")  # 10 px right of the centre
    assert s.apply((100.0, 80.0)).scale == pytest.approx(3.0), "distance 10 -> 30: three times as big"
    assert s.apply((100.0, 50.0)).scale == pytest.approx(0.01), "clamped, never zero"
    r = StickerDrag(pose, start=(110.0, 50.0), mode="R")
    # the mouse swept from right of the centre to above it (y down): +90 degrees counter-clockwise
    assert r.apply((100.0, 40.0)).rotation == pytest.approx(math.pi / 2)
    assert r.apply((100.0, 60.0)).rotation == pytest.approx(-math.pi / 2)
    assert r.apply((100.0, 40.3), snap=True).rotation == pytest.approx(math.pi / 2)
    # G then S in one drag: the scale pivots on the moved centre
    d = StickerDrag(pose, start=(0.0, 0.0), mode="G")
    d.switch("S", (20.0, 0.0))
    assert d.pose.center == (120.0, 50.0)
    # the mouse, at (20, 0), goes twice as far from the new centre (120, 50): twice the size
    assert d.apply((120.0 + 2 * (20.0 - 120.0), 50.0 + 2 * (0.0 - 50.0))).scale == pytest.approx(2.0)
    with pytest.raises(ValueError):
        StickerDrag(pose, (0.0, 0.0), mode="X").apply((1.0, 1.0))


# ---------------------------------------------------------------------------------------
# which propagated frames show which stack (Undo, cancel)
def test_results_know_their_stack_across_undo_and_cancel(tmp_path: Path) -> None:
    from inve_blender.io import results

    root = str(tmp_path / "frames")
    assert results.lookup(root, "s1") is None
    os.makedirs(results.folder_for(root, "s1"))
    results.record(root, "s1", complete=True)
    got = results.lookup(root, "s1")
    assert got.folder.endswith("s1") and got.complete and not got.stale
    # the layer list changed, not propagated: the old frames are stale
    assert results.lookup(root, "s2").stale and results.lookup(root, "s2").stack == "s1"
    # propagated, but cancelled half way: not stale, not complete
    os.makedirs(results.folder_for(root, "s2"))
    results.record(root, "s2", complete=False)
    got = results.lookup(root, "s2")
    assert not got.stale and not got.complete
    # Undo back to s1: its frames are still there and current again
    assert results.lookup(root, "s1").folder.endswith("s1") and not results.lookup(root, "s1").stale
    # only the newest KEEP folders stay
    for i in range(3, 8):
        os.makedirs(results.folder_for(root, f"s{i}"))
        results.record(root, f"s{i}", complete=True, keep=3)
    kept = sorted(d for d in os.listdir(root) if d.startswith("s"))
    assert kept == ["s5", "s6", "s7"] and results.lookup(root, "s1").stack == "s7"


def test_add_strokes_takes_annotation_strokes_off_the_canvas() -> None:
    """RNA cannot create annotation strokes, so fakes with the same attributes stand in."""
    from types import SimpleNamespace as NS

    from inve_blender.blender.gp_strokes import consume_annotation_strokes

    class Frames(list):
        def remove(self, frame: Any) -> None:  # AnnotationFrames.remove(frame)
            super().remove(frame)

    def layer(hide: bool, keys: dict[int, int]) -> Any:
        return NS(annotation_hide=hide, frames=Frames(NS(frame_number=k, strokes=[object()] * n)
                                                      for k, n in keys.items()))

    shown, hidden = layer(False, {1: 2, 9: 1}), layer(True, {1: 5})
    data = NS(layers=[shown, hidden])
    assert consume_annotation_strokes(data, 5) == 2, "the drawing in effect at frame 5 (keyed on 1)"
    assert [f.frame_number for f in shown.frames] == [9] and len(hidden.frames) == 1, "hidden layers stay"
    assert consume_annotation_strokes(data, 5) == 0 and consume_annotation_strokes(None, 5) == 0


# ---------------------------------------------------------------------------------------
# Open Atlas on a segmented project
class _FakeImage(dict):
    """What open_atlas_images/save_painted use of a bpy image: custom properties, filepath."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.filepath, self.name, self.reloads, self.file_format = path, "", 0, ""

    def reload(self) -> None:
        self.reloads += 1

    def save(self, filepath: str) -> None:
        Path(filepath).write_bytes(Path(self.filepath).read_bytes())


class _FakeImages(list):
    def get(self, name: str) -> Any:
        return next((im for im in self if im.name == name), None)

    def load(self, path: str) -> _FakeImage:
        self.append(_FakeImage(path))
        return self[-1]


def test_open_atlas_picks_the_segment_under_the_playhead(tmp_path: Path) -> None:
    """``inve atlas`` on a segmented project names files ``<segment>_atlas_<layer>.png``: the
    add-on opens the segment that renders the playhead's frame, by the engine's own seams."""
    from core.segments import owned, segment_name, split_plan
    from inve_blender.io import atlas_paint

    ranges = [tuple(r) for r in split_plan(0, 458, 40, 4)]
    assert len(ranges) > 10
    for a, b in ranges:
        layers = ("bg", "fg") if a % 2 else ("bg",)
        for layer in layers:
            (tmp_path / f"{segment_name(a, b)}_atlas_{layer}.png").write_bytes(f"{a} {layer}".encode())
            (tmp_path / f"{segment_name(a, b)}_atlas_{layer}_used.png").write_bytes(b"used")
    assert list(atlas_paint.segment_atlases(str(tmp_path))) == ranges
    for k, (lo, hi) in enumerate(owned(ranges)):
        for frame in (lo, (lo + hi) // 2, hi - 1):
            files = atlas_paint.atlas_files(str(tmp_path), frame)
            name = segment_name(*ranges[k])
            assert files["bg"] == str(tmp_path / f"{name}_atlas_bg.png"), (frame, k)
            assert set(files) == ({"bg", "fg"} if ranges[k][0] % 2 else {"bg"})
    assert atlas_paint.atlas_files(str(tmp_path), None)["bg"].endswith(f"{segment_name(*ranges[0])}_atlas_bg.png")
    assert atlas_paint.atlas_files(str(tmp_path), 10_000)["bg"].endswith(f"{segment_name(*ranges[-1])}_atlas_bg.png")

    # open at one frame, then at another: the same image datablock follows the playhead's segment
    images = _FakeImages()
    data = type("Data", (), {"images": images})()
    k = 5
    frame = owned(ranges)[k][0]
    opened = atlas_paint.open_atlas_images(data, str(tmp_path), "clip", frame)
    bg = next(im for im in opened if im[atlas_paint.ATLAS_TAG] == "bg")
    assert bg[atlas_paint.SEGMENT_TAG] == segment_name(*ranges[k])
    assert Path(bg.filepath).read_bytes() == f"{ranges[k][0]} bg".encode()
    atlas_paint.open_atlas_images(data, str(tmp_path), "clip", owned(ranges)[k + 1][0])
    assert bg[atlas_paint.SEGMENT_TAG] == segment_name(*ranges[k + 1]) and bg.reloads == 1
    assert len([im for im in images if im[atlas_paint.ATLAS_TAG] == "bg"]) == 1
    # painted atlases of different segments are saved under different names
    saved = atlas_paint.save_painted(bg, str(tmp_path / "edits"))
    assert Path(saved).name == f"painted_{segment_name(*ranges[k + 1])}_bg_atlas.png"


def test_open_atlas_of_a_plain_project_is_unchanged(tmp_path: Path) -> None:
    from inve_blender.io import atlas_paint

    for name in ("atlas_bg.png", "atlas_bg_used.png", "atlas_fg.png", "notes.png"):
        (tmp_path / name).write_bytes(b"x")
    files = atlas_paint.atlas_files(str(tmp_path), 3)
    assert files == {"bg": str(tmp_path / "atlas_bg.png"), "fg": str(tmp_path / "atlas_fg.png")}
    img = _FakeImage(files["bg"])
    img[atlas_paint.ATLAS_TAG], img[atlas_paint.SEGMENT_TAG] = "bg", atlas_paint.segment_of(files["bg"])
    assert Path(atlas_paint.save_painted(img, str(tmp_path / "e"))).name == "painted_bg_atlas.png"

"""Benchmark the Blender add-on on the persistent engine service (bpy, headless).

Drives the add-on the way the tests do: registers it from this checkout in the bpy module,
puts the clip in as a movie strip, trains it with the Train operator (a short budget: the
figures here are about the editing loop, not the fit), adds a sketch and an adjust layer,
then measures, wall clock from the operator call to the strip updated in the Sequencer:

- cold Propagate: no engine service running (starts it: Python, torch, the project's maps);
- warm Propagate: the service is up and holds the project; a layer was changed first;
- preview latency: a layer hidden/shown -> the frame under the playhead re-rendered with the
  stack and shown as the preview strip (median of N changes);
- the service's memory (resident, and its peak) after all that.

Clips: the bundled 48-frame 480x270 excerpt (``core/data/bbb_excerpt.mp4``) and, unless
``--skip-1080``, the same clip upscaled to 1920x1080 (written to the work folder).

    .venv/bin/python scripts/bench_blender.py [--minutes 0.3] [--out /tmp/inve_bench_blender]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLIP = ROOT / "core" / "data" / "bbb_excerpt.mp4"


def upscale(src: Path, dst: Path, size: tuple[int, int]) -> Path:
    import cv2
    import imageio.v3 as iio

    from core.video import write_movie

    if not dst.is_file():
        frames = iio.imread(src, index=None)
        write_movie(dst, [cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames], fps=25.0)
    return dst


def rss_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process, from /proc (Linux)."""
    vals = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                vals[k] = int(v.split()[0]) / 1024.0
    return vals.get("VmRSS", float("nan")), vals.get("VmHWM", float("nan"))


def _movie_strip(bpy: Any, clip: Path, work: Path) -> tuple[Any, Any, int, int]:
    from inve_blender.blender import sequencer

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    bpy.ops.wm.save_as_mainfile(filepath=str(work / f"{clip.stem}.blend"))
    movie = sequencer.strip_collection(scene).new_movie(clip.stem, str(clip), 1, 1, fit_method="FIT")
    w, h = sequencer.strip_source_size(movie)
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = w, h, 100
    scene.sequence_editor.active_strip = movie
    return scene, movie, w, h


def bench_long(bpy: Any, project: Path, work: Path) -> dict[str, Any]:
    """Propagate of a whole long shot from Blender, on a project trained beforehand (``inve
    train``: the fit is not what is measured): its source as a movie strip, the project
    recorded for it as Train would (the workspace's ``project`` links to it), the same two
    layers as :func:`bench_clip`; cold (no service) and warm (a layer hidden first), then warm
    again after showing it again, after recolouring it (its region keeps its geometry) and
    after adding a layer with a new stroke (refined in every frame)."""
    from core.cli import _info
    from core.project import Project
    from inve_blender.blender import context as ctx
    from inve_blender.blender import jobs, service

    info_p = Project.open(project).info
    clip = Path(info_p.source)
    scene, movie, w, h = _movie_strip(bpy, clip, work)
    base = work / f"{clip.stem}_inve"
    base.mkdir(exist_ok=True)
    (base / "project").symlink_to(project.resolve(), target_is_directory=True)
    frames = (info_p.frames[0], info_p.frames[-1] + 1)
    record = ctx.record_project(bpy.context, movie, str(base), frames)
    record.info_json = json.dumps(_info(str(project)))
    proj = ctx.active_project(bpy.context)
    assert proj is not None, "the add-on did not find the recorded project"
    _add_layers(proj, w, h, info_p.frames[0])
    service.stop()
    t0 = time.perf_counter()
    bpy.ops.inve.propagate()
    cold = time.perf_counter() - t0
    assert jobs.last().state.ok, jobs.last().outcome
    out: dict[str, Any] = {"clip": clip.name, "size": f"{w}x{h}", "frames": len(info_p.frames),
                           "segments": len(info_p.segments or []), "cold_propagate_s": round(cold, 2)}

    def recolour() -> None:
        data = json.loads(proj.layers[1].data)
        data["hue"] = 0.6
        proj.layers[1].data = json.dumps(data)

    def add_stroke() -> None:
        # a new sketch layer: its stroke is refined in every frame, nothing else is
        it = proj.layers.add()
        it.name, it.kind = "Sketch 2", "sketch"
        it.data = json.dumps({"frame": info_p.frames[0], "strokes": [{
            "points": [[w * 0.2, h * 0.25], [w * 0.45, h * 0.35], [w * 0.7, h * 0.3]],
            "color": [0.1, 0.3, 1, 1], "width": max(4.0, w / 120)}]})

    for name, change in (("warm", lambda: setattr(proj.layers[1], "visible", False)),
                         ("warm_show", lambda: setattr(proj.layers[1], "visible", True)),
                         ("warm_recolour", recolour), ("warm_add", add_stroke)):
        change()
        c0 = _service_cpu()
        t0 = time.perf_counter()
        bpy.ops.inve.propagate()
        out[f"{name}_propagate_s"] = round(time.perf_counter() - t0, 2)
        out[f"{name}_engine_cpu_s"] = round(_service_cpu() - c0, 2)
        assert jobs.last().state.ok, jobs.last().outcome
    rss, peak = rss_mb(service.MANAGER.client.pid)
    out["service_rss_mb"], out["service_peak_mb"] = round(rss), round(peak)
    return out


def _service_cpu() -> float:
    """CPU seconds of the engine service and its finished children (render workers, ffmpeg)."""
    from inve_blender.blender import service

    pid = service.MANAGER.client.pid
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in f[11:15]) / os.sysconf("SC_CLK_TCK")


def _add_layers(proj: Any, w: int, h: int, f0: int) -> None:
    """A sketch across the frame and an adjust region, on the first frame."""
    for name, kind, data in (
            ("Sketch", "sketch", {"frame": f0, "strokes": [{"points": [[w * 0.1, h * 0.7], [w * 0.5, h * 0.5],
                                                                       [w * 0.9, h * 0.6]],
                                                            "color": [1, 0.1, 0.1, 1], "width": max(4.0, w / 120)}]}),
            ("Region", "adjust", {"frame": f0, "region": {"polygon": [[w * 0.05, h * 0.05], [w * 0.3, h * 0.08],
                                                                      [w * 0.28, h * 0.4]]},
                                  "hue": 0.3, "saturation": 1.4, "brightness": 0.1, "contrast": 1.0})):
        it = proj.layers.add()
        it.name, it.kind, it.data = name, kind, json.dumps(data)


def bench_clip(bpy: Any, addon: Any, clip: Path, work: Path, minutes: float, previews: int) -> dict[str, Any]:
    from inve_blender.blender import context as ctx
    from inve_blender.blender import jobs, preview, service

    scene, movie, w, h = _movie_strip(bpy, clip, work)
    s = scene.inve
    s.quality, s.max_side, s.minutes, s.device = "CUSTOM", 256, minutes, "cpu"
    t0 = time.perf_counter()
    bpy.ops.inve.train()
    train_s = time.perf_counter() - t0
    proj = ctx.active_project(bpy.context)
    info = json.loads(proj.info_json)
    scene.frame_set(movie.frame_final_start)
    _add_layers(proj, w, h, info["frames"][0])
    service.stop()  # cold: no engine process
    t0 = time.perf_counter()
    bpy.ops.inve.propagate()
    cold = time.perf_counter() - t0
    assert jobs.last().state.ok, jobs.last().outcome
    proj.layers[1].visible = False  # another stack, so the frames are really rendered again
    c0 = _service_cpu()
    t0 = time.perf_counter()
    bpy.ops.inve.propagate()
    warm = time.perf_counter() - t0
    warm_cpu = _service_cpu() - c0
    assert jobs.last().state.ok, jobs.last().outcome
    n_frames = len(info["frames"])
    lat = []
    for i in range(previews):
        scene.frame_set(movie.frame_final_start + (i * 7) % n_frames)
        proj.layers[1].visible = not proj.layers[1].visible  # a layer change
        t0 = time.perf_counter()
        preview.schedule(scene)
        preview.pump(scene, wait=True)
        lat.append((time.perf_counter() - t0) * 1000.0)
    pid = service.MANAGER.client.pid
    rss, peak = rss_mb(pid)
    return {"clip": clip.name, "size": f"{w}x{h}", "frames": n_frames, "train_s": round(train_s, 1),
            "cold_propagate_s": round(cold, 2), "warm_propagate_s": round(warm, 2),
            "warm_engine_cpu_s": round(warm_cpu, 2), "preview_ms_median": round(statistics.median(lat), 1), "preview_ms_max": round(max(lat), 1),
            "service_rss_mb": round(rss), "service_peak_mb": round(peak)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=0.3, help="training budget per clip (the fit is not measured)")
    ap.add_argument("--out", default="/tmp/inve_bench_blender")
    ap.add_argument("--previews", type=int, default=10)
    ap.add_argument("--skip-1080", action="store_true")
    ap.add_argument("--skip-short", action="store_true", help="only the --long projects")
    ap.add_argument("--long", type=Path, action="append", default=[], metavar="PROJECT",
                    help="also Propagate this trained project's whole shot from Blender (repeatable)")
    args = ap.parse_args()
    work = Path(args.out)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2))))
    import bpy

    import inve_blender as addon

    addon.register()
    cpu0 = time.process_time()
    rows, longs = [], []
    try:
        clips = [] if args.skip_short else (
            [CLIP] + ([] if args.skip_1080 else [upscale(CLIP, work / "bbb_excerpt_1080p.mp4", (1920, 1080))]))
        for clip in clips:
            rows.append(bench_clip(bpy, addon, clip, work, args.minutes, args.previews))
            print(json.dumps(rows[-1]), flush=True)
        for project in args.long:
            longs.append(bench_long(bpy, project, work))
            print(json.dumps(longs[-1]), flush=True)
    finally:
        addon.unregister()
    for r in longs:
        print(f"long shot {r['clip']} {r['size']}, {r['frames']} frames ({r['segments']} segments): Propagate "
              f"cold {r['cold_propagate_s']:.2f} s, warm {r['warm_propagate_s']:.2f} s "
              f"(engine CPU {r['warm_engine_cpu_s']:.1f} s with its workers); shown again "
              f"{r['warm_show_propagate_s']:.2f} s (CPU {r['warm_show_engine_cpu_s']:.1f} s), recoloured "
              f"{r['warm_recolour_propagate_s']:.2f} s (CPU {r['warm_recolour_engine_cpu_s']:.1f} s), a stroke "
              f"added {r['warm_add_propagate_s']:.2f} s (CPU {r['warm_add_engine_cpu_s']:.1f} s); service memory "
              f"{r['service_rss_mb']} MB (peak {r['service_peak_mb']} MB)")
    print(f"\nBlender add-on on the engine service (bpy {bpy.app.version_string}, {os.cpu_count()} CPUs; "
          f"Blender-side CPU {time.process_time() - cpu0:.0f} s)")
    print("| clip | frames | cold Propagate | warm Propagate | preview after a layer change (median / max) "
          "| service memory (now / peak) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} {r['size']} | {r['frames']} | {r['cold_propagate_s']:.2f} s "
              f"| {r['warm_propagate_s']:.2f} s (engine CPU {r['warm_engine_cpu_s']:.2f} s) "
              f"| {r['preview_ms_median']:.0f} / {r['preview_ms_max']:.0f} ms | {r['service_rss_mb']} / "
              f"{r['service_peak_mb']} MB |")


if __name__ == "__main__":
    main()

"""A warm Propagate redoes only what changed (core/edits/geometry.py through core/serve.py).

Ground-truth synthetic projects (analytic mappings in place of networks), a plain one and a
segmented one, propagated by the service in forked render workers as a long shot is: what
the workers refine comes back to the service, so after hiding a layer the next Propagate
refines nothing and gives the bytes of a cold Propagate of the same stack; a changed
checkpoint identity drops what was kept.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from synth import make_clip, make_gt_project, make_gt_segmented_project
from core import fsutil
from core.edits.context import RenderContext
from core.edits.geometry import GeometryStore, geometry_identity, geometry_key, project_salt, source_stamp
from core.edits.spec import parse_edits
from core.project import Project

pytestmark = pytest.mark.skipif(not __import__("core.edits.parallel", fromlist=["can_fork"]).can_fork()
                                or (os.cpu_count() or 1) < 2,
                                reason="forked render workers: Linux, 2 cores or more")

W, H, T = 96, 64, 20
SKETCH = {"type": "sketch", "frame": 4, "strokes": [
    {"points": [[20, 40], [50, 22], [80, 30]], "color": [1, 0, 0, 1], "width": 3},
    {"points": [[15, 15], [40, 12]], "color": [0, 1, 0, 1], "width": 2}]}
ADJUST = {"type": "adjust", "frame": 2, "layer": "bg", "region": {"polygon": [[4, 36], [40, 36], [40, 60], [4, 60]]},
          "hue": 0.3, "saturation": 1.5}
PAINT = {"type": "paint", "frame": 0, "image": "paint.png", "layer": "bg"}


class _Stream:
    def __init__(self) -> None:
        self.replies: list[dict] = []

    def write(self, text: str) -> None:
        self.replies += [json.loads(line) for line in text.splitlines() if line.strip()]

    def flush(self) -> None:
        pass


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    clip = make_clip(T=T, size=(W, H), camera="pan_zoom", seed=5)
    plain = make_gt_project(clip, root / "plain", atlas_size=128, work_scale=0.5)
    seg = make_gt_segmented_project(clip, root / "seg", [(0, 9), (6, 15), (12, 20)], atlas_size=128)
    paint = np.zeros((H, W, 4), np.float32)
    paint[8:20, 60:84] = (0, 0, 1, 0.8)
    fsutil.write_png(root / "paint.png", paint)
    mappings = {sub.path.resolve(): sub._mapping for sub in seg.segments()}
    mappings[plain.path.resolve()] = clip.gt
    return root, plain, seg, mappings


@pytest.fixture
def service(projects, monkeypatch):
    """A Service in this process that propagates these short clips in two forked workers
    (blocks of 2 frames: every segment and seam is split between them)."""
    import core.serve
    from core.edits import parallel

    mappings = projects[3]
    monkeypatch.setattr(Project, "mapping", lambda self, device="cpu": mappings[self.path.resolve()])
    monkeypatch.setattr(core.serve, "WORKERS_FROM_FRAMES", 8)
    monkeypatch.setattr(core.serve, "render_workers", lambda session: 2)
    monkeypatch.setattr(parallel, "AHEAD_BYTES", 1)

    def make(**kwargs):
        stream = _Stream()
        return core.serve.Service(stream, **kwargs), stream
    return make


def run(svc, stream, rid, op, **fields):
    from core.serve import Request

    svc.run(Request(rid, op, fields))
    end = [r for r in stream.replies if r["id"] == rid and r["event"] in ("done", "error")]
    assert len(end) == 1 and end[0]["event"] == "done", end
    return end[0]


def propagate(svc, stream, rid, project, layers, base, out):
    run(svc, stream, rid, "set_edits", project=str(project.path), edits={"version": 1, "layers": layers},
        base=str(base))
    res = run(svc, stream, rid + 1, "propagate", project=str(project.path), output=str(out), overlay=True)
    assert res["frames"] == T
    return [iio.imread(out / f"{t:04d}.png") for t in range(T)]


@pytest.mark.parametrize("kind", ["plain", "segmented"])
def test_warm_propagate_after_hiding_a_layer_refines_nothing_and_equals_a_cold_one(projects, service, kind,
                                                                                   tmp_path, monkeypatch):
    root, plain, seg, _ = projects
    project = plain if kind == "plain" else seg
    svc, stream = service()
    first = propagate(svc, stream, 1, project, [SKETCH, ADJUST, PAINT], root, tmp_path / "a")
    held = next(iter(svc.projects.values()))
    if kind == "segmented":
        held.session.prepare_stack()  # as a pass does first (the last one closed the segments it left)
    assert held.session.settled()  # what the workers refined came back to the service

    # the add-on hides a layer by leaving it out of the stack; nothing may be refined again
    def no_refinement(*args, **kwargs):
        raise AssertionError("a warm Propagate refined positions again")
    with monkeypatch.context() as m:
        m.setattr(RenderContext, "refine", no_refinement)
        warm = propagate(svc, stream, 3, project, [SKETCH, PAINT], root, tmp_path / "b")
        # ... and shown again, recoloured: the region moves as before, only its colour changed
        recoloured = propagate(svc, stream, 5, project, [SKETCH, {**ADJUST, "hue": 0.6}, PAINT], root,
                               tmp_path / "c")

    cold_svc, cold_stream = service()
    cold = propagate(cold_svc, cold_stream, 1, project, [SKETCH, PAINT], root, tmp_path / "d")
    assert all(np.array_equal(a, b) for a, b in zip(warm, cold))
    assert any(not np.array_equal(a, b) for a, b in zip(first, warm))  # the adjust layer did show before
    cold_svc2, cold_stream2 = service()
    cold2 = propagate(cold_svc2, cold_stream2, 1, project, [SKETCH, {**ADJUST, "hue": 0.6}, PAINT], root,
                      tmp_path / "e")
    assert all(np.array_equal(a, b) for a, b in zip(recoloured, cold2))
    assert sum(int(a[..., 3].astype(bool).sum()) for a in warm) > 200  # the stroke and the paint are there


def _set_checkpoint(project: Project, step: int) -> None:
    """Record in the baked maps' meta that they come from checkpoint ``step`` (what a bake writes)."""
    meta_file = project.path / Project.MAPS / "meta.json"
    doc = json.loads(meta_file.read_text())
    doc["meta"] = {"checkpoint": {"step": step, "sha256": f"{step:064x}"}}
    fsutil.write_json(meta_file, doc)


def test_a_changed_checkpoint_identity_drops_the_kept_geometry(projects, service, tmp_path, monkeypatch):
    """Retraining (a new checkpoint, re-baked maps) makes the service reload the project with
    a new identity: the layers' geometry is found again, and the frames are those of a cold
    Propagate of the retrained project, not of the old positions."""
    root, _, _, mappings = projects
    clip = make_clip(T=T, size=(W, H), camera="pan_zoom", seed=5)
    project = make_gt_project(clip, tmp_path / "proj", atlas_size=128, work_scale=0.5)
    _set_checkpoint(project, 100)
    mappings[project.path.resolve()] = clip.gt
    svc, stream = service()
    before = propagate(svc, stream, 1, project, [SKETCH], root, tmp_path / "a")
    held = svc.projects[str(project.path.resolve())]
    scope = held.session.geometry
    assert held.session.settled() and scope.carried

    # the same checkpoint: a reload (some file of the project changed) keeps the geometry
    fsutil.write_json(project.path / Project.METRICS, {"psnr": 98.0, "iterations": 1, "train_seconds": 0.0})
    same = propagate(svc, stream, 3, project, [SKETCH], root, tmp_path / "b")
    assert svc.projects[str(project.path.resolve())] is not held  # reloaded ...
    assert svc.projects[str(project.path.resolve())].session.geometry is scope  # ... geometry kept
    assert all(np.array_equal(a, b) for a, b in zip(before, same))

    # retrained: another mapping (the camera moved differently), maps re-baked from step 200
    clip2 = make_clip(T=T, size=(W, H), camera="pan_zoom", seed=9)
    mappings[project.path.resolve()] = clip2.gt
    make_gt_project(clip2, project.path, atlas_size=128, work_scale=0.5)
    _set_checkpoint(project, 200)
    after = propagate(svc, stream, 5, project, [SKETCH], root, tmp_path / "c")
    new_scope = svc.projects[str(project.path.resolve())].session.geometry
    assert new_scope is not scope and new_scope.identity != scope.identity
    cold_svc, cold_stream = service()
    cold = propagate(cold_svc, cold_stream, 1, project, [SKETCH], root, tmp_path / "d")
    assert all(np.array_equal(a, b) for a, b in zip(after, cold))
    assert any(not np.array_equal(a, b) for a, b in zip(before, cold))  # the old positions would be wrong


def test_identity_and_keys(projects):
    """The identity follows the checkpoint the maps were baked from; an adjust layer's geometry
    key leaves out its colour, a sketch's does not matter (strokes are kept by their points)."""
    root, plain, _, _ = projects
    maps = plain.maps()
    a = geometry_identity(plain, maps, True)
    assert a == geometry_identity(plain, maps, True) and a != geometry_identity(plain, maps, False)
    other = type(maps)(uv=maps.uv, alpha=maps.alpha, atlas=maps.atlas, atlas_used=maps.atlas_used,
                       meta={"checkpoint": {"step": 7, "sha256": "0" * 64}})
    assert geometry_identity(plain, other, True) != a
    store = GeometryStore()
    s1 = store.scope("", a)
    assert store.scope("", a) is s1 and store.scope("", "other") is not s1
    # an image-sequence source re-exported in place (same names, the folder's time unchanged):
    # another salt, and the geometry matched on the old pixels goes too
    src = root / "frames_src"
    src.mkdir()
    for i in range(3):
        iio.imwrite(src / f"{i:04d}.png", np.full((4, 4, 3), 10 * i, np.uint8))
    stub = type("Stub", (), {"source_path": lambda self: src, "is_segmented": False})()
    salt, st = project_salt(stub), src.stat()
    store.set_salt(salt, source_stamp(stub))
    s2 = store.scope("", a)
    store.set_salt(project_salt(stub), source_stamp(stub))  # reopened, nothing changed
    assert store.scope("", a) is s2 and store.salt == salt
    again = src / "0001.png"
    iio.imwrite(again, np.full((4, 4, 3), 200, np.uint8))
    os.utime(again, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # (re-exported a second later)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert project_salt(stub) != salt
    store.set_salt(project_salt(stub), source_stamp(stub))
    assert store.scope("", a) is not s2
    l1, l2, l3 = parse_edits({"layers": [ADJUST, {**ADJUST, "hue": 0.9, "contrast": 1.2},
                                         {**ADJUST, "region": {"polygon": [[0, 0], [9, 0], [9, 9]]}}]},
                             root, plain.info)
    assert l1.key != l2.key and geometry_key(l1) == geometry_key(l2) != geometry_key(l3)


def test_a_turned_rigid_sticker_is_carried_turned(projects, service, tmp_path):
    """A rigid sticker's track does not depend on its rotation or its image's pixels, so the
    segmented shot keeps what it carried through the seams -- but the sticker every segment
    shows must be the one the user has now: turned, with its new image. The warm frames are
    those of a cold Propagate of the turned sticker."""
    root, _, seg, _ = projects
    bar = np.zeros((6, 24, 4), np.float32)
    bar[..., 0], bar[..., 3] = 1.0, 1.0
    fsutil.write_png(root / "bar.png", bar)
    dot = bar.copy()
    dot[..., :3] = (0.0, 1.0, 0.0)
    fsutil.write_png(root / "dot.png", dot)
    sticker = {"type": "sticker", "frame": 3, "image": "bar.png", "center": [48, 30], "scale": 1.0,
               "rotation": 0.0, "mode": "rigid"}
    turned = {**sticker, "image": "dot.png", "rotation": 0.9}
    svc, stream = service()
    first = propagate(svc, stream, 1, seg, [sticker], root, tmp_path / "a")
    warm = propagate(svc, stream, 3, seg, [turned], root, tmp_path / "b")
    cold_svc, cold_stream = service()
    cold = propagate(cold_svc, cold_stream, 1, seg, [turned], root, tmp_path / "c")
    late = range(12, T)  # frames only the last segment renders: the sticker came through two seams
    assert all(np.array_equal(warm[t], cold[t]) for t in range(T))
    assert any(not np.array_equal(first[t], warm[t]) for t in late)
    assert any(warm[t][..., 1].max() > 200 for t in late)  # the green image, not the red one


def test_kept_textures_fit_the_store_budget(projects):
    """A segmented shot keeps a copy of each carried paint/adjust texture per segment: the
    project's store drops the least recently used textures (over all its scopes) beyond its
    byte budget, never the one a pass has just kept."""
    import torch

    from core.edits.atlas_edit import AtlasTexture
    from core.edits.spec import parse_edits

    class Renderer:
        def __init__(self, mb: int) -> None:
            self.textures = [AtlasTexture.from_tensor("bg", torch.ones(4, 512, mb * 128))]  # mb MiB

    specs = parse_edits({"layers": [{**ADJUST, "region": {"polygon": [[0, 0], [9 + n, 0], [9, 9]]}}
                                    for n in range(4)]}, Path("."), projects[1].info)
    store = GeometryStore(max_texture_bytes=5 * 2**20)
    a, b = store.scope("s0", "id"), store.scope("s1", "id")
    a.keep(specs[0], Renderer(2))
    b.keep(specs[1], Renderer(2))
    a.attach(specs[0], Renderer(1))  # used again: now the most recent
    assert store.texture_bytes() == 4 * 2**20
    b.keep(specs[2], Renderer(2))  # 6 MiB: the least recently used (specs[1] in s1) goes
    assert geometry_key(specs[1]) not in b.textures and geometry_key(specs[2]) in b.textures
    assert geometry_key(specs[0]) in a.textures and store.texture_bytes() == 4 * 2**20
    a.keep(specs[3], Renderer(8))  # bigger than the budget alone: kept (a pass uses it), the rest go
    assert list(a.textures) == [geometry_key(specs[3])] and not b.textures


def test_kept_layers_are_composited_not_rendered_and_give_the_uncached_bytes(projects, service, tmp_path,
                                                                              monkeypatch):
    """After a Propagate the service keeps each layer's rendered frames (core/edits/patch_cache.py):
    adding a layer *between* two kept ones renders only the new one, in the forked workers
    (also after a preview of it with the cache full: the kept layers are not dropped for it),
    and the frames are byte for byte those of a service that keeps nothing. (A segmented
    shot: its layers reach the later segments through the seams; a plain project's session
    is the same code, and the hide/show test above runs it cached.)"""
    from core.edits.paint import TextureRenderer

    root, _, project, _ = projects
    svc, stream = service()
    before = propagate(svc, stream, 1, project, [ADJUST, PAINT], root, tmp_path / "a")
    assert svc.patches.bytes > 0 and len(svc.patches) >= 2 * T  # the workers' patches came back
    # the cache is full; the stroke is added and previewed (as the add-on does) before the
    # Propagate: one frame of the new layer must not drop what is kept of the others
    svc.patches.max_bytes = svc.patches.bytes + 100
    kept_before = {gk: len(g) for gk, g in svc.patches._groups.items()}
    run(svc, stream, 10, "set_edits", project=str(project.path),
        edits={"version": 1, "layers": [ADJUST, SKETCH, PAINT]}, base=str(root))
    run(svc, stream, 11, "render_frame", project=str(project.path), frame=11, output=str(tmp_path / "p.png"),
        overlay=True)
    assert {gk: len(g) for gk, g in svc.patches._groups.items()} == kept_before

    def no_render(*args, **kwargs):
        raise AssertionError("a kept layer was rendered again")
    with monkeypatch.context() as m:
        m.setattr(TextureRenderer, "lookups", no_render)  # the paint and adjust layers' renderer
        kept = propagate(svc, stream, 3, project, [ADJUST, SKETCH, PAINT], root, tmp_path / "b")
    none_svc, none_stream = service(patch_cache_mb=0)
    uncached = propagate(none_svc, none_stream, 1, project, [ADJUST, SKETCH, PAINT], root, tmp_path / "c")
    assert none_svc.patches.bytes == 0
    assert all(np.array_equal(a, b) for a, b in zip(kept, uncached))
    assert any(not np.array_equal(a, b) for a, b in zip(before, kept))  # the stroke is there


def test_a_segment_retrained_alone_renders_every_layer_again(projects, service, tmp_path, monkeypatch):
    """A layer reaches a segment through the seams of the others, so re-baking one segment's
    maps (``inve correct`` of its frames) makes every kept frame of every segment stale: the
    service reloads the project (its top folder may not have changed) and renders again."""
    import shutil

    import core.serve
    from core.edits.paint import TextureRenderer

    root, _, seg0, mappings = projects
    shutil.copytree(seg0.path, tmp_path / "seg")
    seg = Project.open(tmp_path / "seg")
    for sub, sub0 in zip(seg.segments(), seg0.segments()):
        mappings[sub.path.resolve()] = mappings[sub0.path.resolve()]
    monkeypatch.setattr(core.serve, "render_workers", lambda session: 1)  # count renders here
    calls = []
    lookups = TextureRenderer.lookups
    monkeypatch.setattr(TextureRenderer, "lookups", lambda self, ctx, t: calls.append(t) or lookups(self, ctx, t))
    svc, stream = service()
    first = propagate(svc, stream, 1, seg, [ADJUST], root, tmp_path / "a")
    n = len(calls)
    assert n >= T
    propagate(svc, stream, 3, seg, [ADJUST], root, tmp_path / "b")
    assert len(calls) == n  # all kept
    recoloured = propagate(svc, stream, 7, seg, [{**ADJUST, "hue": 0.6}], root, tmp_path / "r")
    assert len(calls) == n  # the region's lookups were kept: only its colours were applied again
    assert any(not np.array_equal(a, b) for a, b in zip(first, recoloured))
    _set_checkpoint(seg.segments()[2], 300)  # the last segment re-baked; the first two unchanged
    again = propagate(svc, stream, 5, seg, [ADJUST], root, tmp_path / "c")
    assert len(calls) == 2 * n  # every segment's frames rendered again
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # (the same maps: the same frames)


def test_kept_patches_are_exact_and_within_the_budget():
    """A kept patch composites to the bytes of the rendered one; the cache keeps within its
    byte budget, dropping layers no pass uses first and never what the current pass uses."""
    from core.edits.context import Patch
    from core.edits.patch_cache import Kept, PatchCache
    from core.edits.render import composite, composite_overlay

    rng = np.random.default_rng(0)
    a = np.zeros((40, 50), np.float32)
    a[5:9, 3:40] = rng.random((4, 37), dtype=np.float32)  # a thin stroke: kept sparse
    rgb = a[..., None] * rng.random((40, 50, 3), dtype=np.float32)
    rgb[0, 0] = -0.0
    dense = Patch(10, 12, rng.random((8, 9, 3), dtype=np.float32) * 0.5, rng.random((8, 9), dtype=np.float32))
    thin = Patch(20, 4, rgb, a)
    frame = rng.integers(0, 256, (64, 96, 3), np.uint8)
    kept = [Kept.of(thin), Kept.of(dense)]
    assert kept[0].index is not None and kept[1].index is None and kept[0].nbytes < thin.nbytes / 3
    back = [k.patch() for k in kept]
    assert np.array_equal(composite(frame, [thin, dense]), composite(frame, back))
    assert np.array_equal(composite_overlay((64, 96), [thin, dense]), composite_overlay((64, 96), back))

    size = sum(k.nbytes for k in kept) + 256
    cache = PatchCache(max_bytes=10 * size)
    cache.begin_pass()
    for t in range(4):
        cache.put("tok", "old", t, [thin, dense])
    cache.begin_pass()  # another stack: "old" is not used by it
    for t in range(8):
        cache.put("tok", "new", t, [thin, dense])
    assert cache.bytes <= cache.max_bytes and cache.frames("tok", "new") == 8 and cache.frames("tok", "old") == 0
    for t in range(4):
        cache.put("tok", "more", t, [thin, dense])  # this pass uses "new" too: later frames not kept
    assert cache.frames("tok", "new") == 8 and cache.frames("tok", "more") == 2 and cache.bytes <= cache.max_bytes
    assert cache.get("tok", "more", 3) is None and cache.get("other", "new", 0) is None
    # the stack of another open project (pinned) goes only after what no open stack uses
    cache.pin("other project", {("tok", "new")})
    cache.begin_pass()
    for t in range(2):
        cache.put("tok", "next", t, [thin, dense])  # ("new" is the least recently used)
    assert cache.frames("tok", "new") == 8 and cache.frames("tok", "more") == 0
    assert cache.frames("tok", "next") == 2
    cache.pin("other project", None)
    # patches from a render worker arrive unpickled (writeable); a dense one is handed out as
    # views of what is kept, so kept they are read-only
    import pickle

    cache.begin_pass()
    cache.add("tok", "worker", 0, pickle.loads(pickle.dumps(tuple(kept))))
    dense_back = cache.get("tok", "worker", 0)[1]
    assert not dense_back.rgb.flags.writeable and not dense_back.a.flags.writeable

"""The compact baked-maps store (8-bit atlases and alpha, no stored usage maps, no zero alpha):
edits render as from the older float16 store, and projects baked before it still open."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from synth import make_clip, make_gt_project
from core import arraystore, fsutil
from core.bake import atlas_usage
from core.edits import EditSession, parse_edits
from core.layers import shows
from core.project import BakedMaps, Project

W, H, T = 64, 48, 6

EDITS = [
    {"type": "sketch", "frame": 1, "strokes": [{"points": [[10, 8], [50, 30]], "color": [1, 0, 0, 1], "width": 3}]},
    {"type": "paint", "frame": 0, "image": "paint.png"},
    {"type": "adjust", "frame": 0, "region": {"polygon": [[2, 2], [30, 2], [30, 20]]}, "hue": 0.3},
    {"type": "atlas", "layer": "bg", "image": "atlas_painted.png"},
]


def _old_store(maps: BakedMaps, folder: Path) -> None:
    """``maps`` as inve wrote them before the compact store: every array float16, by its old name."""
    store = arraystore.StoreWriter(folder)
    store.put("alpha", np.asarray(maps.alpha), np.float16)
    for L in maps.layers:
        store.put(f"uv_{L}", np.asarray(maps.uv[L]), np.float16)
        store.put(f"atlas_{L}", maps.atlas[L], np.float16)
        store.put(f"atlas_used_{L}", maps.atlas_used[L], np.float16)
    store.commit({"kind": "baked_maps", "layers": maps.layers, "frames": maps.n_frames,
                  "work_size": list(maps.work_size), "meta": maps.meta})


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """One ground-truth project twice: maps in the older float16 store and in the compact one."""
    clip = make_clip(T=T, size=(W, H), camera="pan_zoom", seed=7)
    folder = tmp_path_factory.mktemp("compact")
    compact = make_gt_project(clip, folder / "compact", atlas_size=128, work_scale=0.5)
    full = BakedMaps.load(compact.path / Project.MAPS, mmap=False)
    full.atlas = {L: np.random.default_rng(3).random(a.shape, np.float32) * 0.02 + a for L, a in full.atlas.items()}
    full.atlas_used = {L: full.atlas_used[L] for L in full.layers}  # computed from the stored maps
    shutil.copytree(compact.path, folder / "old")
    shutil.rmtree(folder / "old" / Project.MAPS)
    _old_store(full, folder / "old" / Project.MAPS)  # atlases off the 8-bit grid, as a float bake gives
    shutil.rmtree(compact.path / Project.MAPS)
    BakedMaps.load(folder / "old" / Project.MAPS, mmap=False).save(compact.path / Project.MAPS)
    paint = np.zeros((H, W, 4), np.float32)
    paint[30:40, 5:25] = (0, 1, 0, 0.8)
    fsutil.write_png(folder / "paint.png", paint)
    painted = np.clip(full.atlas["bg"], 0, 1).copy()
    painted[40:70, 40:90] = (0.1, 0.2, 0.9)
    fsutil.write_png(folder / "atlas_painted.png", painted)
    return clip, folder, Project.open(folder / "old"), Project.open(compact.path)


def test_compact_store_is_smaller_and_uses_the_new_names(projects):
    _, folder, old, compact = projects
    names = sorted(p.stem for p in (compact.path / Project.MAPS).glob("*.npy"))
    assert names == ["alpha8", "atlas8_bg", "atlas8_fg", "uv_bg", "uv_fg"]
    meta = json.loads((compact.path / Project.MAPS / "meta.json").read_text())
    assert meta["store"] == BakedMaps.STORE and meta["arrays"] == names  # no stale array listed
    old_size = arraystore.folder_size(old.path / Project.MAPS)
    new_size = arraystore.folder_size(compact.path / Project.MAPS)
    # uv stays float16; atlases and alpha halve; usage maps go
    assert new_size < 0.8 * old_size, (old_size, new_size)


def test_old_store_loads_unchanged(projects):
    _, _, old, _ = projects
    maps = BakedMaps.load(old.path / Project.MAPS)
    stored = {p.stem: np.load(p) for p in (old.path / Project.MAPS).glob("*.npy")}
    assert isinstance(maps.alpha, np.memmap)
    np.testing.assert_array_equal(maps.alpha, stored["alpha"])
    for L in maps.layers:
        np.testing.assert_array_equal(maps.atlas[L], stored[f"atlas_{L}"].astype(np.float32))
        np.testing.assert_array_equal(maps.atlas_used[L], stored[f"atlas_used_{L}"].astype(np.float32))


def test_compact_values_within_half_a_level(projects):
    _, _, old, compact = projects
    a, b = BakedMaps.load(old.path / Project.MAPS), BakedMaps.load(compact.path / Project.MAPS)
    alpha_a, alpha_b = np.asarray(a.alpha, np.float32), np.asarray(b.alpha, np.float32)
    assert alpha_a.max() > 0.9  # there is a foreground layer
    assert np.abs(alpha_b - alpha_a).max() <= 0.5 / 255 + 1e-6
    for L in a.layers:
        np.testing.assert_array_equal(b.uv[L], a.uv[L])
        assert b.atlas[L].dtype == np.float32
        assert np.abs(b.atlas[L] - np.clip(a.atlas[L], 0, 1)).max() <= 0.5 / 255 + 1e-6
        # not stored: recomputed from the stored maps, what the bake computes
        np.testing.assert_array_equal(b.atlas_used[L], atlas_usage(a.uv[L], a.alpha, a.atlas[L].shape[0], L))
        assert np.array_equal(shows(L, alpha_b), shows(L, alpha_a))  # no pixel changes layer


def test_alpha_rounding_keeps_the_layer_threshold():
    from core.project import _alpha_to_u8  # noqa: PLC0415

    x = np.array([0.0, 0.4999, 0.5, np.nextafter(np.float32(0.5), np.float32(1)), 0.5001, 127.5 / 255, 1.0], np.float32)
    back = _alpha_to_u8(x).astype(np.float32) / 255
    for L in ("bg", "fg"):
        np.testing.assert_array_equal(shows(L, back), shows(L, x))
    assert np.abs(back - x).max() <= 0.5 / 255 + 1e-6


def test_edits_render_the_same_from_both_stores(projects):
    clip, folder, old, compact = projects
    frames = []
    for project in (old, compact):
        layers = parse_edits({"version": 1, "layers": EDITS}, folder, project.info)
        session = EditSession(project, layers, mapping=clip.gt, maps=BakedMaps.load(project.path / Project.MAPS))
        frames.append(np.stack([session.render_frame(t) for t in range(T)]).astype(np.int16))
    diff = np.abs(frames[0] - frames[1])
    changed = (frames[0] != np.stack([np.asarray(old.frames()[t]) for t in range(T)])).any(-1)
    assert changed.mean() > 0.05  # the edits show
    # at most a level where half-level rounding of atlas/alpha crosses an 8-bit step; barely anywhere
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_single_layer_stores_no_alpha(tmp_path, projects):
    _, _, old, _ = projects
    a = BakedMaps.load(old.path / Project.MAPS, mmap=False)
    one = BakedMaps(uv={"bg": a.uv["bg"]}, alpha=np.zeros(a.alpha.shape, np.float32), atlas={"bg": a.atlas["bg"]},
                    atlas_used={})
    shutil.copytree(old.path / Project.MAPS, tmp_path / "maps")  # a re-bake over the older store
    one.save(tmp_path / "maps")
    assert sorted(p.name for p in (tmp_path / "maps").glob("*.npy")) == ["atlas8_bg.npy", "uv_bg.npy"]
    back = BakedMaps.load(tmp_path / "maps")
    assert back.alpha.shape == a.alpha.shape and not np.asarray(back.alpha[2]).any()
    assert float(np.asarray(back.alpha[1, 3, 4], np.float32)) == 0.0
    np.testing.assert_array_equal(back.atlas_used["bg"], atlas_usage(a.uv["bg"], one.alpha, a.atlas["bg"].shape[0], "bg"))


def test_older_inve_refuses_the_compact_store_instead_of_misreading_it(projects, tmp_path):
    """An inve from before the compact store looks for atlas_<layer>.npy: a missing file is its
    "damaged, bake again" message, never 8-bit values taken for 0..1 colours."""
    _, _, _, compact = projects
    assert not list((compact.path / Project.MAPS).glob("atlas_*.npy"))
    assert not (compact.path / Project.MAPS / "alpha.npy").exists()


def test_compact_project_script_converts_in_place_and_keeps_the_state(projects, tmp_path):
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("compact_project", Path(__file__).parents[1] / "scripts" / "compact_project.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _, _, old, compact = projects
    dst = tmp_path / "proj"
    shutil.copytree(old.path, dst)
    meta_before = BakedMaps.read_meta(dst / Project.MAPS)
    before, after = mod.compact(dst)
    assert after < before
    stored = json.loads((dst / Project.MAPS / "meta.json").read_text())
    assert stored["store"] == BakedMaps.STORE and BakedMaps.read_meta(dst / Project.MAPS) == meta_before
    a, b = BakedMaps.load(compact.path / Project.MAPS), BakedMaps.load(dst / Project.MAPS)
    for L in a.layers:
        np.testing.assert_array_equal(a.atlas[L], b.atlas[L])
    np.testing.assert_array_equal(np.asarray(a.alpha), np.asarray(b.alpha))
    assert mod.compact(dst)[1] == after  # already compact: left as it is

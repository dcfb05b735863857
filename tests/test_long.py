"""Long shots: compact storage, memory-mapped maps, no source copy, streamed output, old projects."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from synth import make_clip, make_gt_project, write_clip
from core import PROJECT_FORMAT, cli, fsutil
from core.edits import EditSession, parse_edits
from core.errors import InveError
from core.project import PLAIN_FORMAT, BakedMaps, Project
from core.sampling import TrainingData

W, H, T = 64, 48, 8

EDITS = [
    {"type": "sketch", "frame": 1, "strokes": [{"points": [[10, 8], [50, 30]], "color": [1, 0, 0, 1], "width": 3}]},
    {"type": "paint", "frame": 0, "image": "paint.png"},
    {"type": "adjust", "frame": 0, "region": {"polygon": [[2, 2], [30, 2], [30, 20]]}, "hue": 0.3},
]


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    clip = make_clip(T=T, size=(W, H), camera="pan_zoom", seed=7)
    folder = tmp_path_factory.mktemp("long")
    project = make_gt_project(clip, folder / "proj", atlas_size=128, work_scale=0.5)
    paint = np.zeros((H, W, 4), np.float32)
    paint[30:40, 5:25] = (0, 1, 0, 0.8)
    fsutil.write_png(folder / "paint.png", paint)
    return clip, project, folder


def _session(project: Project, clip, folder: Path, maps: BakedMaps) -> EditSession:
    layers = parse_edits({"version": 1, "layers": EDITS}, folder, project.info)
    return EditSession(project, layers, mapping=clip.gt, maps=maps)


def test_maps_are_memory_mapped_and_give_identical_edits(gt):
    clip, project, folder = gt
    mapped = BakedMaps.load(project.path / Project.MAPS)
    assert all(isinstance(mapped.uv[L], np.memmap) for L in mapped.layers)
    assert isinstance(getattr(mapped.alpha, "base", None), np.memmap)  # 8-bit alpha, read frame by frame
    in_ram = BakedMaps.load(project.path / Project.MAPS, mmap=False)
    assert not isinstance(in_ram.alpha.base, np.memmap)
    a, b = _session(project, clip, folder, mapped), _session(project, clip, folder, in_ram)
    touched = 0
    for t in range(T):
        fa, fb = a.render_frame(t), b.render_frame(t)
        np.testing.assert_array_equal(fa, fb)
        touched += int((fa != np.asarray(project.frames()[t])).any())
    assert touched >= T - 1  # the edits do show


def test_stored_uv_precision(gt, tmp_path):
    """float16 maps on disk: uv within 0.0005 atlas units of the float32 bake (~0.1 px here)."""
    clip, project, _ = gt
    ram = BakedMaps.load(project.path / Project.MAPS, mmap=False)
    uv32 = {L: ram.uv[L].astype(np.float32) + np.float32(1e-4) for L in ram.layers}  # not float16-exact
    maps = BakedMaps(uv=uv32, alpha=ram.alpha.astype(np.float32), atlas=ram.atlas, atlas_used=ram.atlas_used,
                     meta={"step": 12})
    maps.save(tmp_path / "maps")
    back = BakedMaps.load(tmp_path / "maps")
    assert back.meta == {"step": 12}
    for L in maps.layers:
        assert np.abs(back.uv[L].astype(np.float32) - uv32[L]).max() <= 5e-4


def test_interrupted_maps_refused_and_meta_written_last(gt, tmp_path):
    clip, project, _ = gt
    dst = tmp_path / "maps"
    shutil.copytree(project.path / Project.MAPS, dst)
    assert json.loads((dst / "meta.json").read_text())["kind"] == "baked_maps"
    (dst / "meta.json").unlink()  # a bake that died before its commit marker
    with pytest.raises(InveError, match="incomplete"):
        BakedMaps.load(dst)


def _as_format_1(project: Project, dst: Path) -> Path:
    """The same project in the layout of format 1: one maps.npz, frames.npy, format 1."""
    shutil.copytree(project.path, dst)
    maps = BakedMaps.load(dst / Project.MAPS, mmap=False)
    arrays = {"alpha": maps.alpha.astype(np.float32)}
    for L in maps.layers:
        arrays[f"uv_{L}"] = maps.uv[L].astype(np.float32)
        arrays[f"atlas_{L}"] = maps.atlas[L]
        arrays[f"atlas_used_{L}"] = maps.atlas_used[L]
    np.savez(dst / "maps.npz", **arrays)
    shutil.rmtree(dst / Project.MAPS)
    doc = json.loads((dst / Project.INFO).read_text())
    doc["format"] = 1
    doc.pop("source_relative", None)
    (dst / Project.INFO).write_text(json.dumps(doc))
    return dst


def test_old_project_format_still_opens(gt, tmp_path):
    clip, project, folder = gt
    old = Project.open(_as_format_1(project, tmp_path / "old"))
    assert old.info.format == 1 and not (old.path / Project.MAPS).exists()
    maps = old.maps()
    assert not isinstance(maps.alpha, np.memmap) and maps.meta == {}
    new_s = _session(project, clip, folder, project.maps())
    old_s = _session(old, clip, folder, maps)
    for t in (0, T - 1):
        np.testing.assert_array_equal(new_s.render_frame(t), old_s.render_frame(t))


def test_newer_project_format_refused(gt, tmp_path):
    _, project, _ = gt
    dst = tmp_path / "newer"
    shutil.copytree(project.path, dst)
    doc = json.loads((dst / Project.INFO).read_text())
    doc["format"] = PROJECT_FORMAT + 1
    (dst / Project.INFO).write_text(json.dumps(doc))
    with pytest.raises(InveError, match="upgrade inve"):
        Project.open(dst)


# -- training data ---------------------------------------------------------------------------
def test_training_data_is_compact_and_stratified():
    from core.flow import compute_flow

    clip = make_clip(T=12, size=(48, 32), camera="pan", seed=2)
    flow = compute_flow(clip.frames)
    masks = np.zeros((12, 32, 48), np.uint8)
    masks[:, 10:20, 10:30] = 1
    data = TrainingData(clip.frames, flow, masks, torch.device("cpu"))
    assert data.rgb.dtype == torch.uint8 and data.fwd.dtype == torch.float16
    assert data.masks.dtype == torch.uint8 and data.fwd_ok.dtype == torch.bool
    assert data.nbytes <= 14 * 12 * 32 * 48
    gen = torch.Generator().manual_seed(0)
    b = data.sample(1000, gen)
    counts = torch.bincount(b["t"].long(), minlength=12)
    assert int(counts.min()) >= 1000 // 12 and int(counts.max()) <= 1000 // 12 + 1
    # the batch's colours, masks and flow targets are those of the sampled pixels
    x = ((b["p"][:, 0] * data.half) + 24 - 0.5).round().long()
    y = ((b["p"][:, 1] * data.half) + 16 - 0.5).round().long()
    t = b["t"].long()
    frames = torch.from_numpy(clip.frames)
    assert torch.equal((b["rgb"] * 255).round().to(torch.uint8), frames[t, y, x])
    assert torch.equal(b["mask"], torch.from_numpy(masks)[t, y, x].float())
    fwd = b["t_next"] > b["t"]
    vec = (b["p_next"] - b["p"]) * data.half
    expect = torch.from_numpy(flow.fwd.astype(np.float16).astype(np.float32))[t[fwd], y[fwd], x[fwd]]
    torch.testing.assert_close(vec[fwd], expect, atol=1e-4, rtol=0)


# -- no copy of the source ------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny project trained from a movie (a few iterations: only the storage matters here)."""
    from core.video import write_movie

    base = tmp_path_factory.mktemp("trained")
    clip = make_clip(T=T, size=(W, H), camera="pan", seed=4)
    movie = base / "media" / "clip.mp4"
    movie.parent.mkdir()
    write_movie(movie, list(clip.frames), fps=24.0)
    proj = base / "shots" / "proj"
    assert cli.main(["train", str(movie), "-o", str(proj), "--iters", "4", "--progress", "none"]) == 0
    return base, movie, proj


def test_project_keeps_no_source_copy_and_reports_its_size(trained, capsys):
    base, movie, proj = trained
    assert not (proj / "frames.npy").exists()
    assert (proj / "maps" / "meta.json").is_file() and not (proj / "maps.npz").exists()
    # a finished project keeps what editing needs: no flow or working frames (resume recomputes them)
    assert not (proj / "cache" / "flow").exists() and not (proj / "cache" / "frames").exists()
    assert (proj / "cache" / "masks" / "meta.json").is_file()
    project = Project.open(proj)
    assert project.info.format == PLAIN_FORMAT  # a project without segments stays readable by older inve
    assert project.info.source_relative == "../../media/clip.mp4"
    capsys.readouterr()
    assert cli.main(["info", str(proj)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size_on_disk"] == project.size_on_disk() > 0
    frames = project.frames()
    assert frames.shape == (T, H, W, 3)
    from core.video import iter_frames

    decoded = list(iter_frames(movie, 0, T))
    for t in (0, 1, 2, 6, 3, 7, 7):  # forwards, backwards, repeated: same pixels as a straight decode
        np.testing.assert_array_equal(frames[t], decoded[t])
    assert len(frames._cache) <= frames.cache_frames


def test_frame_source_bounded_cache_and_sequential_decode(trained):
    _, movie, proj = trained
    from core.video import FrameSource

    src = FrameSource(movie, list(range(2, T)), (W, H), cache_frames=2)
    for t in range(len(src)):
        src[t]
    assert src.decoded == T - 2 and len(src._cache) == 2  # one pass, nothing decoded twice
    src[0]
    assert src.decoded == T - 2 + 1  # behind the decoder: restarts there


def test_moved_source_found_relative_to_project_or_clear_error(trained, tmp_path):
    base, movie, proj = trained
    moved = tmp_path / "elsewhere"
    shutil.copytree(base, moved)  # project and media moved together: found by the relative path
    p = Project.open(moved / "shots" / "proj")
    assert p.source_path() == moved / "shots" / "proj" / "../../media/clip.mp4"
    assert p.frames()[0].shape == (H, W, 3)
    (moved / "media" / "clip.mp4").rename(moved / "media" / "other.mp4")
    info = moved / "shots" / "proj" / Project.INFO
    doc = json.loads(info.read_text())
    doc["source"] = str(tmp_path / "gone" / "clip.mp4")  # the original is gone as well
    info.write_text(json.dumps(doc))
    with pytest.raises(InveError, match="moved or deleted") as exc:
        Project.open(moved / "shots" / "proj").frames()
    assert "\n" not in str(exc.value)


def test_streamed_output_equals_in_memory_output(trained, tmp_path, capsys, monkeypatch):
    """`inve edit` streams frames decoded on demand to PNGs; they equal frames rendered in memory."""
    _, movie, proj = trained
    fsutil.write_png(tmp_path / "paint.png", np.full((H, W, 4), (1.0, 0.0, 0.0, 0.5), np.float32))
    doc = {"version": 1, "layers": [{"type": "paint", "frame": 0, "image": "paint.png", "layer": "bg"}]}
    (tmp_path / "EDITS.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert cli.main(["edit", str(proj), "--edits", str(tmp_path / "EDITS.json"), "-o", str(out),
                     "--progress", "none"]) == 0
    project = Project.open(proj)
    from core.video import iter_frames, read_image, to_rgb8

    frames = np.stack(list(iter_frames(movie, 0, T)))
    layers = parse_edits(doc, tmp_path, project.info)
    session = EditSession(project, layers, maps=BakedMaps.load(proj / "maps", mmap=False))
    session.ctx.frames = frames  # the whole clip in memory
    for t in range(T):
        written = to_rgb8(read_image(out / f"{t:04d}.png"), bgr=True)
        np.testing.assert_array_equal(written, session.render_frame(t))
    # a streamed movie decodes to the same pixels as a movie of the in-memory frames
    from core.video import write_movie

    movie_out = tmp_path / "out.mp4"
    assert cli.main(["edit", str(proj), "--edits", str(tmp_path / "EDITS.json"), "-o", str(movie_out),
                     "--progress", "none"]) == 0
    write_movie(tmp_path / "ref.mp4", [session.render_frame(t) for t in range(T)], fps=project.info.fps)
    back = np.stack(list(iter_frames(movie_out, 0, T)))
    np.testing.assert_array_equal(back, np.stack(list(iter_frames(tmp_path / "ref.mp4", 0, T))))


def test_fast_png_writer_keeps_pixels(tmp_path):
    """inve's one PNG encoder (core.png, behind fsutil.write_png) stores the same pixels, RGB, RGBA and gray."""
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    for shape in ((20, 30, 3), (20, 30, 4), (20, 30)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        fsutil.write_png(tmp_path / "a.png", img)
        np.testing.assert_array_equal(iio.imread(tmp_path / "a.png"), img)


def test_default_budget_grows_with_the_shot():
    from core.train import DEFAULT_MINUTES, MAX_DEFAULT_MINUTES, default_minutes

    assert default_minutes(40, (256, 192)) == DEFAULT_MINUTES  # the reference shot
    assert default_minutes(6, (64, 48)) == DEFAULT_MINUTES  # never below it
    box = default_minutes(458, (256, 192))
    assert DEFAULT_MINUTES < box <= MAX_DEFAULT_MINUTES
    assert default_minutes(132, (256, 144)) < box
    assert default_minutes(5000, (256, 192)) == MAX_DEFAULT_MINUTES


def test_bake_into_memory_mapped_maps_matches_in_memory_bake(tmp_path):
    """Training bakes straight into the project's float16 files: same maps (to float16), same metrics."""
    from core.bake import bake
    from core.model import LayeredAtlasModel, ModelConfig

    torch.manual_seed(0)
    frames = np.random.default_rng(1).integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    model = LayeredAtlasModel(ModelConfig(n_frames=3, work_size=(32, 24), map_log2_table=12, alpha_log2_table=12,
                                          atlas_log2_table=12, atlas_levels=6, alpha_levels=4, map_levels=4))
    ram = bake(model, frames, (64, 48), atlas_size=64)
    store = BakedMaps.writer(tmp_path / "maps")
    mapped = bake(model, frames, (64, 48), atlas_size=64, out=store.frame_array)
    mapped.maps.save(tmp_path / "maps", store=store)
    assert mapped.psnr == ram.psnr and mapped.cycle_error_px == ram.cycle_error_px
    back = BakedMaps.load(tmp_path / "maps")
    assert not list((tmp_path / "maps").glob(".*"))  # no temporary files left
    for L in ram.maps.layers:
        assert np.abs(back.uv[L].astype(np.float32) - ram.maps.uv[L]).max() <= 5e-4
        assert back.atlas[L].dtype == np.float32
        np.testing.assert_allclose(back.atlas[L], np.clip(ram.maps.atlas[L], 0, 1), atol=0.5 / 255 + 1e-6, rtol=0)  # 8-bit
    assert np.abs(back.alpha.astype(np.float32) - ram.maps.alpha).max() <= 0.5 / 255 + 1e-6  # 8-bit alpha

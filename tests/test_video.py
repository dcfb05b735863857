"""Video input/output: exact probing of real clips, folders, ranges, errors, writing round trips."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from core import fsutil, video
from core.errors import InveError

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "clips"
if not CLIPS.is_dir():  # the repository may live elsewhere than /work/main
    CLIPS = Path("/work/shared/clips")
needs_clips = pytest.mark.skipif(not CLIPS.is_dir(), reason="shared clips not present")

# Ground truth from ../shared/clips/SOURCES.md (frames decoded at the constant frame rate).
REAL = {"bbb_640x360.mp4": (132, 640, 360, 25.0), "cup.mp4": (217, 640, 480, 26.78),
        "box.mp4": (458, 640, 480, 29.97)}


def _ffmpeg(*args: str) -> None:
    subprocess.run([video._ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@needs_clips
@pytest.mark.parametrize("name", sorted(REAL))
def test_probe_real_clips_exact(name: str) -> None:
    t0 = time.monotonic()
    info = video.probe(CLIPS / name)
    elapsed = time.monotonic() - t0
    n, w, h, fps = REAL[name]
    assert (info.n_frames, info.width, info.height) == (n, w, h)
    assert info.fps == pytest.approx(fps, abs=0.01)
    assert elapsed < 10.0  # ~0.3-0.6 s on a quiet 2-core machine; generous for a loaded CI


@needs_clips
def test_probe_count_matches_decoded_frames() -> None:
    """box.mp4 has irregular timestamps; the count must equal what reading yields."""
    info = video.probe(CLIPS / "box.mp4")
    decoded = sum(1 for _ in video.iter_frames(CLIPS / "box.mp4", 0, -1, info=info))
    assert decoded == info.n_frames == 458


def test_bundled_clip() -> None:
    path = video.default_clip()
    info = video.probe(path)
    assert (info.width, info.height) == (480, 270)
    assert info.n_frames == 48 and info.fps == pytest.approx(25.0)
    assert path.stat().st_size < 1_000_000
    assert "CC-BY 3.0" in (path.parent / "CREDITS.md").read_text()


@needs_clips
def test_load_clip_range_and_npy(tmp_path: Path) -> None:
    src = CLIPS / "cup.mp4"
    npy = tmp_path / "frames.npy"
    small = video.load_clip(src, 40, 50, (256, 192), npy)
    full = np.load(npy)
    assert small.shape == (10, 192, 256, 3) and small.dtype == np.uint8
    assert full.shape == (10, 480, 640, 3) and full.dtype == np.uint8
    # Frames 40..49 as an independent decoder (imageio's own reader) yields them; ours rounds
    # YUV->RGB accurately where ffmpeg's default is about one level darker.
    ref = np.stack([f for i, f in enumerate(iio.imiter(src, plugin="FFMPEG")) if 40 <= i < 50])
    diff = full.astype(np.float32) - ref
    assert np.abs(diff).mean() < 2.0 and np.percentile(np.abs(diff), 99) <= 6
    assert np.abs(full[1:].astype(np.float32) - ref[:-1]).mean() > 2 * np.abs(diff).mean()  # not off by one frame
    expect = cv2.resize(full[3], (256, 192), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(small[3], expect)
    assert [p.name for p in tmp_path.iterdir()] == ["frames.npy"]  # no temp file left behind


def _write_folder(folder: Path, n: int, size: tuple[int, int] = (40, 30)) -> list[np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        frames.append(img)
        iio.imwrite(folder / f"frame{i}.png", img)  # unpadded names: natural sort needed
    return frames


def test_folder_input(tmp_path: Path) -> None:
    frames = _write_folder(tmp_path / "seq", 12)
    (tmp_path / "seq" / "notes.txt").write_text("not an image")
    info = video.probe(tmp_path / "seq")
    assert (info.n_frames, info.width, info.height) == (12, 40, 30)
    out = video.load_clip(tmp_path / "seq", 2, 11, (40, 30), tmp_path / "f.npy")
    np.testing.assert_array_equal(out, np.stack(frames[2:11]))
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), np.stack(frames[2:11]))


def test_folder_channel_layouts(tmp_path: Path) -> None:
    """Gray, RGBA and 16-bit images all arrive as RGB uint8."""
    d = tmp_path / "mixed"
    d.mkdir()
    gray = np.tile(np.arange(16, dtype=np.uint8)[None] * 16, (12, 1))
    rgba = np.zeros((12, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    deep = np.full((12, 16, 3), 65535, np.uint16)
    deep[..., 1] = 257 * 100
    cv2.imwrite(str(d / "0000.png"), gray)
    iio.imwrite(d / "0001.png", rgba)
    cv2.imwrite(str(d / "0002.png"), deep[..., ::-1])
    out = video.load_clip(d, 0, 3, (16, 12), None)
    np.testing.assert_array_equal(out[0], np.repeat(gray[..., None], 3, axis=2))
    assert tuple(out[1, 0, 0]) == (200, 0, 0)
    assert tuple(out[2, 0, 0]) == (255, 100, 255)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(InveError, match="not found"):
        video.probe(tmp_path / "missing.mp4")
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n")
    with pytest.raises(InveError, match="cannot read"):
        video.probe(fake)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InveError):
        video.probe(empty)
    zero = tmp_path / "zero.mp4"  # a valid container whose video stream has no frames
    _ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x48:r=25", "-frames:v", "0", "-c:v", "libx264", str(zero))
    with pytest.raises(InveError, match="zero"):
        video.probe(zero)
    audio = tmp_path / "audio.mp4"
    _ffmpeg("-f", "lavfi", "-i", "anullsrc", "-t", "0.3", "-c:a", "aac", str(audio))
    with pytest.raises(InveError, match="no video stream"):
        video.probe(audio)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InveError, match="no images"):
        video.probe(tmp_path / "nothing")
    odd = tmp_path / "odd"
    _write_folder(odd, 2)
    iio.imwrite(odd / "frame9.png", np.zeros((31, 40, 3), np.uint8))
    with pytest.raises(InveError, match="differ in size"):
        video.probe(odd)
    broken = tmp_path / "broken"
    _write_folder(broken, 2)
    (broken / "frame5.png").write_bytes(b"garbage")
    with pytest.raises(InveError, match="cannot read image"):
        video.probe(broken)


def test_resolve_range() -> None:
    info = video.VideoInfo("clip.mp4", 100, 64, 48, 25.0)
    assert video.resolve_range(info, None) == (0, 100)
    assert video.resolve_range(info, (10, -1)) == (10, 100)
    assert video.resolve_range(info, (0, 100)) == (0, 100)
    assert video.resolve_range(info, (99, 100)) == (99, 100)
    for bad, msg in (((100, -1), "past the end"), ((0, 101), "past the end"), ((5, 5), "empty"),
                     ((7, 3), "empty"), ((-1, 4), "negative")):
        with pytest.raises(InveError, match=msg):
            video.resolve_range(info, bad)


def test_working_size() -> None:
    assert video.working_size(640, 360, 480) == (480, 270)
    assert video.working_size(640, 480, 256) == (256, 192)
    assert video.working_size(360, 640, 480) == (270, 480)
    assert video.working_size(320, 240, 1000) == (320, 240)  # never upscales
    assert video.working_size(4000, 20, 256) == (256, 8)  # at least 8 px
    with pytest.raises(InveError):
        video.working_size(6, 100, 256)


def test_resource_checks(tmp_path: Path) -> None:
    with pytest.raises(InveError, match="--max-side"):
        video.check_resources(1000, (3840, 2160), (1920, 1080), None, ram=8 * 2**30)
    video.check_resources(100, (3840, 2160), (480, 270), None, ram=8 * 2**30)  # 4K streams fine
    with pytest.raises(InveError, match="free"):
        video.check_resources(10**7, (3840, 2160), (64, 36), tmp_path / "frames.npy", ram=2**50)


def test_movie_round_trip(tmp_path: Path) -> None:
    # A smooth moving pattern (noise would not survive any lossy codec) with odd sizes.
    yy, xx = np.mgrid[0:61, 0:83].astype(np.float32)
    frames = []
    for t in range(10):
        r = 127 + 100 * np.sin((xx + 3 * t) / 9.0)
        g = 127 + 100 * np.cos((yy - 2 * t) / 7.0)
        b = np.full_like(r, 40 + 15 * t)
        frames.append(np.stack([r, g, b], -1).astype(np.uint8))
    out = tmp_path / "clip.mp4"
    video.write_movie(out, iter(frames), fps=12.5)
    info = video.probe(out)
    assert (info.n_frames, info.width, info.height) == (10, 83, 61)  # odd sides kept exactly (4:4:4)
    assert info.fps == pytest.approx(12.5)
    back = video.load_clip(out, 0, 10, (83, 61), None).astype(np.float32)
    err = np.abs(back - np.stack(frames).astype(np.float32))
    assert err.mean() < 2.0 and np.percentile(err, 99) < 8  # crf 17: visually lossless
    with pytest.raises(InveError, match="exists"):
        video.write_movie(out, frames, fps=12.5)
    before = out.stat().st_mtime_ns
    video.write_movie(out, frames[:3], fps=12.5, overwrite=True)
    assert video.probe(out).n_frames == 3 and out.stat().st_mtime_ns >= before
    with pytest.raises(InveError, match="must end in"):
        video.write_movie(tmp_path / "clip.gif", frames, fps=10)
    # no temp files; the movie's checksum sits in its sidecar (the output rule)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".clip.mp4.inve", "clip.mp4"]
    # a movie the user replaced is never overwritten, even with overwrite=True
    out.write_bytes(b"user's own cut")
    with pytest.raises(InveError, match="changed"):
        video.write_movie(out, frames, fps=12.5, overwrite=True)
    assert out.read_bytes() == b"user's own cut"


def test_frame_source_decodes_without_probing_and_checks_the_source(tmp_path: Path, monkeypatch) -> None:
    """A project's frames come from its movie without counting it first (a whole decode),
    the same bytes as load_clip; a frame just behind the decoder is not decoded again from the
    start; a source that changed size or got shorter is one clear error."""
    frames = [np.full((48, 64, 3), 20 * t, np.uint8) for t in range(8)]
    video.write_movie(tmp_path / "a.mp4", iter(frames), fps=12)
    ref = video.load_clip(tmp_path / "a.mp4", 0, 8, (64, 48), None)
    monkeypatch.setattr(video, "_probe_movie", lambda path: pytest.fail("FrameSource probed the movie"))
    src = video.FrameSource(tmp_path / "a.mp4", list(range(2, 8)), (64, 48))
    assert np.array_equal(src[0], ref[2]) and np.array_equal(src[3], ref[5]) and src.decoded == 4
    assert np.array_equal(src[2], ref[4]) and np.array_equal(src[1], ref[3]) and src.decoded == 4
    assert np.array_equal(src[5], ref[7]) and np.array_equal(src.clone()[0], ref[2])
    with pytest.raises(InveError, match="is 64x48 now"):
        video.FrameSource(tmp_path / "a.mp4", [0, 1], (80, 48))[0]
    with pytest.raises(InveError, match="ended after 8 frames"):
        video.FrameSource(tmp_path / "a.mp4", list(range(12)), (64, 48))[9]

    # an ffmpeg that fails partway: its last word is in the error; one that writes a frame but
    # never describes its stream: stopped (not a stall on its full pipe), one clear error
    pipe = video._RawFrames(video.VideoInfo(str(tmp_path / "a.mp4"), 8, 64, 48, 12.0), 1)
    assert pipe.read_into(np.empty(pipe.shape, np.uint8))
    header = pipe._logged()
    pipe.close()
    (tmp_path / "header.txt").write_text(header)
    fake = tmp_path / "ffmpeg"
    fake.write_text(f"#!{sys.executable}\nimport sys, time\n"
                    f"mode = [a for a in sys.argv if a.endswith('.mp4')][0]\n"  # (the clip: which way to fail)
                    f"if mode.endswith('partway.mp4'):\n"
                    f"    sys.stderr.write(open({str(tmp_path / 'header.txt')!r}).read()); sys.stderr.flush()\n"
                    f"    sys.stdout.buffer.write(bytes(3 * 64 * 48 * 3)); sys.stdout.flush()\n"
                    f"    sys.stderr.write('Error while decoding stream #0:0: boom\\n'); sys.exit(1)\n"
                    f"sys.stdout.buffer.write(bytes(64 * 48 * 3)); sys.stdout.flush(); time.sleep(60)\n")
    fake.chmod(0o755)
    monkeypatch.setattr(video, "_ffmpeg_exe", lambda: str(fake))
    monkeypatch.setattr(video._RawFrames, "HEADER_WAIT_S", 0.5)
    info = video.VideoInfo(str(tmp_path / "partway.mp4"), 8, 64, 48, 12.0)
    with pytest.raises(InveError, match=r"ended after 3 frames; expected at least 8 \(ffmpeg: Error while decoding"):
        list(video.iter_frames(info.path, 0, 8, info=info))
    t0 = time.monotonic()
    info = video.VideoInfo(str(tmp_path / "silent.mp4"), 8, 64, 48, 12.0)
    with pytest.raises(InveError, match="cannot decode .*silent.mp4"):
        list(video.iter_frames(info.path, 0, 8, info=info))
    assert time.monotonic() - t0 < 5


def test_even_sized_movie_stays_420(tmp_path: Path) -> None:
    frames = [np.full((48, 64, 3), 30 * t, np.uint8) for t in range(3)]
    assert video.movie_pixel_format(64, 48) == "yuv420p" and video.movie_pixel_format(101, 77) == "yuv444p"
    video.write_movie(tmp_path / "even.mov", frames, fps=24)
    info = video.probe(tmp_path / "even.mov")
    assert (info.width, info.height, info.n_frames) == (64, 48, 3)


def test_png_sequence(tmp_path: Path) -> None:
    img = np.zeros((8, 9, 3), np.uint8)
    img[2, 3] = (10, 20, 30)
    out = tmp_path / "pngs"
    paths = video.write_png_sequence(out, ((i, img) for i in (40, 41, 42)))
    assert [p.name for p in paths] == ["0040.png", "0041.png", "0042.png"]
    np.testing.assert_array_equal(iio.imread(paths[1]), img)
    # Rewriting a folder inve wrote replaces its sequence (stale frames go away).
    paths = video.write_png_sequence(out, ((i, img) for i in (7, 8)))
    assert sorted(p.name for p in out.glob("*.png")) == ["0007.png", "0008.png"]
    wide = video.write_png_sequence(tmp_path / "wide", [(5, img), (12345, img)], last_index=12345)
    assert [p.name for p in wide] == ["00005.png", "12345.png"]
    # A user's folder is never written into.
    user = tmp_path / "user"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(InveError, match="did not write"):
        video.write_png_sequence(user, [(0, img)])
    assert sorted(p.name for p in user.iterdir()) == ["holiday.jpg"]
    assert (out / fsutil.OUTPUT_MARKER).exists()


def test_rotated_phone_video(tmp_path: Path) -> None:
    """A movie with display rotation 90 degrees arrives upright: width and height swap."""
    plain, rot = tmp_path / "plain.mp4", tmp_path / "rot.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=64x48:r=25", "-frames:v", "6", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", str(plain))
    _ffmpeg("-display_rotation", "90", "-i", str(plain), "-c", "copy", str(rot))
    info = video.probe(rot)
    assert (info.width, info.height, info.n_frames) == (48, 64, 6)
    upright = video.load_clip(rot, 0, 6, (48, 64), None)
    flat = video.load_clip(plain, 0, 6, (64, 48), None)
    # rotating the stored picture by 90 degrees (either way) gives the upright frame
    diffs = [np.abs(np.rot90(flat[0], k).astype(int) - upright[0]).mean() for k in (1, 3)]
    assert min(diffs) < 3.0


def test_load_progress_and_cancel(tmp_path: Path) -> None:
    import io
    import json

    from core.errors import Cancelled
    from core.progress import Progress

    frames = _write_folder(tmp_path / "seq", 6)
    stream = io.StringIO()
    progress = Progress("json", stream=stream, min_interval=0.0)
    video.load_clip(tmp_path / "seq", 0, 6, (20, 15), None, progress)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["step"] for e in events if e["stage"] == "load"][-1] == 6
    assert all(e["total"] == 6 for e in events)

    progress = Progress("none")
    progress.cancel.cancel()
    out = tmp_path / "proj" / "frames.npy"
    with pytest.raises(Cancelled):
        video.load_clip(tmp_path / "seq", 0, 6, (40, 30), out, progress)
    assert list((tmp_path / "proj").iterdir()) == []  # neither frames.npy nor a temp file
    # the cancelled load left the source images as they were
    assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == sorted(f"frame{i}.png" for i in range(6))
    np.testing.assert_array_equal(iio.imread(tmp_path / "seq" / "frame3.png"), frames[3])

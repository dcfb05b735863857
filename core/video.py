"""Video in and out: probing, frame ranges, streaming decode, movie and PNG writing.

A source is a movie file (decoded by the ffmpeg that imageio-ffmpeg ships) or a folder of
images sorted by name. Movies are decoded at a *constant* frame rate (ffmpeg ``-fps_mode
cfr``), both when counting and when reading, so that frame ``i`` here is the frame a
timeline (Blender's VSE) shows at ``i / fps`` even for files with irregular timestamps, and
so that the count from :func:`probe` is exactly the number of frames :func:`load_clip` gets.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np

from core import fsutil
from core.errors import InveError
from core.progress import Progress

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MOVIE_EXTENSIONS: tuple[str, ...] = (".mp4", ".mov", ".mkv")
FOLDER_FPS = 24.0  # an image folder carries no frame rate; Blender's default scene rate
MIN_SIDE = 8
# ffmpeg's default YUV->RGB path rounds down (about -1 level on every channel) and upsamples
# chroma crudely; accurate rounding with bilinear chroma halves the round-trip error for ~50%
# more decode time.
SWS_FLAGS = "accurate_rnd+full_chroma_int+bilinear"
DEFAULT_CLIP = "bbb_excerpt.mp4"
# Memory per working pixel per frame at the peak: training holds uint8 RGB (3), float16 flow
# both ways (8), consistency flags (2) and a mask (1) plus the auto-mask passes (~6); baking
# holds the frames (3) and float32 uv maps for two layers and alpha (20) once training data is freed.
WORKING_BYTES_PER_PIXEL = 24
RAM_FRACTION = 1.0 / 3.0
DISK_MARGIN = 64 * 2**20


class _RotationNotice(logging.Filter):
    """imageio-ffmpeg warns whenever a phone video's rotation swaps width and height; we
    expect that (sizes come from the rotated output), so the warning would only confuse."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is different from the source frame size" not in record.getMessage()


logging.getLogger("imageio_ffmpeg").addFilter(_RotationNotice())


@dataclass
class VideoInfo:
    """What a source is: its path, frame count, size (W, H) and frame rate.

    From :func:`probe`: the exact frame count and rate. Built by :class:`FrameSource` for a
    movie it does not probe: ``n_frames`` is only the frames it needs (the project's last
    frame + 1; the decoder says so if the movie is shorter) and ``fps`` a placeholder
    (``FOLDER_FPS``)."""

    path: str
    n_frames: int
    width: int
    height: int
    fps: float

    @property
    def is_folder(self) -> bool:
        return Path(self.path).is_dir()


def default_clip() -> Path:
    """The bundled default clip (an excerpt of Big Buck Bunny, CC-BY 3.0; see core/data/CREDITS.md)."""
    path = Path(__file__).resolve().parent / "data" / DEFAULT_CLIP
    if not path.is_file():
        raise InveError(f"the bundled clip is missing ({path}); reinstall inve")
    return path


# ---------------------------------------------------------------------------------------
# probing
# ---------------------------------------------------------------------------------------
def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _popen_kwargs() -> dict:
    """Keep ffmpeg out of our console's Ctrl-C group on Windows (we cancel it ourselves)."""
    if sys.platform.startswith("win"):
        return {"creationflags": subprocess.CREATE_NO_WINDOW}  # type: ignore[attr-defined]
    return {}


def natural_key(name: str) -> list:
    """Sort key that orders ``frame2.png`` before ``frame10.png`` (and 0002 before 0010 as usual)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted by name with numbers compared as numbers."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def _image_size(path: Path) -> tuple[int, int]:
    """(W, H) from the file header only (PIL opens lazily), so probing 1000 images stays fast."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InveError(f"cannot read image {path}: {exc}") from None


def _probe_folder(folder: Path) -> VideoInfo:
    files = list_images(folder)
    if not files:
        raise InveError(f"folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    sizes: dict[tuple[int, int], Path] = {}
    for f in files:
        sizes.setdefault(_image_size(f), f)
        if len(sizes) > 1:
            (s0, f0), (s1, f1) = list(sizes.items())[:2]
            raise InveError(f"images in {folder} differ in size: {f0.name} is {s0[0]}x{s0[1]}, "
                            f"{f1.name} is {s1[0]}x{s1[1]}")
    (w, h), = sizes.keys()
    return VideoInfo(str(folder), len(files), w, h, FOLDER_FPS)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "ffmpeg gave no reason"


def _probe_movie(path: Path) -> VideoInfo:
    """Count frames by decoding with the null muxer (exact; metadata counts can be absent or wrong)."""
    cmd = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-i", str(path),
           "-map", "0:v:0?", "-fps_mode", "cfr", "-f", "null", "-", "-progress", "pipe:1"]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=3600, **_popen_kwargs())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InveError(f"cannot run ffmpeg to read {path}: {exc}") from None
    err = res.stderr.decode("utf-8", errors="replace")
    out = res.stdout.decode("utf-8", errors="replace")
    in_head, _, out_head = err.partition("\nOutput #0")
    if "Input #0" not in in_head:
        raise InveError(f"cannot read {path} as a video: {_last_line(err)}")
    video_lines = [ln for ln in in_head.splitlines() if re.search(r"Stream #\d+:\d+.*: Video:", ln)]
    if not video_lines:
        raise InveError(f"{path} has no video stream (zero frames)")
    counts = [int(m) for m in re.findall(r"^frame=\s*(\d+)", out, flags=re.M)]
    n = counts[-1] if counts else 0
    if res.returncode != 0 and n == 0:
        raise InveError(f"cannot decode {path}: {_last_line(err)}")
    if n == 0:
        raise InveError(f"{path} has zero video frames")
    from imageio_ffmpeg._parsing import parse_ffmpeg_header

    try:
        meta = parse_ffmpeg_header(err)
        width, height = (int(v) for v in meta["size"])
        fps = float(meta.get("fps") or 0.0)
    except Exception as exc:  # the header format is ffmpeg's, not ours: say so clearly
        raise InveError(f"cannot understand ffmpeg's description of {path}: {exc}") from None
    # The constant-rate output stream carries the rate the frames were counted at.
    out_video = [ln for ln in out_head.splitlines() if "Video:" in ln]
    m = re.search(r"([\d.]+) fps", out_video[0]) if out_video else None
    if m and float(m.group(1)) > 0:
        fps = float(m.group(1))
    if fps <= 0:
        fps = FOLDER_FPS
    return VideoInfo(str(path), n, width, height, fps)


_PROBED: dict[tuple[str, int, int], VideoInfo] = {}


def probe(path: str | Path) -> VideoInfo:
    """Exact frame count, size and frame rate of a movie file or an image folder.

    Counting decodes the movie once; the answer is remembered for an unchanged file (same
    path, size and modification time), so probing and then loading does not decode twice.
    """
    path = Path(path)
    if not path.exists():
        raise InveError(f"video not found: {path}")
    if path.is_dir():
        info = _probe_folder(path)
    else:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _PROBED:
            _PROBED[key] = _probe_movie(path)
        info = dataclasses.replace(_PROBED[key], path=str(path))
    if info.width < MIN_SIDE or info.height < MIN_SIDE:
        raise InveError(f"{path} is {info.width}x{info.height}; frames must be at least {MIN_SIDE} px on each side")
    return info


def resolve_range(info: VideoInfo, frames: tuple[int, int] | None) -> tuple[int, int]:
    """Turn ``--frames START:END`` (half-open, END=-1: to the end) into a checked (start, end)."""
    n = info.n_frames
    if frames is None:
        return 0, n
    start, end = int(frames[0]), int(frames[1])
    if end == -1:
        end = n
    if start < 0:
        raise InveError(f"--frames start {start} is negative")
    if start >= n:
        raise InveError(f"--frames start {start} is past the end: {info.path} has {n} frames (0..{n - 1})")
    if end > n:
        raise InveError(f"--frames end {end} is past the end: {info.path} has {n} frames (END may be at most {n})")
    if end <= start:
        raise InveError(f"--frames {start}:{end} is empty")
    return start, end


def working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(w, h) that keeps the aspect ratio, fits ``max_side``, never upscales, and is >= 8 px."""
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InveError(f"frames of {width}x{height} are too small; at least {MIN_SIDE} px per side")
    if max_side < MIN_SIDE:
        raise InveError(f"--max-side {max_side} is too small; use at least {MIN_SIDE}")
    scale = min(1.0, max_side / max(width, height))
    w = min(width, max(MIN_SIDE, int(round(width * scale))))
    h = min(height, max(MIN_SIDE, int(round(height * scale))))
    return w, h


# ---------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------
def to_rgb8(img: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Any decoded image (gray, gray+alpha, RGB(A)/BGR(A); uint8/uint16/float) -> RGB uint8 HxWx3.

    Alpha is dropped (a video frame is opaque); 16-bit is rounded to 8-bit; floats are
    taken as 0..1.
    """
    a = np.asarray(img)
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        a = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    else:
        info = np.iinfo(a.dtype)
        a = ((a.astype(np.float64) - info.min) / (info.max - info.min) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise InveError(f"unsupported image layout {a.shape}")
    c = a.shape[2]
    if c in (1, 2):
        return np.repeat(a[:, :, :1], 3, axis=2)
    rgb = a[:, :, :3]
    if bgr:
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def read_image(path: Path) -> np.ndarray:
    """Decode an image file with OpenCV (16-bit aware; works with non-ASCII paths on Windows)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise InveError(f"cannot read image {path}: {exc}") from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise InveError(f"cannot decode image {path}")
    return img


def _iter_folder(info: VideoInfo, start: int, end: int) -> Iterator[np.ndarray]:
    files = list_images(Path(info.path))
    if len(files) != info.n_frames:
        raise InveError(f"{info.path} changed while reading: {len(files)} images, expected {info.n_frames}")
    for f in files[start:end]:
        img = to_rgb8(read_image(f), bgr=True)
        if img.shape[:2] != (info.height, info.width):
            raise InveError(f"{f.name} is {img.shape[1]}x{img.shape[0]}, expected {info.width}x{info.height}")
        yield img


class _RawFrames:
    """One ffmpeg process decoding a movie's frames ``0..end-1`` to RGB24, each read straight
    into an array the caller gives (:meth:`read_into`).

    Why not ``imageio_ffmpeg.read_frames``: it hands each frame over as a new ``bytes``
    (gathered from 64 KB pipe reads) that every reader then copied again into its own array,
    and a thread of its own caught ffmpeg's log, polled every 10 ms at the start. An edit
    pass decodes the clip in two threads of the process that renders (the shared frames of
    the workers, the seams' refinement): those copies were CPU the busy cores paid twice.
    Here the pipe is widened (1 MB where Linux allows), frames land with ``readinto`` in
    their final array, and ffmpeg's log goes to a temporary file, read once to check the
    frame size (the stream header precedes the first frame) and to word errors. The
    command is ``read_frames``'s, so the pixels are the same bytes.
    """

    PIPE_BYTES = 1 << 20
    #: seconds to wait for ffmpeg's stream description once a frame came without it (ffmpeg's
    #: threads may log it a moment after the first frame), or for ffmpeg to end after the pipe
    #: closed, before it is stopped and the read fails with its last word
    HEADER_WAIT_S = 5.0

    def __init__(self, info: VideoInfo, end: int, threads: int = 0) -> None:
        import tempfile  # noqa: PLC0415

        self.info = info
        self.shape = (info.height, info.width, 3)
        self.nbytes = info.height * info.width * 3
        self._checked = False
        # ffmpeg's log. Where os.pread is missing (Windows) a seek + read on the handle ffmpeg
        # writes through would move its offset: a named file, read through a handle of our
        # own (and removed at close: Windows opens a self-deleting temporary file only once)
        self._log_path: str | None = None
        if hasattr(os, "pread"):
            self._log = tempfile.TemporaryFile()
        else:
            self._log = tempfile.NamedTemporaryFile(prefix="inve-ffmpeg-", suffix=".log", delete=False)
            self._log_path = self._log.name
        cmd = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-threads", str(int(threads)), "-i", info.path,
               "-pix_fmt", "rgb24", "-vcodec", "rawvideo", "-f", "image2pipe",
               "-map", "0:v:0", "-fps_mode", "cfr", "-frames:v", str(int(end)), "-sws_flags", SWS_FLAGS, "-"]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
                                          bufsize=0, **_popen_kwargs())
        except OSError as exc:
            self._close_log()
            raise InveError(f"cannot run ffmpeg to read {info.path}: {exc}") from None
        self._out = self._proc.stdout
        if sys.platform.startswith("linux"):
            import fcntl  # noqa: PLC0415

            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(self._out.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), self.PIPE_BYTES)

    def _logged(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            fd = self._log.fileno()
            if hasattr(os, "pread"):  # leaves the offset ffmpeg writes at alone
                return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", errors="replace")
            with open(self._log_path or "", "rb") as fh:  # a handle of our own (see __init__)
                return fh.read().decode("utf-8", errors="replace")
        return ""

    def _close_log(self) -> None:
        with contextlib.suppress(OSError):
            self._log.close()
        if self._log_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._log_path)

    def _wait(self, until: Callable[[], bool]) -> bool:
        """Wait (at most HEADER_WAIT_S) until ``until()`` or ffmpeg has ended; True if
        ``until()``. ffmpeg still running then is stopped: it may sit on a full pipe."""
        deadline = time.monotonic() + self.HEADER_WAIT_S
        while not until():
            if self._proc.poll() is not None:
                return until()
            if time.monotonic() > deadline:
                self._stop()
                return until()
            time.sleep(0.005)
        return True

    def _stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)

    def failure(self) -> str:
        """(After the frames ended early) ffmpeg's last log line where it failed, as
        ``" (ffmpeg: ...)"``; ``""`` where it ended well (the movie is only shorter)."""
        self._wait(lambda: False)  # its output is closed: it is ending
        code = self._proc.poll()
        return f" (ffmpeg: {_last_line(self._logged())})" if code not in (0, None) else ""

    def _check(self) -> None:
        """The output stream's frame size is the one frames are read at (the header is
        written before the first frame, or -- ffmpeg's threads -- a moment after it)."""
        from imageio_ffmpeg._parsing import parse_ffmpeg_header  # noqa: PLC0415

        if not self._wait(lambda: "Output #0" in self._logged()):
            # it failed before writing a frame (its last word), or wrote frames it never described
            raise InveError(f"cannot decode {self.info.path}: {_last_line(self._logged())}")
        text = self._logged()
        try:
            w, h = (int(v) for v in parse_ffmpeg_header(text)["size"])
        except Exception as exc:  # the header format is ffmpeg's, not ours: say so clearly
            raise InveError(f"cannot understand ffmpeg's description of {self.info.path}: {exc}") from None
        if (w, h) != (self.info.width, self.info.height):
            raise InveError(f"{self.info.path} is {w}x{h} now, expected {self.info.width}x{self.info.height} "
                            "(it changed since it was read)")
        self._checked = True

    def read_into(self, out: np.ndarray) -> bool:
        """Fill ``out`` (uint8 [H, W, 3], C-contiguous) with the next frame; False at the end."""
        view = memoryview(out).cast("B")
        got = 0
        while got < self.nbytes:
            n = self._out.readinto(view[got:])
            if not n:
                break
            got += n
        if not self._checked:
            self._check()
        if got == 0:
            return False
        if got < self.nbytes:
            raise InveError(f"cannot decode {self.info.path}: it ended inside a frame{self.failure()}")
        return True

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()  # stopped early: nothing of its output is wanted any more
        with contextlib.suppress(OSError):
            self._out.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        self._close_log()


def _iter_movie(info: VideoInfo, start: int, end: int, progress: Progress | None,
                into: Callable[[int], np.ndarray] | None = None, threads: int = 0) -> Iterator[np.ndarray]:
    """Frames ``start..end-1``, each a new array (``into(i)``: the array to read frame i into)."""
    pipe = _RawFrames(info, end, threads)
    try:
        scratch = np.empty(pipe.shape, np.uint8)  # the frames before start: decoded, not kept
        for i in range(end):
            out = scratch if i < start else (into(i) if into is not None else np.empty(pipe.shape, np.uint8))
            if not pipe.read_into(out):
                raise InveError(f"{info.path} ended after {i} frames; expected at least {end}{pipe.failure()}")
            if i >= start:
                yield out
            elif progress is not None:
                progress.cancel.raise_if_cancelled()
    finally:
        pipe.close()


def iter_frames(path: str | Path, start: int, end: int, info: VideoInfo | None = None,
                progress: Progress | None = None,
                into: Callable[[int], np.ndarray] | None = None, threads: int = 0) -> Iterator[np.ndarray]:
    """Source-resolution RGB uint8 frames ``start..end-1``, one at a time, each an array of
    its own (the caller may keep it). ``into(i)``: for a movie, the array frame i is decoded
    into (a shared-memory slot: no copy); an image folder's frames come as they are read.
    ``threads``: ffmpeg's decoding threads (0: its choice, one per core and more)."""
    info = info or probe(path)
    start, end = resolve_range(info, (start, end))
    if info.is_folder:
        return _iter_folder(info, start, end)
    return _iter_movie(info, start, end, progress, into, threads)


class FrameSource:
    """A project's source frames by project index, decoded on demand at source resolution.

    Why: a project keeps no copy of the source (at 1080p that copy was most of its size).
    Rendering walks the frames in order, so the decoder stays open and moves forward; a
    request behind it (or far ahead) restarts decoding there. The last ``cache_frames``
    frames stay in a small LRU cache (an interactive session re-renders the frame shown).
    Frames are read-only uint8 [H, W, 3]. ``np.asarray(source)`` decodes the whole clip
    (tests and benchmarks only).
    """

    #: a request this many frames ahead of the decoder restarts it instead of decoding through
    MAX_SKIP = 48

    def __init__(self, path: str | Path, frames: list[int], size: tuple[int, int], cache_frames: int = 8) -> None:
        self.path = str(path)
        self.frames = [int(f) for f in frames]
        if self.frames != list(range(self.frames[0], self.frames[0] + len(self.frames))):
            raise ValueError("a project's frames are one contiguous range of source frames")
        self.W, self.H = int(size[0]), int(size[1])
        self.cache_frames = max(1, int(cache_frames))
        #: ffmpeg's decoding threads (0: its choice). A decoder that runs beside render workers
        #: (a pass's shared frames, the seams' refinement) takes 1: its frames are wanted at the
        #: workers' pace, and frame threads cost ~10 % more CPU for the same frames
        self.decode_threads = 0
        self._cache: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._decoder: Iterator[np.ndarray] | None = None
        self._next = -1  # project index the open decoder yields next
        self._info: VideoInfo | None = None
        self.decoded = 0  # frames decoded so far (how much work random access cost)
        self._lock = threading.RLock()  # one decoder: a service may render from several threads
        self._ring: FrameRing | None = None  # (a render worker) frames decoded once for all workers

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.frames), self.H, self.W, 3

    def __len__(self) -> int:
        return len(self.frames)

    def close(self) -> None:
        if self._decoder is not None and hasattr(self._decoder, "close"):
            self._decoder.close()  # type: ignore[union-attr]
        self._decoder, self._next = None, -1

    def forget_decoder(self) -> None:
        """In a forked child: drop the parent's decoder without touching it (its pipe and process
        are the parent's) and start with a fresh lock; the next frame starts our own decoder."""
        self._decoder, self._next = None, -1
        self._lock = threading.RLock()

    def read_from(self, ring: "FrameRing | None") -> None:
        """(A render worker) take frames from ``ring`` (the one decoder of a parallel pass) as
        long as it has them: frames behind it (long gone from its slots) are decoded here."""
        self._ring = ring

    def clone(self) -> "FrameSource":
        """The same frames with a decoder of its own (another thread reads this one)."""
        twin = FrameSource(self.path, self.frames, (self.W, self.H), self.cache_frames)
        twin._info, twin.decode_threads = self._info, self.decode_threads
        return twin

    def _source_info(self) -> VideoInfo:
        """What decoding needs to know of the source. A movie is not probed: counting its frames
        decodes it whole (0.5 s of ffmpeg for box.mp4's 458 frames, on every pass); the
        project knows its frames and size, and the decoder checks the size it decodes at
        and says so if the movie ends before the project's last frame."""
        path = Path(self.path)
        if not path.exists():
            raise InveError(f"the source video {self.path} is gone (moved or deleted); put it back "
                            "to render this project's frames")
        if path.is_dir():
            info = probe(path)
            if (info.width, info.height) != (self.W, self.H):
                raise InveError(f"the source video {self.path} is {info.width}x{info.height} now, "
                                f"the project was made from {self.W}x{self.H}")
            return info
        return VideoInfo(str(path), self.frames[-1] + 1, self.W, self.H, FOLDER_FPS)

    def _start(self, t: int, into: Callable[[int], np.ndarray] | None = None) -> None:
        self.close()
        if self._info is None:
            self._info = self._source_info()
        end = self.frames[-1] + 1
        self._decoder = iter_frames(self.path, self.frames[t], end, info=self._info, into=into,
                                    threads=self.decode_threads)
        self._next = t

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # source[t, rows, cols]
            return self[key[0]][key[1:]]
        with self._lock:
            return self._get(int(key))

    def _get(self, t: int) -> np.ndarray:
        if t < 0:
            t += len(self.frames)
        if not 0 <= t < len(self.frames):
            raise IndexError(f"frame {t} outside 0..{len(self.frames) - 1}")
        if t in self._cache:
            self._cache.move_to_end(t)
            return self._cache[t]
        shared = self._ring.read(t) if self._ring is not None else None
        if shared is not None:
            return self._keep(t, shared)
        if self._decoder is None or not self._next <= t <= self._next + self.MAX_SKIP:
            self._start(t)
        img: np.ndarray | None = None
        while self._next <= t:
            want = self.frames[self._next]
            try:
                img = next(self._decoder)  # type: ignore[arg-type]
            except StopIteration:
                self.close()
                raise InveError(f"the source video {self.path} ended before frame {want}; "
                                "it changed since the project was made") from None
            except InveError:
                self.close()
                raise
            self.decoded += 1
            if self._next < t and t - self._next < self.cache_frames:
                # decoded on the way to t (each frame is an array of its own): asked for next,
                # a frame just behind t would otherwise restart the decoder from the clip's start
                self._keep(self._next, img)
            self._next += 1
        assert img is not None
        return self._keep(t, img)

    def _keep(self, t: int, img: np.ndarray) -> np.ndarray:
        img.flags.writeable = False
        self._cache[t] = img
        while len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)
        return img

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(len(self.frames)):
            yield self[t]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        for t in range(len(self.frames)):
            out[t] = self[t]
        return out if dtype is None else out.astype(dtype)


class FrameRing:
    """A parallel pass's frames, decoded ONCE, in order, into shared memory that every render
    worker reads.

    Why: each forked render worker used to run its own decoder through the whole clip (its
    blocks lie between the other workers' blocks, and a decoder cannot skip ahead without
    decoding: box.mp4 has two keyframes in 458 frames), so a pass on two workers decoded
    the clip twice: ~1.1 s of ffmpeg and ~0.3 s of pipe reading each on box. Here a thread of
    the process that forked the workers decodes, and each worker reads every frame in order
    (copying only those it renders or keeps for refinement's chain links).

    ``slots`` frames live in an anonymous shared mapping (made before the fork, inherited).
    Per reader two semaphores: ``avail`` (frames decoded it has not read) and ``space``
    (slots it has released): the decoder writes frame t only after every reader has passed
    frame t - slots, so memory stays ``slots`` frames whatever the shot's length. A reader
    that has rendered its last block leaves (:meth:`leave`) and is not waited for any more.
    The workers read frames in order (a worker reads the frames before each of its blocks,
    core/edits/parallel.py), so a reader waits only for frames the decoder will reach.
    """

    def __init__(self, source: "FrameSource", readers: int, slots: int) -> None:
        import mmap  # noqa: PLC0415
        import multiprocessing as mp  # noqa: PLC0415

        self.source = source
        self.n = len(source)
        self.slots = max(2, min(int(slots), self.n))
        H, W = source.H, source.W
        self._mem = mmap.mmap(-1, self.slots * H * W * 3)  # MAP_SHARED | MAP_ANONYMOUS: shared by fork
        self._buf = np.frombuffer(self._mem, np.uint8).reshape(self.slots, H, W, 3)
        ctx = mp.get_context("fork")
        self._avail = [ctx.Semaphore(0) for _ in range(readers)]
        self._space = [ctx.Semaphore(self.slots) for _ in range(readers)]
        self._failed = ctx.Value("b", 0, lock=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what stopped the decoder (raised by the pass)
        self._reader: int | None = None
        self._pos = 0  # (in a reader) the next frame it reads

    # -- the decoding side (the process that forked the readers) ---------------------------
    def start(self) -> None:
        """Decode on a thread of this process (call after forking the readers)."""
        self._thread = threading.Thread(target=self._decode, name="inve-frame-ring", daemon=True)
        self._thread.start()

    def _decode(self) -> None:
        dec = self.source.clone()
        dec.decode_threads = 1  # paced by the workers (FrameSource.decode_threads)
        try:
            dec._start(0, into=lambda i: self._buf[(i - dec.frames[0]) % self.slots])  # no copy for a movie
            for t in range(self.n):
                for sem in self._space:
                    while not sem.acquire(timeout=0.2):
                        if self._stop.is_set():
                            return
                if self._stop.is_set():
                    return
                try:
                    img = next(dec._decoder)  # type: ignore[arg-type]
                except StopIteration:
                    raise InveError(f"the source video {self.source.path} ended before frame "
                                    f"{self.source.frames[t]}; it changed since the project was made") from None
                slot = self._buf[t % self.slots]
                if img.ctypes.data != slot.ctypes.data:  # (an image folder's frames come as they are read)
                    slot[...] = img
                for sem in self._avail:
                    sem.release()
        except BaseException as exc:  # noqa: BLE001 - raised by the pass (render_parallel)
            self.error = exc
            self._failed.value = 1
            for sem in self._avail:  # wake the readers: they stop, the pass reports this error
                sem.release()
        finally:
            dec.close()

    def close(self) -> None:
        """Stop decoding (the pass ended or was stopped) and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    # -- the reading side (a forked render worker) ---------------------------------------------
    def join(self, reader: int) -> None:
        """This process is reader ``reader`` (0 <= reader < readers), at frame 0."""
        self._reader, self._pos = int(reader), 0

    def read(self, t: int) -> np.ndarray | None:
        """Frame t (a copy this process owns), reading past the frames before it; None if the
        ring has passed t (the caller decodes it itself) or this process is no reader."""
        r = self._reader
        if r is None or t < self._pos or t >= self.n:
            return None
        img = None
        while self._pos <= t:
            self._avail[r].acquire()
            if self._failed.value:
                raise InveError("decoding the source video failed (the pass reports why)")
            if self._pos == t:
                img = np.array(self._buf[t % self.slots])
            self._space[r].release()
            self._pos += 1
        return img

    def leave(self) -> None:
        """This reader reads nothing more: the decoder stops waiting for it."""
        r = self._reader
        if r is None:
            return
        self._reader = None
        for _ in range(self.n + self.slots):
            self._space[r].release()


def available_ram() -> int | None:
    """Bytes of memory available to a new allocation, or None where the OS does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if sys.platform.startswith("win"):
        import ctypes

        class MemoryStatus(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

        stat = MemoryStatus()
        stat.dwLength = ctypes.sizeof(MemoryStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(stat)):  # type: ignore[attr-defined]
            return int(stat.ullAvailPhys)
        return None
    try:  # macOS and other POSIX: total physical memory is the best cheap bound
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def check_resources(n_frames: int, source_size: tuple[int, int], work_size: tuple[int, int],
                    frames_npy: Path | None, ram: int | None = None) -> None:
    """Refuse early, with advice, when the clip cannot fit on disk or in memory."""
    w, h = work_size
    if frames_npy is not None:
        need = n_frames * source_size[0] * source_size[1] * 3 + DISK_MARGIN
        folder = Path(frames_npy).parent
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if need > free:
            raise InveError(
                f"the {n_frames} source frames need {_fmt_bytes(need)} in {folder} but only "
                f"{_fmt_bytes(free)} is free; free some space or use fewer --frames")
    ram = available_ram() if ram is None else ram
    if ram is not None:
        need = n_frames * w * h * WORKING_BYTES_PER_PIXEL
        if need > ram * RAM_FRACTION:
            raise InveError(
                f"{n_frames} frames at {w}x{h} need about {_fmt_bytes(need)} of memory for "
                f"preprocessing and training, more than a third of the {_fmt_bytes(ram)} available; "
                "use a smaller --max-side or fewer --frames")


def load_clip(path: str | Path, start: int, end: int, work_size: tuple[int, int],
              frames_npy: Path | None = None, progress: Progress | None = None) -> np.ndarray:
    """Decode frames ``start..end-1``; return working-size frames uint8 [T,h,w,3].

    Frames stream one at a time: the source-resolution clip is never held in RAM, only
    written (when ``frames_npy`` is given) to a memory-mapped ``.npy`` that replaces the
    target atomically once every frame is in.
    """
    info = probe(path)
    start, end = resolve_range(info, (start, end))
    n = end - start
    w, h = int(work_size[0]), int(work_size[1])
    check_resources(n, (info.width, info.height), (w, h), frames_npy)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    frames = iter_frames(path, start, end, info=info, progress=progress)
    same_size = (w, h) == (info.width, info.height)

    def fill(store: np.ndarray | None) -> None:
        t = -1
        for t, img in enumerate(frames):
            if store is not None:
                store[t] = img
            out[t] = img if same_size else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            if progress is not None:
                progress.update("load", t + 1, n)
        if t + 1 != n:
            raise InveError(f"{path} gave {t + 1} frames for range {start}:{end}")

    try:
        if frames_npy is None:
            fill(None)
        else:
            with fsutil.atomic_path(frames_npy, suffix=".npy") as tmp:
                store = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                                  shape=(n, info.height, info.width, 3))
                try:
                    fill(store)
                    store.flush()
                finally:
                    del store  # release the mapping before the rename (Windows needs this)
    finally:
        if hasattr(frames, "close"):
            frames.close()
    return out


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------
MOVIE_CRF = 17
# x264 "superfast" at crf 17 stays near-lossless and encodes 1080p ~5x faster than "medium"
# (the file is larger): edits of a 1080p shot reach the timeline in seconds. Measured on 40
# frames of bbb at 1080p: "veryfast" 54 ms of CPU a frame, 43.4 dB against the frames given,
# 1.4 MB; "superfast" 32 ms, 43.9 dB, 2.0 MB; "ultrafast" 18 ms, 43.1 dB, 4.1 MB. At 1080p
# the encoder was a third of the edit pass's CPU.
MOVIE_PRESET_LARGE = "superfast"
MOVIE_PRESET = "medium"  # below HD, where encoding time does not matter and veryfast loses detail
MOVIE_LARGE_PIXELS = 1280 * 720


def movie_preset(width: int, height: int) -> str:
    return MOVIE_PRESET_LARGE if width * height >= MOVIE_LARGE_PIXELS else MOVIE_PRESET


# PNG sequences: core.png's encoder (Up filter, zlib RLE level 1) on encoder threads (zlib and
# hashlib release the GIL, so encoding overlaps rendering); frames in flight are bounded so
# memory does not grow with the shot.
PNG_COMPRESS_LEVEL = 1
PNG_WRITERS = 2
PNG_IN_FLIGHT = 6


# Containers inve writes, and others a user might type that it does not: those are refused
# (they would otherwise silently become a folder of PNGs named like a movie).
OTHER_MEDIA_EXTENSIONS = (".webm", ".avi", ".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv", ".ts",
                          ".mts", ".m2ts", ".3gp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".bmp")


def output_kind(path: Path) -> str:
    """``"movie"`` or ``"folder"`` for an ``-o`` path; refuses media types inve cannot write."""
    suffix = Path(path).suffix.lower()
    if suffix in MOVIE_EXTENSIONS:
        return "movie"
    if suffix in OTHER_MEDIA_EXTENSIONS:
        raise InveError(f"{path}: inve writes movies as {', '.join(MOVIE_EXTENSIONS)} or a folder of PNGs; "
                        f"'{suffix}' is not supported (convert the result with ffmpeg)")
    return "folder"


def movie_pixel_format(width: int, height: int) -> str:
    """H.264 4:2:0 needs even sides; an odd-sized frame is encoded 4:4:4 at its exact size.

    Padding would change the picture size (a 101x77 edit would not line up over a 101x77
    source in an editor), so odd sizes keep their size and use full-resolution chroma
    (High 4:4:4 profile: Blender, ffmpeg and VLC play it; some hardware players do not).
    """
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


def check_movie_output(path: Path, overwrite: bool = False) -> None:
    """Everything that can be refused about a movie path, before any frame is rendered."""
    path = Path(path)
    if path.suffix.lower() not in MOVIE_EXTENSIONS:
        raise InveError(f"{path}: movie files must end in {', '.join(MOVIE_EXTENSIONS)}")
    if path.is_dir():
        raise InveError(f"{path} is a folder, not a movie file")
    fsutil.check_output_file(path, overwrite, "movie")


def write_movie(path: Path, frames: Iterable[np.ndarray], fps: float, overwrite: bool = False) -> None:
    """Encode frames (uint8 HxWx3) as H.264 at their exact size, near-lossless (crf 17), atomically.

    Follows the output rule (``core.fsutil``): an existing file is replaced only with
    ``overwrite`` and only while it is the unchanged movie inve wrote; the checksum of the new
    movie goes to its sidecar. Frames are consumed lazily (streaming). A destination error
    (full disk, read-only) is one line and leaves no partial movie.
    """
    import imageio_ffmpeg

    path = Path(path)
    check_movie_output(path, overwrite)
    if not fps > 0:
        raise InveError(f"cannot write a movie at {fps} frames per second")
    it = iter(frames)
    try:
        first = to_rgb8(next(it))
    except StopIteration:
        raise InveError(f"no frames to write to {path}") from None
    h, w = first.shape[:2]
    params = ["-crf", str(MOVIE_CRF), "-preset", movie_preset(w, h), "-sws_flags", SWS_FLAGS]
    if path.suffix.lower() in (".mp4", ".mov"):
        params += ["-movflags", "+faststart"]
    def failed(exc: BaseException) -> fsutil.OutputError:
        # ffmpeg died under us: almost always the destination (disk full, removed drive)
        free = shutil.disk_usage(path.parent).free
        why = "the disk is full" if free < 64 << 20 else _last_line(str(exc)) or type(exc).__name__
        return fsutil.OutputError(f"cannot write {path}: {why}; no partial movie was left")

    with fsutil.atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (w, h), fps=float(fps), codec="libx264", pix_fmt_in="rgb24",
            pix_fmt_out=movie_pixel_format(w, h), quality=None, macro_block_size=1, output_params=params,
            ffmpeg_log_level="error")
        writer.send(None)
        try:
            img = first
            i = 0
            while True:
                try:
                    writer.send(np.ascontiguousarray(img))
                except (OSError, RuntimeError) as exc:
                    raise failed(exc) from None
                try:
                    img = to_rgb8(next(it))  # the caller's frames: their errors are theirs
                except StopIteration:
                    break
                i += 1
                if img.shape[:2] != (h, w):
                    raise ValueError(f"frame {i} is {img.shape[1]}x{img.shape[0]}, the movie is {w}x{h}")
        except BaseException:
            with contextlib.suppress(Exception):
                writer.close()
            raise
        try:
            writer.close()
        except (OSError, RuntimeError) as exc:
            raise failed(exc) from None
        sha = fsutil.sha256_file(tmp)
    fsutil.record_output(path, sha)


def frame_file_name(index: int, last_index: int | None = None) -> str:
    """``0000.png`` ...: zero-padded to 4 digits, or to the width of ``last_index``."""
    digits = max(4, len(str(last_index)) if last_index is not None else 0, len(str(int(index))))
    return f"{int(index):0{digits}d}.png"


@dataclass(frozen=True)
class EncodedPNG:
    """A frame already encoded as PNG (by a render worker), with the SHA-256 of its bytes."""

    data: bytes
    sha256: str


def encode_png_frame(img: np.ndarray) -> EncodedPNG:
    """PNG bytes of one frame and their SHA-256 (encoder thread or render worker: zlib and
    hashlib release the GIL)."""
    import hashlib  # noqa: PLC0415

    from core import png  # noqa: PLC0415

    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    data = png.encode(a, PNG_COMPRESS_LEVEL)
    return EncodedPNG(data, hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class WrittenPNG:
    """A frame a render worker already encoded and wrote into the output folder under a
    temporary name (:class:`PNGFrameWriter`), with the SHA-256 of its bytes: the writer of
    the sequence only moves it into place."""

    path: str
    sha256: str

    def discard(self) -> None:
        """Remove the temporary file (the frame will not be used: the pass stopped)."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class PNGFrameWriter:
    """``encode`` for forked render workers that write their own PNGs into ``folder``.

    Why: a worker used to send every encoded PNG through a pipe to the process that forked
    it, which wrote it again: box.mp4's 458 frames (180 MB) cost that process ~2 s of CPU
    (pipe reads, temporary files, writes) while both cores were busy. Here each worker
    encodes and writes its frames under temporary names of the output rule's form
    (``.frames-TAG.inve-tmp-PID-XXXX.png``: a later run into the folder clears them once
    that pid is gone) and only
    the name and checksum go back (:class:`WrittenPNG`); :func:`write_png_sequence` moves each
    into place in frame order with the folder's checks and journal
    (``fsutil.OutputFolder.adopt``). The folder must exist when a worker writes (the
    sequence's ``begin`` made it). :meth:`sweep`, once the workers are stopped, removes what
    never landed (a cancel, an error: frames rendered past the stop)."""

    def __init__(self, folder: Path) -> None:
        import secrets  # noqa: PLC0415

        self.folder = Path(folder)
        # (the pid of the process that runs the pass: its workers end with it)
        self.prefix = f".frames-{secrets.token_hex(4)}{fsutil.tmp_tag()}"
        self.mode = 0o666 & ~fsutil._umask()  # mkstemp makes 0600; files get normal permissions

    def __call__(self, img: np.ndarray) -> WrittenPNG:
        import tempfile  # noqa: PLC0415

        enc = encode_png_frame(img)
        try:
            fd, tmp = tempfile.mkstemp(prefix=self.prefix, suffix=".png", dir=self.folder)
        except OSError as exc:
            raise fsutil.output_error(self.folder, exc) from None
        try:
            try:
                view = memoryview(enc.data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, self.mode)
            finally:
                os.close(fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise fsutil.output_error(self.folder / Path(tmp).name, exc) from None
            raise
        return WrittenPNG(tmp, enc.sha256)

    def sweep(self) -> list[str]:
        """Remove this writer's temporary files still in the folder (call once no worker
        writes any more); returns their names."""
        gone = []
        with contextlib.suppress(OSError):
            for p in self.folder.glob(self.prefix + "*"):
                with contextlib.suppress(OSError):
                    p.unlink()
                    gone.append(p.name)
        return gone


@contextlib.contextmanager
def stopped_then_swept(stream: Any, writer: "PNGFrameWriter | None") -> Iterator[Any]:
    """Use ``stream`` (the frames of render workers, or any generator) and, however that
    ends, close it -- the workers stop: nothing is written after that -- and only then sweep
    ``writer``'s temporary files (frames written past a stop, never moved into place)."""
    try:
        yield stream
    finally:
        try:
            stream.close()
        finally:
            if writer is not None:
                writer.sweep()


def write_png_sequence(folder: Path, frames: Iterable[tuple[int, np.ndarray]],
                       last_index: int | None = None,
                       on_written: Callable[[int, Path], None] | None = None) -> list[Path]:
    """Write ``(source_frame_index, image)`` pairs as ``folder/0000.png`` ..., streaming.

    Names are zero-padded to 4 digits, or to the width of ``last_index`` when that is
    larger, so they sort by name. The folder follows the output rule (``core.fsutil``): it
    must be new, empty or one inve wrote, and a file there is replaced only while unchanged.
    While the sequence is written the folder's marker says it is incomplete (and which
    frames have landed); an interrupted run leaves it so, and the next run replaces it.
    Numbered PNGs of an earlier run that this run did not rewrite are removed (if unchanged),
    so the folder holds exactly this sequence. ``on_written(index, path)`` is called as soon
    as each PNG is in place, for callers that stream frames onwards. An image may come already
    encoded (:class:`EncodedPNG`, from a render worker; it is written as it is) or already
    written into ``folder`` under a temporary name (:class:`WrittenPNG`, from a
    :class:`PNGFrameWriter` in a render worker; it is moved into place, or removed if the
    run stops first).
    """
    from collections import deque  # noqa: PLC0415
    from concurrent.futures import Future, ThreadPoolExecutor  # noqa: PLC0415

    out = fsutil.OutputFolder(folder, "output folder").begin()
    written: list[Path] = []

    ready = (EncodedPNG, WrittenPNG)

    def land(index: int, fut: Future | EncodedPNG | WrittenPNG) -> None:
        name = frame_file_name(index, last_index)
        if isinstance(fut, WrittenPNG):
            p = out.adopt(name, fut.path, fut.sha256)
        else:
            enc = fut if isinstance(fut, EncodedPNG) else fut.result()
            p = out.write_bytes(name, enc.data, enc.sha256)
        written.append(p)
        if on_written is not None:
            on_written(index, p)

    try:
        # PNG_WRITERS threads encode and hash while the next frames render; files land (and
        # the folder's bookkeeping is touched) on this thread only, in order. At most
        # PNG_IN_FLIGHT frames wait, and a failed write stops the run at the next frame.
        with ThreadPoolExecutor(max_workers=PNG_WRITERS, thread_name_prefix="inve-png") as pool:
            pending: deque[tuple[int, Future | EncodedPNG | WrittenPNG]] = deque()
            try:
                for index, img in frames:
                    if int(index) < 0:
                        if isinstance(img, WrittenPNG):
                            img.discard()
                        raise ValueError(f"negative frame index {index}")
                    pending.append((int(index), img if isinstance(img, ready) else pool.submit(encode_png_frame, img)))
                    while len(pending) > PNG_IN_FLIGHT or (pending and (isinstance(pending[0][1], ready)
                                                                        or pending[0][1].done())):
                        land(*pending.popleft())
                while pending:
                    land(*pending.popleft())
            finally:
                for _, fut in pending:
                    if isinstance(fut, WrittenPNG):
                        fut.discard()
                    elif not isinstance(fut, EncodedPNG):
                        fut.cancel()
    except BaseException as exc:
        out.abort(type(exc).__name__ if not str(exc) else str(exc).splitlines()[0])
        raise
    out.finish(stale=lambda name: name.endswith(".png") and name[:-4].isdigit())
    return written

"""Synthetic clips with exactly known motion, occlusion and ground-truth mappings.

Why: every check of the engine (fit quality, edit propagation, tracking, occlusion) needs
a truth to compare against. Here a textured background is filmed by a camera that pans,
zooms and rotates (a similarity homography per frame) and a textured disc slides across
in front of it, passing over the middle of the frame. The analytic mapping
(:class:`GroundTruthMapping`) implements :class:`core.project.LayeredMapping`, so edits
and tracking can run on a ground-truth project (:func:`make_gt_project`) without networks.

Conventions are those of ARCHITECTURE.md: source pixel coordinates with pixel centres at
i+0.5, project frame indices t (fractional allowed), atlas uv in [-1, 1]^2 with an atlas
raster of size A having pixel centres at 2(i+0.5)/A - 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core import fsutil
from core.project import BakedMaps, Project, ProjectInfo

CAMERAS = ("static", "pan", "pan_zoom")


# ---------------------------------------------------------------------------------------
# textures
def _noise(rng: np.random.Generator, res: int, sigma: float) -> np.ndarray:
    """Smooth random field in [0,1] with features of about ``sigma`` texels."""
    small = max(4, int(res / max(sigma, 1.0)))
    f = rng.standard_normal((small, small, 3)).astype(np.float32)
    f = cv2.GaussianBlur(f, (0, 0), sigmaX=0.7, borderType=cv2.BORDER_REFLECT)  # blur small: cheap
    f = cv2.resize(f, (res, res), interpolation=cv2.INTER_CUBIC)
    f -= f.min(axis=(0, 1), keepdims=True)
    f /= np.maximum(f.max(axis=(0, 1), keepdims=True), 1e-6)
    return f


def make_texture(res: int, seed: int, palette_shift: float = 0.0, shapes: int = 40) -> np.ndarray:
    """A rich, smooth-but-detailed RGB texture in 0..1, float32 [res, res, 3].

    Multi-scale noise gives flow something to lock onto at every scale; a few crisp,
    lightly blurred shapes give corners and edges.
    """
    rng = np.random.default_rng(seed)
    tex = np.zeros((res, res, 3), np.float32)
    weights = 0.0
    for sigma, w in ((res / 4, 1.0), (res / 16, 0.8), (res / 64, 0.6), (6.0, 0.45), (3.0, 0.3)):
        tex += w * _noise(rng, res, sigma)
        weights += w
    tex /= weights
    tex = np.clip((tex - 0.5) * 1.8 + 0.5, 0.0, 1.0)
    tex = np.clip(tex + palette_shift * np.array([0.25, -0.1, -0.2], np.float32), 0.0, 1.0)
    for _ in range(shapes):
        color = tuple(float(c) for c in rng.uniform(0.0, 1.0, 3))
        cx, cy = (int(v) for v in rng.integers(0, res, 2))
        size = int(rng.integers(res // 60 + 2, res // 14 + 3))
        if rng.random() < 0.5:
            cv2.circle(tex, (cx, cy), size, color, thickness=-1, lineType=cv2.LINE_AA)
        else:
            ang = float(rng.uniform(0, 180))
            box = cv2.boxPoints(((cx, cy), (size * 2.0, size * 1.2), ang)).astype(np.int32)
            cv2.fillConvexPoly(tex, box, color, lineType=cv2.LINE_AA)
    return cv2.GaussianBlur(tex, (0, 0), sigmaX=0.8)


def sample_texture(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear sample of a texture covering [-1,1]^2 (grid_sample, align_corners=False, border)."""
    res_y, res_x = tex.shape[:2]
    shape = uv.shape[:-1]
    uv = uv.reshape(-1, 2)
    px = np.clip((uv[:, 0] + 1.0) * 0.5 * res_x - 0.5, 0.0, res_x - 1.0)
    py = np.clip((uv[:, 1] + 1.0) * 0.5 * res_y - 0.5, 0.0, res_y - 1.0)
    x0 = np.minimum(np.floor(px).astype(np.int64), res_x - 2)
    y0 = np.minimum(np.floor(py).astype(np.int64), res_y - 2)
    fx = (px - x0)[:, None].astype(np.float32)
    fy = (py - y0)[:, None].astype(np.float32)
    out = (tex[y0, x0] * (1 - fx) * (1 - fy) + tex[y0, x0 + 1] * fx * (1 - fy)
           + tex[y0 + 1, x0] * (1 - fx) * fy + tex[y0 + 1, x0 + 1] * fx * fy)
    return out.reshape(*shape, tex.shape[2])


def _rot(theta: np.ndarray) -> np.ndarray:
    """Rotation matrices [N,2,2] (y down, so positive theta turns clockwise on screen)."""
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


# ---------------------------------------------------------------------------------------
# ground-truth mapping
@dataclass
class GroundTruthMapping:
    """Analytic layered mapping of a synthetic clip (implements ``LayeredMapping``).

    Background: frame pixel x -> world w = s(t) R(phi(t)) (x - c) + c + p(t) -> uv = (w - w0) / S.
    Foreground: a disc of radius ``radius`` centred at q(t), turned by theta(t);
    uv = R(-theta)(x - q) / (1.25 radius), so the disc fills [-0.8, 0.8].
    """

    n_frames: int
    size: tuple[int, int]  # (W, H)
    camera: str
    occluder: bool
    radius: float
    world_center: np.ndarray = field(default_factory=lambda: np.zeros(2))  # w0
    world_scale: float = 1.0  # S
    layers: tuple[str, ...] = ("bg", "fg")

    # -- motion parameters (smooth in t, fractional t allowed) ---------------------------
    def _u(self, t: np.ndarray) -> np.ndarray:
        return np.asarray(t, np.float64) / max(self.n_frames - 1, 1)

    def camera_params(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scale s [N], rotation phi [N], pan p [N,2]) of the camera at frames t."""
        u = self._u(t)
        W, H = self.size
        if self.camera == "static":
            return np.ones_like(u), np.zeros_like(u), np.zeros((u.size, 2))
        pan = np.stack([0.16 * W * u, 0.06 * H * np.sin(np.pi * u)], -1)
        if self.camera == "pan":
            return np.ones_like(u), np.zeros_like(u), pan
        # pan_zoom: zoom in by 25 % and turn by about 9 degrees over the clip
        return 1.0 - 0.25 * u, 0.16 * u, pan

    def object_params(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(centre q [N,2], turn theta [N]) of the foreground disc."""
        u = self._u(t)
        W, H = self.size
        q = np.stack([W * (0.2 + 0.6 * u), H * (0.5 + 0.08 * np.sin(2 * np.pi * u))], -1)
        return q, 0.5 * u - 0.25

    # -- LayeredMapping ------------------------------------------------------------------
    @staticmethod
    def _prep(xy: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        t = np.broadcast_to(np.asarray(t, np.float64).reshape(-1), (xy.shape[0],))
        return xy, t

    def forward(self, layer: str, xy: np.ndarray, t: np.ndarray) -> np.ndarray:
        xy, t = self._prep(xy, t)
        if layer == "bg":
            s, phi, p = self.camera_params(t)
            c = np.array(self.size, np.float64) / 2
            w = s[:, None] * np.einsum("nij,nj->ni", _rot(phi), xy - c) + c + p
            return ((w - self.world_center) / self.world_scale).astype(np.float32)
        if layer == "fg" and self.occluder:
            q, th = self.object_params(t)
            local = np.einsum("nij,nj->ni", _rot(-th), xy - q)
            return (local / (1.25 * self.radius)).astype(np.float32)
        raise KeyError(f"unknown layer {layer!r}")

    def inverse(self, layer: str, uv: np.ndarray, t: np.ndarray) -> np.ndarray:
        uv, t = self._prep(uv, t)
        if layer == "bg":
            s, phi, p = self.camera_params(t)
            c = np.array(self.size, np.float64) / 2
            w = uv * self.world_scale + self.world_center
            xy = np.einsum("nij,nj->ni", _rot(-phi), w - c - p) / s[:, None] + c
            return xy.astype(np.float32)
        if layer == "fg" and self.occluder:
            q, th = self.object_params(t)
            return (q + np.einsum("nij,nj->ni", _rot(th), uv * 1.25 * self.radius)).astype(np.float32)
        raise KeyError(f"unknown layer {layer!r}")

    def alpha(self, xy: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Analytic anti-aliased coverage of the disc (a one-pixel ramp at its rim)."""
        xy, t = self._prep(xy, t)
        if not self.occluder:
            return np.zeros(xy.shape[0], np.float32)
        q, _ = self.object_params(t)
        d = np.linalg.norm(xy - q, axis=-1)
        return np.clip(self.radius + 0.5 - d, 0.0, 1.0).astype(np.float32)

    # -- helpers for tests ----------------------------------------------------------------
    def bg_similarity(self, f: float, t: float) -> tuple[float, float]:
        """(scale, rotation in radians) that carries a small bg patch from frame f to frame t.

        Rotation is in image coordinates (y down): positive turns clockwise on screen.
        """
        sf, pf, _ = self.camera_params(np.array([f]))
        st, pt, _ = self.camera_params(np.array([t]))
        return float(sf[0] / st[0]), float(pf[0] - pt[0])


@dataclass
class SyntheticClip:
    frames: np.ndarray  # uint8 [T,H,W,3]
    masks: np.ndarray  # float32 [T,H,W] true foreground coverage
    gt: GroundTruthMapping  # exact analytic mapping (core.project.LayeredMapping)
    fps: float
    textures: dict[str, np.ndarray] = field(default_factory=dict)  # float32 [R,R,3] covering [-1,1]^2

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def pixel_centres(W: int, H: int) -> np.ndarray:
    """[H, W, 2] source pixel centre coordinates."""
    xs, ys = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    return np.stack([xs, ys], -1)


def make_ground_truth(T: int, size: tuple[int, int], camera: str = "pan_zoom",
                      occluder: bool = True) -> "GroundTruthMapping":
    """The analytic mapping of :func:`make_clip` with the same arguments (cheap: renders nothing)."""
    if camera not in CAMERAS:
        raise ValueError(f"camera must be one of {CAMERAS}, got {camera!r}")
    W, H = size
    gt = GroundTruthMapping(n_frames=T, size=(W, H), camera=camera, occluder=occluder,
                            radius=0.21 * min(W, H), layers=("bg", "fg") if occluder else ("bg",))
    # Normalise world coordinates so that everything any frame shows fits in ~[-0.8, 0.8].
    corners = np.array([[0, 0], [W, 0], [0, H], [W, H]], np.float64)
    seen = np.concatenate([gt.forward("bg", corners, np.full(4, t)) for t in range(T)])
    lo, hi = seen.min(0), seen.max(0)
    gt.world_center = (lo + hi) / 2.0
    gt.world_scale = float((hi - lo).max() / 2.0 / 0.8)
    return gt


def make_clip(T: int = 24, size: tuple[int, int] = (128, 96), camera: str = "pan_zoom",
              occluder: bool = True, seed: int = 0, fps: float = 24.0) -> SyntheticClip:
    """Render a synthetic clip: a camera over a textured background, a textured disc in front."""
    if camera not in CAMERAS:
        raise ValueError(f"camera must be one of {CAMERAS}, got {camera!r}")
    W, H = size
    gt = make_ground_truth(T, (W, H), camera, occluder)

    res = int(min(2048, max(512, 256 * np.ceil(4 * max(W, H) / 256))))
    bg_tex = make_texture(res, seed)
    fg_tex = make_texture(max(256, res // 2), seed + 1000, palette_shift=1.0, shapes=12)
    # stripes on the object make its rotation visible and trackable
    yy, xx = np.mgrid[0:fg_tex.shape[0], 0:fg_tex.shape[1]] / fg_tex.shape[0]
    stripes = (0.5 + 0.5 * np.sin(2 * np.pi * 2 * (xx + 0.3 * yy)))[..., None].astype(np.float32)
    fg_tex = np.clip(0.6 * fg_tex + 0.4 * stripes * np.array([1.0, 0.85, 0.3], np.float32), 0, 1)

    grid = pixel_centres(W, H).reshape(-1, 2)
    frames = np.empty((T, H, W, 3), np.uint8)
    masks = np.zeros((T, H, W), np.float32)
    for t in range(T):
        tt = np.full(grid.shape[0], float(t))
        img = sample_texture(bg_tex, gt.forward("bg", grid, tt))
        if occluder:
            a = gt.alpha(grid, tt)
            fg = sample_texture(fg_tex, gt.forward("fg", grid, tt))
            img = fg * a[:, None] + img * (1.0 - a[:, None])
            masks[t] = a.reshape(H, W)
        frames[t] = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(H, W, 3)
    textures = {"bg": bg_tex}
    if occluder:
        textures["fg"] = fg_tex
    return SyntheticClip(frames=frames, masks=masks, gt=gt, fps=fps, textures=textures)


def write_clip(clip: SyntheticClip, folder: Path) -> Path:
    """Write the clip as a PNG sequence 0000.png, 0001.png, ... (an ``inve train`` input)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(clip.frames):
        fsutil.write_png(folder / f"{i:04d}.png", img)
    return folder


def write_masks(clip: SyntheticClip, folder: Path) -> Path:
    """Write the true foreground masks as 8-bit PNGs (an ``inve train --masks`` input)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(clip.masks):
        fsutil.write_png(folder / f"{i:04d}.png", m)
    return folder


def make_gt_project(clip: SyntheticClip, folder: Path, atlas_size: int = 256,
                    work_scale: float = 1.0, first_frame: int = 0) -> Project:
    """Write a complete project folder from the ground truth and open it.

    The baked maps (uv, alpha at ``work_scale`` times the source size), atlases and frames
    come from the analytic mapping; the returned project's ``_mapping`` is ``clip.gt`` so
    edits and tracking run without networks. ``first_frame`` offsets the source frame
    indices (project frame t is source frame first_frame + t) to exercise that mapping.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    W, H = clip.size
    T = clip.n_frames
    w, h = max(1, int(round(W * work_scale))), max(1, int(round(H * work_scale)))
    gt = clip.gt
    layers = list(gt.layers)
    info = ProjectInfo(source=str(folder / "synthetic"), frames=list(range(first_frame, first_frame + T)),
                       source_size=(W, H), work_size=(w, h), fps=clip.fps, layers=layers,
                       settings={"synthetic": True, "camera": gt.camera})
    # work pixel centres in source coordinates (consistent with grid_sample align_corners=False)
    xs, ys = np.meshgrid((np.arange(w) + 0.5) * W / w, (np.arange(h) + 0.5) * H / h)
    grid = np.stack([xs, ys], -1).reshape(-1, 2)
    uv = {L: np.empty((T, h, w, 2), np.float32) for L in layers}
    alpha = np.zeros((T, h, w), np.float32)
    for t in range(T):
        tt = np.full(grid.shape[0], float(t))
        for L in layers:
            uv[L][t] = gt.forward(L, grid, tt).reshape(h, w, 2)
        alpha[t] = gt.alpha(grid, tt).reshape(h, w)
    A = atlas_size
    centres = (np.arange(A) + 0.5) * 2.0 / A - 1.0
    au, av = np.meshgrid(centres, centres)
    atlas_uv = np.stack([au, av], -1).reshape(-1, 2)
    atlas, used = {}, {}
    for L in layers:
        tex_uv = gt.texture_uv(L, atlas_uv) if hasattr(gt, "texture_uv") else atlas_uv
        atlas[L] = sample_texture(clip.textures[L], tex_uv).reshape(A, A, 3).astype(np.float32)
        seen = np.zeros(A * A, np.float32)
        for t in range(T):
            xy = gt.inverse(L, atlas_uv, np.full(A * A, float(t)))
            inside = (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
            a = gt.alpha(xy, np.full(A * A, float(t)))
            vis = np.where(inside, a if L == "fg" else 1.0 - a, 0.0)
            seen = np.maximum(seen, vis)
        used[L] = seen.reshape(A, A)
    maps = BakedMaps(uv=uv, alpha=alpha, atlas=atlas, atlas_used=used)
    maps.save(folder / Project.MAPS)
    with fsutil.atomic_path(folder / Project.FRAMES, suffix=".npy") as tmp:
        np.save(tmp, clip.frames)
    for L in layers:
        fsutil.write_png(folder / f"atlas_{L}.png", atlas[L])
    fsutil.write_json(folder / Project.METRICS, {"psnr": 99.0, "iterations": 0, "train_seconds": 0.0,
                                                 "synthetic": True})
    project = Project(folder, info)
    project.save_info()
    project._mapping = gt
    return project


@dataclass
class SegmentMapping:
    """The ground truth of frames ``offset:`` of a clip, with its own atlas parametrisation.

    Why: segments of a real project have unrelated atlases; this gives each synthetic segment
    its own (uv' = scale * uv + shift), so an edit that is not re-anchored at a seam lands
    in the wrong place.
    """

    gt: GroundTruthMapping
    offset: int
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)

    @property
    def layers(self) -> tuple[str, ...]:
        return self.gt.layers

    @property
    def camera(self) -> str:
        return self.gt.camera

    def _t(self, t: np.ndarray) -> np.ndarray:
        return np.asarray(t, np.float64) + self.offset

    def forward(self, layer: str, xy: np.ndarray, t: np.ndarray) -> np.ndarray:
        return (self.gt.forward(layer, xy, self._t(t)) * self.scale + np.asarray(self.shift)).astype(np.float32)

    def inverse(self, layer: str, uv: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self.gt.inverse(layer, (np.asarray(uv, np.float64) - np.asarray(self.shift)) / self.scale, self._t(t))

    def alpha(self, xy: np.ndarray, t: np.ndarray) -> np.ndarray:
        return self.gt.alpha(xy, self._t(t))

    def texture_uv(self, layer: str, uv: np.ndarray) -> np.ndarray:
        """Where atlas uv of this segment reads the clip's texture."""
        return (np.asarray(uv, np.float64) - np.asarray(self.shift)) / self.scale


def make_gt_segmented_project(clip: SyntheticClip, folder: Path, ranges: list[tuple[int, int]],
                              atlas_size: int = 256) -> Project:
    """A segmented project (core/segments.py) of ground-truth segments with different atlases.

    Segment k covers clip frames ``ranges[k]`` and maps uv' = (1 - 0.15 k) uv + (0.08 k, -0.05 k).
    Each segment's project has its ``SegmentMapping`` as mapping (no networks).
    """
    from core.segments import segment_name  # noqa: PLC0415

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mappings = []
    for k, (a, b) in enumerate(ranges):
        m = SegmentMapping(clip.gt, a, 1.0 - 0.15 * k, (0.08 * k, -0.05 * k))
        sub = SyntheticClip(frames=clip.frames[a:b], masks=clip.masks[a:b], gt=m, fps=clip.fps,
                            textures=clip.textures)
        make_gt_project(sub, folder / "segments" / segment_name(a, b), atlas_size=atlas_size, first_frame=a)
        mappings.append(m)
    W, H = clip.size
    info = ProjectInfo(source=str(folder / "synthetic"), frames=list(range(clip.n_frames)), source_size=(W, H),
                       work_size=(W, H), fps=clip.fps, layers=list(clip.gt.layers), settings={"synthetic": True},
                       segments=[{"name": segment_name(a, b), "frames": [a, b]} for a, b in ranges])
    with fsutil.atomic_path(folder / Project.FRAMES, suffix=".npy") as tmp:
        np.save(tmp, clip.frames)
    Project(folder, info).save_info()
    project = Project.open(folder)
    for sub, m in zip(project.segments(), mappings):
        sub._mapping = m
    return project

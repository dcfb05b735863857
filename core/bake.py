"""Bake: evaluate the trained networks once on every pixel and on the atlas grid.

After this, edits only sample arrays (UV maps, alpha maps, atlases) instead of running
networks per pixel, which is what makes propagation interactive. The same pass measures
reconstruction PSNR and the forward->inverse cycle error reported in ``metrics.json``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from core.coords import FrameCoords, SourceCoords
from core.layers import shows
from core.model import LayeredAtlasModel
from core.progress import Progress
from core.project import BakedMaps


@dataclass
class BakeResult:
    maps: BakedMaps
    psnr: float
    cycle_error_px: dict[str, float]  # median forward->inverse error per layer, source pixels
    # per project frame: reconstruction PSNR and median cycle error per layer (nan: layer not shown)
    frame_psnr: list[float] = field(default_factory=list)
    frame_cycle_px: dict[str, list[float]] = field(default_factory=dict)

    def per_frame(self, source_frames: list[int]) -> dict:
        """The per-frame confidence read-out stored in metrics.json (``inve info``)."""
        r = lambda v: None if not math.isfinite(v) else round(float(v), 3)  # noqa: E731
        return {"frame": list(source_frames), "psnr": [r(v) for v in self.frame_psnr],
                "cycle_error_px": {L: [r(v) for v in vals] for L, vals in self.frame_cycle_px.items()}}


def frame_grid(w: int, h: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised positions of the pixel centres of a w x h frame, [h*w, 2] row-major."""
    return FrameCoords(w, h).pixel_centres(device)


def atlas_grid(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uv of the texel centres of a size x size atlas covering [-1, 1]^2, [size*size, 2]."""
    c = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) * 2.0 / size - 1.0
    v, u = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([u, v], dim=-1).reshape(-1, 2)


#: baked atlas texels per working pixel. At one texel per pixel the bilinear lookup that edits
#: make blurs what the networks learned (0.1-0.4 dB below the networks' PSNR on short fits,
#: more on sharp ones); at two the baked atlas reproduces the networks within ~0.05 dB.
ATLAS_TEXELS_PER_PX = 2.0


def default_atlas_size(work_size: tuple[int, int], uv_scale: float) -> int:
    """``ATLAS_TEXELS_PER_PX`` atlas texels per working pixel, rounded up to a multiple of 64."""
    texels = ATLAS_TEXELS_PER_PX * max(work_size) / uv_scale
    return int(min(4096, max(256, 64 * math.ceil(texels / 64))))


@torch.no_grad()
def bake(model: LayeredAtlasModel, frames: np.ndarray, source_size: tuple[int, int],
         progress: Progress | None = None, atlas_size: int | None = None, chunk: int = 1 << 15,
         out: Callable[[str, tuple[int, ...]], np.ndarray] | None = None) -> BakeResult:
    """Evaluate maps for every frame of ``frames`` (uint8 [T,h,w,3], working resolution).

    ``out(name, shape)`` gives the arrays the per-frame maps are written to ("uv_<layer>",
    "alpha"; default: float32 arrays in memory). Training passes memory-mapped float16 files
    of the project's maps folder, so a long shot's maps never sit in memory as float32;
    each frame is evaluated into float32 buffers first (the cycle error is measured on them).
    """
    model.eval()
    device = next(model.parameters()).device
    n, h, w = frames.shape[:3]
    layers = list(model.cfg.layers)
    grid = frame_grid(w, h, device)
    out = out or (lambda name, shape: np.zeros(shape, np.float32))
    uv_maps = {L: out(f"uv_{L}", (n, h, w, 2)) for L in layers}
    alpha_maps = out("alpha", (n, h, w))
    uv_t = {L: np.zeros((h * w, 2), np.float32) for L in layers}  # frame t, float32
    alpha_t = np.zeros(h * w, np.float32)
    sq_err = 0.0
    frame_psnr: list[float] = []
    frame_cycle: dict[str, list[float]] = {L: [] for L in layers}
    cycle_err: dict[str, list[np.ndarray]] = {L: [] for L in layers}
    coords = SourceCoords(tuple(source_size), (w, h))
    rng = np.random.default_rng(0)
    size = atlas_size or default_atlas_size((w, h), model.cfg.uv_scale)
    # The atlases (size^2 texels per layer) and their usage splats are spread over the frame
    # steps: after frame t, the atlas chunks due by then are evaluated and the frame's uv is
    # splatted. Why: progress counts steps and its ETA is elapsed-per-step x steps left; with
    # the atlases as separate last steps (each worth several frames) the ETA missed by half.
    agrid = atlas_grid(size, device)
    atlas_chunks = [(L, s) for L in layers for s in range(0, agrid.shape[0], chunk)]
    atlas_cols: dict[str, list[np.ndarray]] = {L: [] for L in layers}
    hists = {L: np.zeros(size * size, np.int64) for L in layers}
    done_chunks = 0
    total = n
    for t in range(n):
        if progress is not None:
            progress.update("bake", t, total)
        target = torch.from_numpy(frames[t].reshape(-1, 3)).to(device).float() / 255.0
        sq_before = sq_err
        for s in range(0, grid.shape[0], chunk):
            p = grid[s:s + chunk]
            tt = torch.full((p.shape[0],), float(t), device=device)
            rgb, uvs, a = model.reconstruct(p, tt)
            sq_err += float(((rgb - target[s:s + chunk]) ** 2).sum())
            rows = slice(s, s + p.shape[0])
            for L in layers:
                uv_t[L][rows] = uvs[L].cpu().numpy()
            alpha_t[rows] = a.cpu().numpy()
        for L in layers:
            uv_maps[L][t] = uv_t[L].reshape(h, w, 2)
        alpha_maps[t] = alpha_t.reshape(h, w)
        frame_psnr.append(float(10 * math.log10(1.0 / max((sq_err - sq_before) / (h * w * 3), 1e-12))))
        # cycle error on a subsample of the pixels each layer shows
        sel = torch.from_numpy(rng.choice(grid.shape[0], size=min(4096, grid.shape[0]), replace=False)).to(device)
        p = grid[sel]
        tt = torch.full((p.shape[0],), float(t), device=device)
        a = torch.from_numpy(alpha_t).to(device)[sel]
        for L in layers:
            shown = shows(L, a)
            if not bool(shown.any()):
                frame_cycle[L].append(float("nan"))
                continue
            uv = torch.from_numpy(uv_t[L]).to(device)[sel]
            back = model.inverse(L, uv[shown], tt[shown])
            cycle_err[L].append(coords.delta_to_source_px(back - p[shown]).norm(dim=1).cpu().numpy())
            frame_cycle[L].append(float(np.median(cycle_err[L][-1])))
        for L in layers:  # what the stored maps say (float16 when memory-mapped), as atlas_usage reads them
            _usage_splat(hists[L], uv_maps[L][t], alpha_maps[t], size, L)
        due = len(atlas_chunks) * (t + 1) // n
        while done_chunks < due:
            L, s = atlas_chunks[done_chunks]
            atlas_cols[L].append(model.atlas(L, agrid[s:s + chunk]).cpu().numpy())
            done_chunks += 1
    mse = sq_err / (n * h * w * 3)
    psnr = float(10 * math.log10(1.0 / max(mse, 1e-12)))

    atlases, used = {}, {}
    for L in layers:
        atlases[L] = np.concatenate(atlas_cols[L]).reshape(size, size, 3).astype(np.float32)
        used[L] = _usage_finish(hists[L], size)
    if progress is not None:
        progress.update("bake", total, total)
    maps = BakedMaps(uv=uv_maps, alpha=alpha_maps, atlas=atlases, atlas_used=used)
    cyc = {L: float(np.median(np.concatenate(v))) for L, v in cycle_err.items() if v}
    return BakeResult(maps=maps, psnr=psnr, cycle_error_px=cyc, frame_psnr=frame_psnr, frame_cycle_px=frame_cycle)


@torch.no_grad()
def atlas_psnr(maps: BakedMaps, frames: np.ndarray) -> float:
    """PSNR of the frames rebuilt from the *baked* maps alone (what edits sample).

    Each working pixel reads its layer's baked atlas at its baked uv (bilinear,
    ``grid_sample(align_corners=False)``, the way atlas edits sample textures) and the
    layers are composited with the baked alpha. The gap to the networks' PSNR is what the
    atlas raster loses.
    """
    n = frames.shape[0]
    sq_err = 0.0
    tex = {L: torch.from_numpy(np.asarray(a, np.float32)).permute(2, 0, 1)[None] for L, a in maps.atlas.items()}
    for t in range(n):
        rgb = {}
        for L in maps.layers:
            grid = torch.from_numpy(np.asarray(maps.uv[L][t], np.float32))[None]
            rgb[L] = F.grid_sample(tex[L], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        out = rgb["bg"]
        if "fg" in rgb:
            a = torch.from_numpy(np.asarray(maps.alpha[t], np.float32))[None]
            out = a * rgb["fg"] + (1 - a) * out
        target = torch.from_numpy(np.ascontiguousarray(frames[t])).permute(2, 0, 1).float() / 255.0
        sq_err += float(((out - target) ** 2).sum())
    mse = sq_err / (frames[..., 0].size * 3)
    return float(10 * math.log10(1.0 / max(mse, 1e-12)))


def _usage_splat(hist: np.ndarray, uv_t: np.ndarray, alpha_t: np.ndarray, size: int, layer: str) -> None:
    """Add one frame's pixels that ``layer`` shows to the texel histogram ``hist`` [size*size]."""
    coords = ((np.asarray(uv_t, np.float32).reshape(-1, 2) + 1.0) * 0.5 * size).astype(np.int64)
    inside = (coords >= 0).all(1) & (coords < size).all(1) & np.asarray(shows(layer, alpha_t)).reshape(-1)
    hist += np.bincount(coords[inside, 1] * size + coords[inside, 0], minlength=size * size)


def _usage_finish(hist: np.ndarray, size: int) -> np.ndarray:
    import cv2  # noqa: PLC0415 - heavy import only when baking

    seen = cv2.dilate((hist.reshape(size, size) > 0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
    return cv2.GaussianBlur(seen, (0, 0), 1.0)


def atlas_usage(uv: np.ndarray, alpha: np.ndarray, size: int, layer: str) -> np.ndarray:
    """How strongly each atlas texel is seen by some frame (0..1): a splat of the pixels ``layer`` shows.

    Accumulated frame by frame (``uv`` [T, h, w, 2], ``alpha`` [T, h, w], possibly memory-
    mapped float16), so a long shot needs no whole-clip index arrays.
    """
    hist = np.zeros(size * size, np.int64)
    for t in range(uv.shape[0]):
        _usage_splat(hist, uv[t], alpha[t], size, layer)
    return _usage_finish(hist, size)

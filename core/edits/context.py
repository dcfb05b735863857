"""What every edit layer reads: the source frames, the baked maps and the mapping.

Why one object: the baked maps are at the working size while edits render at source
resolution, and every layer needs the same conversions (source pixel -> map sample,
visibility tests, atlas-space resolution). Sampling follows ARCHITECTURE.md exactly: a
source position x maps to xn = 2x/W - 1 for ``grid_sample(align_corners=False)``, so a map
at any working size is read consistently. Networks run only on points (:meth:`propagate`,
a stroke's vertices or a sticker's centre into all frames at once) and on one grid per
layer, drawing frame and edited atlas rectangle (:meth:`inverse_rect`, cached).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.correct import read_confirmed
from core.errors import InveError
from core.layers import VISIBLE_ALPHA, layer_at, shows
from core.project import BakedMaps, LayeredMapping, Project
from core.refine import (CHAIN_STRIDE, Level, RefineConfig, Refined, chain_parent, fit_correction, grey,
                         refine_independent, refine_positions)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in source pixels, half-open


@dataclass
class Patch:
    """A premultiplied RGBA rectangle to composite over a frame at (x0, y0)."""

    x0: int
    y0: int
    rgb: np.ndarray  # float32 [h, w, 3], premultiplied by a
    a: np.ndarray  # float32 [h, w]

    @property
    def box(self) -> Box:
        h, w = self.a.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h

    @property
    def nbytes(self) -> int:
        return self.rgb.nbytes + self.a.nbytes


class RenderContext:
    """Frames, maps and mapping of one project, with cached conversions."""

    #: inverse-mapping grid (per side) per (layer, frame, rectangle); finer textures upsample it
    INVERSE_GRID = 256
    #: atlas-space texture density for raster edits, texels per source pixel, and its cap
    #: (2, as the baked atlas: at 1.25 the two bilinear resamplings, into the texture and out
    #: again, blurred painted 1-px lines to 41 dB against the truth on the fidelity benchmark;
    #: at 2, 44-45 dB. Large edits hit MAX_TEXTURE first either way.)
    TEXELS_PER_PX = 2.0
    MAX_TEXTURE = 2048
    #: a point whose forward(inverse(uv)) misses uv by more than this many pixels is not visible
    CYCLE_TOL_PX = 2.0
    #: stride (work pixels) of the uv scan that finds where a texture can show in a frame
    SCAN_STRIDE = 2
    #: refine propagated points against the drawing frame's pixels (core/refine.py) by default
    REFINE = True
    #: at most this many points of one propagation are matched; the others (the dense vertices
    #: of a stroke) take the correction of their nearest matched neighbours: the mapping's
    #: drift is smooth, and matching every vertex doubled the cost of rendering a stroke
    REFINE_MAX_POINTS = 24
    #: chain links kept (:meth:`refine_chained`): point set x link frame
    LINK_CACHE = 512
    #: a far frame is matched from its chain link's correction only where matching from the
    #: mapping's place accepts fewer than this share of its points (None: always)
    #: (measured on the benchmark: 0.8 as good as always, 0.5 lost 3 dB on the far strokes)
    CHAIN_BELOW: float | None = 0.8
    #: near a key the user confirmed (``inve correct``, core/correct.py) the fine-tuned mapping
    #: is trusted and the refinement faded out: fully within CONFIRMED_TRUST_PX of the key (on
    #: its frame and layer), back in force beyond CONFIRMED_FADE times that. Why: refinement
    #: matches appearance, and pulled a point the user moved by 2.7 px back to within 0.03 px
    #: of where it was; the user's word wins where given, appearance everywhere else.
    CONFIRMED_TRUST_PX = 3.0
    CONFIRMED_FADE = 3.0
    #: ... and in time: between a track's first and last confirmed key, and fading out over
    #: this many frames beyond them, near where the fine-tuned mapping carries the nearest key.
    #: Why: trusting the key's frame alone made the correction a one-frame jump (a sticker
    #: moved 2.7 px on the two corrected frames and 0.05 px on the frames between them).
    CONFIRMED_FRAMES = 8
    #: band (working pixels) along a layer's edge whose pixels refinement does not match on
    MASK_ERODE = 1.0

    def __init__(self, project: Project, mapping: LayeredMapping | None = None,
                 maps: BakedMaps | None = None, frames: np.ndarray | None = None) -> None:
        self.project = project
        self.info = project.info
        self.maps = maps if maps is not None else project.maps()
        self._mapping = mapping
        self.frames = frames if frames is not None else project.frames()
        self.W, self.H = self.info.source_size
        self.w, self.h = self.maps.work_size
        self.T = self.maps.n_frames
        self.layers: list[str] = [L for L in self.info.layers if L in self.maps.uv]
        # per-frame float32 [1, C, h, w] tensors for grid_sample, converted from the (memory-
        # mapped, float16) baked maps when a frame is first used; the last few stay cached
        self._frame_maps: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self._px_per_uv: dict[str, float] = {}
        self._inv_cache: dict[tuple, torch.Tensor] = {}
        # normalised grid_sample coordinates of every source pixel centre, per axis
        self._xn = (torch.arange(self.W, dtype=torch.float32) + 0.5) * (2.0 / self.W) - 1.0
        self._yn = (torch.arange(self.H, dtype=torch.float32) + 0.5) * (2.0 / self.H) - 1.0
        self.refine_enabled = self.REFINE
        self.refine_cfg = RefineConfig()
        self._levels: list[Level] | None = None
        self._masks: dict[str, Any] = {}
        self._links: dict[tuple, np.ndarray] = {}
        # the drawing frame's Jacobian of a point set (the same for every frame it is matched in)
        self._j0: OrderedDict[tuple, np.ndarray] = OrderedDict()
        # the chains seen so far (point sets, textures): key -> their drawing frame
        self._chains: OrderedDict[tuple, int] = OrderedDict()
        # confirmed keys per (layer, frame index): [k, 2] source px (stale ones are not loaded)
        self.confirmed: dict[tuple[str, int], np.ndarray] = {}
        self.confirmed_tracks = read_confirmed(project.path, self.info, self.maps.meta)
        for tr in self.confirmed_tracks:
            for t, xy in zip(tr.t, tr.xy):
                key = (tr.layer, int(t))
                self.confirmed[key] = np.vstack([self.confirmed.get(key, np.zeros((0, 2))), xy[None]])
        # per (layer, frame) without a key of its own: (positions [k, 2], trust in time [k]),
        # built on first use (it runs the mapping; see :meth:`_confirmed_spread`)
        self._confirmed_cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] | None = None

    # -- mapping (networks) ------------------------------------------------------------
    @property
    def mapping(self) -> LayeredMapping:
        if self._mapping is None:
            self._mapping = self.project.mapping()
        return self._mapping

    # -- the baked maps of one frame -----------------------------------------------------
    MAP_CACHE = 8  # frames' maps kept converted (a render touches one frame many times)

    def _frame_map(self, key: tuple[str, int], make) -> torch.Tensor:
        m = self._frame_maps.get(key)
        if m is None:
            m = make()
            self._frame_maps[key] = m
            while len(self._frame_maps) > self.MAP_CACHE * (len(self.layers) + 1):
                self._frame_maps.popitem(last=False)
        else:
            self._frame_maps.move_to_end(key)
        return m

    def uv_map(self, layer: str, t: int) -> torch.Tensor:
        """Baked uv of frame t as float32 [1, 2, h, w]."""
        return self._frame_map((layer, int(t)), lambda: torch.from_numpy(
            np.array(self.maps.uv[layer][int(t)], np.float32)).permute(2, 0, 1)[None].contiguous())

    def alpha_map(self, t: int) -> torch.Tensor:
        """Baked foreground alpha of frame t as float32 [1, 1, h, w]."""
        return self._frame_map(("alpha", int(t)), lambda: torch.from_numpy(
            np.array(self.maps.alpha[int(t)], np.float32))[None, None])

    # -- sampling the baked maps at source positions -----------------------------------
    def _grid_points(self, xy: np.ndarray) -> torch.Tensor:
        p = torch.as_tensor(np.asarray(xy, np.float32)).reshape(1, 1, -1, 2)
        return p * torch.tensor([2.0 / self.W, 2.0 / self.H]) - 1.0

    @staticmethod
    def _sample(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]

    def _box(self, src: torch.Tensor, box: Box) -> torch.Tensor:
        """Sample a [1, C, h, w] work map at the source pixel centres of ``box``: [C, bh, bw].

        At equal sizes this is the map itself (a slice); otherwise bilinear at xn = 2x/W - 1.
        """
        x0, y0, x1, y1 = box
        if (self.w, self.h) == (self.W, self.H):
            return src[0, :, y0:y1, x0:x1]
        gx, gy = torch.broadcast_tensors(self._xn[None, x0:x1], self._yn[y0:y1, None])
        return self._sample(src, torch.stack([gx, gy], -1)[None])

    def uv_box(self, layer: str, t: int, box: Box) -> torch.Tensor:
        """Atlas uv of the source pixels in ``box`` at frame t: [h, w, 2]."""
        return self._box(self.uv_map(layer, t), box).permute(1, 2, 0).contiguous()

    def alpha_box(self, t: int, box: Box) -> np.ndarray:
        """Foreground alpha of the source pixels in ``box`` at frame t: [h, w]."""
        x0, y0, x1, y1 = box
        if not self.has_fg:
            return np.zeros((y1 - y0, x1 - x0), np.float32)
        return self._box(self.alpha_map(t), box)[0].numpy()

    def alpha_tiles(self, t: int, boxes: Sequence[Box], tile: int) -> np.ndarray:
        """Foreground alpha of frame t on tiles: float32 [n, tile, tile], box k at the top-left of
        tile k (the rest, past the frame's edge, repeats the edge pixel).

        The same values as :meth:`alpha_box` per box, from one grid_sample call for all tiles
        (a stroke touches hundreds of small tiles of a large frame).
        """
        n = len(boxes)
        if not self.has_fg or n == 0:
            return np.zeros((n, tile, tile), np.float32)
        org = np.asarray([(b[0], b[1]) for b in boxes], np.int64).reshape(n, 2)
        off = np.arange(tile)
        xi = torch.from_numpy(np.minimum(org[:, 0, None] + off, self.W - 1))  # [n, tile]
        yi = torch.from_numpy(np.minimum(org[:, 1, None] + off, self.H - 1))
        if (self.w, self.h) == (self.W, self.H):
            a = self.alpha_map(t)[0, 0]
            return a[yi[:, :, None], xi[:, None, :]].numpy()
        gx, gy = torch.broadcast_tensors(self._xn[xi][:, None, :], self._yn[yi][:, :, None])
        grid = torch.stack([gx, gy], -1).reshape(1, n * tile, tile, 2)
        return self._sample(self.alpha_map(t), grid)[0].reshape(n, tile, tile).numpy()

    def alpha_at(self, t: int, xy: np.ndarray) -> np.ndarray:
        """Foreground alpha at source points [N, 2] of frame t: [N]."""
        if not self.has_fg or len(xy) == 0:
            return np.zeros(len(xy), np.float32)
        return self._sample(self.alpha_map(t), self._grid_points(xy))[0, 0].numpy()

    def uv_at(self, layer: str, t: int, xy: np.ndarray) -> np.ndarray:
        """Baked atlas uv at source points [N, 2] of frame t: [N, 2]."""
        return self._sample(self.uv_map(layer, t), self._grid_points(xy))[:, 0].T.numpy()

    def occlusion_weight(self, layer: str, t: int, box: Box) -> np.ndarray:
        """How much of an edit on ``layer`` shows at each pixel: 1-alpha (bg) or alpha (fg)."""
        a = self.alpha_box(t, box)
        return a if layer == "fg" else 1.0 - a

    @property
    def has_fg(self) -> bool:
        return "fg" in self.layers

    def auto_layer(self, t: int, xy: np.ndarray) -> str:
        """The layer seen at the drawing location (by the mean alpha there, see core.layers)."""
        if not self.has_fg:
            return "bg"
        return layer_at(np.mean(self.alpha_at(t, np.asarray(xy).reshape(-1, 2))))

    # -- geometry of the atlas ---------------------------------------------------------
    def px_per_uv(self, layer: str) -> float:
        """Typical source pixels per atlas unit on ``layer`` (median over a few frames).

        Turns uv distances into pixels (cycle tests) and sizes atlas-space textures.
        """
        if layer not in self._px_per_uv:
            vals = []
            sx, sy = self.W / self.w, self.H / self.h
            for t in np.unique(np.linspace(0, self.T - 1, min(self.T, 5)).round().astype(int)):
                uv = self.maps.uv[layer][t].astype(np.float64)
                du_dx = np.diff(uv, axis=1)[:-1] / sx
                du_dy = np.diff(uv, axis=0)[:, :-1] / sy
                det = np.abs(du_dx[..., 0] * du_dy[..., 1] - du_dx[..., 1] * du_dy[..., 0])
                if layer == "fg":
                    det = det[shows("fg", self.maps.alpha[t, :-1, :-1])]
                det = det[np.isfinite(det) & (det > 0)]
                if det.size:
                    vals.append(1.0 / np.sqrt(np.median(det)))
            self._px_per_uv[layer] = float(np.median(vals)) if vals else float(max(self.W, self.H)) / 2.0
        return self._px_per_uv[layer]

    # -- networks: batched, cached ---------------------------------------------------------
    def visible(self, layer: str, uv: np.ndarray, xy: np.ndarray, t: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Cycle-consistent and inside the frame (plus ``margin`` px): [N] bool."""
        back = self.mapping.forward(layer, xy, t)
        err_px = np.linalg.norm(np.asarray(back, np.float64) - uv, axis=-1) * self.px_per_uv(layer)
        inside = ((xy[:, 0] >= -margin) & (xy[:, 0] <= self.W + margin)
                  & (xy[:, 1] >= -margin) & (xy[:, 1] <= self.H + margin))
        return inside & (err_px < self.CYCLE_TOL_PX) & np.isfinite(xy).all(-1)

    def propagate(self, layer: str, xy: np.ndarray, t_from: int, frames: Sequence[int] | None = None,
                  uv: np.ndarray | None = None, refine: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Carry source points of frame ``t_from`` to other frames in one batched call.

        Returns (uv [N, 2], xy_t [F, N, 2], cycle-consistent [F, N]) for ``frames``
        (default: all). Visibility inside the frame is left to the caller (margins differ).
        ``uv`` (from an earlier call for the same points) skips the forward pass. Positions
        are refined against the drawing frame's pixels (:meth:`refine`) unless ``refine`` is
        False (default: ``refine_enabled``): tracks, strokes and stickers all come through here.
        """
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        frames = np.arange(self.T) if frames is None else np.asarray(frames, int)
        n, nf = len(xy), len(frames)
        if uv is None:
            uv = np.asarray(self.mapping.forward(layer, xy, np.full(n, float(t_from))), np.float64)
        uv_all = np.tile(uv, (nf, 1))
        t_all = np.repeat(frames.astype(np.float64), n)
        xy_all = np.asarray(self.mapping.inverse(layer, uv_all, t_all), np.float64)
        back = np.asarray(self.mapping.forward(layer, xy_all, t_all), np.float64)
        err_px = np.linalg.norm(back - uv_all, axis=-1) * self.px_per_uv(layer)
        ok = (err_px < self.CYCLE_TOL_PX) & np.isfinite(xy_all).all(-1)
        xy_all, ok = xy_all.reshape(nf, n, 2), ok.reshape(nf, n)
        if self.refine_enabled if refine is None else refine:
            xy_all = self._refine_sparse(layer, xy, t_from, frames, xy_all, ok)
        return uv, xy_all, ok

    def _refine_sparse(self, layer: str, xy0: np.ndarray, t_from: int, frames: np.ndarray, xy: np.ndarray,
                       ok: np.ndarray) -> np.ndarray:
        """Refined positions; beyond REFINE_MAX_POINTS points, matched on an even subset and spread."""
        return self.refine_sets(layer, t_from, frames, [(xy0, xy, ok)])[0]

    def refine_sets(self, layer: str, t_from: int, frames: np.ndarray,
                    sets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                    independent: bool = False) -> list[np.ndarray]:
        """Refine several point sets drawn on ``layer`` at ``t_from`` in ONE matching call.

        ``sets``: (xy0 [n, 2], xy [F, n, 2] propagated to ``frames``, cycle-consistent [F, n]).
        Each set (a stroke) is matched on at most REFINE_MAX_POINTS of its points and the others
        take the correction of their nearest matched neighbours *in the same set*, exactly as
        one :meth:`propagate` per set would; but the matching itself (grid samples, Gauss-
        Newton) runs once for all sets: why a frame with many strokes still costs one call.
        ``independent``: every frame matched as a call for it alone would match it
        (:meth:`refine_chained`), all frames in one batch (rendering a block of frames).
        """
        frames = np.asarray(frames, int)
        subs, starts, n_tot = [], [], 0
        for xy0, _, _ in sets:
            n = len(xy0)
            sub = (np.arange(n) if n <= self.REFINE_MAX_POINTS
                   else np.unique(np.linspace(0, n - 1, self.REFINE_MAX_POINTS).round().astype(int)))
            subs.append(sub)
            starts.append(n_tot)
            n_tot += len(sub)
        if n_tot == 0:
            return [np.array(xy, copy=True) for _, xy, _ in sets]
        x0_all = np.concatenate([np.asarray(x0, np.float64).reshape(-1, 2)[sub] for (x0, _, _), sub in zip(sets, subs)])
        xy_all = np.concatenate([xy[:, sub] for (_, xy, _), sub in zip(sets, subs)], axis=1)
        ok_all = np.concatenate([ok[:, sub] for (_, _, ok), sub in zip(sets, subs)], axis=1)
        r = self.refine_chained(layer, x0_all, t_from, frames, xy_all, ok_all, independent)
        out = []
        for (xy0, xy, _), sub, a in zip(sets, subs, starts):
            rxy, racc = r.xy[:, a:a + len(sub)], r.accepted[:, a:a + len(sub)]
            out.append(rxy if len(sub) == len(xy0) else self._smooth(xy, sub, rxy, racc))
        return out

    @staticmethod
    def _smooth(xy: np.ndarray, sub: np.ndarray, rxy: np.ndarray, racc: np.ndarray) -> np.ndarray:
        """Corrections of the matched subset ``sub`` as one smooth (robust affine) correction
        per frame, applied to every point of the set.

        Why not each matched point's own correction: one look-alike match among the 24 bent
        a stroke on a turning object into a visible wobble (each vertex took its nearest
        matches); the drift is smooth over a stroke, so the consensus of its matches is what
        to apply (core.refine.fit_correction drops the outliers).
        """
        out = np.array(xy, copy=True)
        for i in range(len(xy)):
            acc = np.flatnonzero(racc[i])
            corr = fit_correction(xy[i, sub[acc]], rxy[i, acc] - xy[i, sub[acc]])
            if corr is None:
                continue
            fin = np.isfinite(xy[i]).all(-1)
            out[i, fin] = xy[i, fin] + corr.at(xy[i, fin])
            # what the affine part leaves, from the consenting matches (inverse distance, 4 nearest)
            good = acc[corr.inliers]
            if len(good):
                res = rxy[i, good] - out[i, sub[good]]  # [m, 2]
                d2 = ((xy[i][:, None, :] - xy[i][sub[good]][None]) ** 2).sum(-1)  # [n, m]
                k = min(4, len(good))
                near = np.argsort(d2, axis=1)[:, :k]
                wn = 1.0 / (np.take_along_axis(d2, near, 1) + 1.0)
                add = (wn[..., None] * res[near]).sum(1) / wn.sum(1, keepdims=True)
                out[i, fin] += add[fin]
        return out

    def refine_chained(self, layer: str, xy0: np.ndarray, t_from: int, frames: np.ndarray, xy: np.ndarray,
                       ok: np.ndarray, independent: bool = False) -> Refined:
        """:meth:`refine`; a frame far from ``t_from`` where too few points match from the
        mapping's place (CHAIN_BELOW of its points, and of what the link itself matched) is
        matched again from the correction its chain link measured (core.refine.chain_parent;
        links cached per point set), and the better kept.

        Why: the mapping's drift on a turning object 20-47 frames away is beyond one search
        range; a link 8 frames nearer has measured most of it. Rendering refines one frame at
        a time, so the links are what carries the correction out; each is matched (and its
        frame decoded) once, and only where the direct match fails: the background's drift
        stays within one search range and never needs them.

        ``independent``: each frame's result is the one a call for that frame alone gives
        (its matches core.refine.refine_independent's, its links its own), whatever other
        frames share the call: a render worker refines a block of frames at once.
        """
        frames = np.asarray(frames, int)
        direct = self.CHAIN_BELOW is not None
        self.chain((layer, int(t_from), hash(np.ascontiguousarray(xy0, np.float64).tobytes())), int(t_from))
        r = self.refine(layer, xy0, t_from, frames, xy, ok, confirmed=False, independent=independent) \
            if direct else None
        need = []
        for i, f in enumerate(frames):
            if chain_parent(int(f), t_from) is None:
                continue
            n_ok = int((ok[i] & np.isfinite(xy[i]).all(-1)).sum())
            if not direct or (n_ok and r.accepted[i].sum() < self.CHAIN_BELOW * n_ok):
                need.append(i)
        if not need:
            return self.trust_confirmed(layer, frames, xy, r if r is not None
                                        else self.refine(layer, xy0, t_from, frames, xy, ok, confirmed=False,
                                                         independent=independent))
        prior = np.zeros_like(xy)
        keep = []
        for i in need:
            prior[i], n_link = self._link(layer, xy0, t_from, chain_parent(int(frames[i]), t_from))
            # matched again only where the direct match falls clearly short of what the link
            # matched: points flat, hidden or poor at every start fail either way (measured on
            # box.mp4: 1 of 24 stroke points matched both ways in 111 of 120 frames, and the
            # second match doubled the refinement of every far frame)
            if not direct or r.accepted[i].sum() < self.CHAIN_BELOW * n_link:
                keep.append(i)
        need = keep
        if not need:
            return self.trust_confirmed(layer, frames, xy, r)
        if r is None:
            r = self.refine(layer, xy0, t_from, frames, xy + prior, ok, confirmed=False, independent=independent)
            rows = np.arange(len(frames))
        else:
            rows = np.array(need)
            r2 = self.refine(layer, xy0, t_from, frames[rows], (xy + prior)[rows], ok[rows], confirmed=False,
                             independent=independent)
            better = r2.accepted.sum(1) > r.accepted[rows].sum(1)
            rows = rows[better]
            r.xy[rows], r.accepted[rows], r.ncc[rows] = r2.xy[better], r2.accepted[better], r2.ncc[better]
        # rejected points keep the mapping's position (as without links); shifts are the mapping's
        r.xy[rows] = np.where(r.accepted[rows][..., None], r.xy[rows], xy[rows])
        r.shift[rows] = np.where(r.accepted[rows], np.linalg.norm(r.xy[rows] - xy[rows], axis=-1), 0.0)
        return self.trust_confirmed(layer, frames, xy, r)

    def _link(self, layer: str, xy0: np.ndarray, t_from: int, t: int) -> tuple[np.ndarray, int]:
        """Correction [n, 2] of the mapping at chain link t for points xy0 drawn at t_from (cached),
        and how many points were matched there.

        Matched from the previous link's correction; a point not accepted here keeps that one
        (the drift is smooth), so one hidden link does not break the chain.
        """
        key = (layer, int(t_from), hash(np.ascontiguousarray(xy0, np.float64).tobytes()), int(t))
        if key not in self._links:
            parent = chain_parent(t, t_from)
            prior = self._link(layer, xy0, t_from, parent)[0] if parent is not None else np.zeros_like(xy0)
            _, pxy, pok = self.propagate(layer, xy0, t_from, frames=[t], refine=False)
            rr = self.refine(layer, xy0, t_from, np.array([t]), (pxy[0] + prior)[None], pok, confirmed=False)
            self._links[key] = (np.where(rr.accepted[0][:, None], rr.xy[0] - pxy[0], prior),
                                int(rr.accepted[0].sum()))
            while len(self._links) > self.LINK_CACHE:
                self._links.pop(next(iter(self._links)))
        return self._links[key]

    #: chains remembered for :meth:`visit` (the most recent ones)
    CHAINS = 32

    def chain(self, key: tuple, t_from: int) -> None:
        """Remember a chain of matches from ``t_from`` (a point set, a texture's anchors) for
        :meth:`visit`."""
        self._chains[key] = int(t_from)
        self._chains.move_to_end(key)
        while len(self._chains) > self.CHAINS:
            self._chains.popitem(last=False)

    def forget_chains(self) -> None:
        """Forget the chains seen so far and the link frames :meth:`visit` kept for them (the
        links matched stay cached)."""
        self._chains.clear()
        if self._levels is not None:
            for lv in self._levels:
                lv.unpin()

    def visit(self, t: int) -> None:
        """A pass in frame order is at frame t, decoded: keep its grey levels if it is a chain
        link of a chain seen so far, so that the link can be matched whenever a later frame
        needs it.

        Why: a link is matched only when a later frame needs it (most never are: the direct
        match suffices), and needs its own parent link first; by then its frame has long left
        the decoder's cache, and a decoder asked for a frame behind it restarts from the
        clip's start (each restart of a 458-frame pass re-decoded hundreds of frames).
        Matching every link as the pass goes by would cost a match per link frame and chain
        in every worker; keeping their pixels costs a grey conversion. Forward chains only
        (a pass moves forward).
        """
        if not self.refine_enabled:
            return
        for t_from in list(self._chains.values()):
            d = int(t) - t_from
            if d >= CHAIN_STRIDE and d % CHAIN_STRIDE == 0:
                for lv in self.levels():
                    lv.pin(int(t))
                return

    def cycle_error_px(self, layer: str, uv: np.ndarray, xy: np.ndarray) -> np.ndarray:
        """forward(xy_t) vs the points' uv [N, 2], source px, for positions xy [F, N, 2] of all frames."""
        F_, n = xy.shape[:2]
        t_all = np.repeat(np.arange(F_, dtype=np.float64), n)
        back = np.asarray(self.mapping.forward(layer, xy.reshape(-1, 2), t_all), np.float64)
        err = np.linalg.norm(back - np.tile(uv, (F_, 1)), axis=-1) * self.px_per_uv(layer)
        return err.reshape(F_, n)

    # -- photometric refinement ------------------------------------------------------------
    #: the pixels' say on which layer shows (:meth:`layer_evidence`): the largest log likelihood
    #: ratio granted, so that they decide only where alpha is unsure (0.12-0.88: the soft edge)
    EVIDENCE_CAP = 2.0
    #: colour noise (rms, 0..1) assumed where the project records no reconstruction PSNR, and
    #: its floor: two bilinear samples of a sharp texture at different sub-pixel phases differ
    #: by a few percent even where the position is exact
    EVIDENCE_NOISE = 0.05
    EVIDENCE_NOISE_MIN = 0.03
    #: ... and only within this many working pixels of the fitted alpha's edge
    EVIDENCE_EDGE = 2.0

    def evidence_noise(self) -> float:
        """Rms colour residual the fit leaves (from its reconstruction PSNR), at least EVIDENCE_NOISE_MIN:
        how far a pixel may be from what explains it (noise, lighting, misfit)."""
        if not hasattr(self, "_evidence_noise"):
            try:
                psnr = float(self.project.metrics().get("psnr"))
                self._evidence_noise = max(self.EVIDENCE_NOISE_MIN, 10.0 ** (-psnr / 20.0))
            except (TypeError, ValueError, InveError, OSError):
                self._evidence_noise = self.EVIDENCE_NOISE
        return self._evidence_noise

    def _rgb(self, t: int) -> torch.Tensor:
        """Source frame t as float32 [1, 3, H, W] in 0..1 (the drawing frame and the current
        one kept: a source frame is big)."""
        cache = self.__dict__.setdefault("_rgb_cache", OrderedDict())
        if int(t) not in cache:
            while len(cache) >= 3:
                cache.popitem(last=False)
            cache[int(t)] = torch.from_numpy(np.asarray(self.frames[int(t)], np.float32) / 255.0).permute(2, 0, 1)[None]
        cache.move_to_end(int(t))
        return cache[int(t)]

    def _atlas(self, layer: str) -> torch.Tensor:
        """The baked atlas of ``layer`` as float32 [1, 3, A, A] (converted once)."""
        cache = self.__dict__.setdefault("_atlas_cache", {})
        if layer not in cache:
            cache[layer] = torch.from_numpy(np.asarray(self.maps.atlas[layer], np.float32)).permute(2, 0, 1)[None]
        return cache[layer]

    def layer_evidence(self, layer: str, t: int, xy: np.ndarray, t0: int, xy0: np.ndarray,
                       alpha: np.ndarray | None = None) -> np.ndarray:
        """Log likelihood ratio [N], from the pixels, that the foreground (not the background)
        is what shows at positions ``xy`` [N, 2] of frame t of points of ``layer`` drawn at
        ``xy0`` [N, 2] of frame ``t0`` (for :func:`core.layers.shows`' ``evidence``). Given
        the ``alpha`` there, only points whose decision the capped evidence can change are
        measured (0 elsewhere).

        The pixels around each position (a Gaussian of one working pixel) against two
        explanations: the point's own appearance (the drawing frame around ``xy0``, where it
        was visible), or the other layer: its baked atlas where its uv map puts those pixels,
        or (as likely) an unknown colour, since where the fitted alpha is wrong the other
        layer's atlas was never fitted to them. Colours are Gaussian about what explains them
        with the fit's own residual (:meth:`evidence_noise`), the unknown uniform over the
        colour cube. Why: the fitted alpha's edge lags the object's by about a pixel, so points
        up to 1.5 px under the object's edge were called visible on alpha alone. Measured on
        the benchmark fit, where alpha is unsure: the own appearance's rms residual is 0.003
        (median; 0.03 at the 90th percentile) where the point shows, 0.2 (0.1 at the 10th)
        where it is hidden; the other layer's atlas explains only 86 % of the hidden ones better.
        """
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        xy0 = np.asarray(xy0, np.float64).reshape(-1, 2)
        out = np.zeros(len(xy))
        todo = np.isfinite(xy).all(-1)
        if not self.has_fg:
            return out
        if alpha is not None:
            a = np.clip(np.asarray(alpha, np.float64), 1e-6, 1.0 - 1e-6)
            todo &= np.abs(np.log(a / (1.0 - a)) - math.log(VISIBLE_ALPHA / (1.0 - VISIBLE_ALPHA))) < self.EVIDENCE_CAP
        # only by the fitted edge (the alpha within EVIDENCE_EDGE working px crosses one half):
        # where a poor fit's alpha is soft over a whole region (a deforming, re-lit body) the
        # point's appearance changes for other reasons than an occluder
        if todo.any():
            r = self.EVIDENCE_EDGE * max(self.W / self.w, self.H / self.h)
            ring = np.array([[1, 0], [-1, 0], [0, 1], [0, -1], [0.7071, 0.7071], [-0.7071, -0.7071],
                             [0.7071, -0.7071], [-0.7071, 0.7071]]) * r
            idx = np.flatnonzero(todo)
            q = (xy[idx][:, None, :] + ring[None]).reshape(-1, 2)
            ar = self.alpha_at(int(t), np.clip(q, 0, [self.W, self.H])).reshape(len(idx), -1)
            todo[idx] = (ar.min(1) <= VISIBLE_ALPHA) & (ar.max(1) > VISIBLE_ALPHA)
        if not todo.any():
            return out
        xy, xy0 = xy[todo], xy0[todo]
        other = "bg" if layer == "fg" else "fg"
        e = 0.5 * max(self.W / self.w, self.H / self.h)
        k = torch.tensor([-e, 0.0, e])
        oy, ox = torch.meshgrid(k, k, indexing="ij")
        offs = torch.stack([ox, oy], -1).reshape(-1, 2)  # [9, 2] source px
        wgt = torch.exp(-(offs ** 2).sum(-1) / (2 * e * e))
        wgt = wgt / wgt.sum()
        scale = torch.tensor([2.0 / self.W, 2.0 / self.H])

        def grid(p: np.ndarray) -> torch.Tensor:
            q = torch.from_numpy(np.nan_to_num(p).astype(np.float32))[:, None, :] + offs[None]
            return (q * scale - 1.0).reshape(1, len(p), -1, 2)

        g = grid(np.clip(xy, 0, [self.W, self.H]))
        seen = self._sample(self._rgb(t), g)  # [3, N, 9]
        # the same surface pixels in the drawing frame: offsets through the local warp
        # (d x_t0 / d x_t from the baked uv maps; zoom and roll move the outer samples by
        # a quarter pixel, a turning object by more)
        J0 = self._uv_jacobian(layer, t0, xy0)
        Jt = self._uv_jacobian(layer, int(t), xy)
        with np.errstate(all="ignore"):
            back = np.linalg.solve(J0, Jt)  # [N, 2, 2]
        back = np.where(np.isfinite(back).all((-1, -2), keepdims=True), back, np.eye(2))
        o0 = np.einsum("nij,pj->npi", back, offs.numpy().astype(np.float64))  # [N, 9, 2]
        q0 = torch.from_numpy((xy0[:, None, :] + o0).astype(np.float32))
        own = self._sample(self._rgb(t0), (q0 * scale - 1.0)[None])
        uv = self._sample(self.uv_map(other, t), g)  # [2, N, 9]
        pred = self._sample(self._atlas(other), uv.permute(1, 2, 0)[None])
        # compared by the window's mean colour: sharp texture sampled at two sub-pixel phases
        # (and filtered at two zooms) differs sample by sample where the position is exact
        seen, own, pred = ((v * wgt).sum(-1) for v in (seen, own, pred))  # [3, N]
        e_own = ((seen - own) ** 2).mean(0)
        e_other = ((seen - pred) ** 2).mean(0)
        # log densities of the three colour channels (squared distance 3 e, sigma per channel)
        s2 = self.evidence_noise() ** 2
        norm = -1.5 * math.log(2.0 * math.pi * s2)
        e_own, e_other = (np.asarray(e.numpy(), np.float64) for e in (e_own, e_other))
        log_own = norm - 3.0 * e_own / (2.0 * s2)
        log_other = np.logaddexp(norm - 3.0 * e_other / (2.0 * s2), 0.0) - math.log(2.0)
        llr = log_own - log_other  # for the point's own layer
        llr = np.clip(np.nan_to_num(llr), -self.EVIDENCE_CAP, self.EVIDENCE_CAP)
        out[todo] = -llr if layer == "bg" else llr
        return out

    def shown_at(self, layer: str, t: int, xy: np.ndarray) -> np.ndarray:
        """Whether ``layer`` is the visible one at source points [N, 2] of frame t (core.layers)."""
        return np.asarray(shows(layer, self.alpha_at(t, np.clip(xy, 0, [self.W, self.H]))))

    def refine(self, layer: str, xy0: np.ndarray, t_from: int, frames: np.ndarray, xy: np.ndarray,
               ok: np.ndarray, confirmed: bool = True, independent: bool = False) -> Refined:
        """Refine propagated positions xy [F, N, 2] of points xy0 [N, 2] drawn at ``t_from``.

        Points are matched where they are cycle-consistent (``ok``), inside the frame and on
        their own layer; the local warp comes from the baked uv maps (no network call).
        Near keys the user confirmed, the refinement fades out (:meth:`trust_confirmed`)
        unless ``confirmed`` is False (a caller that applies that itself, once).
        ``independent``: every frame matched on its own, all in one batch
        (core.refine.refine_independent: a frame's result does not depend on the others in
        the call; rendering), else frames outward from ``t_from`` each started from the
        nearest matched frame's correction (core.refine.refine_positions; tracks).
        """
        xy0 = np.asarray(xy0, np.float64).reshape(-1, 2)
        frames = np.asarray(frames, int)
        # inside the frame and on the point's layer: tested by refine_positions where the
        # correction carried from the nearest matched frame puts the point (not the raw mapping)
        valid = np.asarray(ok, bool) & np.isfinite(xy).all(-1)
        jac = np.zeros(xy.shape + (2,))
        J0 = self._drawing_jacobian(layer, int(t_from), xy0)
        for i, t in enumerate(frames):
            Jt = self._uv_jacobian(layer, int(t), xy[i])
            det = Jt[:, 0, 0] * Jt[:, 1, 1] - Jt[:, 0, 1] * Jt[:, 1, 0]
            inv = np.stack([np.stack([Jt[:, 1, 1], -Jt[:, 0, 1]], -1), np.stack([-Jt[:, 1, 0], Jt[:, 0, 0]], -1)], -2)
            with np.errstate(all="ignore"):
                jac[i] = np.where(np.abs(det)[:, None, None] > 1e-12, inv / det[:, None, None], np.nan) @ J0
        good = np.isfinite(jac).all((-1, -2)) & (np.abs(np.linalg.det(np.nan_to_num(jac))) > 1e-3)
        fn = refine_independent if independent or len(frames) == 1 else refine_positions
        r = fn(self.levels(), t_from, xy0, frames, xy, jac, valid & good, mask=self._layer_mask(layer),
               cfg=self.refine_cfg)
        return self.trust_confirmed(layer, frames, xy, r) if confirmed else r

    def trust_confirmed(self, layer: str, frames: np.ndarray, xy: np.ndarray, r: Refined) -> Refined:
        """Fade the refinement ``r`` of positions ``xy`` [F, N, 2] out near confirmed keys.

        The weight of the refinement rises smoothly (smoothstep) from 0 within
        CONFIRMED_TRUST_PX of the nearest key of that frame and layer (distance from the
        mapping's position, which the fine-tuning carried onto the key) to 1 at
        CONFIRMED_FADE times that; frames around and between a track's keys trust where the
        mapping carries the nearest key, less with the frames beyond the keys
        (:meth:`_confirmed_spread`); other frames, and points beyond, are untouched.
        """
        if not self.confirmed:
            return r
        near, far = self.CONFIRMED_TRUST_PX, self.CONFIRMED_TRUST_PX * self.CONFIRMED_FADE
        spread = self._confirmed_spread()
        for i, t in enumerate(np.asarray(frames, int)):
            keys = self.confirmed.get((layer, int(t)))
            if keys is not None:
                keys, tau = keys, np.ones(len(keys))
            elif (layer, int(t)) in spread:
                keys, tau = spread[(layer, int(t))]
            else:
                continue
            d = np.sqrt(((xy[i][:, None, :] - keys[None]) ** 2).sum(-1))  # [N, k]
            s = np.clip((np.nan_to_num(d, nan=far) - near) / (far - near), 0.0, 1.0)
            trust = ((1.0 - s * s * (3.0 - 2.0 * s)) * tau[None]).max(1)  # the most trusting key
            w = 1.0 - trust
            if (w < 1.0).any():
                fin = np.isfinite(xy[i]).all(-1) & np.isfinite(r.xy[i]).all(-1)
                r.xy[i, fin] = xy[i, fin] + w[fin, None] * (r.xy[i, fin] - xy[i, fin])
                r.shift[i] = r.shift[i] * w
        return r

    def _confirmed_spread(self) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
        """Where each confirmed track is on the frames around and between its keys.

        A frame between a track's first and last key trusts it fully; beyond them the trust
        falls smoothly to 0 over CONFIRMED_FRAMES frames. The position is the nearest key
        carried by the fine-tuned mapping (no refinement: that is what is being overruled);
        frames where that carry is not cycle-consistent get no trust.
        """
        if self._confirmed_cache is not None:
            return self._confirmed_cache
        spread: dict[tuple[str, int], tuple[list, list]] = {}
        W = max(1, int(self.CONFIRMED_FRAMES))
        for tr in self.confirmed_tracks:
            tk = np.asarray(tr.t, int)
            lo, hi = int(tk.min()), int(tk.max())
            frames = np.array([f for f in range(max(0, lo - W), min(self.T, hi + W + 1)) if f not in set(tk.tolist())])
            if len(frames) == 0:
                continue
            nearest = np.abs(frames[:, None] - tk[None]).argmin(1)
            beyond = np.maximum(lo - frames, frames - hi).clip(min=0) / float(W + 1)
            tau = 1.0 - beyond * beyond * (3.0 - 2.0 * beyond)
            for k in np.unique(nearest):
                sel = frames[nearest == k]
                _, pos, ok = self.propagate(tr.layer, tr.xy[k][None], int(tk[k]), frames=sel, refine=False)
                for j, f in enumerate(sel):
                    if ok[j, 0] and np.isfinite(pos[j, 0]).all():
                        xs, ts = spread.setdefault((tr.layer, int(f)), ([], []))
                        xs.append(pos[j, 0])
                        ts.append(float(tau[frames == f][0]))
        self._confirmed_cache = {key: (np.asarray(xs, np.float64).reshape(-1, 2), np.asarray(ts, np.float64))
                        for key, (xs, ts) in spread.items()}
        return self._confirmed_cache

    def _drawing_jacobian(self, layer: str, t: int, xy: np.ndarray) -> np.ndarray:
        """:meth:`_uv_jacobian` at a point set's drawing frame, kept for the last few sets: a
        render pass matches the same set in every frame (a stroke, a texture's anchors)."""
        key = (layer, t, xy.tobytes())
        J = self._j0.get(key)
        if J is None:
            J = self._j0[key] = self._uv_jacobian(layer, t, xy)
            while len(self._j0) > 32:
                self._j0.popitem(last=False)
        return J

    def _uv_jacobian(self, layer: str, t: int, xy: np.ndarray) -> np.ndarray:
        """d uv / d xy of the baked map at source points [N, 2] of frame t: [N, 2, 2] (columns d/dx, d/dy)."""
        h = max(1.0, self.W / self.w)
        pts = np.concatenate([xy + (h, 0), xy - (h, 0), xy + (0, h), xy - (0, h)])
        uv = self.uv_at(layer, t, pts).astype(np.float64).reshape(4, -1, 2)
        return np.stack([(uv[0] - uv[1]) / (2 * h), (uv[2] - uv[3]) / (2 * h)], -1)

    def _layer_mask(self, layer: str):
        """The layer's mask sampler for refinement (None without a foreground): one object per
        layer, kept, so that core.refine can keep the templates it weighted."""
        if not self.has_fg:
            return None
        if layer not in self._masks:
            self._masks[layer] = self._make_layer_mask(layer)
        return self._masks[layer]

    def _make_layer_mask(self, layer: str):

        # the layer's pixels less a band of MASK_ERODE working pixels along its edge: the
        # fitted alpha's edge lags the object's by about a pixel, and the occluder's pixels in
        # that band, counted as the point's own layer, dragged matches along the occluder's
        # edge (3 px off at NCC 0.99 on the benchmark), one small step per frame
        e = self.MASK_ERODE * max(self.W / self.w, self.H / self.h)
        offs = torch.tensor([[0.0, 0.0], [e, 0.0], [-e, 0.0], [0.0, e], [0.0, -e]])

        def mask(t: int, pos: torch.Tensor) -> torch.Tensor:
            q = pos.reshape(1, -1, 2)[None] + offs[:, None, None, :].reshape(1, 5, 1, 2)
            g = q.reshape(1, 5, -1, 2) * torch.tensor([2.0 / self.W, 2.0 / self.H]) - 1.0
            a = self._sample(self.alpha_map(t), g.float())[0]  # [5, n]
            a = a.max(0).values if layer == "bg" else a.min(0).values
            return shows(layer, a).float().reshape(pos.shape[:-1])
        return mask

    def levels(self) -> list[Level]:
        """Grey frame pyramid for refinement: the working resolution (if smaller), then the source.

        The source frames come from ``self.frames`` (the FrameSource that compositing reads, with
        its LRU cache: no second decode); the working level is an area resize of the source
        level's grey image (converted once per frame, kept in that level's small cache).
        """
        if self._levels is None:
            import cv2  # noqa: PLC0415

            src = Level(lambda t: grey(self.frames[t]), 1.0, (self.W, self.H))
            self._levels = [src]
            if max(self.W / self.w, self.H / self.h) > 1.2:
                work = Level(lambda t: torch.from_numpy(cv2.resize(src.image(t)[0, 0].numpy(), (self.w, self.h),
                                                                   interpolation=cv2.INTER_AREA))[None, None],
                             max(self.W / self.w, self.H / self.h), (self.W, self.H))
                self._levels = [work, src]
        return self._levels

    def warm(self, frames: Sequence[int]) -> None:
        """Decode ``frames`` (in the order given) into the refinement's frame caches now.

        Why: a frame far from the drawing frame is matched after its chain links, which lie
        between the two; asked for in that order, a decoder moving forward would restart
        (from the clip's start) for each link. Callers that know the frames ahead (the seams
        of a segmented project) ask for them in frame order first.
        """
        levels = self.levels()
        for t in frames:
            if 0 <= int(t) < self.T:
                for lv in levels:
                    lv.image(int(t))

    def handover(self, frames: Sequence[int]) -> dict[str, Any]:
        """What the refinement has found here that another process rendering the same frames
        would otherwise match and decode again: the chain links matched so far and the grey
        levels of ``frames`` (drawing frames) that are at hand (none decoded for it).

        Why: a segmented pass carries each seam in the parent while forked workers render
        (core.segments): the parent matched every chain link of a segment's strokes while
        carrying out of it, and the workers' decoders have long passed the drawing frame.
        """
        levels = []
        for lv in self._levels or []:
            got = {int(t): lv._pinned.get(int(t), lv._cache.get(int(t))) for t in frames}
            levels.append({t: img for t, img in got.items() if img is not None})
        return {"links": dict(self._links), "levels": levels}

    def take_over(self, state: dict[str, Any]) -> None:
        """Adopt :meth:`handover` of the same segment from another process (what is known
        here stays)."""
        for key, v in state["links"].items():
            self._links.setdefault(key, v)
        for lv, imgs in zip(self.levels() if state["levels"] else [], state["levels"]):
            for t, img in imgs.items():
                if t not in lv._cache and t not in lv._pinned:
                    while len(lv._cache) >= lv.KEEP:
                        lv._cache.pop(next(iter(lv._cache)))
                    lv._cache[t] = img

    def inverse_rect(self, layer: str, t: int, rect: tuple[float, float, float, float], Rw: int, Rh: int) -> torch.Tensor:
        """Source position of every texel of an Rh x Rw grid over the uv ``rect`` at frame t: [2, Rh, Rw].

        One network call per (layer, frame, rectangle) on at most INVERSE_GRID^2 points;
        finer grids are bilinear upsamples (the inverse mapping is smooth).
        """
        key = (layer, t, rect, Rw, Rh)
        if key not in self._inv_cache:
            gw, gh = min(Rw, self.INVERSE_GRID), min(Rh, self.INVERSE_GRID)
            u0, v0, u1, v1 = rect
            cu = u0 + (np.arange(gw) + 0.5) * (u1 - u0) / gw
            cv = v0 + (np.arange(gh) + 0.5) * (v1 - v0) / gh
            u, v = np.meshgrid(cu, cv)
            uv = np.stack([u, v], -1).reshape(-1, 2)
            xy = np.asarray(self.mapping.inverse(layer, uv, np.full(len(uv), float(t))), np.float32)
            grid = torch.from_numpy(xy.reshape(gh, gw, 2)).permute(2, 0, 1).contiguous()
            if (gw, gh) != (Rw, Rh):
                grid = F.interpolate(grid[None], size=(Rh, Rw), mode="bilinear", align_corners=False)[0]
            self._inv_cache[key] = grid
        return self._inv_cache[key]

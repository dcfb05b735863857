"""The layered atlas model: per-layer forward/inverse mappings and atlases, one alpha field.

Every network is a hash grid feeding a small MLP (a :class:`Field`). Mappings are
*residuals on a similarity*: at initialisation the forward mapping of each layer is the
frame itself, scaled into the middle of the atlas (``uv = s * p``), and the inverse mapping
its exact inverse. So training starts from a valid layered decomposition (no LNA-style
pretraining stage) and a static scene needs no mapping change at all.

Internal coordinates: ``p`` = frame position normalised so the longest side spans [-1, 1]
(aspect kept: a 4:3 frame spans [-1, 1] x [-0.75, 0.75]); ``t`` = project frame index;
``uv`` = atlas position in [-1, 1]^2. :class:`ModelMapping` converts to and from source
pixels for the rest of the engine, through :mod:`core.coords`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.coords import SourceCoords
from core.encoding import backend_name, make_grid
from core.errors import InveError
from core.hashgrid import HashGrid, HashGridConfig


@dataclass
class ModelConfig:
    n_frames: int
    work_size: tuple[int, int]  # (w, h)
    layers: tuple[str, ...] = ("bg", "fg")
    uv_scale: float = 0.6  # atlas units per unit of normalised frame position
    hidden: int = 64  # atlas MLPs
    map_hidden: int = 32  # mapping and alpha MLPs
    map_levels: int = 8
    map_log2_table: int = 17  # large enough that every mapping level is dense (no collisions)
    # Finest spatial cells across the frame for the mappings. The background moves with the
    # camera and must bridge the holes the foreground leaves in the optical flow, so its
    # mapping is kept coarse; the foreground may bend (a hand, a turning cup).
    map_max_res: dict[str, int] = field(default_factory=lambda: {"bg": 16, "fg": 32})
    alpha_levels: int = 10
    alpha_log2_table: int = 18
    alpha_max_res: int = 0  # 0: a third of the working resolution's long side
    atlas_levels: int = 14
    atlas_log2_table: int = 18
    atlas_max_res: int = 0  # 0: ``atlas_cells_per_px`` cells per working pixel
    atlas_cells_per_px: float = 1.5
    backend: str = "torch"

    @property
    def aspect(self) -> tuple[float, float]:
        w, h = self.work_size
        m = float(max(w, h))
        return w / m, h / m

    def grid_configs(self) -> dict[str, HashGridConfig]:
        w, h = self.work_size
        long_side = max(w, h)
        t_res = max(1, self.n_frames - 1)
        ax, ay = self.aspect
        alpha_res = self.alpha_max_res or max(16, long_side // 3)
        # the long side (long_side px) spans 2 * uv_scale of the atlas' 2 units
        atlas_res = self.atlas_max_res or int(self.atlas_cells_per_px * long_side / self.uv_scale)
        return {
            **{f"map_{L}": HashGridConfig(3, self.map_levels, 2, self.map_log2_table, base_res=[2, 2, min(4, t_res)],
                                          max_res=[r * ax, r * ay, t_res]) for L, r in self.map_max_res.items()},
            # Inverse mappings have no rigidity to respect, only the cycle to fit: twice as fine.
            **{f"inv_{L}": HashGridConfig(3, self.map_levels, 2, self.map_log2_table, base_res=[2, 2, min(4, t_res)],
                                          max_res=[2 * r * ax, 2 * r * ay, t_res]) for L, r in self.map_max_res.items()},
            "alpha": HashGridConfig(3, self.alpha_levels, 2, self.alpha_log2_table, base_res=[8, 8, min(4, t_res)],
                                    max_res=[alpha_res * ax, alpha_res * ay, t_res]),
            "atlas": HashGridConfig(2, self.atlas_levels, 2, self.atlas_log2_table, base_res=8,
                                    max_res=atlas_res),
        }


class Field(nn.Module):
    """Hash grid + small MLP. ``zero_init`` makes the output start at exactly zero (residuals)."""

    def __init__(self, grid_cfg: HashGridConfig, out_dim: int, hidden: int, n_hidden: int = 2,
                 zero_init: bool = False, device: str = "cpu", backend: str = "torch") -> None:
        super().__init__()
        self.grid = make_grid(grid_cfg, device, backend)
        layers: list[nn.Module] = []
        width = self.grid.output_dim
        for _ in range(n_hidden):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        last = nn.Linear(width, out_dim)
        if zero_init:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last)
        n_levels = grid_cfg.n_levels
        self.register_buffer("level_weights", torch.ones(n_levels * grid_cfg.n_features), persistent=False)
        self.active_levels = n_levels  # levels with a non-zero weight (the first ones)
        self.full_detail = True  # every level at weight 1: nothing to weigh

    def set_active_levels(self, active: float) -> None:
        """Coarse-to-fine (as in BARF): levels below ``active`` count fully, the next fades in.

        Early in training an atlas that only has its coarse levels is smooth, so the
        reconstruction pulls mappings along wide basins instead of freezing each frame's copy
        of an object into its own place in the atlas ("ghosts").
        """
        cfg = self.grid.cfg
        lv = torch.arange(cfg.n_levels, dtype=torch.float32)
        w = (1 - torch.cos(torch.pi * (active - lv).clamp(0.0, 1.0))) / 2
        self.level_weights.copy_(w.repeat_interleave(cfg.n_features).to(self.level_weights.device))
        self.active_levels = max(1, int((w > 0).sum()))
        self.full_detail = bool((w == 1).all())

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        if self.full_detail:
            return self.mlp(self.grid(x01))
        if not isinstance(self.grid, HashGrid):  # tinycudann evaluates every level anyway
            return self.mlp(self.grid(x01) * self.level_weights)
        # Levels switched off (weight 0) are not evaluated at all: no gather, no scatter, and
        # the first layer only reads the active levels' columns. Same values and gradients as
        # weighing every level (an off level's features and table gradient are zero either way).
        k = self.active_levels * self.grid.cfg.n_features
        first = self.mlp[0]
        h = F.linear(self.grid(x01, self.active_levels) * self.level_weights[:k], first.weight[:, :k], first.bias)
        return self.mlp[1:](h)


class LayeredAtlasModel(nn.Module):
    def __init__(self, cfg: ModelConfig, device: str = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        g = cfg.grid_configs()
        kw = dict(hidden=cfg.hidden, device=device, backend=cfg.backend)
        small = dict(hidden=cfg.map_hidden, n_hidden=1, device=device, backend=cfg.backend)
        # Mappings and alpha are smooth: the grid carries the detail, one small hidden layer is enough.
        self.forward_maps = nn.ModuleDict({L: Field(g[f"map_{L}"], 2, zero_init=True, **small) for L in cfg.layers})
        self.inverse_maps = nn.ModuleDict({L: Field(g[f"inv_{L}"], 2, zero_init=True, **small) for L in cfg.layers})
        self.atlases = nn.ModuleDict({L: Field(g["atlas"], 3, **kw) for L in cfg.layers})
        self.alpha_field = Field(g["alpha"], 1, **small) if "fg" in cfg.layers else None
        ax, ay = cfg.aspect
        self.register_buffer("aspect_v", torch.tensor([ax, ay], dtype=torch.float32), persistent=False)
        self.to(device)

    # -- coordinate helpers ------------------------------------------------------------
    def _t01(self, t: torch.Tensor) -> torch.Tensor:
        return (t / max(1, self.cfg.n_frames - 1)).unsqueeze(1)

    def _p01(self, p: torch.Tensor) -> torch.Tensor:
        return p / (2 * self.aspect_v) + 0.5

    # -- networks ----------------------------------------------------------------------
    def uv(self, layer: str, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward mapping M_layer: normalised frame position + frame -> atlas uv."""
        x = torch.cat([self._p01(p), self._t01(t)], dim=1)
        return self.cfg.uv_scale * p + self.forward_maps[layer](x)

    def inverse(self, layer: str, uv: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Inverse mapping B_layer: atlas uv + frame -> normalised frame position."""
        x = torch.cat([uv * 0.5 + 0.5, self._t01(t)], dim=1)
        return uv / self.cfg.uv_scale + self.inverse_maps[layer](x)

    def atlas(self, layer: str, uv: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.atlases[layer](uv * 0.5 + 0.5))

    def alpha(self, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.alpha_field is None:
            return torch.zeros(p.shape[0], device=p.device)
        x = torch.cat([self._p01(p), self._t01(t)], dim=1)
        return torch.sigmoid(self.alpha_field(x).squeeze(1))

    def reconstruct(self, p: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Composite colour, per-layer uv, alpha."""
        uvs = {L: self.uv(L, p, t) for L in self.cfg.layers}
        bg = self.atlas("bg", uvs["bg"])
        if "fg" not in self.cfg.layers:
            return bg, uvs, torch.zeros(p.shape[0], device=p.device)
        a = self.alpha(p, t)
        fg = self.atlas("fg", uvs["fg"])
        return a.unsqueeze(1) * fg + (1 - a.unsqueeze(1)) * bg, uvs, a

    def set_atlas_detail(self, fraction: float, first_levels: int = 4) -> None:
        """Atlas levels in use: ``first_levels`` at 0, all of them at 1 (see Field.set_active_levels)."""
        for field_ in self.atlases.values():
            total = field_.grid.cfg.n_levels
            field_.set_active_levels(first_levels + fraction * (total - first_levels + 1))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, so the trainer can give tables, MLPs and mappings their own rates."""
        groups: dict[str, list[nn.Parameter]] = {"map_tables": [], "map_mlps": [], "tables": [], "mlps": []}
        for name, param in self.named_parameters():
            is_table = name.endswith("grid.table") or ".encoding." in name
            is_map = name.startswith("forward_maps") or name.startswith("inverse_maps")
            key = ("map_" if is_map else "") + ("tables" if is_table else "mlps")
            groups[key].append(param)
        return groups


# -- source-pixel adapter ------------------------------------------------------------------

class ModelMapping:
    """The trained model as a :class:`core.project.LayeredMapping` (source pixels, numpy)."""

    def __init__(self, model: LayeredAtlasModel, source_size: tuple[int, int], chunk: int = 1 << 16) -> None:
        self.model = model.eval()
        self.layers: Sequence[str] = tuple(model.cfg.layers)
        self.source_size = source_size
        self.chunk = chunk
        self.device = next(model.parameters()).device
        # source pixels -> the working raster the networks were trained on -> normalised
        self.coords = SourceCoords(tuple(source_size), tuple(model.cfg.work_size))

    def to_norm(self, xy: np.ndarray) -> np.ndarray:
        return self.coords.to_norm(np.asarray(xy, dtype=np.float64).reshape(-1, 2))

    def from_norm(self, p: np.ndarray) -> np.ndarray:
        return self.coords.from_norm(np.asarray(p, dtype=np.float64).reshape(-1, 2))

    def _run(self, fn, a: np.ndarray, t: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float32).reshape(-1, 2)
        t = np.array(np.broadcast_to(np.asarray(t, dtype=np.float32).reshape(-1), (a.shape[0],)))
        outs = []
        with torch.no_grad():
            for s in range(0, a.shape[0], self.chunk):
                at = torch.from_numpy(np.ascontiguousarray(a[s:s + self.chunk])).to(self.device)
                tt = torch.from_numpy(np.ascontiguousarray(t[s:s + self.chunk])).to(self.device)
                outs.append(fn(at, tt).float().cpu().numpy())
        if not outs:
            return np.zeros((0,) + (2,), dtype=np.float64)
        return np.concatenate(outs).astype(np.float64)

    def forward(self, layer: str, xy: np.ndarray, t: np.ndarray) -> np.ndarray:
        self._check(layer)
        return self._run(lambda p, tt: self.model.uv(layer, p, tt), self.to_norm(xy), t)

    def inverse(self, layer: str, uv: np.ndarray, t: np.ndarray) -> np.ndarray:
        self._check(layer)
        return self.from_norm(self._run(lambda u, tt: self.model.inverse(layer, u, tt), uv, t))

    def alpha(self, xy: np.ndarray, t: np.ndarray) -> np.ndarray:
        out = self._run(lambda p, tt: self.model.alpha(p, tt).unsqueeze(1).expand(-1, 2), self.to_norm(xy), t)
        return out[:, 0] if out.size else np.zeros(0)

    def _check(self, layer: str) -> None:
        if layer not in self.layers:
            raise InveError(f"this project has no '{layer}' layer (layers: {', '.join(self.layers)})")


# -- checkpoints ---------------------------------------------------------------------------

def config_to_json(cfg: ModelConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["work_size"] = list(cfg.work_size)
    d["layers"] = list(cfg.layers)
    return d


def config_from_json(d: dict[str, Any]) -> ModelConfig:
    d = dict(d)
    d["work_size"] = tuple(d["work_size"])
    d["layers"] = tuple(d["layers"])
    if isinstance(d.get("map_max_res"), int):  # 0.1.0 development format: one value for both layers
        d["map_max_res"] = {layer: d["map_max_res"] for layer in d["layers"]}
    known = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in d.items() if k in known})


def load_model(ckpt_path: str | Path, device: str = "cpu") -> tuple[LayeredAtlasModel, dict[str, Any]]:
    try:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a damaged file is a user-facing error
        raise InveError(f"cannot read checkpoint {ckpt_path}: {exc}") from None
    try:
        cfg = config_from_json(state["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InveError(f"{ckpt_path} holds networks in a format this inve cannot read ({exc}); "
                        "train the project again") from None
    if cfg.backend == "tcnn" and torch.device(device).type != "cuda":
        raise InveError(f"{ckpt_path} was trained with tinycudann and needs a CUDA device to reopen")
    model = LayeredAtlasModel(cfg, device=device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InveError(f"{ckpt_path} does not match this inve's networks ({first}); "
                        "train the project again") from None
    return model, state


def load_mapping(ckpt_path: str | Path, info: Any, device: str = "cpu") -> ModelMapping:
    model, _ = load_model(ckpt_path, device)
    return ModelMapping(model, tuple(info.source_size))


__all__ = ["ModelConfig", "LayeredAtlasModel", "ModelMapping", "Field", "load_model", "load_mapping",
           "config_to_json", "config_from_json", "backend_name"]

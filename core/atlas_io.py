"""`inve atlas`: write the baked atlases as images a person can paint on.

Each layer gives ``atlas_<layer>.png`` (the atlas colours, 8-bit RGB, the same size and
framing as the baked atlas, so a painted copy can come back as an ``atlas`` edit layer) and
``atlas_<layer>_used.png`` (white where some frame shows that part of the atlas: paint
outside it never appears in the video).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core import fsutil
from core.project import Project


def export_atlases(project_dir: Path, out_dir: Path) -> dict[str, Any]:
    project = Project.open(project_dir)
    maps = project.maps()
    out = fsutil.prepare_output_dir(out_dir, "atlas folder")
    written = []
    for layer in maps.layers:
        path = out / f"atlas_{layer}.png"
        fsutil.write_png(path, maps.atlas[layer])
        used = out / f"atlas_{layer}_used.png"
        fsutil.write_png(used, np.clip(maps.atlas_used[layer], 0.0, 1.0))
        written += [str(path), str(used)]
    size = maps.atlas[maps.layers[0]].shape[0]
    return {"files": written, "atlas_size": size,
            "summary": f"wrote {len(written)} atlas images ({size}x{size}) to {out}"}

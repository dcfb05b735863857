"""`inve atlas`: write the baked atlases as images a person can paint on.

Each layer gives ``atlas_<layer>.png`` (the atlas colours, 8-bit RGB, the same size and
framing as the baked atlas, so a painted copy can come back as an ``atlas`` edit layer) and
``atlas_<layer>_used.png`` (white where some frame shows that part of the atlas: paint
outside it never appears in the video).

A project split into segments (core/segments.py) has atlases per segment: they are written
as ``<segment>_atlas_<layer>.png`` (and ``_used``). Paint on any one of them: as an
``atlas`` edit layer it is recognised as that segment's (the closest unpainted atlas) and
carried into the other segments through the seams.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core import fsutil
from core.project import Project


def export_atlases(project_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write the atlases to ``out_dir`` under the output rule.

    A rerun replaces the images inve wrote there, but never one the user changed (an atlas
    painted and saved in place): that is refused before any file is written.
    """
    project = Project.open(project_dir)
    if project.is_segmented:
        sets = [(f"{sub.path.name}_", sub.maps()) for sub in project.segments()]
    else:
        sets = [("", project.maps())]
    out = fsutil.OutputFolder(out_dir, "atlas folder").begin()
    names = [n for prefix, maps in sets for layer in maps.layers
             for n in (f"{prefix}atlas_{layer}.png", f"{prefix}atlas_{layer}_used.png")]
    try:
        for name in names:
            out.check(name)
        written = []
        for prefix, maps in sets:
            for layer in maps.layers:
                written.append(out.write_png(f"{prefix}atlas_{layer}.png", maps.atlas[layer]))
                written.append(out.write_png(f"{prefix}atlas_{layer}_used.png",
                                             np.clip(maps.atlas_used[layer], 0.0, 1.0)))
    except BaseException as exc:
        out.abort(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    out.finish()
    maps = sets[0][1]
    size = maps.atlas[maps.layers[0]].shape[0]
    return {"files": [str(p) for p in written], "atlas_size": size,
            "summary": f"wrote {len(written)} atlas images ({size}x{size}) to {out.path}"}

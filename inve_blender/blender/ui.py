"""Drawing pieces shared by the panels and the preferences (engine state, the running job)."""
from __future__ import annotations

import textwrap

import bpy

from ..io import engine_env
from . import jobs, ops_engine


def _wrapped(layout: bpy.types.UILayout, text: str, icon: str = "NONE", width: int = 44) -> None:
    lines = textwrap.wrap(text, width) or [""]
    for i, line in enumerate(lines):
        layout.label(text=line, icon=icon if i == 0 else "BLANK1")


def draw_engine_status(layout: bpy.types.UILayout, context: bpy.types.Context, in_preferences: bool = False) -> bool:
    """Engine readiness with the one-click ways out; returns whether the engine is ready."""
    status = engine_env.cached_status()
    if status is not None and status.ok:
        if in_preferences:
            _wrapped(layout, status.message, icon="CHECKMARK")
            layout.operator("inve.check_engine", icon="FILE_REFRESH")
        return True
    box = layout.box()
    if status is None:
        box.label(text="Checking the engine..." if ops_engine.checking() else "Engine not checked yet", icon="INFO")
    else:
        _wrapped(box, status.message, icon="ERROR")
    row = box.row(align=True)
    row.operator("inve.check_engine", icon="FILE_REFRESH")
    ops_engine.draw_install(box)
    if in_preferences:  # the older way: into Blender's own Python (per Blender version)
        box.operator("inve.install_dependencies", icon="IMPORT")
    if not in_preferences:
        box.operator("inve.open_preferences", icon="PREFERENCES")
    return False


def draw_job(layout: bpy.types.UILayout) -> None:
    job = jobs.last()
    if job is None:
        return
    st = job.state
    if not st.finished:
        layout.progress(factor=st.fraction, type="BAR", text=st.status_text())
        layout.operator("inve.cancel", icon="CANCEL")
    elif job.outcome or st.error:
        icon = "CHECKMARK" if st.ok else ("CANCEL" if st.cancelled else "ERROR")
        _wrapped(layout, job.outcome or st.error, icon=icon)

"""Add-on preferences: which Python runs the engine, the one-click dependency installer, and the
Ray cluster that Train All Strips uses."""
from __future__ import annotations

import os

import bpy
from bpy.props import StringProperty

from ..io import engine_env
from . import ops_engine
from .ui import draw_engine_status

ADDON_ID = __package__.rpartition(".")[0]  # the add-on package (inve_blender or bl_ext.<repo>.inve_blender)


def prefs(context: bpy.types.Context | None = None) -> "INVE_AP_preferences | None":
    ctx = context or bpy.context
    addon = ctx.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def deps_dir(create: bool = False) -> str:
    """``deps/`` in the extension's user directory (survives updates of the extension)."""
    try:
        return bpy.utils.extension_path_user(ADDON_ID, path="deps", create=create)
    except (ValueError, AttributeError):  # not installed as an extension (development)
        base = os.path.join(bpy.utils.user_resource("SCRIPTS", path="inve_deps", create=create))
        return base


def engine_spec(context: bpy.types.Context | None = None) -> engine_env.EngineSpec:
    p = prefs(context)
    python = p.python_path if p is not None else ""
    return engine_env.resolve(bpy.path.abspath(python) if python else "", deps_dir(),
                              engine_python=ops_engine.installed_python())


def _python_changed(self: "INVE_AP_preferences", context: bpy.types.Context) -> None:
    engine_env.set_status(None)  # the panel must not show the old interpreter's state


class INVE_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    python_path: StringProperty(
        name="Engine Python", subtype="FILE_PATH", default="",
        description="A Python interpreter that has torch, numpy, imageio and OpenCV (for example "
                    "<project>/.venv/bin/python). Empty: Blender's own Python plus the dependencies "
                    "installed with Install Dependencies",
        update=_python_changed)
    wheels_dir: StringProperty(
        name="Offline Wheels", subtype="DIR_PATH", default="",
        description="Install Engine from this folder of wheels, without the internet (made elsewhere with "
                    "pip download -d FOLDER -r requirements.txt). Empty: download (needs Allow Online Access)")

    ray_address: StringProperty(
        name="Ray Address", default="",
        description="Train All Strips runs its batch on this Ray cluster (for example 10.0.0.5:6379; every node "
                    "needs the engine installed). Empty: a local Ray cluster on this computer, started for the "
                    "batch. Without Ray in the Engine Python the strips train one after another")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "python_path")
        layout.prop(self, "ray_address")
        draw_engine_status(layout, context, in_preferences=True)
        box = layout.box()
        box.label(text=f"Engine environment: {ops_engine.engine_home()}", icon="FILE_FOLDER")
        box.prop(self, "wheels_dir")
        ops_engine.draw_install(box)
        layout.label(text=f"Dependencies folder: {deps_dir()}", icon="FILE_FOLDER")


CLASSES = (INVE_AP_preferences,)

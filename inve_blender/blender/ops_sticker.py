"""Move, scale and rotate a sticker layer by dragging in the Sequencer preview (G / S / R).

A modal operator with Blender's habits: it starts in the mode it was called with, G, S and R
switch mode mid-drag, Shift is precise, Ctrl snaps, click or Enter confirms, right click or
Esc puts the sticker back. The live preview re-renders the frame as the sticker moves. The
arithmetic is :class:`~inve_blender.io.sticker.StickerDrag` (tested without Blender); run
without a mouse (scripts, the bpy module) it applies the offset/factor/angle given.
"""
from __future__ import annotations

import json
from typing import Any

import bpy
from bpy.props import EnumProperty, FloatProperty, FloatVectorProperty

from ..io.sticker import StickerDrag, StickerPose
from . import sequencer as strips
from .context import active_project, movie_strip


def active_sticker(context: bpy.types.Context) -> Any:
    item = active_project(context)
    if item is None or not (0 <= item.active_layer < len(item.layers)):
        return None
    layer = item.layers[item.active_layer]
    return layer if layer.kind == "sticker" else None


def pose_of(layer: Any) -> StickerPose:
    d = json.loads(layer.data or "{}")
    c = d.get("center") or [0.0, 0.0]
    return StickerPose(center=(float(c[0]), float(c[1])), scale=float(d.get("scale", 1.0)),
                       rotation=float(d.get("rotation", 0.0)))


def set_pose(layer: Any, pose: StickerPose) -> None:
    d = json.loads(layer.data or "{}")
    d.update(center=[round(pose.center[0], 3), round(pose.center[1], 3)], scale=round(pose.scale, 5),
             rotation=round(pose.rotation, 6))
    layer.data = json.dumps(d)


def preview_region(context: bpy.types.Context) -> Any:
    area = context.area
    if area is None or area.type != "SEQUENCE_EDITOR":
        return None
    return next((r for r in area.regions if r.type == "PREVIEW"), None)


class INVE_OT_sticker_transform(bpy.types.Operator):
    """Move (G), scale (S) or rotate (R) the active sticker by dragging in the preview"""

    bl_idname = "inve.sticker_transform"
    bl_label = "Transform Sticker"
    bl_options = {"REGISTER", "UNDO", "BLOCKING", "GRAB_CURSOR"}

    mode: EnumProperty(name="Mode", items=[("G", "Move", ""), ("S", "Scale", ""), ("R", "Rotate", "")],
                       default="G")
    offset: FloatVectorProperty(name="Offset", size=2, default=(0.0, 0.0),
                                description="Source pixels (x right, y down), without a mouse")
    factor: FloatProperty(name="Scale Factor", default=1.0, min=0.01, max=100.0)
    angle: FloatProperty(name="Angle", subtype="ANGLE", default=0.0,
                         description="Counter-clockwise, without a mouse")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if active_sticker(context) is None:
            cls.poll_message_set("Select a sticker layer first")
            return False
        return True

    def execute(self, context: bpy.types.Context) -> set[str]:
        layer = active_sticker(context)
        p = pose_of(layer)
        set_pose(layer, StickerPose(center=(p.center[0] + self.offset[0], p.center[1] + self.offset[1]),
                                    scale=min(max(p.scale * self.factor, 0.01), 100.0),
                                    rotation=p.rotation + self.angle))
        return {"FINISHED"}

    # -- interactive ----------------------------------------------------------------------------
    def _source(self, context: bpy.types.Context, event: bpy.types.Event) -> tuple[float, float]:
        r = self._region
        vx, vy = r.view2d.region_to_view(event.mouse_x - r.x, event.mouse_y - r.y)
        return self._placement.view_to_source(vx, vy)

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        self._region = preview_region(context)
        if self._region is None:
            self.report({"WARNING"}, "Hover the Sequencer preview and press the shortcut there (or use the values)")
            return self.execute(context)
        scene = strips.sequencer_scene(context)
        self._placement = strips.strip_placement(scene, movie_strip(context))
        layer = active_sticker(context)
        self._saved = layer.data
        self._drag = StickerDrag(pose_of(layer), self._source(context, event), self.mode)
        context.window_manager.modal_handler_add(self)
        context.workspace.status_text_set("Sticker: drag | G move, S scale, R rotate | Shift precise, Ctrl snap | "
                                          "click/Enter confirm, right click/Esc cancel")
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        from . import preview

        layer = active_sticker(context)
        scene = strips.sequencer_scene(context)
        if layer is None:
            context.workspace.status_text_set(None)
            return {"CANCELLED"}
        if event.type == "MOUSEMOVE":
            set_pose(layer, self._drag.apply(self._source(context, event), event.shift, event.ctrl))
            preview.schedule(scene)
        elif event.type in {"G", "S", "R"} and event.value == "PRESS":
            self._drag.switch(event.type, self._source(context, event))
        elif event.type in {"LEFTMOUSE", "RET", "NUMPAD_ENTER"} and event.value == "PRESS":
            context.workspace.status_text_set(None)
            return {"FINISHED"}
        elif event.type in {"RIGHTMOUSE", "ESC"} and event.value == "PRESS":
            layer.data = self._saved
            preview.schedule(scene)
            context.workspace.status_text_set(None)
            return {"CANCELLED"}
        return {"RUNNING_MODAL"}


CLASSES = (INVE_OT_sticker_transform,)

"""Operators of the slide read-out: jump to the next frame where an edit may slide, check again."""
from __future__ import annotations

import bpy

from . import confidence
from . import sequencer as strips
from .context import poll_movie_strip, strip_target


class INVE_OT_next_slide(bpy.types.Operator):
    """Move the playhead to the next frame where an edit is likely to slide (check it there,
    and correct the track in the Movie Clip editor if it is off)"""

    bl_idname = "inve.next_slide"
    bl_label = "Next Slide"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return poll_movie_strip(cls, context, need_idle=False)

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = strips.sequencer_scene(context)
        wish, answer = confidence.current(scene)
        if wish is None:
            self.report({"ERROR"}, "No trained project with visible layers on the active strip")
            return {"CANCELLED"}
        if answer is None:
            confidence.schedule(scene)
            self.report({"WARNING"}, "Still checking where the edits may slide: press again in a moment")
            return {"CANCELLED"}
        if answer.error:
            self.report({"ERROR"}, f"Checking the edits failed: {answer.error}")
            return {"CANCELLED"}
        ranges, _ = confidence.strip_ranges(scene, answer)
        frame = confidence.conf.next_frame(ranges, scene.frame_current)
        if frame is None:
            self.report({"INFO"}, answer.report.summary() if answer.report else "Nothing to check")
            return {"CANCELLED"}
        scene.frame_current = frame
        err = answer.report.error.get(strips.strip_timing(strips.active_strip(scene)).scene_to_source(frame))
        self.report({"INFO"}, f"Frame {frame}" + (f": an edit may be {err:.1f} px off here" if err else ""))
        return {"FINISHED"}


class INVE_OT_check_slides(bpy.types.Operator):
    """Ask the engine again where the visible edit layers are likely to slide (it also does
    so by itself whenever the layers or the project change)"""

    bl_idname = "inve.check_slides"
    bl_label = "Check Where Edits Slide"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return poll_movie_strip(cls, context, need_idle=False)

    def execute(self, context: bpy.types.Context) -> set[str]:
        if strip_target(self, context) is None:  # a working engine and a trained project (reports why not)
            return {"CANCELLED"}
        scene = strips.sequencer_scene(context)
        wish = confidence.schedule(scene, force=True)
        if wish is None:
            self.report({"ERROR"}, "No visible layers on the active strip's project: draw something first")
            return {"CANCELLED"}
        if bpy.app.background:  # no timers here: wait for the answer
            confidence.pump(wait=True)
            _, answer = confidence.current(scene)
            if answer is None:
                self.report({"ERROR"}, "The engine did not answer in time")
                return {"CANCELLED"}
            if answer.error:
                self.report({"ERROR"}, f"Checking the edits failed: {answer.error}")
                return {"CANCELLED"}
            self.report({"INFO"}, answer.report.summary())
            return {"FINISHED"}
        self.report({"INFO"}, "Checking where the edits may slide (engine service)")
        return {"FINISHED"}


CLASSES = (INVE_OT_next_slide, INVE_OT_check_slides)

"""Data saved in the .blend: per-scene settings and, per trained project, its edit layer stack.

A project is recorded by what identifies it (the source file's content fingerprint and the
source frames it was trained on), not by a strip name: every strip that plays that source
within those frames (renamed, blade-cut, duplicated) finds it and its layers.
"""
from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

QUALITY_SIDES = {"DRAFT": 256, "NORMAL": 384, "HIGH": 512}


class INVE_PG_layer(bpy.types.PropertyGroup):
    """One edit layer (an EDITS.json layer kept as JSON plus what the list edits)."""

    name: StringProperty(name="Name", default="Layer")
    kind: EnumProperty(
        name="Type",
        items=[("sketch", "Sketch", "Vector strokes carried with the surface", "GREASEPENCIL", 0),
               ("paint", "Paint", "An image painted over one frame", "BRUSH_DATA", 1),
               ("sticker", "Sticker", "An image placed on one frame", "IMAGE_DATA", 2),
               ("adjust", "Adjust", "A colour adjustment inside a region", "MOD_HUE_SATURATION", 3),
               ("atlas", "Atlas", "A painted atlas image", "TEXTURE", 4)],
        default="sketch")
    visible: BoolProperty(name="Show", description="Include this layer when propagating", default=True)
    data: StringProperty(name="Layer data", description="The EDITS.json layer as JSON", default="{}")
    image: StringProperty(name="Image", subtype="FILE_PATH", default="")
    attach: EnumProperty(
        name="Attach to",
        items=[("AUTO", "Automatic", "The layer visible where it was drawn"),
               ("fg", "Foreground", "The moving foreground layer"),
               ("bg", "Background", "The background layer")],
        default="AUTO")


class INVE_PG_project(bpy.types.PropertyGroup):
    """One trained project of this .blend and the edit layers drawn on it."""

    fingerprint: StringProperty(name="Source Fingerprint", default="", options={"HIDDEN"})
    frame_start: IntProperty(name="First Source Frame", default=0)
    frame_end: IntProperty(name="End Source Frame", description="One past the last trained source frame",
                           default=0)
    path: StringProperty(name="Folder", subtype="DIR_PATH", default="", options={"PATH_SUPPORTS_BLEND_RELATIVE"},
                         description="The project's folder (relative to the .blend where possible)")
    abs_path: StringProperty(name="Absolute Folder", default="", options={"HIDDEN"})
    source_name: StringProperty(name="Source", default="")
    layers: CollectionProperty(type=INVE_PG_layer)
    active_layer: IntProperty(name="Active Layer", default=0)
    info_json: StringProperty(name="Project Info", default="", options={"HIDDEN"})
    shown_stack: StringProperty(name="Shown Stack", default="", options={"HIDDEN"},
                                description="The edit stack the result strip shows (to notice Undo)")


class INVE_PG_batch_strip(bpy.types.PropertyGroup):
    """One strip's end in the latest Train All (kept in the .blend: the panel shows it after
    reopening the file, when the batch job itself is long gone)."""

    strip: StringProperty(name="Strip", default="")
    state: StringProperty(name="State", default="")  # queued | training | done | failed | cancelled
    line: StringProperty(name="Result", default="")


class INVE_PG_settings(bpy.types.PropertyGroup):
    """Per-scene INVE settings (``scene.inve``)."""

    quality: EnumProperty(
        name="Quality",
        description="Working resolution of training (longest side); higher is sharper and slower",
        items=[("DRAFT", "Draft (256 px)", "Fast, for trying things out"),
               ("NORMAL", "Normal (384 px)", "A good balance"),
               ("HIGH", "High (512 px)", "Sharper edits, slower"),
               ("CUSTOM", "Custom", "Set the working resolution")],
        default="NORMAL")
    max_side: IntProperty(name="Max Side", description="Longest side of the working resolution in pixels",
                          default=384, min=64, max=4096)
    minutes: FloatProperty(name="Time Budget", description="Training time in minutes (it stops early "
                           "when this runs out and the result is still usable)", default=10.0,
                           min=0.05, max=24 * 60, unit="NONE")
    single_layer: BoolProperty(name="Background Only", description="Train one layer only (no moving "
                               "foreground): faster, for shots without a foreground object", default=False)
    device: EnumProperty(name="Device", items=[("auto", "Automatic", "CUDA, else Apple Metal (MPS), else the CPU"),
                                               ("cpu", "CPU", ""), ("cuda", "CUDA", "NVIDIA GPU"),
                                               ("mps", "Metal (MPS)", "Apple Silicon GPU")], default="auto")
    project_dir: StringProperty(name="Projects Folder", subtype="DIR_PATH", default="",
                                description="Where new projects are made, one folder per source and frame "
                                            "range (empty: //inve/ next to the .blend)")
    projects: CollectionProperty(type=INVE_PG_project)
    batch_strips: CollectionProperty(type=INVE_PG_batch_strip)
    batch_outcome: StringProperty(name="Train All Outcome", default="", options={"HIDDEN"})
    stroke_source: EnumProperty(
        name="Strokes From",
        items=[("ANNOTATION", "Annotations", "Strokes drawn with the Annotate tool in the Sequencer preview"),
               ("GPENCIL", "Grease Pencil", "Strokes of the selected Grease Pencil objects, seen through the camera")],
        default="ANNOTATION")
    as_region: BoolProperty(name="Closed Strokes as Regions", description="A closed stroke becomes a colour "
                            "adjustment region instead of a line", default=False)
    live_preview: BoolProperty(name="Live Preview", default=True,
                               description="Show the edits on the frame under the playhead as you change them "
                                           "(the engine service renders it; no Propagate needed)")
    export_movie: BoolProperty(name="Also Write a Movie", default=False,
                               description="Propagate also writes the edited clip (full frames) as an .mp4 next "
                                           "to the project, for export outside Blender")
    correct_minutes: FloatProperty(name="Correction Budget", default=0.5, min=0.05, max=60.0,
                                   description="Minutes the engine fine-tunes the project with the markers you "
                                               "moved (Apply Corrections)")
    hue: FloatProperty(name="Hue", default=0.0, min=-0.5, max=0.5)
    saturation: FloatProperty(name="Saturation", default=1.0, min=0.0, max=4.0)
    brightness: FloatProperty(name="Brightness", default=0.0, min=-1.0, max=1.0)
    contrast: FloatProperty(name="Contrast", default=1.0, min=0.0, max=4.0)

    def working_side(self) -> int:
        return self.max_side if self.quality == "CUSTOM" else QUALITY_SIDES[self.quality]


CLASSES = (INVE_PG_layer, INVE_PG_project, INVE_PG_batch_strip, INVE_PG_settings)


def register_props() -> None:
    bpy.types.Scene.inve = PointerProperty(type=INVE_PG_settings)


def unregister_props() -> None:
    if hasattr(bpy.types.Scene, "inve"):
        del bpy.types.Scene.inve

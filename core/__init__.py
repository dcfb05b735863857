"""INVE engine: layered neural atlases with hash-grid mappings, inverse mappings and layered edits.

The engine never imports bpy: the Blender add-on (``inve_blender``) drives it through the
``inve`` command line (see ``core.cli``) or imports it directly where torch is available.
"""

__version__ = "0.1.0"
#: Version of the project-folder format. Bumped when a project written by an older
#: version can no longer be read; ``core.project`` refuses newer formats with a clear message.
PROJECT_FORMAT = 1

"""INVE engine: layered neural atlases with hash-grid mappings, inverse mappings and layered edits.

The engine never imports bpy: the Blender add-on (``inve_blender``) drives it through the
``inve`` command line (see ``core.cli``) or imports it directly where torch is available.
"""

import os as _os

# OpenMP threads that spin while waiting burn the other core when the machine is busy
# (Blender's UI, a second job): measured 9x more CPU per step on 2 cores under load.
# Passive waiting costs nothing measurable when the machine is idle. Must be set before
# torch is imported, hence here.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
#: Version of the project-folder format. Bumped when a project written by an older
#: version can no longer be read; ``core.project`` refuses newer formats with a clear message.
#: Format 3 adds segments (``core.segments``): only segmented projects are written as format 3,
#: a project without segments is still written as format 2 so older inve keeps reading it.
PROJECT_FORMAT = 3

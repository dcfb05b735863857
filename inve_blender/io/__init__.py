"""Add-on logic that never imports bpy (engine client, protocol, pure data handling).

Modules here run in plain Python, so they are unit-tested without Blender.
"""

"""The bpy glue of the add-on: properties, preferences, operators, panels."""

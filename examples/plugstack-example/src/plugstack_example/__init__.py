"""plugstack-example: a third-party plugin package (see plugin.py)."""

"""Offline tools run from a terminal, outside ComfyUI (e.g. ``python -m tools.convert_caa``)."""

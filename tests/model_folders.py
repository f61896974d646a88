"""Point one of ComfyUI's model folders at a test directory, and restore it afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import folder_paths


@contextlib.contextmanager
def model_folder(folder: str, path: Path) -> Iterator[Path]:
    """``models/<folder>`` is ``path`` (safetensors files) inside the block; the host's list cache is dropped
    on entry and exit so the node's combo sees the change."""
    saved = folder_paths.folder_names_and_paths.get(folder)
    folder_paths.folder_names_and_paths[folder] = ([str(path)], {".safetensors", ".sft"})
    folder_paths.filename_list_cache.pop(folder, None)
    try:
        yield path
    finally:
        if saved is None:
            folder_paths.folder_names_and_paths.pop(folder, None)
        else:
            folder_paths.folder_names_and_paths[folder] = saved
        folder_paths.filename_list_cache.pop(folder, None)

"""The examples' photographs reach ComfyUI's input folder on load: missing ones copied, none overwritten."""

from __future__ import annotations

import logging

import folder_paths
import pytest

from parallax.nodes.sample_inputs import SAMPLES, install_sample_inputs


@pytest.fixture
def input_dir(tmp_path):
    saved = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    try:
        yield tmp_path / "input"
    finally:
        folder_paths.set_input_directory(saved)


def test_missing_images_are_copied_and_existing_files_kept(input_dir):
    input_dir.mkdir()
    (input_dir / "cat_rgba.png").write_bytes(b"the user's own file")
    copied = install_sample_inputs()
    shipped = sorted(p.name for p in SAMPLES.glob("*.png"))
    assert "cat_rgba.png" not in copied and sorted(copied + ["cat_rgba.png"]) == shipped
    assert (input_dir / "cat_rgba.png").read_bytes() == b"the user's own file"
    for name in copied:
        assert (input_dir / name).read_bytes() == (SAMPLES / name).read_bytes()
    assert not (input_dir / "README.md").exists()
    assert install_sample_inputs() == []  # idempotent


def test_an_unwritable_input_folder_only_logs(input_dir, caplog):
    input_dir.write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING):
        assert install_sample_inputs() == []
    assert "could not copy the example images" in caplog.text

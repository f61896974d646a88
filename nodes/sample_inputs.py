"""The example workflows' photographs, made reachable from Load Image without an upload."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .. import compat

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "inputs"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def install_sample_inputs(samples: Path = SAMPLES) -> list[str]:
    """Copy the pack's sample images that ComfyUI's input folder lacks into it (never overwriting a file, never
    failing the start-up: a read-only input folder only logs). Returns the names copied."""
    copied: list[str] = []
    try:
        target = Path(compat.input_directory())
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted(samples.iterdir()):
            dest = target / source.name
            if source.suffix.lower() in IMAGE_EXTENSIONS and not dest.exists():
                shutil.copyfile(source, dest)
                copied.append(source.name)
    except OSError as e:
        log.warning("Parallax: could not copy the example images into the input folder (%s); upload them from "
                    "%s if you run the examples", e, samples)
    if copied:
        log.info("Parallax: copied the example images %s into the input folder", ", ".join(copied))
    return copied

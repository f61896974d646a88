"""`make demo`: run every example workflow through the real headless host and save the images.

Without ``PARALLAX_MODELS`` each checkpoint loader is swapped for ``ParallaxTinyCheckpoint`` and
the model files a workflow needs are synthesised (tiny random weights, real key layouts). With
``PARALLAX_MODELS=<dir>`` the workflows run unchanged on the real weights in that folder
(``<dir>/checkpoints``, ``<dir>/mvadapter``, ...).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "custom_nodes"))

import examples  # noqa: E402
from host_server import HostServer, PromptFailed  # noqa: E402

log = logging.getLogger("parallax.demo")


def _setup_comfy_imports() -> None:
    """Synthesisers build tiny models in this process: make the host importable on the CPU."""
    comfy = Path(os.environ.get("PARALLAX_COMFYUI", HERE.parent / ".comfyui"))
    sys.path.insert(0, str(comfy))
    from comfy.cli_args import args

    args.cpu = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE.parent / "demo_output")
    parser.add_argument("--only", nargs="*", help="example names to run (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    models = os.environ.get("PARALLAX_MODELS")
    tiny = not models
    if tiny:
        _setup_comfy_imports()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = [p for p in examples.example_paths() if not args.only or p.stem in args.only]

    started = time.monotonic()
    server = HostServer(with_testing_nodes=tiny, models_dir=Path(models) if models else None)
    log.info("starting ComfyUI headless on %s (%s)", server.url, "tiny models" if tiny else f"models from {models}")
    server.start()
    log.info("host ready in %.1fs", time.monotonic() - started)
    rows, failures = [], 0
    try:
        for path in paths:
            workflow = examples.load(path)
            examples.prepare_host(workflow, server.base, tiny=tiny)
            prompt = examples.to_prompt(workflow, server.object_info, tiny=tiny)
            try:
                result = server.run(prompt, workflow)
            except PromptFailed as err:
                failures += 1
                rows.append((path.stem, len(prompt), float("nan"), f"FAILED: {err}"))
                continue
            dest = args.out / path.stem
            dest.mkdir(parents=True, exist_ok=True)
            for old in dest.glob("*.png"):
                old.unlink()
            saved = []
            for node_id, image in result.images:
                if image.get("type") != "output":
                    continue  # previews live in the host's temp folder
                name = f"{node_id}_{Path(image['filename']).name}"
                (dest / name).write_bytes(server.view(image))
                saved.append(name)
            rows.append((path.stem, len(prompt), result.seconds, f"{len(saved)} image(s) in {dest.relative_to(args.out.parent)}"))
    finally:
        server.cleanup()

    width = max([len(r[0]) for r in rows] + [8])
    print(f"\n{'workflow':{width}s}  nodes  seconds  outputs")
    for name, nodes, seconds, outputs in rows:
        print(f"{name:{width}s}  {nodes:5d}  {seconds:7.1f}  {outputs}")
    print(f"\n{len(rows) - failures}/{len(rows)} workflows ran in {time.monotonic() - started:.1f}s "
          f"({'tiny random-weight models' if tiny else 'real weights'})")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

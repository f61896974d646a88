"""Shared test set-up: the pack as package ``parallax``, tier markers, the session's host server.

Tiers live in folders: tests/kernels (pure torch), tests/host (ComfyUI in-process), tests/server
(the real server over HTTP), tests/contract (schema snapshot, example workflows) and tests/browser (the
host's frontend in headless Chromium).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("kernels", "host", "server", "contract", "browser")

# One torch thread per process, here and in every ComfyUI server the tests start (they inherit the
# environment): the test models are tiny, and on a busy 2-core machine a 2-thread pool waits for a
# descheduled thread in every parallel op (measured: a tiny SDXL forward 8.8 s with 2 threads under
# load, 0.49 s with 1). PARALLAX_TEST_THREADS overrides it.
_THREADS = os.environ.get("PARALLAX_TEST_THREADS", "1")
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _THREADS

# The repository root holds the pack's own ``kernels`` package, which would shadow Hugging Face's
# ``kernels`` distribution (a dependency of transformers >= 5.25) if the root stayed importable:
# ``python -m pytest`` puts the working directory first on sys.path. The tests import the pack as
# ``parallax`` (register_pack below), so nothing needs the root itself.
sys.path[:] = [p for p in sys.path if p not in ("", ".") and Path(p).resolve() != ROOT]
for name in [m for m in sys.modules if m == "kernels" or m.startswith("kernels.")]:
    if ROOT in Path(getattr(sys.modules[name], "__file__", None) or "/").resolve().parents:
        del sys.modules[name]

for path in (ROOT / "devtools", ROOT / "devtools" / "custom_nodes", ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


from comfy_env import COMFY, host_version, register_pack  # noqa: E402 - tests/ is on sys.path from here on

register_pack()

import torch  # noqa: E402 - after the thread settings above

torch.set_num_threads(int(_THREADS))


def tier_of(nodeid: str) -> str | None:
    parts = Path(nodeid.split("::")[0]).parts
    return next((p for p in parts if p in TIERS), None)


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = tier_of(item.nodeid)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts: dict[str, Counter] = {tier: Counter() for tier in TIERS}
    for outcome in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        for report in terminalreporter.stats.get(outcome, []):
            tier = tier_of(getattr(report, "nodeid", ""))
            if tier and (report.when == "call" or outcome in ("skipped", "error")):
                counts[tier][outcome] += 1
    version = host_version()
    terminalreporter.section(f"Parallax test tiers (ComfyUI {version})")
    for tier in TIERS:
        c = counts[tier]
        detail = ", ".join(f"{n} {k}" for k, n in sorted(c.items()))
        host = f"ComfyUI {version:8s} " if tier in ("host", "server", "browser") else ""
        terminalreporter.write_line(f"{tier:9s} {host}{detail}" if c else f"{tier:9s} not run")
    # Parity tests record their measured relative error: show the worst per test function.
    parity: dict[str, tuple[float, str]] = {}
    for report in terminalreporter.stats.get("passed", []):
        for name, value in getattr(report, "user_properties", []):
            if name == "parity":
                error = float(value.rsplit(":", 1)[1])
                test = report.nodeid.split("[")[0]
                if test not in parity or error > parity[test][0]:
                    parity[test] = (error, value)
    if parity:
        terminalreporter.section("Parallax parity (worst recorded error per test)")
        for test, (_, value) in sorted(parity.items()):
            terminalreporter.write_line(f"{value}    ({test.rsplit('::', 1)[-1]})")
    # devtools/run_tests.py runs one pytest per host and merges these into its combined summary.
    report = os.environ.get("PARALLAX_TIER_REPORT")
    if report:
        Path(report).write_text(json.dumps({
            "comfyui": version, "host": str(COMFY), "exitstatus": int(exitstatus),
            "tiers": {tier: dict(counts[tier]) for tier in TIERS if counts[tier]},
        }))


@pytest.fixture(scope="session")
def host_server(tmp_path_factory):
    """The real ComfyUI server, started once per session with this pack and the fixture nodes."""
    from host_server import HostServer

    server = HostServer(workdir=tmp_path_factory.mktemp("host"), with_testing_nodes=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def object_info(host_server) -> dict:
    return host_server.object_info

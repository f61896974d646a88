"""Shared test set-up: the pack as package ``parallax``, tier markers, the session's host server.

Tiers live in folders: tests/kernels (pure torch), tests/host (ComfyUI in-process), tests/server
(the real server over HTTP) and tests/contract (schema snapshot, example workflows).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("kernels", "host", "server", "contract")

for path in (ROOT / "devtools", ROOT / "devtools" / "custom_nodes", ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


from comfy_env import register_pack  # noqa: E402 - tests/ is on sys.path from here on

register_pack()


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
    terminalreporter.section("Parallax test tiers")
    for tier in TIERS:
        c = counts[tier]
        detail = ", ".join(f"{n} {k}" for k, n in sorted(c.items())) or "not run"
        terminalreporter.write_line(f"{tier:9s} {detail}")


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

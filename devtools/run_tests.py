"""`make test`: the test tiers on every provisioned ComfyUI host, then one combined summary.

The kernels and contract tiers run once, on the 0.3.75 test host (.venv/, .comfyui/). The host,
server and browser tiers run there and again on the current host (.venv-current/, .comfyui-current/) when
devtools/setup.sh provisioned it. ComfyUI is imported in-process, so each host gets its own pytest
process with its own interpreter and PARALLAX_COMFYUI. A failing run does not stop the next one:
both hosts' results are shown, and the exit status is non-zero if any run failed.

    .venv/bin/python devtools/run_tests.py [--host both|test|current] [--tiers host,server] [-- pytest args]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from comfy_env import host_version  # noqa: E402 - reads the version file only, imports no ComfyUI

TIERS = ("kernels", "host", "server", "contract", "browser")
PER_HOST_TIERS = ("host", "server", "browser")  # the tiers that depend on the host version
NO_TESTS = 5  # pytest's exit status when the selection is empty


@dataclass
class Host:
    name: str
    python: Path
    comfy: Path
    tiers: tuple[str, ...]


@dataclass
class Result:
    host: Host
    status: int
    seconds: float
    report: dict | None


def the_test_host() -> Host:
    comfy = Path(os.environ.get("PARALLAX_COMFYUI", ROOT / ".comfyui")).resolve()
    return Host("test", Path(sys.executable), comfy, TIERS)


def current_host() -> Host | None:
    venv, comfy = ROOT / ".venv-current", ROOT / ".comfyui-current"
    if not ((venv / ".parallax-ready").is_file() and (comfy / "main.py").is_file()):
        return None
    return Host("current", venv / "bin" / "python", comfy, PER_HOST_TIERS)


def run(host: Host, tiers: list[str], pytest_args: list[str]) -> Result:
    paths = [f"tests/{tier}" for tier in tiers]
    with tempfile.TemporaryDirectory(prefix="parallax-tests-") as tmp:
        report_path = Path(tmp) / "tiers.json"
        env = dict(os.environ, PARALLAX_COMFYUI=str(host.comfy), PARALLAX_TIER_REPORT=str(report_path))
        banner(f"ComfyUI {host_version(host.comfy)} ({host.name} host, {host.comfy}): pytest {' '.join(paths)}")
        started = time.monotonic()
        status = subprocess.call([str(host.python), "-m", "pytest", *paths, *pytest_args], cwd=ROOT, env=env)
        seconds = time.monotonic() - started
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
    return Result(host, status, seconds, report)


def banner(text: str) -> None:
    print(f"\n===== {text}", flush=True)


def describe(result: Result) -> str:
    if result.report is None:
        return f"{result.host.name} host: no tier report (pytest exit {result.status})"
    counts = [f"{tier} " + ", ".join(f"{n} {k}" for k, n in sorted(c.items()))
              for tier, c in result.report["tiers"].items()]
    verdict = {0: "ok", NO_TESTS: "no tests selected"}.get(result.status, f"FAILED (exit {result.status})")
    return (f"ComfyUI {result.report['comfyui']:8s} {' | '.join(counts) or 'no tests'}"
            f"   [{result.seconds:.0f} s, {verdict}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", choices=("both", "test", "current"), default="both",
                        help="both: the test host, plus the current host when provisioned")
    parser.add_argument("--tiers", default=",".join(TIERS), help="comma-separated subset of " + ",".join(TIERS))
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: passed to every pytest run")
    args = parser.parse_args(argv)
    tiers = [t for t in args.tiers.split(",") if t]
    unknown = set(tiers) - set(TIERS)
    if unknown:
        parser.error(f"unknown tier(s) {sorted(unknown)}")
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args

    hosts = []
    if args.host in ("both", "test"):
        hosts.append(the_test_host())
    if args.host in ("both", "current"):
        current = current_host()
        if current is not None:
            hosts.append(current)
        elif args.host == "current":
            print("the current ComfyUI host is not provisioned: run `make setup` with its tarball present "
                  "(PARALLAX_HOST_C_TARBALL or ../shared/hosts/comfyui-0.33.0.tar.gz)", file=sys.stderr)
            return 2

    results = []
    for host in hosts:
        selected = [t for t in tiers if t in host.tiers]
        if selected:
            results.append(run(host, selected, pytest_args))
    if not results:
        print("no tier selected", file=sys.stderr)
        return NO_TESTS

    banner("Parallax tests on every host")
    for result in results:
        print(describe(result))
    statuses = [r.status for r in results]
    failed = [s for s in statuses if s not in (0, NO_TESTS)]
    if failed:
        print(f"{len(failed)} of {len(results)} runs failed")
        return failed[0]
    print(f"{len(results)} of {len(results)} runs passed" if 0 in statuses else "no tests selected")
    return 0 if 0 in statuses else NO_TESTS


if __name__ == "__main__":
    sys.exit(main())

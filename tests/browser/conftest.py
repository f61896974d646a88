"""Browser tier: the real server with the pack, driven through the host's own ComfyUI frontend in headless Chromium.

Chromium comes from the system (`apt-get install -y chromium`, done by `make setup` as root; or
PARALLAX_CHROMIUM=<binary>); without it the tier is skipped with that message. Screenshots go to
PARALLAX_SCREENSHOTS, else tests/browser/.screenshots (git-ignored), in a comfyui-<version> folder per host;
the folder is printed at the end.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import comfy_env

comfy_env.activate()  # tiny-model synthesis for the queued example imports the host
sys.path.insert(0, str(Path(__file__).parent))  # comfy_page (pytest runs with --import-mode=importlib)

from comfy_page import ComfyPage  # noqa: E402

import examples  # noqa: E402 - devtools/ is on sys.path (tests/conftest.py)
from cdp import Browser, find_chromium  # noqa: E402

# One folder per host: `make test` runs the tier on both, one after the other.
SCREENSHOTS = (Path(os.environ.get("PARALLAX_SCREENSHOTS") or Path(__file__).parent / ".screenshots").resolve()
               / f"comfyui-{comfy_env.host_version()}")
_taken: list[Path] = []


@pytest.fixture(scope="session")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        pytest.skip("browser tier skipped: no Chromium found. Install it with `apt-get install -y chromium` "
                    "(`make setup` does this when run as root), or point PARALLAX_CHROMIUM at a Chromium binary")
    return found


@pytest.fixture(scope="session")
def screenshots() -> Path:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
def browser_server(host_server):
    """The session's host server, with every example's input images in its input folder (so LoadImage
    lists them when the page asks for the node definitions)."""
    for path in examples.example_paths():
        for name in examples.meta(examples.load(path)).get("inputs", []):
            dest = host_server.base / "input" / name
            if not dest.exists():
                shutil.copyfile(examples.DATA / name, dest)
    return host_server


@pytest.fixture(scope="session")
def browser(chromium):
    with Browser.launch(chromium) as b:
        yield b


@pytest.fixture(scope="session")
def comfy(browser, browser_server, screenshots) -> ComfyPage:
    """The app, loaded once per session (each test loads the workflow it needs)."""
    # A first visit opens the template browser over the canvas: this user has seen it.
    browser_server.request("/settings/Comfy.TutorialCompleted", True)
    page = ComfyPage(browser.new_page(), browser_server.url, screenshots)
    page.open()
    return page


@pytest.fixture
def shot(comfy):
    """shot(name): a screenshot of the page into the screenshot folder."""
    def take(name: str) -> Path:
        path = comfy.screenshot(name)
        _taken.append(path)
        return path
    return take


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: the host's frontend in headless Chromium, with the real server")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _taken:
        terminalreporter.section("Parallax browser screenshots")
        terminalreporter.write_line(f"{len(_taken)} screenshots in {SCREENSHOTS}")

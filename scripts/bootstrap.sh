#!/usr/bin/env bash
# Make .venv ready for everything in this repo: system packages (when root), a virtual environment,
# torch (CPU build unless one is present or TIMEWALK_TORCH says otherwise) and the package with its extras.
# Idempotent: a stamp keyed by pyproject.toml skips the pip step when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${TIMEWALK_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
EXTRAS=${TIMEWALK_EXTRAS:-client,server,export,dev}

say() { printf '[bootstrap] %s\n' "$*" >&2; }

# System packages: Mesa (offscreen OpenGL for the client and its tests), Xvfb, debootstrap (the OpenXR
# test root). Only when root and apt exists; otherwise say what is missing and carry on.
APT_PKGS=(xvfb xauth libgl1 libegl1 libgl1-mesa-dri libegl-mesa0 libglx-mesa0 libosmesa6 mesa-utils
          debootstrap python3-venv ca-certificates procps)
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
elif ! command -v Xvfb >/dev/null 2>&1; then
  say "not root: install ${APT_PKGS[*]} yourself for the OpenGL/OpenXR tests"
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip install -q)

stamp="$VENV/.timewalk-stamp"
want="$(sha256sum pyproject.toml | cut -c1-16)-$EXTRAS"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [[ ",$EXTRAS," == *",server,"* ]] && ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    spec=${TIMEWALK_TORCH:-torch==2.13.0}
    say "installing $spec"
    "${PIP[@]}" "$spec"
  fi
  say "installing timewalk[$EXTRAS]"
  "${PIP[@]}" -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi

#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: venv, pinned packages, built models (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt setup.cfg | sha256sum | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing Python packages (first time: a few minutes) ..."
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip check
  echo "$want" > "$stamp"
fi
# Headless 3D rendering needs Mesa's EGL + GL (vispy loads libGL.so.1 even with EGL).
if ! { ldconfig -p 2>/dev/null | grep -q libEGL.so.1 && ldconfig -p 2>/dev/null | grep -q libGL.so.1; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -q && apt-get install -y -q libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri; } >/dev/null 2>&1 || \
      echo "warning: could not install Mesa EGL; the offscreen 3D view will be unavailable"
  else
    echo "warning: Mesa EGL/GL not found (apt-get install libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri)"
  fi
fi
.venv/bin/python -m realtime_prn setup

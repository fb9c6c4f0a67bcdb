#!/usr/bin/env bash
# Fill .whl/ with the wheels benchmarks/gpu_check.sh installs (only those missing there) on a GPU
# machine that has torch and torchvision but no package index. Run it where pip reaches PyPI:
#
#   bash benchmarks/fetch_wheels.sh            # into .whl/ (gitignored)
#   PYVERS="3.12" MPL_PYVERS="3.12" bash benchmarks/fetch_wheels.sh /some/dir
#
# Pure-Python wheels once (timm 1.0.22, yacs, termcolor, matplotlib's pure dependencies); PyYAML for
# each Python version in PYVERS (default 3.10 to 3.13); matplotlib with its compiled dependencies
# (fonttools, kiwisolver, contourpy: ~15 MB per version) for MPL_PYVERS (default 3.11 3.12), since
# the device run carries at most 64 MiB in all. About 35 MB with the defaults. numpy and pillow come
# with torchvision. gpu_check.sh then runs `pip install --no-index --find-links .whl <missing>`.
set -euo pipefail
DIR=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
binary() {  # binary <python version> <packages...>
  local version=$1
  shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --python-version "$version" -d "$DIR" "$@"
}
"$PY" -m pip download -q --no-deps -d "$DIR" timm==1.0.22 yacs termcolor cycler pyparsing python-dateutil six packaging
for version in ${PYVERS:-3.10 3.11 3.12 3.13}; do binary "$version" pyyaml; done
for version in ${MPL_PYVERS:-3.11 3.12}; do binary "$version" matplotlib fonttools kiwisolver contourpy; done
du -sh "$DIR"

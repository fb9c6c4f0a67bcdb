#!/usr/bin/env bash
# Fill .whl/ with the wheels benchmarks/gpu_check.sh installs on a GPU machine without a package
# index. Run it where pip reaches PyPI; the folder then travels with the check (it counts towards
# what may be carried, so it holds only what that machine lacks):
#
#   bash benchmarks/fetch_wheels.sh                 # into .whl/ (gitignored): yacs and termcolor, ~60 KB
#   EXTRA="timm==1.0.22" PYVERS="3.12" MPL_PYVERS="3.12" bash benchmarks/fetch_wheels.sh DIR
#
# The lent H200 machine has Python 3.12, torch 2.11.0+cu130, torchvision, timm 1.0.29, numpy,
# pillow, PyYAML and matplotlib, so by default only yacs and termcolor (pure Python) are fetched.
# For a machine that lacks more: EXTRA adds pure-Python wheels, PYVERS PyYAML for each of those
# Python versions, MPL_PYVERS matplotlib with its compiled dependencies (~15 MB per version) for
# each of those; unset or empty, none. The old wheels in the folder are removed first, so that only
# these travel. gpu_check.sh installs what its Python lacks from them with `pip install --target`.
set -euo pipefail
DIR=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
find "$DIR" -maxdepth 1 -name '*.whl' -delete
binary() {  # binary <python version> <packages...>
  local version=$1
  shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --python-version "$version" -d "$DIR" "$@"
}
pure=(yacs termcolor)
[ -n "${MPL_PYVERS:-}" ] && pure+=(cycler pyparsing python-dateutil six packaging)
# shellcheck disable=SC2206  # EXTRA is a list of requirements
pure+=(${EXTRA:-})
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DIR" "${pure[@]}"
for version in ${PYVERS:-}; do binary "$version" pyyaml; done
for version in ${MPL_PYVERS:-}; do binary "$version" matplotlib fonttools kiwisolver contourpy; done
du -sh "$DIR"

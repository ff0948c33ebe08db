#!/usr/bin/env bash
# Download wheels of the requirements.txt packages a Kaggle image may lack, to upload as a dataset
# (Kaggle notebooks that submit have no internet). The notebook's import check (tools/make_notebook.py)
# is the real guard: it names what is missing and installs it from the attached dataset with
#   pip install --no-index --find-links /kaggle/input/<wheels-dataset> <package>
#
#   bash tools/make_wheelhouse.sh                        # -> wheels/ (the default packages below)
#   bash tools/make_wheelhouse.sh wheels albucore        # also other packages the import check asked for
#   KAGGLE_PYTHON=3.11 bash tools/make_wheelhouse.sh     # wheels for Kaggle's Python, not this machine's
#   WITH_DEPS=1 bash tools/make_wheelhouse.sh            # with all dependencies (may pull torch: GBs)
#   DRY_RUN=1 bash tools/make_wheelhouse.sh              # print the pip command only
#
# Default packages (versions from requirements.txt), why a Kaggle image may lack them:
#   iterative-stratification  not in the Kaggle image (S2's folds)
#   pycocotools               may be missing (mask encoding in S5/S6)
#   timm, albumentations      present but possibly older than requirements.txt asks
# Dependencies are left out by default (torch, numpy, opencv, pydantic, ... are in the image); when
# pip install --no-index says a dependency is missing, add it as an argument.
# torch/torchvision are not downloaded: use the image's CUDA build (the import check prints a
# warning when its version differs from the pin).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-wheels}"
shift || true
NAMES=(iterative-stratification pycocotools timm albumentations "$@")

specs=()
for name in "${NAMES[@]}"; do
  # the requirements.txt line of the package (its version range), else the bare name
  line="$(grep -iE "^${name//-/[-_]}([<>=!~ ;[]|$)" "$ROOT/requirements.txt" | head -1 | sed 's/#.*//; s/ //g' || true)"
  specs+=("${line:-$name}")
done

args=(download --only-binary=:all: --dest "$OUT")
[[ "${WITH_DEPS:-0}" == 1 ]] || args+=(--no-deps)
if [[ -n "${KAGGLE_PYTHON:-}" ]]; then
  args+=(--python-version "$KAGGLE_PYTHON" --implementation cp --platform manylinux2014_x86_64
         --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "python -m pip ${args[*]} ${specs[*]}"
  exit 0
fi
mkdir -p "$OUT"
python -m pip "${args[@]}" "${specs[@]}"
echo "wheels in $OUT:"
ls -1 "$OUT"
echo "upload it as a Kaggle dataset (e.g. kaggle datasets init -p $OUT; kaggle datasets create -p $OUT)"
echo "and attach it to the notebook at /kaggle/input/hpa-wheels (or set _WHEELS in its first cell)"

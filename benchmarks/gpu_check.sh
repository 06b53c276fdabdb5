#!/usr/bin/env bash
# One-shot GPU check (issue 16): bf16 vs int8 vs fp8 DiT forwards at the real 2K shapes, MFU and
# the per-clip end-to-end / SwiftI2V GPU-time ratio (benchmarks/gpu_check.py). Random weights,
# nothing downloaded; under 8 minutes on one H100/H200.
#
#   benchmarks/gpu_check.sh OUT_DIR            # clean checkout of HEAD + venv + jax[cuda12]
#   benchmarks/gpu_check.sh OUT_DIR --dry-run  # tiny shapes in the current Python (CI, CPU)
#
# The real mode clones this repository's HEAD into a temporary directory (uncommitted changes
# are not part of the check), installs it with the CUDA build of the pinned jax, and runs there.
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR [--dry-run]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
OUT="$1"
DRY_RUN=0
if [[ $# -eq 2 ]]; then
  [[ "$2" == "--dry-run" ]] || usage
  DRY_RUN=1
fi
case "$OUT" in -*) usage ;; esac
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# The pinned jax ("jax==X.Y.Z" in pyproject.toml): the CUDA wheel must be the same version.
JAX_VERSION="$(sed -n 's/^ *"jax==\([0-9.]*\)".*/\1/p' "$REPO/pyproject.toml" | head -n 1)"
[[ -n "$JAX_VERSION" ]] || { echo "error: no jax==X.Y.Z pin in pyproject.toml" >&2; exit 1; }
START=$SECONDS

if [[ $DRY_RUN -eq 1 ]]; then
  echo "[dry run] would clone $REPO@$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "[dry run] would pip install -e . \"jax[cuda12]==$JAX_VERSION\" in a fresh venv"
  cd "$REPO"
  JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" python -m benchmarks.gpu_check "$OUT" --dry-run --rounds 1
else
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  git clone --quiet "$REPO" "$WORK/src"
  git -C "$WORK/src" checkout --quiet "$(git -C "$REPO" rev-parse HEAD)"
  python3 -m venv "$WORK/venv"
  # shellcheck disable=SC1091
  source "$WORK/venv/bin/activate"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e "$WORK/src" "jax[cuda12]==$JAX_VERSION"
  cd "$WORK/src"
  python -c "import jax; d = jax.devices()[0]; assert d.platform == 'gpu', d; print(d.device_kind)"
  python -m benchmarks.gpu_check "$OUT"
fi
echo "gpu_check: results in $OUT ($((SECONDS - START)) s)"

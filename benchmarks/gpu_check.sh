#!/usr/bin/env bash
# One-shot GPU check (benchmarks/gpu_check.py; docs/gpu.md): TI2V-5B window and 2K end-to-end
# forwards in bf16 and int8 against the official Wan2.2 PyTorch model on the same weights, and
# the whole swifti2v_2k_ti2v pipeline on one 81-frame 2K clip. Random weights, nothing
# downloaded at run time; about 8 minutes on one H100.
#
#   benchmarks/gpu_check.sh OUT --installed [--wheels DIR] [--wan-code SRC]
#       the Python and CUDA JAX already on the machine (`python3`, or $PYTHON); installs
#       nothing from the network: a throwaway virtualenv that also sees that Python's packages
#       gets the missing ones from the wheels in DIR (docs/gpu.md: which, and the
#       `pip download` line that makes them). Runs this checkout as it is.
#   benchmarks/gpu_check.sh OUT [--wan-code SRC]
#       a machine with a network: a clean clone of HEAD in a fresh virtualenv with jax[cuda13],
#       torch and diffusers from the package index.
#   benchmarks/gpu_check.sh OUT --dry-run [--installed [--wheels DIR]]
#       every step with tiny shapes on the CPU: in the current Python (CI), or through the
#       --installed route (to rehearse it on any machine).
#
# --wan-code SRC: the official Wan2.2 code, a local clone or anything `git clone` takes; it is
# cloned into the git-ignored .official/Wan2.2 of this checkout (never committed). Without it
# the PyTorch side is diffusers' WanTransformer3DModel. Arguments after `--` go to
# benchmarks/gpu_check.py (e.g. -- --rounds 5 --formats bf16,int8,fp8).
set -euo pipefail

usage() {
  echo "usage: $0 OUT [--installed [--wheels DIR]] [--dry-run] [--wan-code SRC] [-- ARGS]" >&2
  exit 2
}
[[ $# -ge 1 ]] || usage
OUT="$1"
shift
case "$OUT" in -*) usage ;; esac
MODE=clean DRY=0 WHEELS="" WAN_SRC="" EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --installed) MODE=installed ;;
    --dry-run) DRY=1 ;;
    --wheels) [[ $# -ge 2 ]] || usage; WHEELS="$2"; shift ;;
    --wan-code) [[ $# -ge 2 ]] || usage; WAN_SRC="$2"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) usage ;;
  esac
  shift
done
[[ -z "$WHEELS" || "$MODE" == installed ]] || { echo "error: --wheels goes with --installed" >&2; exit 2; }
[[ -z "$WHEELS" || -d "$WHEELS" ]] || { echo "error: --wheels $WHEELS is not a folder" >&2; exit 2; }
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
START=$SECONDS
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

CHECK_ARGS=("$OUT")
if [[ -n "$WAN_SRC" ]]; then
  WAN_DIR="$REPO/.official/Wan2.2"
  if [[ ! -d "$WAN_DIR/.git" ]]; then
    mkdir -p "$REPO/.official"
    git clone --quiet "$WAN_SRC" "$WAN_DIR"
  fi
  echo "official Wan2.2 code: $WAN_DIR ($(git -C "$WAN_DIR" rev-parse --short HEAD))"
  CHECK_ARGS+=(--wan-code "$WAN_DIR")
fi

# The modules the check imports beyond jax (python module:pip package). Without torch and
# diffusers (no wheels for them either) the PyTorch section is skipped and says so.
NEEDED="ml_collections:ml-collections flax:flax optax:optax orbax.checkpoint:orbax-checkpoint
chex:chex einops:einops numpy:numpy PIL:pillow tqdm:tqdm tokenizers:tokenizers ftfy:ftfy
safetensors:safetensors imageio:imageio imageio_ffmpeg:imageio-ffmpeg absl:absl-py"
OPTIONAL="torch:torch diffusers:diffusers"
missing_packages() {  # missing_packages PAIRS: the pip names of the modules Python cannot import
  python - "$1" <<'PY'
import importlib, sys
for pair in sys.argv[1].split():
    module, package = pair.split(":")
    try:
        importlib.import_module(module)
    except ImportError:
        print(package)
PY
}

GPU_CHECK=(python -m benchmarks.gpu_check "${CHECK_ARGS[@]}")
ASSERT_GPU="import jax; d = jax.devices()[0]; assert d.platform == 'gpu', d; print(d.device_kind)"
if [[ $DRY -eq 1 ]]; then
  GPU_CHECK+=(--dry-run --rounds 1)
  ASSERT_GPU="import jax; print(jax.devices()[0].platform, jax.__version__)"
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
fi
GPU_CHECK+=("${EXTRA[@]}")

if [[ $DRY -eq 1 && "$MODE" == clean ]]; then
  echo "[dry run] in the current Python; the real modes: --installed, or a clean venv"
  cd "$REPO"
  "${GPU_CHECK[@]}"
elif [[ "$MODE" == installed ]]; then
  PY="${PYTHON:-python3}"
  # A virtualenv of the same interpreter whose .pth lists the given Python's own site folders
  # (that Python may itself be a virtualenv): it sees the installed JAX and packages, and the
  # wheels go into it, not into the machine's environment.
  "$PY" -m venv "$WORK/venv"
  "$PY" -c 'import site, sysconfig; p = sysconfig.get_paths()
print("\n".join(dict.fromkeys([p["purelib"], p["platlib"], *site.getsitepackages()])))' \
    > "$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/machine_site.pth"
  # shellcheck disable=SC1091
  source "$WORK/venv/bin/activate"
  MISSING="$(missing_packages "$NEEDED")"
  for package in $(missing_packages "$OPTIONAL"); do  # from the wheels when they are there
    if compgen -G "$WHEELS/${package}-*.whl" >/dev/null; then MISSING+=" $package"; fi
  done
  MISSING="$(echo $MISSING)"
  if [[ -n "$MISSING" ]]; then
    if [[ -z "$WHEELS" ]]; then
      echo "error: missing $(echo "$MISSING" | tr '\n' ' ')- bring them as wheels: --wheels DIR (docs/gpu.md)" >&2
      exit 1
    fi
    # shellcheck disable=SC2086
    python -m pip install --quiet --no-index --find-links "$WHEELS" $MISSING
  fi
  cd "$REPO"
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  python -c "$ASSERT_GPU"
  "${GPU_CHECK[@]}"
else
  git clone --quiet "$REPO" "$WORK/src"
  git -C "$WORK/src" checkout --quiet "$(git -C "$REPO" rev-parse HEAD)"
  python3 -m venv "$WORK/venv"
  # shellcheck disable=SC1091
  source "$WORK/venv/bin/activate"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e "$WORK/src" "jax[cuda13]>=0.10.2,<0.13" torch diffusers
  cd "$WORK/src"
  python -c "$ASSERT_GPU"
  "${GPU_CHECK[@]}"
fi
echo "gpu_check: results in $OUT ($((SECONDS - START)) s)"

#!/usr/bin/env bash
# Installs sdapi and its pinned dependencies into a Python environment: the one install recipe, used by
# `make install` and by the container image alike, so both get the same pins.
#
#   deploy/install-deps.sh PYTHON EXTRAS [--editable] [--torch-index-url URL]
#   deploy/install-deps.sh --print-pins      # what it would pin, one per line (the container test reads this)
#
# 1. torch first and exactly (its pin is read from pyproject.toml): an unpinned resolve pulls a newer build with
#    gigabytes of CUDA packages. --torch-index-url picks another build of the same version (the CPU image uses
#    https://download.pytorch.org/whl/cpu).
# 2. the package with its extras (cpu | gpu picks the ONNX Runtime build, dev the test tools).
# 3. the Swagger UI / ReDoc asset wheel, --no-deps: only its static files are read; its nominal Django dependency
#    is never used.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
SIDECAR_PIN="drf-spectacular-sidecar==2026.10.1"

torch_pin() {
    "$1" - "$root/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as file:
    dependencies = tomllib.load(file)["project"]["dependencies"]
print(next(pin for pin in dependencies if pin.startswith("torch==")))
PY
}

if [[ "${1:-}" == "--print-pins" ]]; then
    torch_pin python3
    echo "$SIDECAR_PIN"
    exit 0
fi

python="${1:?usage: install-deps.sh PYTHON EXTRAS [--editable] [--torch-index-url URL]}"
extras="${2:?usage: install-deps.sh PYTHON EXTRAS [--editable] [--torch-index-url URL]}"
shift 2
editable=()
torch_index=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --editable) editable=(-e) ;;
        --torch-index-url) torch_index=(--index-url "$2"); shift ;;
        *) echo "install-deps.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

"$python" -m pip install --quiet "${torch_index[@]}" "$(torch_pin "$python")"
"$python" -m pip install --quiet "${editable[@]}" "$root[$extras]"
"$python" -m pip install --quiet --no-deps "$SIDECAR_PIN"

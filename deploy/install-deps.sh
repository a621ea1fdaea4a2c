#!/usr/bin/env bash
# Installs sdapi and its pinned dependencies into a Python environment: the one install recipe, used by
# `make install` and by the container image alike, so both get the same pins.
#
#   deploy/install-deps.sh PYTHON EXTRAS [--editable] [--torch-index-url URL] [--dependencies-only]
#   deploy/install-deps.sh --print-pins      # what it would pin, one per line (the container test reads this)
#
# --dependencies-only installs steps 1 and 3 and the package's pinned dependencies without the package (read from
# pyproject.toml alone): the image does this before it copies the source, so a code change rebuilds one small layer.
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

# The package's dependencies and those of EXTRAS (comma-separated), one per line, from pyproject.toml.
dependency_pins() {
    "$1" - "$root/pyproject.toml" "$2" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as file:
    project = tomllib.load(file)["project"]
pins = list(project["dependencies"])
for extra in filter(None, sys.argv[2].split(",")):
    pins += project["optional-dependencies"][extra]
print("\n".join(pins))
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
dependencies_only=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --editable) editable=(-e) ;;
        --torch-index-url) torch_index=(--index-url "$2"); shift ;;
        --dependencies-only) dependencies_only=1 ;;
        *) echo "install-deps.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

"$python" -m pip install --quiet "${torch_index[@]}" "$(torch_pin "$python")"
if ((dependencies_only)); then
    mapfile -t pins < <(dependency_pins "$python" "$extras")
    "$python" -m pip install --quiet "${pins[@]}"
else
    "$python" -m pip install --quiet "${editable[@]}" "$root[$extras]"
fi
"$python" -m pip install --quiet --no-deps "$SIDECAR_PIN"

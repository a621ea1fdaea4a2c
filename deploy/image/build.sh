#!/usr/bin/env bash
# Builds the sdapi container image with podman from this repository's Dockerfile: what `make image` runs.
#
#   deploy/image/build.sh [--variant cpu|gpu] [--tag TAG]      # default: cpu, tagged sdapi:cpu (gpu: sdapi:gpu)
#
# Environment:
#   BASE_IMAGE       the CPU variant's base. Unset: the Dockerfile's registry default (debian:bookworm-slim), or,
#                    where no registry answers, the same release built here from Debian's packages
#                    (deploy/image/debian-base.sh). The GPU variant always starts from its CUDA base.
#   TORCH_INDEX_URL  where the CPU variant's torch comes from. Unset: PyTorch's CPU index, or, where it does not
#                    answer, this machine's own pip sources (which must then hold a CPU build of the pinned torch).
#   PYTHON           the interpreter whose pip configuration the build borrows (default python3).
#
# The build uses this machine's pip configuration (indexes, local wheel folders, constraints, CA bundle): its
# effective settings are written to a pip.conf mounted at /etc/pip.conf for the build's RUN steps, with every local
# path it names mounted read-only under /run/host-pip; nothing of it stays in the image. Layers are cached: with
# unchanged pins a code change rebuilds only the package's layer. Prints the build time and the image size.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
variant=cpu
tag=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --variant) variant="$2"; shift ;;
        --tag) tag="$2"; shift ;;
        *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[[ "$variant" == cpu || "$variant" == gpu ]] || { echo "build.sh: --variant is cpu or gpu" >&2; exit 2; }
tag="${tag:-sdapi:$variant}"
# runc where it is installed, not podman's default crun: crun refuses a hybrid cgroup v1/v2 layout, which CI
# machines have. The build's steps get this shell's open-file limit and podman's default process limit (32768) or
# less: more than the host allows fails the step ("error setting rlimits"), and runc refuses even the host's own
# process limit on CI machines.
podman=(podman)
if command -v runc >/dev/null; then
    podman+=(--runtime runc)
fi
processes=$(ulimit -Hu)
[[ "$processes" == unlimited || "$processes" -gt 32768 ]] && processes=32768
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=$processes:$processes")

arguments=(--build-arg "VARIANT=$variant")
if [[ "$variant" == cpu ]]; then
    base="${BASE_IMAGE:-}"
    if [[ -z "$base" ]]; then
        default_base="$(sed -n 's/^ARG BASE_IMAGE=//p' "$root/Dockerfile")"
        if podman image exists "$default_base" || timeout 120 podman pull -q "$default_base" >/dev/null 2>&1; then
            base="$default_base"
        else
            echo "build.sh: no registry answers for $default_base; building that release from Debian's packages" >&2
            base="$("$root/deploy/image/debian-base.sh")"
        fi
    fi
    torch_index="${TORCH_INDEX_URL-}"
    if [[ -z "${TORCH_INDEX_URL+set}" ]]; then
        torch_index="https://download.pytorch.org/whl/cpu"
        if ! curl -fsS --max-time 15 -o /dev/null "$torch_index/torch/" 2>/dev/null; then
            echo "build.sh: $torch_index does not answer; torch comes from this machine's pip sources" >&2
            torch_index=""
        fi
    fi
    arguments+=(--build-arg "BASE_IMAGE=$base" --build-arg "TORCH_INDEX_URL=$torch_index")
fi

# This machine's pip settings, for the build's RUN steps only.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mounts=()
"${PYTHON:-python3}" - "$work/pip.conf" >"$work/mounts" <<'PY'
import configparser, os, subprocess, sys

# Local paths are mounted under this folder, never over the image's own files (the CA bundle's own path would
# stop the image's ca-certificates package from writing it).
UNDER = "/run/host-pip"
listed = subprocess.run(
    [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
).stdout
settings = {}
for line in listed.splitlines():
    name, _, value = line.partition("=")
    settings[name.rsplit(".", 1)[-1]] = value.strip().strip("'\"")  # the environment's (:env:) come last and win
settings.pop("no-cache-dir", None)
mounts = set()


def moved(word: str) -> str:
    """`word` with a local path in it moved under UNDER (and that path's mount noted)."""
    scheme = "file://" if word.startswith("file://") else ""
    path = word.removeprefix(scheme).rstrip("/")
    if not path.startswith("/") or not os.path.exists(path):
        return word
    mounted = path
    if scheme and os.path.basename(path) == "simple":
        mounted = os.path.dirname(path)  # a local index's pages link to files beside its simple/ folder
    mounts.add(f"{os.path.realpath(mounted)}:{UNDER}{mounted}")
    return f"{scheme}{UNDER}{path}"


config = configparser.ConfigParser()
config["global"] = {key: " ".join(moved(word) for word in value.split()) for key, value in settings.items()}
with open(sys.argv[1], "w", encoding="utf-8") as file:
    config.write(file)
print("\n".join(sorted(mounts)))
PY
while read -r mount; do
    [[ -n "$mount" ]] && mounts+=(--volume "$mount:ro")
done <"$work/mounts"
mounts+=(--volume "$work/pip.conf:/etc/pip.conf:ro")

started=$(date +%s)
# docker format: OCI images drop HEALTHCHECK, which the image's users (and its test) rely on.
"${podman[@]}" build --format docker --layers --network host \
    "${limits[@]}" \
    "${arguments[@]}" "${mounts[@]}" --tag "$tag" --file "$root/Dockerfile" "$root"
seconds=$(($(date +%s) - started))
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "build.sh: $tag built in ${seconds} s; $((size / 1000000)) MB"

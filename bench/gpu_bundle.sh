#!/usr/bin/env bash
# Getting this project's packages onto a lent GPU machine, which reaches nothing outside: download the wheels it
# lacks (bench/gpu_wheels.txt) for its Python 3.12, cut them into parts small enough to travel (a call carries at
# most 64 MiB with the working tree), and print the sequence of device calls that carry the parts and join them.
#
#   bench/gpu_bundle.sh [--out DIR] [--part-mb N] [--wheels-from DIR]
#
# --out: where the bundle is written (default bench/gpu-bundle, ignored by git); --part-mb: the largest part in MB
# (10^6 bytes; default 60); --wheels-from: take the wheels from a folder instead of downloading (the tests do).
# On the device, `bash <out>/join.sh` joins the parts, checks every wheel's sha256, and installs them into
# $TARGET (default /tmp/sdapi-site); bench/gpu_check.py --wheels <out>/wheels installs them itself too.
set -euo pipefail

out=bench/gpu-bundle
part_mb=60
wheels_from=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --part-mb) part_mb="$2"; shift 2 ;;
        --wheels-from) wheels_from="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
part_bytes="$("$python" -c "print(int(float('$part_mb') * 10**6))")"
# What one call may carry beside the working tree that travels with it anyway.
tree_bytes="$(git -C "$here/.." ls-files -z | (cd "$here/.." && xargs -0 stat -c %s 2>/dev/null) | awk '{s += $1} END {print s + 0}')"
call_bytes=$(( 64 * 2**20 - tree_bytes - 2**20 ))
if [ "$call_bytes" -lt "$part_bytes" ]; then
    echo "the working tree ($tree_bytes bytes) leaves $call_bytes bytes a call: use a smaller --part-mb" >&2
    exit 1
fi

rm -rf "$out/wheels" "$out/parts"
mkdir -p "$out/wheels" "$out/parts"
if [ -n "$wheels_from" ]; then
    cp "$wheels_from"/*.whl "$out/wheels/"
else
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$out/wheels" -r "$here/gpu_wheels.txt"
fi
(cd "$out/wheels" && sha256sum ./*.whl > ../SHA256SUMS)

# Cut each wheel into parts of at most part_bytes, then pack the parts into groups a call can carry.
staging="$out/parts/.all"
mkdir -p "$staging"
for wheel in "$out"/wheels/*.whl; do
    split -b "$part_bytes" -d -a 3 "$wheel" "$staging/$(basename "$wheel").part"
done
group=0
group_bytes=$call_bytes
for part in $(ls "$staging" | sort); do
    size=$(stat -c %s "$staging/$part")
    if [ $(( group_bytes + size )) -gt "$call_bytes" ]; then
        group=$(( group + 1 ))
        group_bytes=0
        mkdir -p "$out/parts/g$(printf %02d $group)"
    fi
    mv "$staging/$part" "$out/parts/g$(printf %02d $group)/"
    group_bytes=$(( group_bytes + size ))
done
rmdir "$staging"

cat > "$out/join.sh" <<'JOIN'
#!/usr/bin/env bash
# On the device: join the carried parts into wheels, check them, install them into $TARGET.
set -euo pipefail
bundle="$(cd "$(dirname "$0")" && pwd)"
target="${TARGET:-/tmp/sdapi-site}"
mkdir -p "$bundle/wheels"
for first in "$bundle"/parts/*/*.part000; do
    name="$(basename "$first" .part000)"
    # In part order, whichever call carried each part (sorted by the part's own name).
    cat $(ls "$bundle"/parts/*/"$name".part* | awk -F/ '{print $NF " " $0}' | sort | cut -d" " -f2) \
        > "$bundle/wheels/$name"
done
(cd "$bundle/wheels" && sha256sum -c --quiet ../SHA256SUMS)
"${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$target" "$bundle"/wheels/*.whl
echo "export PYTHONPATH=$target"
JOIN
chmod +x "$out/join.sh"

groups=$(ls -d "$out"/parts/g* | wc -l)
echo "bundle: $(ls "$out"/wheels | wc -l) wheels in $groups call(s) of at most $(( call_bytes / 2**20 )) MiB, in $out"
echo "device calls, back to back (the machine keeps what earlier calls carried while it stays warm):"
index=0
for folder in "$out"/parts/g*; do
    index=$(( index + 1 ))
    if [ "$index" -lt "$groups" ]; then
        echo "  run(carry=[\"$folder\"], command=\"true\", timeout_s=60)"
    else
        carry="\"$folder\", \"$out/join.sh\", \"$out/SHA256SUMS\""
        check="PYTHONPATH=/tmp/sdapi-site python3 -m bench.gpu_check --out \$OUT"
        echo "  run(carry=[$carry], command=\"bash $out/join.sh && $check\", timeout_s=540)"
    fi
done

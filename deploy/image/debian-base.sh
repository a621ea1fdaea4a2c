#!/usr/bin/env bash
# Builds a Debian base image from Debian's own packages, for machines that reach Debian's archive but no container
# registry (CI's): debootstrap's minimal variant of a release, trimmed like the registry's debian:<release>-slim
# (no documentation, man pages or apt lists), imported into podman under a local name.
#
#   deploy/image/debian-base.sh [IMAGE] [RELEASE] [MIRROR]
#       IMAGE    default localhost/sdapi-debian-base:bookworm (kept: a second run only prints the name)
#       RELEASE  default bookworm (its python3 is 3.11, as debian:bookworm-slim's)
#       MIRROR   default http://deb.debian.org/debian
#
# Needs root, debootstrap and podman. Prints the image name on stdout, progress on stderr.
set -euo pipefail

image="${1:-localhost/sdapi-debian-base:bookworm}"
release="${2:-bookworm}"
mirror="${3:-http://deb.debian.org/debian}"

if podman image exists "$image"; then
    echo "$image"
    exit 0
fi

rootfs="$(mktemp -d /var/tmp/sdapi-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "debian-base: debootstrap --variant=minbase $release from $mirror" >&2
debootstrap --variant=minbase --include=ca-certificates "$release" "$rootfs" "$mirror" >&2
cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $release main
deb $mirror $release-updates main
deb ${mirror%/debian}/debian-security $release-security main
SOURCES
# What the slim images leave out; dpkg is told to keep leaving it out for the packages installed later.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
rm -rf "$rootfs"/usr/share/{man,info,locale}/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
echo "debian-base: importing as $image" >&2
path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
tar --numeric-owner -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' --change "ENV PATH=$path" - "$image" >&2
echo "$image"

#!/usr/bin/env bash
# Build recgate's base image from Debian packages, for machines that reach a Debian mirror but
# no container registry: a minbase Debian with python3, python3-venv and ca-certificates,
# imported into podman. The Dockerfile then builds on it with
#   podman build --build-arg BASE_IMAGE=localhost/recgate-base:bookworm ...
# (docs/container.md).
#
#   scripts/build-base-image.sh [--force] [--suite SUITE] [--image NAME] [--mirror URL|FILE]
#
# Idempotent: does nothing when the image exists, unless --force. Needs root, mmdebstrap and
# podman (apt-get install mmdebstrap podman runc). Set CONTAINERS_CONF to
# deploy/podman/containers.conf where podman's defaults do not fit the machine.
set -euo pipefail

suite=bookworm
image=""
mirror=""
force=0

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "build-base-image: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --suite) [ $# -ge 2 ] || die "--suite needs a value"; suite=$2; shift ;;
    --image) [ $# -ge 2 ] || die "--image needs a value"; image=$2; shift ;;
    --mirror) [ $# -ge 2 ] || die "--mirror needs a value"; mirror=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
image=${image:-localhost/recgate-base:$suite}

for tool in mmdebstrap podman; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: apt-get install mmdebstrap podman runc"
done

previous_id=""
if podman image exists "$image"; then
  if [ "$force" = 0 ]; then
    echo "build-base-image: $image exists (--force rebuilds it)"
    exit 0
  fi
  previous_id=$(podman image inspect --format '{{.Id}}' "$image")
fi

# The host's own apt sources when it runs the same Debian release: they name the mirror (or
# proxy) this machine is meant to use. Otherwise mmdebstrap's default, deb.debian.org.
if [ -z "$mirror" ]; then
  host_codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || host_codename=""
  if [ "$host_codename" = "$suite" ]; then
    if [ -s /etc/apt/sources.list.d/debian.sources ]; then
      mirror=/etc/apt/sources.list.d/debian.sources
    elif grep -qs '^deb ' /etc/apt/sources.list; then
      mirror=/etc/apt/sources.list
    fi
  fi
fi
mirror_args=()
[ -z "$mirror" ] || mirror_args=("$mirror")

echo "build-base-image: building $image from Debian $suite (${mirror:-default mirror}); about a minute" >&2
started=$(date +%s)
# Documentation, man pages and translations are left out: nobody reads them in a container.
# The tarball streams straight into podman as an untagged image, tagged only once both sides
# succeeded (pipefail): a failed run never leaves a half-built base that later runs would skip.
if ! image_id=$(
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      --format=tar "$suite" - "${mirror_args[@]}" \
    | podman import --quiet \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "recgate base: Debian $suite minbase + python3, python3-venv, ca-certificates" \
        -
); then
  [ -z "${image_id:-}" ] || podman rmi --force "$image_id" >/dev/null 2>&1 || true
  die "building $image failed (see mmdebstrap's and podman's messages above)"
fi
podman tag "$image_id" "$image"
# The base this one replaces, unless images built on it still need it.
[ -z "$previous_id" ] || [ "$previous_id" = "$image_id" ] \
  || podman rmi "$previous_id" >/dev/null 2>&1 || true
echo "build-base-image: $image built in $(( $(date +%s) - started )) s" >&2

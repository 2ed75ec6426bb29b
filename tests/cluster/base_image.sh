#!/usr/bin/env bash
# Build the base images earshot's Dockerfiles are built on here, where no registry can be reached
# (../shared/CLUSTER.md, "base image"), and put them into buildah's storage:
#
#   localhost/earshot-base/debian:bookworm       Debian bookworm minbase with Python 3.11, pip,
#                                                its headers (as python:*-slim has them) and
#                                                libpython3.11 (the Triton stand-in builds on it:
#                                                the Python backend stub embeds libpython3.11)
#   localhost/earshot-base/python:3.11-bookworm  the same with a virtual environment at /usr/local,
#                                                so `python` and `pip` behave as in python:*-slim
#
# The root filesystems are made with debootstrap from the Debian mirror apt uses and kept as tar
# archives under ~/.cache/earshot/images/base-<KEY>, KEY being a hash of this script: the first
# run costs about 90 s, later runs only re-import the archives when buildah's storage lost them.
#
# Usage: base_image.sh        prints KEY (the last line of stdout); progress goes to stderr
# Env:   EARSHOT_IMAGES_CACHE  cache directory (default ~/.cache/earshot/images)
# Needs: root, Debian packages debootstrap and buildah.
set -euo pipefail

CACHE=${EARSHOT_IMAGES_CACHE:-${HOME}/.cache/earshot/images}
KEY=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
DEBIAN_IMAGE=localhost/earshot-base/debian:bookworm
PYTHON_IMAGE=localhost/earshot-base/python:3.11-bookworm
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,passwd,ca-certificates,libpython3.11,python3-dev
DIR="${CACHE}/base-${KEY}"
log() { echo "[base_image.sh] $*" >&2; }

for tool in debootstrap buildah chroot sha256sum flock; do
  command -v "${tool}" >/dev/null || {
    echo "base_image.sh: ${tool} is missing (apt-get install debootstrap buildah)" >&2; exit 2; }
done

mkdir -p "${DIR}"
exec 9>"${DIR}/.lock"
flock 9                      # two builds on one machine debootstrap once

# The mirror apt uses (deb822 sources first, then a one-line sources.list).
mirror() {
  local uri
  uri=$(grep -hs -m1 '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | head -1)
  [[ -n "${uri}" ]] || uri=$(grep -hs -m1 '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -1)
  echo "${uri:-http://deb.debian.org/debian}"
}

if [[ ! -f "${DIR}/python.tar" ]]; then
  ROOT=$(mktemp -d "${DIR}/rootfs.XXXXXX")
  trap 'rm -rf "${ROOT}"' EXIT
  log "debootstrap bookworm from $(mirror) (about 90 s)"
  debootstrap --variant=minbase --include="${PACKAGES}" bookworm "${ROOT}" "$(mirror)" >&2
  # The host's CA bundle: the images reach the package index through whatever the host trusts.
  cp /etc/ssl/certs/ca-certificates.crt "${ROOT}/etc/ssl/certs/ca-certificates.crt"
  rm -rf "${ROOT}"/var/cache/apt/archives/*.deb "${ROOT}"/var/lib/apt/lists/* "${ROOT}"/tmp/*
  tar -C "${ROOT}" --numeric-owner -cf "${DIR}/debian.tar.tmp" .
  chroot "${ROOT}" python3 -m venv /usr/local
  tar -C "${ROOT}" --numeric-owner -cf "${DIR}/python.tar.tmp" .
  mv "${DIR}/debian.tar.tmp" "${DIR}/debian.tar"
  mv "${DIR}/python.tar.tmp" "${DIR}/python.tar"
fi

# buildah's storage may be newer or older than the cache: import when the key label differs.
import() {
  local image=$1 archive=$2 ctr
  if [[ "$(buildah inspect --type image --format '{{index .ImageAnnotations "earshot.base-key"}}' \
        "${image}" 2>/dev/null)" == "${KEY}" ]]; then
    return
  fi
  log "importing ${image}"
  ctr=$(buildah from --pull-never scratch)
  buildah add --quiet "${ctr}" "${archive}" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 --annotation "earshot.base-key=${KEY}" "${ctr}"
  buildah commit --quiet --rm "${ctr}" "${image}" >/dev/null
}
import "${DEBIAN_IMAGE}" "${DIR}/debian.tar"
import "${PYTHON_IMAGE}" "${DIR}/python.tar"
echo "${KEY}"

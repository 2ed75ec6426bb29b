#!/usr/bin/env bash
# Fetch build/pause/linux/pause.c (and the pause image's TAG) from the Debian `kubernetes` source
# package the control-plane harness builds (tests/e2e/controlplane/build.sh), and cache it: the pod
# sandbox ("pause") image is compiled from it, since no registry can be reached here.
#
# Usage: pause_source.sh       prints the directory holding pause.c and TAG (last line of stdout)
# Env:   EARSHOT_IMAGES_CACHE  cache directory (default ~/.cache/earshot/images)
set -euo pipefail

SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE=${EARSHOT_IMAGES_CACHE:-${HOME}/.cache/earshot/images}
DIR="${CACHE}/pause-src-${SRC_VERSION}"

if [[ -f "${DIR}/pause.c" && -f "${DIR}/TAG" ]]; then
  echo "${DIR}"
  exit 0
fi
for tool in apt-get tar flock; do
  command -v "${tool}" >/dev/null || { echo "pause_source.sh: ${tool} is missing" >&2; exit 2; }
done
mkdir -p "${CACHE}"
exec 9>"${CACHE}/.pause-src.lock"
flock 9
if [[ -f "${DIR}/pause.c" && -f "${DIR}/TAG" ]]; then echo "${DIR}"; exit 0; fi

WORK=$(mktemp -d "${CACHE}/pause-src.XXXXXX")
trap 'rm -rf "${WORK}"' EXIT
# A private apt state with deb-src lines keeps the system's sources untouched (as build.sh does).
APT="${WORK}/apt"
mkdir -p "${APT}/lists/partial" "${APT}/archives/partial" "${APT}/etc/preferences.d"
cat >"${APT}/etc/sources.list" <<SOURCES
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
SOURCES
apt_private() {
  apt-get -q \
    -o Dir::Etc::SourceList="${APT}/etc/sources.list" \
    -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::Etc::PreferencesParts="${APT}/etc/preferences.d" \
    -o Dir::State::Lists="${APT}/lists" \
    -o Dir::State::Status=/var/lib/dpkg/status \
    -o Dir::Cache="${APT}" -o Dir::Cache::Archives="${APT}/archives" \
    -o APT::Get::List-Cleanup=0 -o Debug::NoLocking=1 -o APT::Sandbox::User=root \
    "$@"
}
echo "[pause_source.sh] fetching kubernetes=${SRC_VERSION} source" >&2
apt_private update >&2
cd "${WORK}"
apt_private source --download-only "kubernetes=${SRC_VERSION}" >&2
# Debian's patches do not touch build/pause; the upstream tarball is enough.
tar -xzf kubernetes_*.orig.tar.gz --wildcards --no-anchored \
  'build/pause/linux/pause.c' 'build/pause/Makefile'
PAUSE=$(dirname "$(find . -path '*/build/pause/linux/pause.c' | head -1)")
mkdir -p "${DIR}.tmp"
cp "${PAUSE}/pause.c" "${DIR}.tmp/pause.c"
sed -n 's/^TAG = \(.*\)$/\1/p' "${PAUSE}/../Makefile" >"${DIR}.tmp/TAG"
[[ -s "${DIR}.tmp/TAG" ]] || { echo "pause_source.sh: no TAG in build/pause/Makefile" >&2; exit 1; }
rm -rf "${DIR}"
mv "${DIR}.tmp" "${DIR}"
echo "${DIR}"

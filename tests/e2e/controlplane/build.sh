#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy v1.20.2 from
# Debian bookworm's source package with Go 1.15 from bullseye, plus the pause binary of the pod
# sandbox image (gcc -static), and cache them (DESIGN.md, "Kubernetes API"; tests/cluster).
#
# No prebuilt apiserver is reachable from these machines; Debian's source package vendors every Go
# dependency, so the build runs offline (GOPROXY=off). Go 1.19 builds it too, but that server crashes
# under load, hence Go 1.15. A private apt state keeps the system's sources untouched.
#
# Usage: build.sh            prints the cache directory holding the binaries (builds what is missing
#                            once: ~5 min for the control plane, ~5 min more for the node binaries)
#                            and installs Debian's etcd-server if etcd is missing
# Env:   EARSHOT_KUBE_CACHE  cache directory (default ~/.cache/earshot/kube-1.20.2)
set -euo pipefail

KUBE_VERSION=v1.20.2
SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE=${EARSHOT_KUBE_CACHE:-${HOME}/.cache/earshot/kube-1.20.2}
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
GO_TARGETS=(cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy)

have_binaries() {
  for b in "${BINARIES[@]}" pause; do [[ -x "${CACHE}/bin/${b}" ]] || return 1; done
}

# etcd comes from Debian's etcd-server package (the harness starts its own on a free port)
if ! command -v etcd >/dev/null; then
  echo "[build.sh] installing etcd-server" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >&2 \
    || { echo "build.sh: cannot install etcd-server (run as root, or apt-get install it)" >&2; exit 2; }
fi

if have_binaries; then
  echo "${CACHE}"
  exit 0
fi

for tool in apt-get dpkg-source dpkg-deb make flock gcc; do
  command -v "${tool}" >/dev/null || {
    echo "build.sh: ${tool} is missing (apt-get install dpkg-dev make util-linux gcc)" >&2; exit 2; }
done

mkdir -p "${CACHE}"
exec 9>"${CACHE}/.lock"
flock 9                      # two test sessions on one machine build once
if have_binaries; then echo "${CACHE}"; exit 0; fi

WORK=$(mktemp -d "${CACHE}/build.XXXXXX")
trap 'rm -rf "${WORK}"' EXIT
log() { echo "[build.sh] $*" >&2; }

# --- private apt state: deb-src bookworm (kubernetes source) + deb bullseye (Go 1.15) -------------
APT="${WORK}/apt"
mkdir -p "${APT}/lists/partial" "${APT}/archives/partial" "${APT}/etc/preferences.d"
cat >"${APT}/etc/sources.list" <<SOURCES
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
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
log "updating a private apt state in ${APT}"
apt_private update >&2

# --- Go 1.15 from bullseye, unpacked (not installed) ---------------------------------------------
cd "${WORK}"
log "fetching golang-1.15-go and golang-1.15-src"
apt_private download golang-1.15-go golang-1.15-src >&2
mkdir -p go-root
for deb in golang-1.15-*.deb; do dpkg-deb -x "${deb}" go-root; done
GOROOT="${WORK}/go-root/usr/lib/go-1.15"
# golang-1.15-src ships the standard library under /usr/share/go-1.15; the go package links to it
if [[ ! -d "${GOROOT}/src" || -L "${GOROOT}/src" ]]; then
  rm -f "${GOROOT}/src"
  ln -s "${WORK}/go-root/usr/share/go-1.15/src" "${GOROOT}/src"
fi
"${GOROOT}/bin/go" version >&2

# --- kubernetes source package from bookworm -------------------------------------------------------
log "fetching kubernetes=${SRC_VERSION} source"
apt_private source --download-only "kubernetes=${SRC_VERSION}" >&2
dpkg-source --no-check -x kubernetes_*.dsc src >&2

# --- build ---------------------------------------------------------------------------------------
# only what an older cache lacks (caches made before the node binaries hold the first two)
missing=()
for i in "${!BINARIES[@]}"; do
  [[ -x "${CACHE}/bin/${BINARIES[$i]}" ]] || missing+=("${GO_TARGETS[$i]}")
done
cd src
log "building pause (gcc -static)"
mkdir -p "${CACHE}/bin"
gcc -Os -static -DVERSION=debian-1.20.2 -o "${CACHE}/bin/pause.tmp" build/pause/linux/pause.c >&2
mv "${CACHE}/bin/pause.tmp" "${CACHE}/bin/pause"
if ((${#missing[@]} == 0)); then echo "${CACHE}"; exit 0; fi
log "building ${missing[*]} (several minutes)"

export GOROOT PATH="${GOROOT}/bin:${PATH}" GOPATH="${WORK}/gopath" GOCACHE="${WORK}/gocache"
export GOPROXY=off GOFLAGS=-mod=vendor GO111MODULE=on CGO_ENABLED=0 KUBE_GIT_VERSION="${KUBE_VERSION}"
export KUBE_GIT_TREE_STATE=clean KUBE_BUILD_PLATFORMS=linux/amd64
make WHAT="${missing[*]}" >&2

for b in "${BINARIES[@]}"; do
  [[ -x "${CACHE}/bin/${b}" ]] && continue
  install -m 0755 "_output/local/bin/linux/amd64/${b}" "${CACHE}/bin/${b}.tmp"
  mv "${CACHE}/bin/${b}.tmp" "${CACHE}/bin/${b}"
done
"${CACHE}/bin/kube-apiserver" --version >&2
echo "${CACHE}"

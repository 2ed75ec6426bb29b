#!/usr/bin/env bash
# Install what the Talk HPB integration tests run for real (idempotent; needs root for apt-get):
#   * janus 1.1.2 and nats-server from Debian bookworm (apt-get install);
#   * nextcloud-spreed-signaling 1.2.4 from bookworm-backports, fetched with `apt-get download`
#     through a private sources list and unpacked with `dpkg -x` under the cache (the plain bookworm
#     0.4.1 package refuses MCU publishing with roomType "video" and speaks only hello 1.0);
#   * espeak-ng (speech for the tests) and iproute2 (the network namespace).
# Prints the path of the signaling server binary on its last line.
set -euo pipefail

CACHE="${EARSHOT_HPB_CACHE:-$HOME/.cache/earshot/hpb}"
VERSION="1.2.4"
ROOT="$CACHE/signaling-$VERSION"
SIGNALING="$ROOT/usr/bin/nextcloud-spreed-signaling-server"

missing=""
for pkg in janus nats-server espeak-ng iproute2; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "installing:$missing" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
fi

if [ ! -x "$SIGNALING" ]; then
    state="$CACHE/apt"
    mkdir -p "$state/lists/partial" "$state/archives/partial" "$state/etc"
    cat >"$state/etc/backports.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt_opts=(
        -o "Dir::Etc::SourceList=/dev/null"
        -o "Dir::Etc::SourceParts=$state/etc"
        -o "Dir::State::Lists=$state/lists"
        -o "Dir::Cache::Archives=$state/archives"
        -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
        -o "APT::Get::List-Cleanup=0"
        -o "APT::Sandbox::User=root"
    )
    apt-get "${apt_opts[@]}" update -qq >&2
    (cd "$state/archives" && apt-get "${apt_opts[@]}" download \
        "nextcloud-spreed-signaling=$VERSION*" >&2)
    deb=$(ls "$state"/archives/nextcloud-spreed-signaling_"$VERSION"*.deb | head -n1)
    rm -rf "$CACHE/signaling-$VERSION.tmp"
    dpkg -x "$deb" "$CACHE/signaling-$VERSION.tmp"
    rm -rf "$ROOT"
    mv "$CACHE/signaling-$VERSION.tmp" "$ROOT"
fi
if [ ! -x "$SIGNALING" ]; then
    # The binary's name differs between packagings: take the server binary the package ships.
    found=$(find "$ROOT/usr/bin" "$ROOT/usr/sbin" -maxdepth 1 -type f -name '*signaling*' 2>/dev/null | grep -v -e client -e proxy | head -n1)
    [ -n "$found" ] || { echo "no signaling server binary in $ROOT" >&2; exit 1; }
    ln -sf "$found" "$SIGNALING"
fi

"$SIGNALING" --version >&2
echo "$SIGNALING"

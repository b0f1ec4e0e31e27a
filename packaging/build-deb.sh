#!/usr/bin/env bash
# Builds deckhand-agent_<ver>_<arch>.deb and deckhand-hub_<ver>_<arch>.deb
# (and deckhand-cli) from release binaries with dpkg-deb: no extra tooling.
# Usage: packaging/build-deb.sh [TARGET_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-target/release}
out=${2:-target/deb}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
mkdir -p "$out"

# stage NAME BINARIES UNIT CONFIG DESCRIPTION (BINARIES: space-separated)
stage() {
  local name=$1 bins=$2 unit=$3 conf=$4 desc=$5
  local root short=${name#deckhand-} bin
  root=$(mktemp -d)
  for bin in $bins; do
    install -Dm0755 "$target/$bin" "$root/usr/bin/$bin"
  done
  if [ -n "$unit" ]; then
    install -Dm0644 "systemd/$unit" "$root/lib/systemd/system/$unit"
    install -Dm0600 "packaging/$conf" "$root/etc/deckhand/$conf"
    # The parent stays 0755: the hub's DynamicUser must traverse it to reach
    # its own StateDirectory when agent and hub share a host. The agent's
    # directory is shipped 0700; the hub's is left to systemd, which makes it
    # a symlink into /var/lib/private for the dynamic user.
    install -d -m0755 "$root/var/lib/deckhand"
    [ "$short" = agent ] && install -d -m0700 "$root/var/lib/deckhand/agent"
    printf '/etc/deckhand/%s\n' "$conf" > "$root/conffiles.tmp"
  fi
  install -d "$root/DEBIAN"
  [ -f "$root/conffiles.tmp" ] && mv "$root/conffiles.tmp" "$root/DEBIAN/conffiles"
  cat > "$root/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: deckhand developers <deckhand@localhost>
Section: admin
Priority: optional
Depends: libc6
Description: $desc
 deckhand is a self-hosted fleet command system compatible with the
 Alibaba Cloud Assistant API.
CONTROL
  if [ -n "$unit" ]; then
    # Maintainer scripts honour DPKG_ROOT (dpkg --root with
    # --force-script-chrootless, as CI installs them) and only talk to
    # systemd when it is PID 1 of the system being changed.
    cat > "$root/DEBIAN/postinst" <<POSTINST
#!/bin/sh
set -e
if [ -z "\${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable $unit >/dev/null
  # Start only once configured; an unconfigured service would just fail.
  systemctl try-restart $unit || true
fi
POSTINST
    cat > "$root/DEBIAN/prerm" <<PRERM
#!/bin/sh
set -e
if [ -z "\${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
  systemctl disable --now $unit >/dev/null || true
fi
PRERM
    cat > "$root/DEBIAN/postrm" <<POSTRM
#!/bin/sh
set -e
if [ -z "\${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if [ "\$1" = purge ]; then
  # DynamicUser keeps the hub's real data under /var/lib/private.
  rm -rf "\${DPKG_ROOT:-}/var/lib/deckhand/$short" "\${DPKG_ROOT:-}/var/lib/private/deckhand/$short"
  rmdir "\${DPKG_ROOT:-}/var/lib/deckhand" "\${DPKG_ROOT:-}/etc/deckhand" 2>/dev/null || true
fi
POSTRM
    chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
  fi
  # DPKG_DEB_OPTS lets CI skip compression of large debug binaries.
  dpkg-deb --root-owner-group ${DPKG_DEB_OPTS:-} --build "$root" "$out/${name}_${version}_${arch}.deb" >/dev/null
  rm -rf "$root"
  echo "$out/${name}_${version}_${arch}.deb"
}

# The agent's package carries its runs' supervisor (exec::supervise::BINARY).
stage deckhand-agent "deckhand-agent deckhand-supervise" deckhand-agent.service agent.toml "deckhand node agent"
stage deckhand-hub deckhand-hub deckhand-hub.service hub.toml "deckhand control plane (hub)"
stage deckhand-cli deckhand "" "" "deckhand command-line client"

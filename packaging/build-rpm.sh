#!/usr/bin/env bash
# Builds deckhand-agent and deckhand-hub .rpm packages from prebuilt
# binaries with rpmbuild (Debian's `rpm` package provides it). Same layout
# as the .deb: /usr/bin, /usr/lib/systemd/system, /etc/deckhand (config,
# noreplace), /var/lib/deckhand.
# Usage: packaging/build-rpm.sh [TARGET_DIR] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(cd "${1:-target/release}" && pwd)
out=$(mkdir -p "${2:-target/rpm}" && cd "${2:-target/rpm}" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
src=$(pwd)
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT

spec() {
  local name=$1 bin=$2 unit=$3 conf=$4 summary=$5
  cat <<SPEC
Name: $name
Version: $version
Release: 1
Summary: $summary
License: Apache-2.0
%global debug_package %{nil}
%global __strip /bin/true

%description
deckhand is a self-hosted fleet command system compatible with the Alibaba
Cloud Assistant API.

%install
install -Dm0755 $target/$bin %{buildroot}/usr/bin/$bin
install -Dm0644 $src/systemd/$unit %{buildroot}/usr/lib/systemd/system/$unit
install -Dm0600 $src/packaging/$conf %{buildroot}/etc/deckhand/$conf
install -d -m0700 %{buildroot}/var/lib/deckhand

%post
if [ -d /run/systemd/system ]; then systemctl daemon-reload; systemctl enable $unit >/dev/null 2>&1 || :; fi

%preun
if [ \$1 -eq 0 ] && [ -d /run/systemd/system ]; then systemctl disable --now $unit >/dev/null 2>&1 || :; fi

%files
/usr/bin/$bin
/usr/lib/systemd/system/$unit
%config(noreplace) /etc/deckhand/$conf
%dir /var/lib/deckhand
SPEC
}

build() {
  spec "$@" > "$top/$1.spec"
  # RPM_PAYLOAD lets CI skip compressing large debug binaries.
  rpmbuild --quiet --define "_binary_payload ${RPM_PAYLOAD:-w19.zstdio}" --define "_topdir $top" --define "_rpmdir $out" --define "_build_id_links none" -bb "$top/$1.spec" >/dev/null
}
build deckhand-agent deckhand-agent deckhand-agent.service agent.toml "deckhand node agent"
build deckhand-hub deckhand-hub deckhand-hub.service hub.toml "deckhand control plane (hub)"
find "$out" -name '*.rpm' | sort

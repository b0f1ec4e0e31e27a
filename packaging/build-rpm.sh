#!/usr/bin/env bash
# Builds deckhand-agent-<ver>-1.<arch>.rpm and deckhand-hub-<ver>-1.<arch>.rpm
# from already built binaries with plain rpmbuild (Debian: `apt-get install
# rpm`). Same layout as the .deb, except units go to /usr/lib/systemd/system
# as RPM distributions expect. Prints the paths of the packages it built.
# Usage: packaging/build-rpm.sh [TARGET_DIR] [OUT_DIR]
# RPM_PAYLOAD (default w9.gzdio) lets CI skip compression of debug binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
target=$(cd "${1:-target/release}" && pwd)
out=${2:-target/rpm}
mkdir -p "$out"
out=$(cd "$out" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT

# spec NAME SUMMARY: writes the spec of one service package to stdout.
spec() {
  local name=$1 summary=$2 short=${1#deckhand-}
  local unit=$name.service
  cat <<SPEC
Name: $name
Version: $version
Release: 1
Summary: $summary
License: Apache-2.0
URL: https://github.com/deckhand/deckhand
# The binaries are prebuilt by cargo: no debuginfo split, no re-stripping.
%global debug_package %{nil}
%global __os_install_post %{nil}
%define _build_id_links none
%define _binary_payload ${RPM_PAYLOAD:-w9.gzdio}

%description
deckhand is a self-hosted fleet command system compatible with the Alibaba
Cloud Assistant API. This package holds $name and its systemd unit.

%install
install -Dm0755 $target/$name %{buildroot}/usr/bin/$name
SPEC
  # The agent's package carries its runs' supervisor (exec::supervise::BINARY).
  [ "$short" = agent ] && echo "install -Dm0755 $target/deckhand-supervise %{buildroot}/usr/bin/deckhand-supervise"
  cat <<SPEC
install -Dm0644 $src/systemd/$unit %{buildroot}/usr/lib/systemd/system/$unit
install -Dm0600 $src/packaging/$short.toml %{buildroot}/etc/deckhand/$short.toml
install -d -m0755 %{buildroot}/var/lib/deckhand
SPEC
  # Only the agent's state directory is shipped: the hub's belongs to
  # systemd (DynamicUser makes it a symlink into /var/lib/private).
  [ "$short" = agent ] && echo "install -d -m0700 %{buildroot}/var/lib/deckhand/agent"
  cat <<SPEC

%post
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || :
  [ \$1 -eq 1 ] && systemctl enable $unit >/dev/null 2>&1 || :
fi

%preun
if [ \$1 -eq 0 ] && [ -d /run/systemd/system ]; then
  systemctl disable --now $unit >/dev/null 2>&1 || :
fi

%postun
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || :
  # Upgrade: restart onto the new binary (KillMode=process keeps scripts).
  [ \$1 -ge 1 ] && systemctl try-restart $unit || :
fi

%files
%attr(0755,root,root) /usr/bin/$name
SPEC
  [ "$short" = agent ] && echo "%attr(0755,root,root) /usr/bin/deckhand-supervise"
  cat <<SPEC
%attr(0644,root,root) /usr/lib/systemd/system/$unit
%dir %attr(0755,root,root) /etc/deckhand
%config(noreplace) %attr(0600,root,root) /etc/deckhand/$short.toml
%dir %attr(0755,root,root) /var/lib/deckhand
SPEC
  [ "$short" = agent ] && echo "%dir %attr(0700,root,root) /var/lib/deckhand/agent"
  return 0
}

build() {
  local name=$1 summary=$2
  spec "$name" "$summary" > "$top/$name.spec"
  rpmbuild --quiet -bb --define "_topdir $top" --define "_rpmdir $out" \
    --define "_build_name_fmt %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm" \
    "$top/$name.spec" >&2
  ls "$out/$name-$version-1."*.rpm
}

build deckhand-agent "deckhand node agent"
build deckhand-hub "deckhand control plane (hub)"

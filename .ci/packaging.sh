#!/usr/bin/env bash
# Packaging checks: systemd units verify, .deb contents and a scratch-root
# install, and packaging/install.sh in a scratch root. Uses the binaries
# the test build already made (PROFILE=release for release packages).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-debug}
start=$(date +%s)
fail() { echo "packaging: $*" >&2; exit 1; }

echo "== systemd-analyze verify"
if ! command -v systemd-analyze >/dev/null; then
  apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/bin" "$scratch/units"
cp "target/$profile/deckhand-agent" "target/$profile/deckhand-hub" "$scratch/bin/"
for u in systemd/*.service; do
  # Point ExecStart at the freshly built binaries; everything else as shipped.
  sed "s|/usr/bin/|$scratch/bin/|" "$u" > "$scratch/units/$(basename "$u")"
done
out=$(systemd-analyze verify --man=no "$scratch"/units/*.service 2>&1 || true)
# Messages about the absent system (no D-Bus/PID 1 in a container, missing
# network-online target) are not about our units.
problems=$(printf '%s\n' "$out" | grep -v -E '^$|Failed to connect to bus|System has not been booted' || true)
if [ -n "$problems" ]; then
  printf '%s\n' "$out"
  fail "systemd-analyze verify found problems"
fi
printf "%s\n" "$out" | sed "s/^/  systemd-analyze: /"
echo "units verified"

echo "== .deb packages"
debs=$(DPKG_DEB_OPTS=${DPKG_DEB_OPTS:--Znone} packaging/build-deb.sh "target/$profile" "$scratch/deb")
printf '%s\n' "$debs"
agent_deb=$(printf '%s\n' "$debs" | grep deckhand-agent_)
hub_deb=$(printf '%s\n' "$debs" | grep deckhand-hub_)
agent_list=$(dpkg-deb -c "$agent_deb")
hub_list=$(dpkg-deb -c "$hub_deb")
for want in ./usr/bin/deckhand-agent ./lib/systemd/system/deckhand-agent.service ./etc/deckhand/agent.toml ./var/lib/deckhand/; do
  grep -q -F " $want" <<<"$agent_list" || fail "$agent_deb lacks $want"
done
for want in ./usr/bin/deckhand-hub ./lib/systemd/system/deckhand-hub.service ./etc/deckhand/hub.toml; do
  grep -q -F " $want" <<<"$hub_list" || fail "$hub_deb lacks $want"
done
conffiles=$(dpkg-deb -I "$agent_deb" conffiles)
grep -q /etc/deckhand/agent.toml <<<"$conffiles" || fail "agent.toml is not a conffile"
root="$scratch/root"
mkdir -p "$root"
dpkg -x "$agent_deb" "$root"
dpkg -x "$hub_deb" "$root"
"$root/usr/bin/deckhand-agent" --version >/dev/null || fail "installed agent does not run"
"$root/usr/bin/deckhand-hub" --version >/dev/null || fail "installed hub does not run"
[ "$(stat -c %a "$root/etc/deckhand/agent.toml")" = 600 ] || fail "agent.toml must be 0600"
# The shipped (all-commented) config parses: unknown keys would be refused.
"$root/usr/bin/deckhand-agent" --config "$root/etc/deckhand/agent.toml" config check --hub https://hub.example:7070 >/dev/null || fail "shipped agent.toml does not validate"
echo "packages OK"

echo "== .rpm packages"
if ! command -v rpmbuild >/dev/null || ! command -v cpio >/dev/null; then
  apt-get install -y -qq --no-install-recommends rpm cpio >/dev/null
fi
rpms=$(RPM_PAYLOAD=w0.gzdio packaging/build-rpm.sh "target/$profile" "$scratch/rpm")
printf '%s\n' "$rpms"
agent_rpm=$(printf '%s\n' "$rpms" | grep deckhand-agent-)
rpm_list=$(rpm -qlp "$agent_rpm" 2>/dev/null)
for want in /usr/bin/deckhand-agent /usr/lib/systemd/system/deckhand-agent.service /etc/deckhand/agent.toml; do
  grep -q -x -F "$want" <<<"$rpm_list" || fail "$agent_rpm lacks $want"
done
rroot="$scratch/rroot"
mkdir -p "$rroot"
(cd "$rroot" && rpm2cpio "$agent_rpm" | cpio -idm --quiet)
"$rroot/usr/bin/deckhand-agent" --version >/dev/null || fail "agent from the rpm does not run"
echo "rpm OK"

echo "== packaging/install.sh in a scratch root"
iroot="$scratch/iroot"
packaging/install.sh --root "$iroot" --no-systemctl --binary "target/$profile/deckhand-agent" --hub https://hub.example:7070 --activation-id A --activation-code C >/dev/null
packaging/install.sh --root "$iroot" --no-systemctl --binary "target/$profile/deckhand-agent" --hub https://hub.example:7070 >/dev/null  # idempotent
[ -x "$iroot/usr/bin/deckhand-agent" ] || fail "install.sh did not install the binary"
[ "$(stat -c %a "$iroot/var/lib/deckhand/agent")" = 700 ] || fail "state dir must be 0700"
[ "$(stat -c %a "$iroot/etc/deckhand/agent.toml")" = 600 ] || fail "agent.toml must be 0600"
"$iroot/usr/bin/deckhand-agent" --config "$iroot/etc/deckhand/agent.toml" config check >/dev/null || fail "install.sh wrote an invalid agent.toml"
if packaging/install.sh --root "$iroot" --no-systemctl --binary "target/$profile/deckhand-agent" --hub http://plain:80 2>/dev/null; then
  fail "install.sh accepted a plain http hub"
fi
packaging/install.sh --root "$iroot" --no-systemctl --uninstall --purge >/dev/null
[ ! -e "$iroot/usr/bin/deckhand-agent" ] && [ ! -e "$iroot/var/lib/deckhand/agent" ] || fail "uninstall left files"
echo "install.sh OK"
echo "packaging checks passed in $(( $(date +%s) - start )) s"

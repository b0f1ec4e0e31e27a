#!/usr/bin/env bash
# Packaging checks: systemd units verify, .deb contents and a scratch-root
# install, packaging/install.sh in a scratch root, and the Windows zip. Uses the binaries
# the test build already made (PROFILE=release for release packages).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-debug}
bins="${CARGO_TARGET_DIR:-target}/$profile"
start=$(date +%s)
fail() { echo "packaging: $*" >&2; exit 1; }
last=$start
# section TITLE: prints how long the previous section took, then the title.
section() {
  local now
  now=$(date +%s)
  [ "$now" = "$start" ] || echo "   ($(( now - last )) s)"
  last=$now
  echo "== $*"
}
if [ ! -x "$bins/deckhand-agent" ] || [ ! -x "$bins/deckhand-hub" ] || [ ! -x "$bins/deckhand-supervise" ]; then
  # Normally the test run built them; building here keeps the script usable
  # on its own.
  if [ "$profile" = debug ]; then cargo build --locked --bins; else cargo build --locked --bins --profile "$profile"; fi
fi

section "systemd-analyze verify"
if ! command -v systemd-analyze >/dev/null; then
  apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/bin" "$scratch/units"
cp "$bins/deckhand-agent" "$bins/deckhand-hub" "$scratch/bin/"
# verify_units DIR: prints what systemd-analyze says about DIR/*.service,
# less the messages about the absent system (no D-Bus/PID 1 in a container),
# which are not about our units. systemd-analyze exits 0 on unknown keys or
# bad values, so its output is what decides.
verify_units() {
  systemd-analyze verify --man=no "$1"/*.service 2>&1 \
    | grep -v -E '^$|Failed to connect to bus|System has not been booted' || true
}
for u in systemd/*.service; do
  # Point ExecStart at the freshly built binaries; everything else as shipped.
  sed "s|/usr/bin/|$scratch/bin/|" "$u" > "$scratch/units/$(basename "$u")"
done
problems=$(verify_units "$scratch/units")
if [ -n "$problems" ]; then
  printf '%s\n' "$problems"
  fail "systemd-analyze verify found problems"
fi
# The check itself must be able to fail: a misspelt key and a bad value in a
# copy of the hub unit have to be reported.
mkdir -p "$scratch/broken"
sed 's/^Restart=on-failure/Restart=sometimes\nRestartSecs=2/' "$scratch/units/deckhand-hub.service" > "$scratch/broken/deckhand-hub.service"
broken=$(verify_units "$scratch/broken")
grep -q RestartSecs <<<"$broken" && grep -q sometimes <<<"$broken" || fail "systemd-analyze verify did not flag a broken unit: $broken"
# The hub's sandbox must stay tight: systemd's own exposure score (0 best,
# 10 worst; 'OK' is below 2) is computed offline from the unit file.
if systemd-analyze security --help 2>/dev/null | grep -q -- --offline; then
  # --threshold is on the 0..100 scale: 20 means an exposure below 2.0.
  sec=$(systemd-analyze security --offline=yes --threshold=20 "$scratch/units/deckhand-hub.service" 2>&1) \
    || { printf '%s\n' "$sec"; fail "hub unit exposure is 2.0 or worse"; }
  exposure=$(sed -n 's/.*Overall exposure level for deckhand-hub.service: \([0-9.]*\).*/\1/p' <<<"$sec")
  [ -n "$exposure" ] || fail "systemd-analyze security printed no exposure level for the hub"
  echo "hub unit exposure level $exposure (systemd-analyze security)"
fi
echo "units verified"

section ".deb packages"
debs=$(DPKG_DEB_OPTS=${DPKG_DEB_OPTS:--Znone} packaging/build-deb.sh "$bins" "$scratch/deb")
printf '%s\n' "$debs"
agent_deb=$(printf '%s\n' "$debs" | grep deckhand-agent_)
hub_deb=$(printf '%s\n' "$debs" | grep deckhand-hub_)
agent_list=$(dpkg-deb -c "$agent_deb")
hub_list=$(dpkg-deb -c "$hub_deb")
for want in ./usr/bin/deckhand-agent ./usr/bin/deckhand-supervise ./lib/systemd/system/deckhand-agent.service ./etc/deckhand/agent.toml ./var/lib/deckhand/; do
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
# The supervisor shipped beside the agent is of the agent's version: the
# agent uses it only then (exec::supervise::program_for).
sup_version=$("$root/usr/bin/deckhand-supervise" --version) || fail "installed deckhand-supervise does not run"
agent_version=$("$root/usr/bin/deckhand-agent" --version | sed 's/^deckhand-agent //')
[ "${sup_version#deckhand-supervise "$agent_version" (supervise revision }" != "$sup_version" ] \
  || fail "installed deckhand-supervise says '$sup_version', not the agent's version $agent_version"
"$root/usr/bin/deckhand-hub" --version >/dev/null || fail "installed hub does not run"
[ "$(stat -c %a "$root/etc/deckhand/agent.toml")" = 600 ] || fail "agent.toml must be 0600"
# The shipped (all-commented) config parses: unknown keys would be refused.
"$root/usr/bin/deckhand-agent" --config "$root/etc/deckhand/agent.toml" config check --hub https://hub.example:7070 >/dev/null || fail "shipped agent.toml does not validate"
[ "$(stat -c %a "$root/var/lib/deckhand")" = 755 ] || fail "/var/lib/deckhand must be 0755 (the hub's dynamic user traverses it)"
[ "$(stat -c %a "$root/var/lib/deckhand/agent")" = 700 ] || fail "/var/lib/deckhand/agent must be 0700"
echo "packages OK"

section "dpkg lifecycle in a scratch root (install, upgrade, remove, purge)"
# A real dpkg database under --root; maintainer scripts run unchrooted with
# DPKG_ROOT set (they prefix every path with it and skip systemctl).
droot="$scratch/droot"
mkdir -p "$droot/var/lib/dpkg/info" "$droot/var/lib/dpkg/updates"
: > "$droot/var/lib/dpkg/status"
ddpkg() { dpkg --root="$droot" --force-script-chrootless --force-depends --log=/dev/null "$@" >/dev/null 2>&1 || { dpkg --root="$droot" --force-script-chrootless --force-depends --log=/dev/null "$@"; fail "dpkg $* failed"; }; }
ddpkg -i "$agent_deb" "$hub_deb"
for p in deckhand-agent deckhand-hub; do
  dpkg --root="$droot" -s "$p" | grep -q '^Status: install ok installed' || fail "$p is not installed in the scratch root"
done
# Local edits and state survive an upgrade (reinstall): conffile handling.
echo 'hub = "https://edited.example:7070"' >> "$droot/etc/deckhand/agent.toml"
echo state > "$droot/var/lib/deckhand/agent/marker"
ddpkg --force-confold -i "$agent_deb"
grep -q edited.example "$droot/etc/deckhand/agent.toml" || fail "upgrade overwrote the edited agent.toml"
[ -f "$droot/var/lib/deckhand/agent/marker" ] || fail "upgrade lost agent state"
# Remove keeps configuration and state; purge deletes both (including the
# hub's DynamicUser data under /var/lib/private).
mkdir -p "$droot/var/lib/private/deckhand/hub" && echo db > "$droot/var/lib/private/deckhand/hub/hub.db"
ln -s ../private/deckhand/hub "$droot/var/lib/deckhand/hub"
ddpkg -r deckhand-agent deckhand-hub
[ ! -e "$droot/usr/bin/deckhand-agent" ] && [ ! -e "$droot/usr/bin/deckhand-supervise" ] && [ ! -e "$droot/lib/systemd/system/deckhand-hub.service" ] || fail "remove left binaries or units"
[ -f "$droot/etc/deckhand/agent.toml" ] && [ -f "$droot/var/lib/deckhand/agent/marker" ] || fail "remove must keep config and state"
ddpkg -P deckhand-agent deckhand-hub
for gone in etc/deckhand var/lib/deckhand var/lib/private/deckhand/hub; do
  [ ! -e "$droot/$gone" ] && [ ! -L "$droot/$gone" ] || fail "purge left /$gone"
done
echo "dpkg lifecycle OK"

section ".rpm packages"
if ! command -v rpmbuild >/dev/null && command -v apt-get >/dev/null; then
  apt-get install -y -qq --no-install-recommends rpm >/dev/null
fi
rpms=$(RPM_PAYLOAD=${RPM_PAYLOAD:-w0.ufdio} packaging/build-rpm.sh "$bins" "$scratch/rpm")
printf '%s\n' "$rpms"
agent_rpm=$(grep deckhand-agent- <<<"$rpms")
hub_rpm=$(grep deckhand-hub- <<<"$rpms")
rpm_list() { rpm -qlvp "$1" 2>/dev/null; }
for want in /usr/bin/deckhand-agent /usr/bin/deckhand-supervise /usr/lib/systemd/system/deckhand-agent.service /etc/deckhand/agent.toml /var/lib/deckhand/agent; do
  grep -q -E " $want\$" <<<"$(rpm_list "$agent_rpm")" || fail "$agent_rpm lacks $want"
done
for want in /usr/bin/deckhand-hub /usr/lib/systemd/system/deckhand-hub.service /etc/deckhand/hub.toml; do
  grep -q -E " $want\$" <<<"$(rpm_list "$hub_rpm")" || fail "$hub_rpm lacks $want"
done
grep -q '^-rw------- .* /etc/deckhand/agent.toml$' <<<"$(rpm_list "$agent_rpm")" || fail "agent.toml must be 0600 in the rpm"
grep -q '^drwx------ .* /var/lib/deckhand/agent$' <<<"$(rpm_list "$agent_rpm")" || fail "/var/lib/deckhand/agent must be 0700 in the rpm"
[ "$(rpm -qcp "$agent_rpm" 2>/dev/null)" = /etc/deckhand/agent.toml ] || fail "agent.toml is not a %config file"
# Scriptlets are shell: they must at least parse.
for r in "$agent_rpm" "$hub_rpm"; do
  for tag in POSTIN PREUN POSTUN; do
    rpm -qp --queryformat "%{$tag}" "$r" 2>/dev/null | sh -n || fail "$tag scriptlet of $r does not parse"
  done
done
# Install and erase in a scratch rpm database (scriptlets would run chrooted
# into an empty root, so they are skipped here; their parse is checked above).
rroot="$scratch/rroot"
mkdir -p "$rroot"
rpm --root "$rroot" --initdb 2>/dev/null
rpm --root "$rroot" -i --nodeps --noscripts "$agent_rpm" "$hub_rpm" 2>/dev/null || fail "rpm -i into a scratch root failed"
[ -x "$rroot/usr/bin/deckhand-agent" ] && [ -f "$rroot/usr/lib/systemd/system/deckhand-hub.service" ] || fail "rpm install did not land the files"
[ "$(stat -c %a "$rroot/var/lib/deckhand/agent")" = 700 ] || fail "rpm: /var/lib/deckhand/agent must be 0700"
rpm --root "$rroot" -e --noscripts deckhand-agent deckhand-hub 2>/dev/null || fail "rpm -e failed"
[ ! -e "$rroot/usr/bin/deckhand-agent" ] && [ ! -e "$rroot/usr/bin/deckhand-supervise" ] || fail "rpm -e left the agent's binaries"
echo "rpm packages OK"

section "packaging/install.sh in a scratch root"
iroot="$scratch/iroot"
packaging/install.sh --root "$iroot" --no-systemctl --binary "$bins/deckhand-agent" --hub https://hub.example:7070 --activation-id A --activation-code C >/dev/null
packaging/install.sh --root "$iroot" --no-systemctl --binary "$bins/deckhand-agent" --hub https://hub.example:7070 >/dev/null  # idempotent
[ -x "$iroot/usr/bin/deckhand-agent" ] || fail "install.sh did not install the binary"
cmp -s "$bins/deckhand-supervise" "$iroot/usr/bin/deckhand-supervise" || fail "install.sh did not install deckhand-supervise from beside the binary"
[ "$(stat -c %a "$iroot/var/lib/deckhand/agent")" = 700 ] || fail "state dir must be 0700"
[ "$(stat -c %a "$iroot/etc/deckhand/agent.toml")" = 600 ] || fail "agent.toml must be 0600"
"$iroot/usr/bin/deckhand-agent" --config "$iroot/etc/deckhand/agent.toml" config check >/dev/null || fail "install.sh wrote an invalid agent.toml"
if packaging/install.sh --root "$iroot" --no-systemctl --binary "$bins/deckhand-agent" --hub http://plain:80 2>/dev/null; then
  fail "install.sh accepted a plain http hub"
fi
# Bad input is refused with the flag named, and nothing is half-written.
refused() { # refused WANT_IN_MESSAGE ARGS...
  local want=$1 msg; shift
  if msg=$(packaging/install.sh --root "$scratch/bad" --no-systemctl --binary "$bins/deckhand-agent" "$@" 2>&1); then
    fail "install.sh accepted $*"
  fi
  grep -q -- "$want" <<<"$msg" || fail "install.sh refused $* without naming $want: $msg"
}
refused --hub --hub 'https://hub"; evil = "1'
refused --activation-code --hub https://h:7070 --activation-id A --activation-code 'C\'
refused --activation-id --hub https://h:7070 --activation-id A
refused --ca-file --hub https://h:7070 --ca-file "$scratch/absent.pem"
[ ! -e "$scratch/bad" ] || fail "a refused install.sh run left files behind"
# A pinned CA is installed and referenced; purge removes it.
ca_stub="$scratch/ca.pem"
printf -- '-----BEGIN CERTIFICATE-----\nstand-in: install.sh copies, never parses\n-----END CERTIFICATE-----\n' > "$ca_stub"
packaging/install.sh --root "$iroot" --no-systemctl --binary "$bins/deckhand-agent" --hub https://hub.example:7070 --ca-file "$ca_stub" >/dev/null
grep -q '^ca_file = "/etc/deckhand/hub-ca.pem"$' "$iroot/etc/deckhand/agent.toml" || fail "install.sh did not reference the pinned CA"
cmp -s "$ca_stub" "$iroot/etc/deckhand/hub-ca.pem" || fail "install.sh did not install the pinned CA"
packaging/install.sh --root "$iroot" --no-systemctl --uninstall --purge >/dev/null
for gone in usr/bin/deckhand-agent usr/bin/deckhand-supervise etc/systemd/system/deckhand-agent.service var/lib/deckhand etc/deckhand; do
  [ ! -e "$iroot/$gone" ] || fail "uninstall --purge left /$gone"
done
echo "install.sh OK"
section "Windows zip"
# The Windows agent .ci/run built (or DECKHAND_WINDOWS_AGENT); without it the
# zip is skipped, unless DECKHAND_REQUIRE_WINE=1 (CI) makes that a failure.
win_exe=${DECKHAND_WINDOWS_AGENT:-${CARGO_TARGET_DIR:-target}/x86_64-pc-windows-gnu/$profile/deckhand-agent.exe}
if [ -f "$win_exe" ]; then
  zip=$(packaging/build-windows-zip.sh "$win_exe" "$scratch/win")
  echo "$zip"
  zip_list=$(python3 -m zipfile -l "$zip")
  base=$(basename "$zip" .zip)
  for want in deckhand-agent.exe agent.toml README.txt; do
    grep -q -F "$base/$want" <<<"$zip_list" || fail "$zip lacks $base/$want"
  done
  python3 -m zipfile -e "$zip" "$scratch/win/x"
  cmp -s "$win_exe" "$scratch/win/x/$base/deckhand-agent.exe" || fail "the zipped exe differs from $win_exe"
  head -c 2 "$scratch/win/x/$base/deckhand-agent.exe" | grep -q MZ || fail "the zipped exe is not a PE file"
  grep -q 'service install' "$scratch/win/x/$base/README.txt" || fail "README.txt does not explain service install"
  grep -q $'\r$' "$scratch/win/x/$base/README.txt" || fail "README.txt lacks CRLF line ends"
  # The sample config (all commented) parses: same keys as on Linux.
  tr -d '\r' < "$scratch/win/x/$base/agent.toml" > "$scratch/win/agent.toml"
  "$bins/deckhand-agent" --config "$scratch/win/agent.toml" config check --hub https://hub.example:7070 >/dev/null || fail "the Windows sample agent.toml does not validate"
  # Uncommented, its Windows paths must still be valid TOML (single quotes).
  sed -n 's/^# \(state_dir\|ca_file\) = \('"'"'[^'"'"']*'"'"'\).*/\1 = \2/p' "$scratch/win/agent.toml" > "$scratch/win/paths.toml"
  [ "$(wc -l < "$scratch/win/paths.toml")" = 2 ] || fail "sample agent.toml: state_dir/ca_file lines not found"
  python3 -c 'import sys, tomllib; d = tomllib.load(open(sys.argv[1], "rb")); assert d["state_dir"] == r"C:\ProgramData\deckhand\agent", d' "$scratch/win/paths.toml" || fail "sample Windows paths are not literal TOML strings"
  echo "Windows zip OK"
elif [ "${DECKHAND_REQUIRE_WINE:-}" = 1 ]; then
  fail "DECKHAND_REQUIRE_WINE=1 but no Windows agent at $win_exe"
else
  echo "SKIPPED: no Windows agent at $win_exe (cargo build --target x86_64-pc-windows-gnu --bin deckhand-agent)"
fi
section "done"
echo "packaging checks passed in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# Installs deckhand-agent on a host without a package manager: binary (and
# deckhand-supervise, its runs' supervisor, when it sits beside the binary),
# unit, /etc/deckhand/agent.toml, state dir (0700), then enables and starts it.
# Idempotent; --uninstall removes what it installed (state is kept unless
# --purge).
#
#   install.sh --binary ./deckhand-agent --hub https://hub:7070 \
#       [--ca-file hub-ca.pem] [--activation-id ID --activation-code CODE] \
#       [--root DIR] [--no-systemctl] [--uninstall [--purge]]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root="" binary="" hub="" ca="" act_id="" act_code="" systemctl=1 uninstall=0 purge=0
while [ $# -gt 0 ]; do
  case $1 in
    --root) root=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --hub) hub=$2; shift 2 ;;
    --ca-file) ca=$2; shift 2 ;;
    --activation-id) act_id=$2; shift 2 ;;
    --activation-code) act_code=$2; shift 2 ;;
    --no-systemctl) systemctl=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
unit_src="$here/../systemd/deckhand-agent.service"
[ -f "$unit_src" ] || unit_src="$here/deckhand-agent.service"

if [ $uninstall = 1 ]; then
  [ $systemctl = 1 ] && systemctl disable --now deckhand-agent.service 2>/dev/null || true
  rm -f "$root/usr/bin/deckhand-agent" "$root/usr/bin/deckhand-supervise" "$root/etc/systemd/system/deckhand-agent.service"
  [ $systemctl = 1 ] && systemctl daemon-reload || true
  if [ $purge = 1 ]; then
    rm -rf "$root/var/lib/deckhand/agent"
    rm -f "$root/etc/deckhand/agent.toml" "$root/etc/deckhand/hub-ca.pem"
    rmdir "$root/var/lib/deckhand" "$root/etc/deckhand" 2>/dev/null || true
  fi
  echo "deckhand-agent uninstalled"
  exit 0
fi

[ -n "$binary" ] && [ -x "$binary" ] || { echo "install.sh: --binary must name the deckhand-agent executable" >&2; exit 2; }
[ -n "$hub" ] || { echo "install.sh: --hub is required (https://host:port)" >&2; exit 2; }
case $hub in https://*) ;; *) echo "install.sh: --hub must be an https:// URL" >&2; exit 2 ;; esac
# Values are written into TOML strings: refuse anything that could break out
# of one (quotes, backslashes, control characters) or is absurdly long.
check_value() {
  local flag=$1 value=$2
  if [ ${#value} -gt 512 ]; then echo "install.sh: $flag is longer than 512 characters" >&2; exit 2; fi
  if printf '%s' "$value" | LC_ALL=C grep -q '["\\[:cntrl:]]'; then
    echo "install.sh: $flag must not contain quotes, backslashes or control characters" >&2; exit 2
  fi
}
check_value --hub "$hub"
check_value --activation-id "$act_id"
check_value --activation-code "$act_code"
if { [ -n "$act_id" ] && [ -z "$act_code" ]; } || { [ -z "$act_id" ] && [ -n "$act_code" ]; }; then
  echo "install.sh: --activation-id and --activation-code go together" >&2; exit 2
fi
if [ -n "$ca" ] && [ ! -r "$ca" ]; then echo "install.sh: --ca-file $ca is not readable" >&2; exit 2; fi

install -Dm0755 "$binary" "$root/usr/bin/deckhand-agent"
# Without it (or with one of another version) the agent supervises runs with
# its own binary, about 1 ms slower a run; a stale copy is removed, not kept.
supervise="$(dirname "$binary")/deckhand-supervise"
if [ -x "$supervise" ]; then
  install -Dm0755 "$supervise" "$root/usr/bin/deckhand-supervise"
else
  rm -f "$root/usr/bin/deckhand-supervise"
fi
install -Dm0644 "$unit_src" "$root/etc/systemd/system/deckhand-agent.service"
install -d -m0700 "$root/var/lib/deckhand/agent"
install -d -m0755 "$root/etc/deckhand"
conf="$root/etc/deckhand/agent.toml"
tmp=$(mktemp)
{
  echo "# written by packaging/install.sh"
  echo "hub = \"$hub\""
  if [ -n "$ca" ]; then install -Dm0644 "$ca" "$root/etc/deckhand/hub-ca.pem"; echo 'ca_file = "/etc/deckhand/hub-ca.pem"'; fi
  if [ -n "$act_id" ]; then echo "activation_id = \"$act_id\""; echo "activation_code = \"$act_code\""; fi
} > "$tmp"
install -m0600 "$tmp" "$conf"
rm -f "$tmp"
if [ $systemctl = 1 ]; then
  systemctl daemon-reload
  systemctl enable deckhand-agent.service
  # restart, not start: a re-run after replacing the binary must load it.
  # KillMode=process keeps running scripts alive across the restart.
  systemctl restart deckhand-agent.service
fi
echo "deckhand-agent installed (config $conf)"

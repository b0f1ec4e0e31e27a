#!/usr/bin/env bash
# Builds deckhand-agent-<ver>-windows-x86_64.zip: deckhand-agent.exe, the
# sample agent.toml and README.txt (install with `service install`), in one
# top-level folder. Zips with Python's zipfile (no zip tool needed); text
# files get CRLF line ends for Notepad. Prints the zip's path.
# Usage: packaging/build-windows-zip.sh AGENT_EXE [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exe=${1:?usage: packaging/build-windows-zip.sh AGENT_EXE [OUT_DIR]}
out=${2:-target/windows}
[ -f "$exe" ] || { echo "build-windows-zip: $exe does not exist" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
name="deckhand-agent-$version-windows-x86_64"
mkdir -p "$out"
zip="$(cd "$out" && pwd)/$name.zip"
python3 - "$exe" "$zip" "$name" <<'PY'
import sys, zipfile
exe, zip_path, name = sys.argv[1:4]
def crlf(path):
    with open(path, "rb") as f:
        return f.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as z:
    z.write(exe, f"{name}/deckhand-agent.exe")
    z.writestr(f"{name}/agent.toml", crlf("packaging/windows/agent.toml"))
    z.writestr(f"{name}/README.txt", crlf("packaging/windows/README.txt"))
PY
echo "$zip"

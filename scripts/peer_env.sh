#!/usr/bin/env bash
# Build a separate virtualenv for a peer engine we compare against.
#
# Usage: scripts/peer_env.sh tiatoolbox [PYTHON]
#
# Creates peer/<name>/ (git-ignored) next to this script's repository.
# TIAToolbox 2.1.3 pins torch<2.13 and many heavy packages, so it cannot
# share .venv; the peer venv takes a CUDA torch build from the registry
# (~6.5 GB on disk) and runs it on the CPU.  Not used by the default
# install, the demo or CI.
set -euo pipefail

name="${1:-}"
python="${2:-python3}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "$name" in
  tiatoolbox) spec="tiatoolbox==2.1.3" ;;
  *) echo "usage: $0 tiatoolbox [PYTHON]" >&2; exit 2 ;;
esac

dest="$root/peer/$name"
need_gb=10
avail_gb=$(df -Pk "$root" | awk 'NR==2 {print int($4 / 1048576)}')
if (( avail_gb < need_gb )); then
  echo "peer_env: only ${avail_gb} GB free under $root; need ${need_gb} GB" >&2
  exit 1
fi

if [[ ! -x "$dest/bin/python" ]]; then
  "$python" -m venv "$dest"
fi
"$dest/bin/python" -m pip install --upgrade --quiet pip
# The machine-wide constraint file caps torch for .venv; TIAToolbox brings
# its own pin, so the peer resolves against the registry as usual.
"$dest/bin/python" -m pip install "$spec" matplotlib
"$dest/bin/python" -c "import tiatoolbox, torch; print('tiatoolbox', tiatoolbox.__version__, 'torch', torch.__version__)"
echo "peer_env: ready at $dest"

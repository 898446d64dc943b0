#!/usr/bin/env bash
# Build a separate virtualenv for a peer engine we compare against.
#
# Usage: scripts/peer_env.sh tiatoolbox|monai [PYTHON]
#
# Creates peer/<name>/ (git-ignored) next to this script's repository.
# Not used by the default install, the demo or CI.
#
# tiatoolbox: TIAToolbox 2.1.3 pins torch<2.13 and many heavy packages, so it
#   cannot share .venv; the peer venv takes a CUDA torch build from the
#   registry (~6.5 GB on disk) and runs it on the CPU.
# monai: MONAI 1.6.1 accepts our torch, so the peer pins torch==2.13.0 (the
#   CPU wheel this machine keeps on disk; a pip dry run shows no other torch
#   is pulled) beside OpenSlide (WSISlidingWindowSplitter(reader="OpenSlide"))
#   and zarr v3 (ZarrAvgMerger); about 1 GB on disk.  Its runner imports our
#   models from this checkout (sys.path), not from an install.
set -euo pipefail

name="${1:-}"
python="${2:-python3}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "$name" in
  tiatoolbox)
    specs=("tiatoolbox==2.1.3" matplotlib)
    need_gb=10
    check="import tiatoolbox, torch; print('tiatoolbox', tiatoolbox.__version__, 'torch', torch.__version__)"
    ;;
  monai)
    specs=("monai==1.6.1" "torch==2.13.0" "openslide-python>=1.4" "openslide-bin>=4" "zarr>=3,<3.2" numpy)
    need_gb=3
    check="import monai, torch, zarr, openslide; print('monai', monai.__version__, 'torch', torch.__version__, 'zarr', zarr.__version__, 'openslide', openslide.__library_version__)"
    ;;
  *) echo "usage: $0 tiatoolbox|monai [PYTHON]" >&2; exit 2 ;;
esac

dest="$root/peer/$name"
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
"$dest/bin/python" -m pip install "${specs[@]}"
if [[ "$name" == monai ]]; then
  # MONAI must run on the very torch our engine runs on, or timings compare builds.
  "$dest/bin/python" -c "import torch, sys; sys.exit(torch.__version__ != '2.13.0+cpu' and 'peer_env: monai got torch ' + torch.__version__)"
fi
"$dest/bin/python" -c "$check"
echo "peer_env: ready at $dest"

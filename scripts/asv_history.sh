#!/usr/bin/env bash
# Benchmark the last N commits of a branch in asv-managed virtualenvs, then build the HTML.
# Usage: scripts/asv_history.sh [N=3] [BRANCH=main] [extra asv run args]
#   ASV_SKIP_SLOW=1 scripts/asv_history.sh 5           # the quick suite over 5 commits
#   scripts/asv_history.sh 3 main --bench benchmark_merge
# Commits already benchmarked are skipped (--skip-existing); browse with `asv preview`.
set -euo pipefail
cd "$(dirname "$0")/.."
ASV="${ASV:-.venv/bin/asv}"
n="${1:-3}"
branch="${2:-main}"
shift $(( $# > 2 ? 2 : $# ))
hashes=".asv/hashes-last-${n}.txt"
mkdir -p .asv
git rev-list --max-count="$n" "$branch" > "$hashes"

"$ASV" machine --yes >/dev/null
status=0
# A commit that predates a benchmark's code skips or fails it; asv records that and goes on.
"$ASV" run --skip-existing --show-stderr "$@" "HASHFILE:$hashes" || status=$?
"$ASV" publish
echo "HTML in .asv/html: run '$ASV preview' and open the address it prints."
exit "$status"

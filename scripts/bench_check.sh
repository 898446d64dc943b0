#!/usr/bin/env bash
# CI quick pass of the asv suite: every benchmark runs once, at its smallest parameters,
# in the current environment; exits non-zero if any benchmark errors or skips itself.
# Usage: scripts/bench_check.sh [extra asv run args, e.g. --bench benchmark_merge]
set -euo pipefail
cd "$(dirname "$0")/.."
ASV="${ASV:-.venv/bin/asv}"
log="$(mktemp -t wsi-bench-check.XXXXXX)"
trap 'rm -f "$log"' EXIT

"$ASV" machine --yes >/dev/null
"$ASV" check --python=same
# --quick: one call per benchmark, results not saved. WSI_BENCH_SMALLEST keeps only the
# first value of every parameter (benchmarks/common.py: grid), so each body runs once.
status=0
WSI_BENCH_SMALLEST=1 "$ASV" run --python=same --quick --show-stderr "$@" 2>&1 | tee "$log" \
    || status=$?
if [[ $status -ne 0 ]]; then
    echo "bench-check: asv run failed (exit $status): a benchmark errored" >&2
    exit "$status"
fi
# At its smallest parameters in the working tree nothing should skip: a skip here means
# a benchmark lost what it measures.
if grep -q "asv: skipped" "$log"; then
    grep "asv: skipped" "$log" >&2
    echo "bench-check: a benchmark skipped itself at its smallest parameters" >&2
    exit 1
fi
echo "bench-check: every benchmark ran"

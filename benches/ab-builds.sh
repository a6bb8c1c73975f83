#!/bin/bash
# Two builds of one bench binary side by side: ROUNDS interleaved rounds
# (ABBA order: old, new, then new, old, ...), one run of SECTION each, so
# slow drifts of a shared machine hit both alike. Then medians per table
# cell and new/old ratios (benches/ab-summary.py).
#
#   OLD=DIR_OF_OLD_CHECKOUT NEW=DIR_OF_NEW_CHECKOUT \
#     bash benches/ab-builds.sh raid overhead 6
#
# Each checkout needs its release bench built first
# (`cargo bench --bench raid --no-run`); the newest `target/release/deps/
# BENCH-*` executable of each is run from its own checkout. Knobs:
# ZEORAID_BENCH_SECONDS (default 3), ZEORAID_PYTHON (default: the new
# checkout's .venv). Output: target/ab/SECTION/{old,new}-N.md.
set -euo pipefail
bench=$1 sec=$2 rounds=$3
: "${OLD:?set OLD to the old checkout}" "${NEW:?set NEW to the new checkout}"
out=$NEW/target/ab/$sec
mkdir -p "$out"
export ZEORAID_PYTHON=${ZEORAID_PYTHON:-$NEW/.venv/bin/python}
export ZEORAID_BENCH_REPEAT=1 ZEORAID_BENCH_SECONDS=${ZEORAID_BENCH_SECONDS:-3}
binary() { ls -t "$1"/target/release/deps/"$bench"-* | grep -v '\.d$' | head -1; }
old_bin=$(binary "$OLD") new_bin=$(binary "$NEW")
run() { # build checkout round
    local bin=$old_bin dir=$OLD
    if [ "$1" = new ]; then bin=$new_bin dir=$NEW; fi
    (cd "$dir" && "$bin" --bench "$sec" > "$out/$1-$2.md" 2> "$out/$1-$2.err")
}
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then run old "$r"; run new "$r"; else run new "$r"; run old "$r"; fi
    echo "round $r of $rounds done $(date +%T)"
done
python3 "$(dirname "$0")/ab-summary.py" "$out"

#!/usr/bin/env bash
# Regenerates the suite table of EVALUATION.md ("The suite"): `flowcast eval` over every log in
# ../shared/data/process_logs (Markov-1, Markov-2, the default configuration, and the choice of
# `--select` over the grid below on a validation split), printed as markdown with the wall time
# of each run. Needs python3 (standard library) for the markdown.
#
#   bash scripts/eval_suite.sh              # default only, then the grid with --select
#   GRID=0 bash scripts/eval_suite.sh       # default only (what the 2-minute goal measures)
#   LOGS=path/to/folder bash scripts/eval_suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-../shared/data/process_logs}
GRID=${GRID:-1}
OUT=${OUT:-$(mktemp -d)}
cargo build --release --quiet
FC=$PWD/target/release/flowcast

run() { # name, then flowcast eval arguments; writes $OUT/name.json and $OUT/name.secs
    local name=$1
    shift
    local start end
    start=$(date +%s.%N)
    "$FC" eval "$LOGS" "$@" --output json >"$OUT/$name.json"
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.1f}')" >"$OUT/$name.secs"
}
run default
if [ "$GRID" = 1 ]; then
    run grid --history 1,2,3 --min-obs 0,1,10 --dwell off,on --select
fi

python3 - "$OUT" "$GRID" <<'PY'
import json, sys
out, grid = sys.argv[1], sys.argv[2] == "1"
rows = json.load(open(f"{out}/default.json"))
sel = {r["log"]: r for r in json.load(open(f"{out}/grid.json"))} if grid else {}
acc = lambda f: f["next_state"]["accuracy"]
head = "| log | prefixes | Markov-1 | Markov-2 | default |"
rule = "|---|---|---|---|---|"
if grid:
    head += " `--select` over the grid | grid best (on test) | chosen |"
    rule += "---|---|---|"
print(head)
print(rule)
means = []
for r in rows:
    cells = [r["log"], f'{r["markov_1"]["next_state"]["prefixes"]:,}',
             f'{acc(r["markov_1"]):.4f}', f'{acc(r["markov_2"]):.4f}', f'{acc(r["default"]):.4f}']
    vals = [acc(r["markov_1"]), acc(r["markov_2"]), acc(r["default"])]
    if grid:
        g = sel[r["log"]]
        cells += [f'{acc(g["selected"]):.4f}', f'{acc(g["grid_best"]):.4f}',
                  "`" + g["selected"]["configuration"] + "`"]
        vals += [acc(g["selected"]), acc(g["grid_best"])]
    means.append(vals)
    print("| " + " | ".join(cells) + " |")
n = len(means)
cols = [sum(v[i] for v in means) / n for i in range(len(means[0]))]
print("| **mean** | | " + " | ".join(f"**{c:.4f}**" for c in cols) + (" | |" if grid else " |"))
print()
print(f'Default configuration: `{rows[0]["default"]["configuration"]}`. Wall time: default '
      f'{open(f"{out}/default.secs").read().strip()} s'
      + (f', grid with `--select` {open(f"{out}/grid.secs").read().strip()} s' if grid else '')
      + ' (release build).')
PY

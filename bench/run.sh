#!/usr/bin/env bash
# End-to-end benchmarks: builds the release binary, makes every input (with `flowcast simulate`
# or from the real samples in ../shared/data), runs each scenario several times and writes a
# markdown table to bench/results.md. Every figure is a median; every comparison is a ratio of
# two figures measured in this same run. Needs: nats-server, rabbitmq-server, python3, GNU time
# (/usr/bin/time).
#
#   bash bench/run.sh            # everything (about ten minutes on 2 cores)
#   QUICK=1 bash bench/run.sh    # smaller inputs, one repetition: a smoke test of the script
#   SKIP_PM4PY=1 ...             # skip the PM4Py comparison (needs PyPI for its virtualenv)
#   SECTIONS="replay nats" ...   # run some sections only: replay memory objects flows check
#                                # fmt lsp discover eval nats amqp viewers cluster
#                                # (default: all; cluster needs a current nats-server: 2.11+,
#                                # FLOWCAST_NATS_SERVER_CURRENT or target/nats-venv, made by
#                                # scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/bench/out}
mkdir -p "$OUT"
QUICK=${QUICK:-0}
REPS=${REPS:-$([ "$QUICK" = 1 ] && echo 1 || echo 3)}
scale() { if [ "$QUICK" = 1 ]; then echo $(( $1 / 20 )); else echo "$1"; fi; }
SECTIONS=${SECTIONS:-replay memory objects flows check fmt lsp discover eval nats amqp viewers cluster}
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

cargo build --release --quiet
FC=$ROOT/target/release/flowcast
RESULTS=$OUT/results.md
: > "$RESULTS"
row() { echo "| $* |" | tee -a "$RESULTS"; }
note() { echo "$*" | tee -a "$RESULTS"; }

# median of REPS runs of a command: prints "seconds max_rss_kb"
measure() {
    local times=() rss=()
    for _ in $(seq "$REPS"); do
        /usr/bin/time -f "%e %M" -o "$OUT/.time" "$@" > /dev/null 2> "$OUT/.stderr" || { cat "$OUT/.stderr"; return 1; }
        read -r t m < "$OUT/.time"
        times+=("$t"); rss+=("$m")
    done
    local mt mr
    mt=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    mr=$(printf '%s\n' "${rss[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "$mt $mr"
}
rate() { python3 -c "print(f'{$1/$2:,.0f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

note "# Benchmark results ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m), commit $(git rev-parse --short HEAD))"
note ""
note "| scenario | flowcast | baseline (same run) | ratio | target |"
note "|---|---|---|---|---|"

# ---------------------------------------------------------------- replay, nova notifications
python3 - "$OUT/nova.jsonl" "$(scale 300000)" <<'PY'
import json, sys, uuid, random
out, n = sys.argv[1], int(sys.argv[2])
msgs = []
for l in open("examples/nova_instance_create/events.jsonl"):
    m = json.loads(l)
    if "oslo.message" in m:
        m = json.loads(m["oslo.message"])
    msgs.append(m)
rnd = random.Random(3)
with open(out, "w") as f:
    rep = 0
    written = 0
    while written < n:
        ids = {}
        for m in msgs:
            d = json.loads(json.dumps(m))
            u = d["payload"]["nova_object.data"]["uuid"]
            d["payload"]["nova_object.data"]["uuid"] = ids.setdefault(u, str(uuid.UUID(int=rnd.getrandbits(128), version=4)))
            # Each notification its own id, as oslo gives them (the amqp source skips an id it
            # has applied).
            d["message_id"] = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
            f.write(json.dumps(d) + "\n")
            written += 1
            if written >= n:
                break
        rep += 1
PY

if want replay; then
# ---------------------------------------------------------------- replay, small events
N_OBJ=$(scale 250000)
$FC simulate bench/flows/five_state.flow --objects "$N_OBJ" --seed 1 --rate 1000 --mean-dwell 2s -o "$OUT/small.jsonl" 2>/dev/null
N_SMALL=$(wc -l < "$OUT/small.jsonl")
BYTES=$(( $(wc -c < "$OUT/small.jsonl") / N_SMALL ))
read -r T_REPLAY _ < <(measure $FC replay --models bench/flows/five_state.flow "$OUT/small.jsonl")
$FC bench parse "$OUT/small.jsonl" > "$OUT/parse.json"
PARSE=$(python3 -c "import json; print(json.load(open('$OUT/parse.json'))['per_second'])")
SCAN=$(python3 -c "import json; print(json.load(open('$OUT/parse.json'))['scan_per_second'])")
R=$(rate "$N_SMALL" "$T_REPLAY" | tr -d ,)
row "replay, ${BYTES}-byte events, 5-state flow (one core) | $(rate "$N_SMALL" "$T_REPLAY") events/s | serde_json to Value: $(python3 -c "print(f'{$PARSE:,.0f}')")/s; validate only: $(python3 -c "print(f'{$SCAN:,.0f}')")/s | $(ratio "$R" "$PARSE") of Value parsing | >= 500,000/s"
# The same stream with the feature model on (`learn { features on }`; refits inline in replay).
sed 's/learn { expire 30d }/learn { expire 30d  features on }/' bench/flows/five_state.flow > "$OUT/five_features.flow"
read -r T_FEAT _ < <(measure $FC replay --models "$OUT/five_features.flow" "$OUT/small.jsonl")
row "replay, ${BYTES}-byte events, 5-state flow, features on (one core) | $(rate "$N_SMALL" "$T_FEAT") events/s | features off: $(rate "$N_SMALL" "$T_REPLAY")/s | $(ratio "$T_REPLAY" "$T_FEAT") of that rate | -"

# The same stream with one fixed first-order model (`learn { model fixed }`): what the
# self-tuning family (the default) costs.
sed 's/learn { expire 30d }/learn { expire 30d  model fixed }/' bench/flows/five_state.flow > "$OUT/five_fixed.flow"
read -r T_FIXED _ < <(measure $FC replay --models "$OUT/five_fixed.flow" "$OUT/small.jsonl")
row "replay, ${BYTES}-byte events, 5-state flow, model fixed (one core) | $(rate "$N_SMALL" "$T_FIXED") events/s | the default (model auto): $(rate "$N_SMALL" "$T_REPLAY")/s | auto at $(ratio "$T_FIXED" "$T_REPLAY") of the fixed rate | -"

# The same stream without surprise scoring (`anomaly off`): what scoring every step costs
# (it is on by default; issue 12 allows it 15% of replay throughput).
sed 's/learn { expire 30d }/learn { expire 30d }\n    anomaly off/' bench/flows/five_state.flow > "$OUT/five_no_anomaly.flow"
read -r T_NOANOM _ < <(measure $FC replay --models "$OUT/five_no_anomaly.flow" "$OUT/small.jsonl")
row "replay, ${BYTES}-byte events, 5-state flow, anomaly off (one core) | $(rate "$N_SMALL" "$T_NOANOM") events/s | the default (surprise scored): $(rate "$N_SMALL" "$T_REPLAY")/s | scored at $(ratio "$T_NOANOM" "$T_REPLAY") of the unscored rate | >= 0.85"

N_NOVA=$(wc -l < "$OUT/nova.jsonl")
NOVA_BYTES=$(( $(wc -c < "$OUT/nova.jsonl") / N_NOVA ))
read -r T_REPLAY _ < <(measure $FC replay --models models "$OUT/nova.jsonl")
$FC bench parse "$OUT/nova.jsonl" > "$OUT/parse.json"
PARSE=$(python3 -c "import json; print(json.load(open('$OUT/parse.json'))['per_second'])")
SCAN=$(python3 -c "import json; print(json.load(open('$OUT/parse.json'))['scan_per_second'])")
R=$(rate "$N_NOVA" "$T_REPLAY" | tr -d ,)
row "replay, real nova notifications (${NOVA_BYTES} B each), all 5 bundled flows (one core) | $(rate "$N_NOVA" "$T_REPLAY") events/s | serde_json to Value: $(python3 -c "print(f'{$PARSE:,.0f}')")/s; validate only: $(python3 -c "print(f'{$SCAN:,.0f}')")/s | $(ratio "$R" "$PARSE") of Value parsing | >= 150,000/s (1.5 KB)"

# Shards in one process (issue 16): the same stream on 2 engines and threads against one, in
# the same run (the issue asks >= 1.7x on this 2-core machine).
read -r T_SHARDS2 RSS_SHARDS2 < <(measure $FC replay --models models --shards 2 "$OUT/nova.jsonl")
row "replay, the same nova notifications, --shards 2 (two threads) | $(rate "$N_NOVA" "$T_SHARDS2") events/s (peak RSS ${RSS_SHARDS2} KB) | one shard: $(rate "$N_NOVA" "$T_REPLAY")/s | $(ratio "$T_REPLAY" "$T_SHARDS2")x | >= 1.7x"

fi

if want memory; then
# ---------------------------------------------------------------- memory per object in flight
$FC simulate bench/flows/inflight.flow --objects 1000 --seed 2 --rate 1000 -o "$OUT/inflight_1k.jsonl" 2>/dev/null
read -r _ RSS0 < <(measure $FC replay --models bench/flows/inflight.flow "$OUT/inflight_1k.jsonl")
for N in 1000000 10000000; do
    N=$(scale $N)
    $FC simulate bench/flows/inflight.flow --objects "$N" --seed 2 --rate 100000 -o "$OUT/inflight.jsonl" 2>/dev/null
    read -r _ RSS < <(measure $FC replay --models bench/flows/inflight.flow "$OUT/inflight.jsonl")
    FLIGHT=$($FC replay --models bench/flows/inflight.flow "$OUT/inflight.jsonl" --summary-json 2>&1 >/dev/null | tail -1 | python3 -c "import json,sys; print(json.load(sys.stdin)['in_flight'])")
    [ "$FLIGHT" = "$N" ] || { echo "expected $N objects in flight, got $FLIGHT"; exit 1; }
    row "objects in flight: $N | $(python3 -c "print(f'{($RSS-$RSS0)*1024/$N:.0f}')") B/object ($((RSS/1024)) MiB peak) | empty run: $((RSS0/1024)) MiB peak | - | <= 150 B/object"
done
rm -f "$OUT/inflight.jsonl"

fi

if want objects; then
# ---------------------------------------------------------------- throughput vs objects in flight
M=$(scale 2000000)
T_BASE=""
for N in 1000 100000 1000000 10000000; do
    N=$(scale $N); [ "$N" -lt 1 ] && N=1
    awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) printf "{\"event_type\":\"a\",\"timestamp\":1767225600,\"payload\":{\"id\":\"o%d\"}}\n", i }' > "$OUT/prefill.jsonl"
    awk -v n="$N" -v m="$M" 'BEGIN { for (i = 0; i < m; i++) { o = (i * 7919) % n; p = int(i / n); printf "{\"event_type\":\"%s\",\"timestamp\":%d,\"payload\":{\"id\":\"o%d\"}}\n", (p % 2 == 0 ? "b" : "a"), 1767225601 + int(i / 1000), o } }' > "$OUT/cycle.jsonl"
    cat "$OUT/prefill.jsonl" "$OUT/cycle.jsonl" > "$OUT/full.jsonl"
    read -r TP _ < <(measure $FC replay --models bench/flows/loop.flow "$OUT/prefill.jsonl")
    read -r TF _ < <(measure $FC replay --models bench/flows/loop.flow "$OUT/full.jsonl")
    T=$(python3 -c "print(max($TF-$TP, 1e-3))")
    [ -z "$T_BASE" ] && T_BASE=$T
    row "throughput with $N objects in flight | $(rate "$M" "$T") transitions/s | with $(scale 1000) objects: $(rate "$M" "$T_BASE")/s | $(ratio "$T_BASE" "$T") of that rate | flat within 2x"
done
rm -f "$OUT/prefill.jsonl" "$OUT/cycle.jsonl" "$OUT/full.jsonl"

fi

if want flows; then
# ---------------------------------------------------------------- throughput vs flows and states
gen_flows() { # flows states dir
    python3 - "$1" "$2" "$3" <<'PY'
import sys, os
F, S, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.makedirs(d, exist_ok=True)
for f in range(F):
    lines = [f"flow f{f} {{", "    key payload.id", "    initial s0"]
    lines += [f"    state s{i}" for i in range(1, S - 1)]
    lines += [f"    terminal s{S-1}"]
    lines += [f'    on "f{f}.s{i}" -> s{i}' for i in range(S)]
    lines += ["    transitions {"] + [f"        s{i} -> s{i+1} 1" for i in range(S - 1)] + ["    }", "    learn { expire 30d }", "}"]
    open(f"{d}/f{f}.flow", "w").write("\n".join(lines) + "\n")
PY
}
gen_stream() { # flows states messages file
    awk -v F="$1" -v S="$2" -v m="$3" 'BEGIN { o = 0; s = 0; for (i = 0; i < m; i++) { printf "{\"event_type\":\"f%d.s%d\",\"timestamp\":%d,\"payload\":{\"id\":\"o%d\"}}\n", o % F, s, 1767225600 + int(i / 1000), o; s++; if (s >= S) { s = 0; o++ } } }' > "$4"
}
MSG=$(scale 1000000)
T1=""
for F in 1 10 100 1000; do
    rm -rf "$OUT/flows"; gen_flows "$F" 5 "$OUT/flows"; gen_stream "$F" 5 "$MSG" "$OUT/fs.jsonl"
    read -r T _ < <(measure $FC replay --models "$OUT/flows" "$OUT/fs.jsonl")
    [ -z "$T1" ] && T1=$T
    row "throughput with $F flows loaded (5 states each) | $(rate "$MSG" "$T") events/s | 1 flow: $(rate "$MSG" "$T1")/s | $(ratio "$T" "$T1")x the time for ${F}x the flows | sub-linear in flows"
done
T1=""
for S in 5 50 500; do
    rm -rf "$OUT/flows"; gen_flows 1 "$S" "$OUT/flows"; gen_stream 1 "$S" "$MSG" "$OUT/fs.jsonl"
    read -r T _ < <(measure $FC replay --models "$OUT/flows" "$OUT/fs.jsonl")
    [ -z "$T1" ] && T1=$T
    row "throughput with $S states per flow | $(rate "$MSG" "$T") events/s | 5 states: $(rate "$MSG" "$T1")/s | $(ratio "$T" "$T1")x the time | sub-linear"
done
rm -rf "$OUT/flows" "$OUT/fs.jsonl"

fi

if want check; then
# ---------------------------------------------------------------- check of 1,000 flow files
rm -rf "$OUT/check"; mkdir -p "$OUT/check"
for i in $(seq 0 249); do
    for m in models/*.flow; do
        sed -E "s/^flow ([a-z_]+)/flow \1_$i/" "$m" > "$OUT/check/$(basename "$m" .flow)_$i.flow"
    done
done
read -r T _ < <(measure $FC check "$OUT/check")
row "check of $(ls "$OUT/check" | wc -l) flow files ($(du -sh "$OUT/check" | cut -f1)) | $T s | - | - | < 1 s"
rm -rf "$OUT/check"

fi

if want fmt; then
# ---------------------------------------------------------------- fmt of 1,000 flow files
# The bundled models with their alignment squashed (runs of spaces to one): every file needs
# rewriting on the first repetition; the later ones find them formatted (format, compare).
rm -rf "$OUT/fmt"; mkdir -p "$OUT/fmt"
for i in $(seq 0 249); do
    for m in models/*.flow; do
        sed -E "s/^flow ([a-z_]+)/flow \1_$i/; s/([^ ])  +/\1 /g" "$m" > "$OUT/fmt/$(basename "$m" .flow)_$i.flow"
    done
done
N=$(ls "$OUT/fmt" | wc -l); SIZE=$(du -sh "$OUT/fmt" | cut -f1)
read -r T M < <(measure $FC fmt "$OUT/fmt")
row "fmt of $N flow files ($SIZE) | $T s | - | $((M / 1024)) MB | < 1 s"
read -r T M < <(measure $FC fmt --check "$OUT/fmt")
row "fmt --check of $N formatted flow files | $T s | - | $((M / 1024)) MB | < 1 s"
rm -rf "$OUT/fmt"

fi

if want lsp; then
# ---------------------------------------------------------------- language server latency
# 50 edits of a 1,000-line file (the bundled models repeated), each answered by its diagnostics.
read -r L MED P95 MAX FMT < <(python3 bench/lsp_latency.py "$FC" "$([ "$QUICK" = 1 ] && echo 10 || echo 50)")
row "lsp: edit -> diagnostics, $L-line file | median $MED ms, p95 $P95 ms, max $MAX ms | formatting the file: $FMT ms | - | < 50 ms"

fi

if want discover; then
# ---------------------------------------------------------------- discover vs PM4Py
python3 - "$OUT/big.csv" "$(scale 1000000)" <<'PY'
import sys
out, n = sys.argv[1], int(sys.argv[2])
rows = open("../shared/data/process_logs/bpi_12_w.csv").read().splitlines()
head, body = rows[0], rows[1:]
with open(out, "w") as f:
    f.write(head + "\n")
    w, rep = 0, 0
    while w < n:
        for r in body:
            c, a, t = r.split(",")
            f.write(f"{c}-{rep},{a},{t}\n")
            w += 1
            if w >= n:
                break
        rep += 1
PY
N_BIG=$(($(wc -l < "$OUT/big.csv") - 1))
read -r T_DISC _ < <(measure $FC discover "$OUT/big.csv" -o "$OUT/big.flow")
if [ "${SKIP_PM4PY:-0}" != 1 ]; then
    if [ ! -x "$OUT/venv/bin/python" ]; then
        python3 -m venv "$OUT/venv"
        "$OUT/venv/bin/pip" install --quiet pm4py
    fi
    cat > "$OUT/pm4py_dfg.py" <<'PY'
import sys, pandas as pd, pm4py
df = pd.read_csv(sys.argv[1], dtype={"CaseID": str, "ActivityID": str})
df = pm4py.format_dataframe(df, case_id="CaseID", activity_key="ActivityID", timestamp_key="CompleteTimestamp")
dfg, start, end = pm4py.discover_dfg(df)
print(len(dfg), len(start), len(end))
PY
    read -r T_PM _ < <(measure "$OUT/venv/bin/python" "$OUT/pm4py_dfg.py" "$OUT/big.csv")
    row "discover, $N_BIG events (CSV to result) | $T_DISC s | PM4Py discover_dfg (read_csv + format + discover): $T_PM s | $(ratio "$T_PM" "$T_DISC")x faster | >= 10x"
else
    row "discover, $N_BIG events | $T_DISC s | PM4Py skipped | - | >= 10x"
fi
rm -f "$OUT/big.csv" "$OUT/big.flow"

fi

if want eval; then
# ---------------------------------------------------------------- eval speed
read -r T _ < <(measure $FC eval ../shared/data/process_logs/bpi_12_w.csv)
row "eval of BPI'12 W (72,413 events), one configuration | $T s | - | - | well under 1 s"

fi

if want nats; then
# ---------------------------------------------------------------- NATS
NATS_DIR=$(mktemp -d)
PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
HTTP=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
URL=nats://127.0.0.1:$PORT
nats-server -a 127.0.0.1 -p "$PORT" -js -sd "$NATS_DIR" > "$NATS_DIR/log" 2>&1 &
NATS_PID=$!
cleanup() { kill "$NATS_PID" 2> /dev/null || true; [ -n "${SVC_PID:-}" ] && kill "$SVC_PID" 2> /dev/null; rm -rf "$NATS_DIR"; return 0; }
trap cleanup EXIT
SVC_PID=
sleep 0.5
metric() { curl -s "127.0.0.1:$HTTP/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }
messages() { curl -s "127.0.0.1:$HTTP/metrics" | awk '/^flowcast_messages_total/ { s += $2 } END { print s + 0 }'; }
start_service() { # config-yaml
    printf '%s\nhttp: { listen: "127.0.0.1:%s" }\n' "$1" "$HTTP" > "$OUT/svc.yaml"
    $FC run --config "$OUT/svc.yaml" > /dev/null 2> "$OUT/svc.log" &
    SVC_PID=$!
    for _ in $(seq 200); do curl -sf "127.0.0.1:$HTTP/readyz" > /dev/null && return 0; sleep 0.05; done
    cat "$OUT/svc.log"; return 1
}
stop_service() { kill "$SVC_PID"; wait "$SVC_PID" 2>/dev/null || true; SVC_PID=; }
wait_messages() { # n, prints seconds since $START
    for _ in $(seq 12000); do [ "$(messages)" -ge "$1" ] && break; sleep 0.005; done
    python3 -c "import time; print(time.time() - $START)"
}
N_NATS=$(scale 300000)
head -n "$N_NATS" "$OUT/nova.jsonl" > "$OUT/nats.jsonl"
NOVA_BYTES=$(( $(wc -c < "$OUT/nats.jsonl") / N_NATS ))

# Core NATS is at most once: a consumer that falls behind loses messages. So each consumer
# is offered a steady rate, and the figure is the highest rate it takes without losing any.
core_rate() { # rate -> prints "received seconds" for flowcast
    START=$(python3 -c "import time; print(time.time())")
    local before; before=$(messages)
    $FC publish "$OUT/nats.jsonl" --subject notifications.nova --url "$URL" --rate "$1" 2> "$OUT/pub.log"
    local last=-1 now
    for _ in $(seq 400); do now=$(messages); [ "$now" = "$last" ] && break; last=$now; sleep 0.05; done
    echo "$(( last - before )) $(python3 -c "import time; print(time.time() - $START)")"
}
BEST=0; BEST_BARE=0
start_service "models: models
source: { kind: nats, subjects: [\"notifications.>\"] }
nats: { url: \"$URL\" }
sinks: []
watch: false"
for R in 50000 100000 150000 200000 300000; do
    read -r GOT _ < <(core_rate "$R")
    ACH=$(grep -o '([0-9]*/s)' "$OUT/pub.log" | tr -d '()/s')
    note "  core NATS at $R msgs/s asked ($ACH/s achieved by the publisher): flowcast took $GOT of $N_NATS"
    [ "$GOT" -ge "$N_NATS" ] && BEST=$R
done
stop_service
for R in 50000 100000 150000 200000 300000; do
    $FC bench subscribe --url "$URL" --subject notifications.nova --count "$N_NATS" > "$OUT/bare.json" 2> /dev/null &
    BARE=$!; sleep 0.5
    $FC publish "$OUT/nats.jsonl" --subject notifications.nova --url "$URL" --rate "$R" 2> "$OUT/pub.log"
    wait $BARE
    GOT=$(python3 -c "import json; print(json.load(open('$OUT/bare.json'))['messages'])")
    ACH=$(grep -o '([0-9]*/s)' "$OUT/pub.log" | tr -d '()/s')
    note "  core NATS at $R msgs/s asked ($ACH/s achieved by the publisher): bare subscriber took $GOT of $N_NATS"
    [ "$GOT" -ge "$N_NATS" ] && BEST_BARE=$R
done
row "core NATS end to end, ${NOVA_BYTES}-byte nova notifications: highest offered rate taken without loss (of 50k/100k/150k/200k/300k) | $BEST msgs/s | bare async-nats subscriber: $BEST_BARE msgs/s | - | >= 100,000/s"

# JetStream: the stream is filled first; then the bare consumer and flowcast each read it all.
START=$(python3 -c "import time; print(time.time())")
start_service "models: models
source: { kind: jetstream, stream: BENCH, subjects: [\"bench.>\"], consumer: flowcast }
nats: { url: \"$URL\" }
sinks: []
watch: false"
stop_service
$FC publish "$OUT/nats.jsonl" --subject bench.nova --url "$URL" --jetstream 2> /dev/null
$FC bench consume --url "$URL" --stream BENCH --count "$N_NATS" > "$OUT/bare.json"
BARE_RATE=$(python3 -c "import json; print(json.load(open('$OUT/bare.json'))['per_second'])")
START=$(python3 -c "import time; print(time.time())")
start_service "models: models
source: { kind: jetstream, stream: BENCH, subjects: [\"bench.>\"], consumer: flowcast }
nats: { url: \"$URL\" }
sinks: []
watch: false"
T=$(wait_messages "$N_NATS")
GOT=$(messages)
stop_service
row "JetStream with acks, ${NOVA_BYTES}-byte notifications (start included) | $(rate "$GOT" "$T") msgs/s | bare JetStream pull consumer: $(python3 -c "print(f'{$BARE_RATE:,.0f}')")/s | $(ratio "$(rate "$GOT" "$T" | tr -d ,)" "$BARE_RATE") | >= 80,000/s"

# Latency: publish -> alert on NATS at 10k msgs/s, against a NATS request/reply round trip.
python3 - "$OUT/lat.jsonl" "$(scale 50000)" <<'PY'
import json, sys, uuid, random
out, n = sys.argv[1], int(sys.argv[2])
base = [json.loads(l) for l in open("examples/patent_disk_attach/events.jsonl")]
rnd = random.Random(5)
with open(out, "w") as f:
    w, rep = 0, 0
    while w < n:
        for m in base:
            d = dict(m); d["payload"] = {"request_id": f"r{rep}-" + m["payload"]["request_id"]}
            d.pop("timestamp", None)
            d["message_id"] = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
            f.write(json.dumps(d) + "\n"); w += 1
            if w >= n: break
        rep += 1
PY
start_service "models: models/patent_disk_attach.flow
source: { kind: nats, subjects: [\"lat.>\"] }
nats: { url: \"$URL\" }
sinks: [{ kind: nats }]
batch_size: 64
watch: false"
$FC bench latency --url "$URL" --file "$OUT/lat.jsonl" --subject lat.patent --rate 10000 > "$OUT/lat.json"
stop_service
$FC bench rtt --url "$URL" > "$OUT/rtt.json"
P99=$(python3 -c "import json; print(json.load(open('$OUT/lat.json'))['p99_ms'])")
P50=$(python3 -c "import json; print(json.load(open('$OUT/lat.json'))['p50_ms'])")
NAL=$(python3 -c "import json; print(json.load(open('$OUT/lat.json'))['alerts'])")
RTT99=$(python3 -c "import json; print(json.load(open('$OUT/rtt.json'))['p99_ms'])")
RTT50=$(python3 -c "import json; print(json.load(open('$OUT/rtt.json'))['p50_ms'])")
row "publish -> alert latency at 10,000 msgs/s ($NAL alerts) | p50 $P50 ms, p99 $P99 ms | NATS request/reply: p50 $RTT50 ms, p99 $RTT99 ms | $(ratio "$P99" "$RTT99") | p99 < 5 ms"

# Hot reload: save -> live.
rm -rf "$OUT/models"; cp -r models "$OUT/models"
start_service "models: $OUT/models
source: { kind: nats, subjects: [\"reload.>\"] }
nats: { url: \"$URL\" }
sinks: []"
$FC bench reload --http "127.0.0.1:$HTTP" --file "$OUT/models/nova_volume_attach.flow" --times "$([ "$QUICK" = 1 ] && echo 3 || echo 20)" > "$OUT/reload.json"
stop_service
row "hot reload, save -> live ($(python3 -c "import json; print(json.load(open('$OUT/reload.json'))['reloads'])") saves) | median $(python3 -c "import json; print(json.load(open('$OUT/reload.json'))['median_ms'])") ms, max $(python3 -c "import json; print(json.load(open('$OUT/reload.json'))['max_ms'])") ms | - | - | < 200 ms"


fi

if want amqp; then
# ---------------------------------------------------------------- AMQP (RabbitMQ)
# A broker of its own on free loopback ports (Debian's rabbitmq-server, no system service). The
# bare consumer and flowcast each read a queue of their own, bound to an exchange of their own
# and filled by a publish of the same messages just before the read, so both read a queue in
# the same state; the figure is the rate from the first message applied to the last.
free() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
RMQ=$(mktemp -d); RPORT=$(free); RDIST=$(free); REPMD=$(free)
echo '[].' > "$RMQ/enabled_plugins"
printf 'listeners.tcp.default = 127.0.0.1:%s\nlog.console = false\n' "$RPORT" > "$RMQ/rabbitmq.conf"
rmq_env() { env HOME="$RMQ" RABBITMQ_NODENAME="bench$RPORT@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$RPORT" RABBITMQ_DIST_PORT="$RDIST" ERL_EPMD_PORT="$REPMD" ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_MNESIA_BASE="$RMQ/mnesia" RABBITMQ_LOG_BASE="$RMQ/log" RABBITMQ_CONFIG_FILE="$RMQ/rabbitmq" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ/enabled_plugins" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" "$@"; }
(cd "$RMQ" && rmq_env /usr/lib/rabbitmq/bin/rabbitmq-server > "$RMQ/out.log" 2>&1 &)
for _ in $(seq 300); do (echo > "/dev/tcp/127.0.0.1/$RPORT") 2>/dev/null && break; sleep 0.2; done
BEAM=$(pgrep -f "[b]eam.smp.* -home $RMQ " | head -1)
rmq_stop() { pkill -9 -f "[b]eam.smp.* -home $RMQ " || true; sleep 1; ERL_EPMD_PORT=$REPMD epmd -kill > /dev/null 2>&1 || true; rm -rf "$RMQ"; }
AURL="amqp://guest:guest@127.0.0.1:$RPORT/%2F"
HTTP=${HTTP:-$(free)}
amqp_messages() { curl -s "127.0.0.1:$HTTP/metrics" | awk '/^flowcast_messages_total/ { s += $2 } END { print s + 0 }'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
N_AMQP=$(scale 100000)
head -n "$N_AMQP" "$OUT/nova.jsonl" > "$OUT/amqp.jsonl"
AMQP_BYTES=$(( $(wc -c < "$OUT/amqp.jsonl") / N_AMQP ))
amqp_run() { # extra-source-settings state_dir? bare-options -> prints "rate beam_cpu_share"
    rm -rf "$OUT/amqp-state"
    local state=""; [ "$2" = state ] && state="state_dir: $OUT/amqp-state
snapshot_interval_ms: 5s"
    printf 'models: models\n%s\nsource: { kind: amqp, url: "%s", exchanges: [bench_f], queue: flowcast_bench %s }\nsinks: []\nwatch: false\nhttp: { listen: "127.0.0.1:%s" }\n' "$state" "$AURL" "$1" "$HTTP" > "$OUT/amqp.yaml"
    # The bare consumer: declare its queue, fill it, read it.
    $FC bench amqp-consume --url "$AURL" --exchange bench_b --queue bench_bare --count 0
    $FC publish "$OUT/amqp.jsonl" --amqp "$AURL" --exchange bench_b 2> "$OUT/amqp-pub.log"
    $FC bench amqp-consume --url "$AURL" --exchange bench_b --queue bench_bare --count "$N_AMQP" $3 > "$OUT/amqp-bare.json"
    # flowcast: a first start declares its queue; fill it; read it with a fresh state.
    $FC run --config "$OUT/amqp.yaml" > /dev/null 2> "$OUT/amqp-svc.log" & local pid=$!
    for _ in $(seq 200); do curl -sf "127.0.0.1:$HTTP/readyz" > /dev/null && break; sleep 0.05; done
    kill "$pid"; wait "$pid" 2> /dev/null || true
    rm -rf "$OUT/amqp-state"
    $FC publish "$OUT/amqp.jsonl" --amqp "$AURL" --exchange bench_f 2> "$OUT/amqp-pub.log"
    # Timed from the first message applied, as the bare consumer is (start and connection apart).
    $FC run --config "$OUT/amqp.yaml" > /dev/null 2> "$OUT/amqp-svc.log" & pid=$!
    for _ in $(seq 2000); do [ "$(amqp_messages)" -gt 0 ] && break; sleep 0.01; done
    local b0; b0=$(cpu_ticks "$BEAM")
    local start; start=$(python3 -c "import time; print(time.time())")
    local first; first=$(amqp_messages)
    # Polled every 50 ms: a curl every 5 ms costs the 2-core machine a large share of a core.
    for _ in $(seq 2400); do [ "$(amqp_messages)" -ge "$N_AMQP" ] && break; sleep 0.05; done
    local secs; secs=$(python3 -c "import time; print(time.time() - $start)")
    local b1; b1=$(cpu_ticks "$BEAM")
    local got; got=$(amqp_messages)
    kill "$pid"; wait "$pid" 2> /dev/null || true
    local hz; hz=$(getconf CLK_TCK)
    local bare; bare=$(python3 -c "import json; print(round(json.load(open('$OUT/amqp-bare.json'))['per_second']))")
    echo "$(python3 -c "print(round(($got - $first)/$secs))") $(python3 -c "print(f'{($b1-$b0)/$hz/$secs:.2f}')") $bare"
}
for MODE in nostate state; do
    R=()
    for _ in $(seq "$REPS"); do R+=("$(amqp_run "" "$MODE" "--prefetch 20000 --batch 1024")"); done
    # The median of each column over the runs: flowcast's rate, RabbitMQ's share, and the bare
    # consumer's rate of the same runs (not the last run's alone: it varies by 25% run to run).
    col() { printf '%s\n' "${R[@]}" | awk -v c="$1" '{print $c}' | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
    FRATE=$(col 1); SHARE=$(col 2); BARE_RATE=$(col 3)
    PUB=$(grep -o '([0-9]*/s)' "$OUT/amqp-pub.log" | tr -d '()/s')
    WHAT=$([ "$MODE" = state ] && echo "with a state directory: acknowledged once the covering snapshot is written" || echo "without a state directory: acknowledged once applied")
    row "AMQP intake, ${AMQP_BYTES}-byte nova notifications in the oslo envelope, prefetch 20,000, $WHAT (RabbitMQ's CPU share while flowcast reads: $SHARE cores; publish with confirms: $PUB/s) | $(python3 -c "print(f'{$FRATE:,}')") msgs/s | bare lapin consumer, same prefetch, one ack per batch: $(python3 -c "print(f'{$BARE_RATE:,.0f}')")/s | $(ratio "$FRATE" "$BARE_RATE") | >= 0.7"
done
rmq_stop
fi

if want viewers; then
# ---------------------------------------------------------------- dashboard viewers
# Intake is not slowed by viewers: the same JetStream stream read by a fresh consumer with no
# viewer, then with 10 clients on /api/events and the API polled every second (the
# dashboard's objects, alerts and overview), alternately, REPS times each; medians compared.
V_DIR=$(mktemp -d)
V_PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
V_HTTP=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
V_URL=nats://127.0.0.1:$V_PORT
nats-server -a 127.0.0.1 -p "$V_PORT" -js -sd "$V_DIR" > "$V_DIR/log" 2>&1 &
V_NATS=$!
V_SVC=
V_VIEWERS=()
v_cleanup() {
    kill "$V_NATS" ${V_SVC:+"$V_SVC"} ${V_VIEWERS[@]+"${V_VIEWERS[@]}"} 2> /dev/null || true; rm -rf "$V_DIR"
    # The NATS section's server, when it ran: this trap replaced its own.
    if declare -F cleanup > /dev/null; then cleanup; fi
    return 0
}
trap v_cleanup EXIT
sleep 0.5
N_VIEW=$(scale 300000)
head -n "$N_VIEW" "$OUT/nova.jsonl" > "$OUT/viewers.jsonl"
# The stream is created by a service's first start (`create` is on by default), then filled.
printf 'models: models\nsource: { kind: jetstream, stream: VIEW, subjects: ["view.>"], consumer: setup }\nnats: { url: "%s" }\nsinks: []\nwatch: false\nhttp: { listen: "127.0.0.1:%s" }\n' "$V_URL" "$V_HTTP" > "$OUT/view.yaml"
$FC run --config "$OUT/view.yaml" > /dev/null 2> "$OUT/view.log" & V_SVC=$!
for _ in $(seq 200); do curl -sf "127.0.0.1:$V_HTTP/readyz" > /dev/null && break; sleep 0.05; done
kill "$V_SVC"; wait "$V_SVC" 2> /dev/null || true; V_SVC=
$FC publish "$OUT/viewers.jsonl" --subject view.nova --url "$V_URL" --jetstream 2> /dev/null
v_messages() { curl -s "127.0.0.1:$V_HTTP/metrics" | awk '/^flowcast_messages_total/ { s += $2 } END { print s + 0 }'; }
v_run() { # consumer-name with-viewers(0/1) -> prints msgs/s
    printf 'models: models\nsource: { kind: jetstream, stream: VIEW, subjects: ["view.>"], consumer: %s }\nnats: { url: "%s" }\nsinks: []\nwatch: false\nhttp: { listen: "127.0.0.1:%s" }\n' "$1" "$V_URL" "$V_HTTP" > "$OUT/view.yaml"
    local start; start=$(python3 -c "import time; print(time.time())")
    $FC run --config "$OUT/view.yaml" > /dev/null 2> "$OUT/view.log" & V_SVC=$!
    for _ in $(seq 400); do curl -sf "127.0.0.1:$V_HTTP/healthz" > /dev/null && break; sleep 0.01; done
    V_VIEWERS=()
    if [ "$2" = 1 ]; then
        for _ in $(seq 10); do curl -sN "127.0.0.1:$V_HTTP/api/events" > /dev/null 2>&1 & V_VIEWERS+=($!); done
        ( while true; do
            for p in "/api/objects?limit=100" /api/alerts /api/overview; do curl -s "127.0.0.1:$V_HTTP$p" > /dev/null; done
            sleep 1
          done ) > /dev/null 2>&1 & V_VIEWERS+=($!)
    fi
    for _ in $(seq 24000); do [ "$(v_messages)" -ge "$N_VIEW" ] && break; sleep 0.005; done
    local got; got=$(v_messages)
    python3 -c "import time; print(f'{$got / (time.time() - $start):.0f}')"
    if [ "$2" = 1 ]; then
        curl -s "127.0.0.1:$V_HTTP/api/overview" | python3 -c "import json,sys; print(json.load(sys.stdin)['event_listeners'])" > "$OUT/view.listeners"
    fi
    kill ${V_VIEWERS[@]+"${V_VIEWERS[@]}"} 2> /dev/null || true; V_VIEWERS=()
    kill "$V_SVC"; wait "$V_SVC" 2> /dev/null || true; V_SVC=
}
WITHOUT=(); WITH=()
for i in $(seq "$REPS"); do
    WITHOUT+=("$(v_run "plain$i" 0)")
    WITH+=("$(v_run "viewed$i" 1)")
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
MW=$(med "${WITHOUT[@]}"); MV=$(med "${WITH[@]}")
note "  JetStream replay without viewers: ${WITHOUT[*]} msgs/s; with 10 event streams ($(cat "$OUT/view.listeners") connected) and the API polled each second: ${WITH[*]} msgs/s"
row "JetStream replay with 10 /api/events clients and the API polled every second (start included) | $(python3 -c "print(f'{$MV:,.0f}')") msgs/s | the same without viewers: $(python3 -c "print(f'{$MW:,.0f}')") msgs/s | $(ratio "$MV" "$MW") | >= 0.90"
v_cleanup
trap - EXIT
fi

if want cluster; then
# ---------------------------------------------------------------- cluster (issue 16)
# The nova notifications routed to 12 partitions (`flowcast route`), then read by 1, 2 and 3
# workers (`flowcast run` with a `cluster` section) from a fresh server each time. A figure is
# the partition messages over the time from the workers' start to every partition consumer
# having nothing pending and nothing unacknowledged (acknowledged after a snapshot, 1 s).
C_NATS=${FLOWCAST_NATS_SERVER_CURRENT:-$ROOT/target/nats-venv/bin/nats-server}
[ -x "$C_NATS" ] || { echo "cluster: no current nats-server at $C_NATS (run scripts/test.sh once)"; exit 1; }
N_CLUSTER=$(scale 100000)
C_SNAP=${C_SNAP:-1s}  # the workers' snapshot interval
head -n "$N_CLUSTER" "$OUT/nova.jsonl" > "$OUT/cluster.jsonl"
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
jsz() { # what -> prints a figure from the server's monitoring endpoint
    curl -s "127.0.0.1:$C_MON/jsz?consumers=true" | python3 -c "
import json, sys
d = json.load(sys.stdin)
streams = {s['name']: s for a in d.get('account_details', []) for s in a.get('stream_detail', [])}
what = sys.argv[1]
if what == 'parts':
    print(streams.get('FLOWCAST_PARTS', {}).get('state', {}).get('messages', 0))
elif what == 'route-left':
    c = [c for c in streams.get('SRC', {}).get('consumer_detail', []) if c['name'] == 'flowcast-route']
    print(sum(x['num_pending'] + x['num_ack_pending'] for x in c) if c else -1)
else:
    # The partitions' durable consumers, not the catch-ups' ordered (ephemeral) ones.
    cs = [c for c in streams.get('FLOWCAST_PARTS', {}).get('consumer_detail', []) if c['name'].startswith('part-')]
    print(sum(x['num_pending'] + x['num_ack_pending'] for x in cs) if len(cs) == 12 else -1)
" "$1"
}
C_PIDS=()
c_cleanup() { kill -9 ${C_PIDS[@]+"${C_PIDS[@]}"} 2> /dev/null || true; C_PIDS=(); }
trap c_cleanup EXIT
cluster_run() { # workers -> prints "route_rate worker_rate partition_messages"
    local dir; dir=$(mktemp -d)
    C_PORT=$(free_port); C_MON=$(free_port)
    local url=nats://127.0.0.1:$C_PORT
    "$C_NATS" -a 127.0.0.1 -p "$C_PORT" -m "$C_MON" -js -sd "$dir/js" > "$dir/nats.log" 2>&1 & C_PIDS+=($!)
    for _ in $(seq 100); do curl -sf "127.0.0.1:$C_MON/healthz" > /dev/null && break; sleep 0.05; done
    # The source stream, made by a service that reads it, then filled.
    local http; http=$(free_port)
    printf 'models: models\nsource: { kind: jetstream, stream: SRC, subjects: ["src.>"], consumer: setup }\nnats: { url: "%s" }\nsinks: []\nwatch: false\nhttp: { listen: "127.0.0.1:%s" }\n' "$url" "$http" > "$dir/setup.yaml"
    $FC run --config "$dir/setup.yaml" > /dev/null 2> "$dir/setup.log" & local setup=$!
    for _ in $(seq 200); do curl -sf "127.0.0.1:$http/readyz" > /dev/null && break; sleep 0.05; done
    kill "$setup"; wait "$setup" 2> /dev/null || true
    $FC publish "$OUT/cluster.jsonl" --subject src.nova --url "$url" --jetstream 2> /dev/null
    local t0 t1 t2
    t0=$(python3 -c "import time; print(time.time())")
    $FC route --from-stream SRC --url "$url" --partitions 12 > "$dir/route.json" 2> "$dir/route.log" & local route=$!
    C_PIDS+=($route)
    for _ in $(seq 6000); do [ "$(jsz route-left)" = 0 ] && break; sleep 0.05; done
    t1=$(python3 -c "import time; print(time.time())")
    kill "$route"; wait "$route" 2> /dev/null || true
    local parts; parts=$(jsz parts)
    local pids=()
    for i in $(seq "$1"); do
        mkdir -p "$dir/w$i"
        printf 'models: %s/models\nsnapshot_interval_ms: %s\nsinks: []\nnats: { url: "%s" }\nclock: { mode: event, idle_after_ms: "0" }\nhttp: { listen: "127.0.0.1:%s" }\ncluster: { partitions: 12, pin_ttl_ms: 2s, ack_wait_ms: 60s, worker: w%s }\n' "$ROOT" "$C_SNAP" "$url" "$(free_port)" "$i" > "$dir/w$i/c.yaml"
    done
    t1=$(python3 -c "import time; print(time.time())")
    for i in $(seq "$1"); do
        $FC run --config "$dir/w$i/c.yaml" > /dev/null 2> "$dir/w$i/log" & pids+=($!); C_PIDS+=($!)
    done
    # Wait until the 12 consumers exist and have nothing pending or unacknowledged.
    for _ in $(seq 12000); do [ "$(jsz workers)" = 0 ] && break; sleep 0.05; done
    t2=$(python3 -c "import time; print(time.time())")
    kill "${pids[@]}"; wait "${pids[@]}" 2> /dev/null || true
    c_cleanup
    python3 -c "print(f'{$N_CLUSTER/($t1-$t0):.0f} {$parts/($t2-$t1):.0f} $parts')"
    if [ -n "${KEEP_CLUSTER_LOGS:-}" ]; then cp "$dir"/w*/log "$OUT/" 2> /dev/null || true; fi
    rm -rf "$dir"
}
C1=(); C2=(); C3=(); CR=()
for _ in $(seq "$REPS"); do
    read -r r w n < <(cluster_run 1); CR+=("$r"); C1+=("$w")
    read -r r w n < <(cluster_run 2); CR+=("$r"); C2+=("$w")
    read -r r w n < <(cluster_run 3); CR+=("$r"); C3+=("$w")
done
cmed() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
note "  cluster: $n partition messages from $N_CLUSTER notifications; route ${CR[*]} msgs/s; 1 worker ${C1[*]}, 2 workers ${C2[*]}, 3 workers ${C3[*]} msgs/s (nats-server $("$C_NATS" --version | awk '{print $2}'), on the same $(nproc) cores)"
row "cluster: \`flowcast route\` onto 12 partitions (JetStream in and out, one router) | $(python3 -c "print(f'{$(cmed "${CR[@]}"):,.0f}')") msgs/s | - | - | -"
row "cluster: 1 / 2 / 3 workers on 12 partitions, backlog, snapshots every $C_SNAP (start included) | $(python3 -c "print(f'{$(cmed "${C1[@]}"):,.0f} / {$(cmed "${C2[@]}"):,.0f} / {$(cmed "${C3[@]}"):,.0f}')") msgs/s | - | 3 workers / 1: $(ratio "$(cmed "${C3[@]}")" "$(cmed "${C1[@]}")") | bounded by $(nproc) cores shared with nats-server |"
trap - EXIT
fi

note ""
note "Raw outputs are in $OUT."
exit 0

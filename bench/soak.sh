#!/usr/bin/env bash
# Soak: `flowcast run` (release) against a real nats-server for a bounded time at a steady rate,
# with hot reloads (one of them a broken save, then fixed), snapshots (a short interval plus
# `POST /-/snapshot`) and a sink that always fails beside one that works. Every 10 s it samples
# the service's RSS and /metrics; at the end it writes target/soak/soak.csv, prints a summary
# (and a per-minute markdown table for BENCHMARKS.md) and fails (exit 1) if
#   - RSS grew by more than SOAK_RSS_GROWTH_MIB (default 16 MiB) between the end of the warm-up
#     (the 2nd minute; a third of the run if shorter) and the end,
#   - a message was lost (published vs counted by flowcast_messages_total), or
#   - the service died (or did not exit 0 on SIGTERM).
# Not part of CI: it takes SOAK_SECONDS (default 600). Needs nats-server, python3, curl.
#
#   nice bash bench/soak.sh                    # ten minutes at 2,000 msgs/s
#   SOAK_SECONDS=60 bash bench/soak.sh         # a one-minute smoke test of the script
#   SOAK_RATE=5000 SOAK_RSS_GROWTH_MIB=32 ...  # another rate, another bound
#
# The stream: 80% simulated five-state operations (bench/flows/five_state.flow, ~15,000 objects
# in flight at 2,000 msgs/s) and 20% the bundled real nova notifications (examples/nova_*, keys
# renewed on every repetition), timestamps removed so that the wall clock times them, published
# through JetStream with `flowcast publish --jetstream --rate`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_TOTAL=${SOAK_SECONDS:-600}
RATE=${SOAK_RATE:-2000}
GROWTH_MIB=${SOAK_RSS_GROWTH_MIB:-16}
SAMPLE=10
RELOAD_EVERY=30
OUT=$ROOT/target/soak
rm -rf "$OUT"; mkdir -p "$OUT/metrics"

cargo build --release --quiet
FC=$ROOT/target/release/flowcast

WORK=$(mktemp -d)
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
PORT=$(free_port); HTTP=$(free_port); DEAD=$(free_port)
URL=nats://127.0.0.1:$PORT
NATS_PID=; SVC_PID=; PUB_PID=
cleanup() {
    for p in $PUB_PID $SVC_PID $NATS_PID; do kill "$p" 2> /dev/null || true; done
    rm -rf "$WORK"
    return 0
}
trap cleanup EXIT
nats-server -a 127.0.0.1 -p "$PORT" -js -sd "$WORK/js" > "$WORK/nats.log" 2>&1 &
NATS_PID=$!

# ------------------------------------------------------------------------- inputs
N=$(( RATE * SECONDS_TOTAL ))
mkdir -p "$WORK/models" "$WORK/state"
cp models/*.flow "$WORK/models/"
cp bench/flows/five_state.flow "$WORK/models/five_state.flow"
N_SIM_OBJ=$(( N * 8 / 10 / 4 + 100 ))
$FC simulate bench/flows/five_state.flow --objects "$N_SIM_OBJ" --seed 7 \
    --rate "$(( RATE * 8 / 10 / 4 ))" --mean-dwell 10s -o "$WORK/sim.jsonl" 2> /dev/null
python3 - "$WORK/sim.jsonl" "$WORK/soak.jsonl" "$N" <<'PY'
import json, re, sys, uuid, random
sim, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
nova = []
for path in ["examples/nova_instance_create/events.jsonl", "examples/nova_volume_attach/events.jsonl"]:
    for l in open(path):
        m = json.loads(l)
        if "oslo.message" in m:
            m = json.loads(m["oslo.message"])
        m.pop("timestamp", None)
        nova.append(json.dumps(m))
rnd = random.Random(11)
def nova_lines():
    while True:
        ids = {}
        fresh = lambda mo: ids.setdefault(mo.group(0), str(uuid.UUID(int=rnd.getrandbits(128), version=4)))
        for l in nova:
            yield UUID.sub(fresh, l)
nv = nova_lines()
ts = re.compile(r',"timestamp":"[^"]*"')
with open(sim) as s, open(out, "w") as f:
    for i in range(n):
        if i % 5 == 4:
            f.write(next(nv) + "\n")
        else:
            l = s.readline()
            f.write(ts.sub("", l) if l else next(nv) + "\n")
PY
rm -f "$WORK/sim.jsonl"
N=$(wc -l < "$WORK/soak.jsonl")

cat > "$WORK/flowcast.yaml" <<EOF
models: $WORK/models
state_dir: $WORK/state
snapshot_interval_ms: 5s
source: { kind: jetstream, stream: SOAK, subjects: ["soak.>"], consumer: flowcast }
nats: { url: "$URL" }
sinks:
  - { kind: nats }                # flowcast.alerts.<flow>: outside the source subjects
  - { kind: webhook, url: "http://127.0.0.1:$DEAD/never" }
http: { listen: "127.0.0.1:$HTTP" }
limits: { finished_bytes: 4194304 }
EOF

# ------------------------------------------------------------------------- the service
for _ in $(seq 100); do grep -q "Server is ready" "$WORK/nats.log" && break; sleep 0.1; done
$FC run --config "$WORK/flowcast.yaml" > /dev/null 2> "$OUT/service.log" &
SVC_PID=$!
for _ in $(seq 300); do curl -sf "127.0.0.1:$HTTP/readyz" > /dev/null && break; sleep 0.1; done
curl -sf "127.0.0.1:$HTTP/readyz" > /dev/null || { echo "the service did not become ready"; cat "$OUT/service.log"; exit 1; }

$FC publish "$WORK/soak.jsonl" --subject soak.notifications --url "$URL" --jetstream --rate "$RATE" 2> "$OUT/publish.log" &
PUB_PID=$!
echo "soak: $N messages at $RATE msgs/s for ${SECONDS_TOTAL} s; service pid $SVC_PID; samples every ${SAMPLE} s in $OUT"

# A real change on every reload (the alert threshold moves), a broken save at the 2nd reload,
# fixed at the 3rd.
flow_text() { # threshold
    sed "s/alert { threshold 0.5 }/alert { threshold $1 }/" bench/flows/five_state.flow
}
RELOADS=0
reload() {
    RELOADS=$(( RELOADS + 1 ))
    if [ "$RELOADS" = 2 ]; then
        flow_text 0.6 | sed 's/transitions {/transitions {{/' > "$WORK/models/five_state.flow"
    else
        flow_text "0.$(( 5 + RELOADS % 4 ))" > "$WORK/models/five_state.flow"
    fi
}
alive() { kill -0 "$SVC_PID" 2> /dev/null; }
messages() { awk '/^flowcast_messages_total/ { s += $2 } END { print s + 0 }' "$1"; }
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$SVC_PID/status"; }

START=$(date +%s)
NEXT=$START
DIED=0
while :; do
    NEXT=$(( NEXT + SAMPLE ))
    while [ "$(date +%s)" -lt "$NEXT" ]; do sleep 0.2; done
    T=$(( NEXT - START ))
    alive || { DIED=1; echo "soak: the service died at ${T} s"; break; }
    curl -sf -X POST "127.0.0.1:$HTTP/-/snapshot" > /dev/null || echo "soak: POST /-/snapshot failed at ${T} s"
    F=$(printf '%s/metrics/%05d.prom' "$OUT" "$T")
    curl -sf "127.0.0.1:$HTTP/metrics" > "$F" || { echo "soak: /metrics failed at ${T} s"; rm -f "$F"; }
    echo "# rss_kb $(rss_kb)" >> "$F"
    echo "# state_bytes $(du -sb --exclude=".*.tmp*" "$WORK/state" | cut -f1)" >> "$F"
    [ -f "$F" ] && echo "soak: ${T} s  rss $(( $(rss_kb) / 1024 )) MiB  messages $(messages "$F")"
    [ $(( T % RELOAD_EVERY )) = 0 ] && [ "$T" -lt "$SECONDS_TOTAL" ] && reload
    [ "$T" -ge "$SECONDS_TOTAL" ] && break
done

# The publisher should be done (it paces itself); then flowcast must count every message.
PUBLISHED=0
if [ "$DIED" = 0 ]; then
    wait "$PUB_PID" || echo "soak: the publisher failed: $(cat "$OUT/publish.log")"
    PUB_PID=
    PUBLISHED=$(grep -o 'published [0-9]*' "$OUT/publish.log" | awk '{ print $2 }')
    for _ in $(seq 600); do
        curl -sf "127.0.0.1:$HTTP/metrics" > "$OUT/final.prom" || true
        [ "$(messages "$OUT/final.prom")" -ge "${PUBLISHED:-0}" ] && break
        sleep 0.1
    done
    echo "# rss_kb $(rss_kb)" >> "$OUT/final.prom"
    kill -TERM "$SVC_PID"
    EXIT=0; wait "$SVC_PID" || EXIT=$?
    SVC_PID=
    [ "$EXIT" = 0 ] || { echo "soak: the service exited $EXIT on SIGTERM"; DIED=1; }
fi

python3 bench/soak_report.py "$OUT" "${PUBLISHED:-0}" "$GROWTH_MIB" "$DIED" "$SECONDS_TOTAL"

#!/usr/bin/env python3
"""Builds the example event streams in examples/ from the real data in ../shared/data/.

Deterministic (fixed seeds): running it again gives the same files byte for byte.
Usage, from the repository root:  python3 examples/generate.py

- patent_disk_attach/events.jsonl: the patent's FIG. 9-10 example as 100 API requests whose
  paths reproduce FIG. 10's counts exactly when learned (4 objects time out in F).
- nova_instance_create/events.jsonl: 100 builds made from nova's versioned notification samples
  (instance.update task_state walk, instance.create.start/.end/.error), fresh uuids and times,
  every other message wrapped in an oslo.messaging envelope as it travels on the bus.
- nova_volume_attach/events.jsonl: 100 volume attaches from the samples; 4 fail, 1 hangs.
- stacktach/events.jsonl: the 21 real production operations StackTach recorded, merged in time
  order (their timestamps are the recorded ones).
"""
import copy, datetime, json, os, random, uuid

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(ROOT, "..", "..", "shared", "data")
if not os.path.isdir(DATA):
    DATA = os.path.join(ROOT, "..", "..", "..", "shared", "data")

def ts(t):
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")

def uid(rng):
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))

def write(name, events):
    os.makedirs(os.path.join(ROOT, name), exist_ok=True)
    events.sort(key=lambda e: e[0])  # stable: equal times keep their order
    with open(os.path.join(ROOT, name, "events.jsonl"), "w") as f:
        for _, line in events:
            f.write(line + "\n")

def patent():
    rng = random.Random(9)
    t0 = datetime.datetime(2026, 11, 1, 9, 0, 0)
    # The 100 paths of FIG. 10.
    paths = [["5xx"]] + [["exception"]] * 2
    z = [["start", "x", "z", "complete"]] * 67
    y = ([["start", "x", "y", "error"]] * 3 + [["start", "x", "y", "complete"]] * 17
         + [["start", "x", "y", "f", "complete"]] * 6)
    timeouts = [["start", "x", "y", "f"]] * 4
    rest = paths + z + y
    rng.shuffle(rest)
    # The objects that time out in F start early, so that the stream runs past their 5 minutes.
    order = rest[:10] + timeouts + rest[10:]
    head = order[:14]
    rng.shuffle(head)
    order[:14] = head
    events = []
    for i, path in enumerate(order):
        rid = f"req-{i + 1:03d}"
        t = t0 + datetime.timedelta(seconds=20 * i + rng.uniform(0, 5))
        def emit(event_type, payload=None):
            p = {"request_id": rid}
            p.update(payload or {})
            events.append((t, json.dumps({"event_type": event_type, "timestamp": ts(t),
                                          "message_id": uid(rng), "payload": p})))
        emit("disk.attach.request")
        for step in path:
            t += datetime.timedelta(seconds=rng.uniform(60, 120) if step == "complete" and "f" in path else rng.uniform(1, 8))
            if step == "5xx":
                emit("disk.attach.response", {"status": 503})
            elif step == "exception":
                emit("disk.attach.exception", {"error": "ServerSideException"})
            else:
                emit({"start": "xyz.start", "x": "xyz.x", "y": "xyz.y", "z": "xyz.z", "f": "xyz.f",
                      "complete": "xyz.complete", "error": "xyz.error"}[step])
    # A final heartbeat-free tail: the last request ends 2000 s in, past every F timeout.
    write("patent_disk_attach", events)

def sample(name):
    with open(os.path.join(DATA, "nova", "samples", name + ".json")) as f:
        return json.load(f)

def bus(rng, msg, t, wrap):
    msg = dict(msg)
    msg["timestamp"] = ts(t)
    msg["message_id"] = uid(rng)
    if wrap:
        return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(msg)})
    return json.dumps(msg)

def nova_create():
    rng = random.Random(17)
    t0 = datetime.datetime(2026, 11, 2, 8, 0, 0)
    start, end, error, update = (sample("instance-create-start"), sample("instance-create-end"),
                                 sample("instance-create-error"), sample("instance-update"))
    fates = ["ok"] * 91 + ["error_spawning"] * 4 + ["error_start"] * 3 + ["stuck"] * 2
    rng.shuffle(fates)
    # Stuck builds start in the first hour, so the 2 h timeout falls inside the stream.
    for i in range(len(fates)):
        if fates[i] == "stuck" and i > 20:
            j = rng.randrange(0, 20)
            fates[i], fates[j] = fates[j], fates[i]
    events = []
    n = 0
    for i, fate in enumerate(fates):
        inst = uid(rng)
        req = "req-" + uid(rng)
        t = t0 + datetime.timedelta(seconds=150 * i + rng.uniform(0, 30))
        def emit(base, t, **fields):
            nonlocal n
            m = copy.deepcopy(base)
            d = m["payload"]["nova_object.data"]
            d["uuid"] = inst
            d["request_id"] = req
            for k, v in fields.items():
                d[k] = v
            if "state_update" in d:
                su = d["state_update"]["nova_object.data"]
                su["new_task_state"] = fields.get("task_state")
                su["state"] = fields.get("state", "building")
            events.append((t, bus(rng, m, t, wrap=n % 2 == 1)))
            n += 1
        emit(update, t, state="building", task_state="scheduling")
        t += datetime.timedelta(seconds=rng.uniform(1, 3))
        emit(update, t, state="building", task_state=None)
        t += datetime.timedelta(seconds=rng.uniform(0.1, 0.5))
        emit(start, t, state="building", task_state=None)
        if fate == "error_start":
            t += datetime.timedelta(seconds=rng.uniform(1, 4))
            emit(error, t, state="building", task_state=None)
            continue
        for task, lo, hi in [("networking", 0.5, 2), ("block_device_mapping", 2, 6), ("spawning", 1, 4)]:
            t += datetime.timedelta(seconds=rng.uniform(lo, hi))
            emit(update, t, state="building", task_state=task)
        if fate == "stuck":
            continue
        t += datetime.timedelta(seconds=rng.uniform(20, 90))
        if fate == "error_spawning":
            emit(error, t, state="building", task_state=None)
        else:
            emit(end, t, state="active", task_state=None, power_state="running")
    write("nova_instance_create", events)

def nova_attach():
    rng = random.Random(23)
    t0 = datetime.datetime(2026, 11, 3, 10, 0, 0)
    start, end, error = (sample("instance-volume_attach-start"), sample("instance-volume_attach-end"),
                         sample("instance-volume_attach-error"))
    exc = sample("compute-exception")
    fates = ["ok"] * 95 + ["error"] * 4 + ["hang"]
    rng.shuffle(fates)
    if fates.index("hang") > 60:
        j = fates.index("hang")
        fates[j], fates[30] = fates[30], fates[j]
    events = []
    for i, fate in enumerate(fates):
        inst, vol = uid(rng), uid(rng)
        t = t0 + datetime.timedelta(seconds=60 * i + rng.uniform(0, 20))
        def emit(base, t):
            m = copy.deepcopy(base)
            if "nova_object.data" in m["payload"]:
                d = m["payload"]["nova_object.data"]
                d["uuid"] = inst
                d["volume_id"] = vol
            events.append((t, bus(rng, m, t, wrap=False)))
        emit(start, t)
        if fate == "hang":
            continue
        t += datetime.timedelta(seconds=rng.uniform(2, 12) if fate == "ok" else rng.uniform(30, 60))
        if fate == "ok":
            emit(end, t)
        else:
            emit(error, t)
            emit(exc, t + datetime.timedelta(milliseconds=5))
    write("nova_volume_attach", events)

def stacktach():
    folder = os.path.join(DATA, "stacktach", "notigen")
    with open(os.path.join(folder, "SUMMARY.json")) as f:
        summary = json.load(f)
    events = []
    for op in summary:
        with open(os.path.join(folder, op["file"])) as f:
            for m in json.load(f):
                t = datetime.datetime.strptime(m["timestamp"] + (".000000" if "." not in m["timestamp"] else ""),
                                               "%Y-%m-%d %H:%M:%S.%f")
                events.append((t, json.dumps(m)))
    write("stacktach", events)

if __name__ == "__main__":
    patent()
    nova_create()
    nova_attach()
    stacktach()

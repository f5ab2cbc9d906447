#!/usr/bin/env python3
"""Latency of `flowcast lsp`: from sending an edit of a 1,000-line file to receiving its
diagnostics, and of a formatting request on it. Usage: lsp_latency.py FLOWCAST [EDITS]
Prints: lines, median and p95 and max of the diagnostics latency (ms), median formatting (ms)."""
import json, subprocess, sys, time, glob, statistics

fc = sys.argv[1]
edits = int(sys.argv[2]) if len(sys.argv) > 2 else 50

# A 1,000-line document: the bundled models repeated under distinct flow names.
models = [open(p).read() for p in sorted(glob.glob("models/*.flow"))]
parts, lines, i = [], 0, 0
while lines < 1000:
    m = models[i % len(models)]
    text = "\n".join(
        l.replace("flow ", f"flow f{i}_", 1) if l.startswith("flow ") else l
        for l in m.splitlines()
    ) + "\n"
    parts.append(text)
    lines += text.count("\n")
    i += 1
doc = "".join(parts)

p = subprocess.Popen([fc, "lsp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

def send(msg):
    body = json.dumps(msg).encode()
    p.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    p.stdin.flush()

def recv():
    length = 0
    while True:
        line = p.stdout.readline().strip()
        if not line:
            break
        if line.startswith(b"Content-Length:"):
            length = int(line.split(b":")[1])
    return json.loads(p.stdout.read(length))

def until(pred):
    while True:
        m = recv()
        if pred(m):
            return m

uri = "file:///bench/big.flow"
send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}})
until(lambda m: m.get("id") == 1)
send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
    "uri": uri, "languageId": "flowcast", "version": 1, "text": doc}}})
until(lambda m: m.get("method") == "textDocument/publishDiagnostics")

times = []
for v in range(edits):
    # Alternate a valid edit and one with an unknown state (a diagnostic to compute).
    text = doc if v % 2 else doc.replace("-> attached", "-> attachd", 1)
    t0 = time.perf_counter()
    send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
        "textDocument": {"uri": uri, "version": v + 2}, "contentChanges": [{"text": text}]}})
    until(lambda m: m.get("method") == "textDocument/publishDiagnostics")
    times.append((time.perf_counter() - t0) * 1000)

fmt = []
for k in range(10):
    t0 = time.perf_counter()
    send({"jsonrpc": "2.0", "id": 100 + k, "method": "textDocument/formatting",
          "params": {"textDocument": {"uri": uri}, "options": {}}})
    until(lambda m: m.get("id") == 100 + k)
    fmt.append((time.perf_counter() - t0) * 1000)

send({"jsonrpc": "2.0", "id": 999, "method": "shutdown", "params": None})
until(lambda m: m.get("id") == 999)
send({"jsonrpc": "2.0", "method": "exit", "params": None})
p.wait()
times.sort()
p95 = times[int(0.95 * (len(times) - 1))]
print(f"{doc.count(chr(10))} {statistics.median(times):.1f} {p95:.1f} {max(times):.1f} {statistics.median(fmt):.1f}")

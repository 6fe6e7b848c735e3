#!/usr/bin/env bash
# The revocation figures: introspection against profile (interleaved runs),
# the feed's bootstrap with 10,000 entries in force, and what 1,000 parked
# long polls cost. Loopback only; every load is bounded in time and count.
#
#   bench/revocation.sh [BINARY] [RESULTS_DIR]
#   RUNS=3 DURATION=8s bench/revocation.sh
set -euo pipefail
bin=${1:-target/release/latchkey} out=${2:-target/revocation-bench}
runs=${RUNS:-3} duration=${DURATION:-8s}
port=18194
mkdir -p "$out"; chmod 700 "$out"; rm -f "$out/results.jsonl" "$out"/*.redb "$out"/*.secret
head -c 32 /dev/urandom | base64 | tr -d '\n' >"$out/verifier.key"; chmod 600 "$out/verifier.key"
"$bin" bench --populate --data "$out/bench.redb" --users 1000 --log warn \
  --argon2-memory 64 --argon2-iterations 1 >/dev/null
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null || true' EXIT
start() {
  "$bin" serve --port $port --data "$out/bench.redb" --log warn --no-admin-socket \
    --argon2-memory 64 --argon2-iterations 1 --max-sessions-per-user 100000 \
    --verifier-key-file "$out/verifier.key" "$@" >>"$out/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.05; done
}
stop() { kill "$server"; wait "$server" 2>/dev/null || true; server=; }

echo "== introspect against profile (64 connections, $duration, $runs runs interleaved)"
for run in $(seq "$runs"); do
  for scenario in profile introspect; do
    start
    "$bin" bench --url "http://127.0.0.1:$port" --users 1000 --json --scenario "$scenario" \
      --connections 64 --duration "$duration" --verifier-key-file "$out/verifier.key" \
      | sed "s/^{/{\"run\":$run,/" | tee -a "$out/results.jsonl" \
      | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); t=r["total"]; print(r["scenario"], "run", r["run"], ":", round(t["rps"]), "req/s, p99", t["p99_ms"], "ms, non-2xx", r["non_2xx"])'
    stop
  done
done
python3 - "$out/results.jsonl" <<'PY'
import json, statistics, sys
by = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    by.setdefault(r["scenario"], []).append(r["total"]["rps"])
p, i = statistics.median(by["profile"]), statistics.median(by["introspect"])
print(f"profile median {p:.0f} req/s, introspect median {i:.0f} req/s: {100*i/p:.0f} %")
PY

echo "== the feed with 10,000 entries in force, and 1,000 parked long polls"
start
python3 - "$port" "$out/verifier.key" <<'PY'
import http.client, json, os, resource, socket, sys, time
port, key = int(sys.argv[1]), open(sys.argv[2]).read()
pid = int(os.popen(f"ss -ltnpH 'sport = :{port}'").read().split("pid=")[1].split(",")[0])
def rss_kib():
    return int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
def cpu_ticks():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
conn = http.client.HTTPConnection("127.0.0.1", port)
def call(method, path, body=None, auth=None):
    headers = {"content-type": "application/json"}
    if auth: headers["authorization"] = f"Bearer {auth}"
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    answer = conn.getresponse()
    return answer.status, answer.read()
started = time.time()
for n in range(10_000):
    status, body = call("POST", "/auth/login", {"email": f"user{n % 1000 + 1}@bench.invalid", "password": "bench-password"})
    assert status == 200, body
    status, _ = call("POST", "/oauth/revoke", {"token": json.loads(body)["refreshToken"]})
    assert status == 200
print(f"10,000 sessions logged in and revoked in {time.time() - started:.1f} s")
for attempt in range(3):
    started = time.time()
    status, body = call("GET", "/oauth/revocations", auth=key)
    took = time.time() - started
    page = json.loads(body)
    print(f"bootstrap: {len(page['revocations'])} entries, {len(body):,} bytes, {took*1000:.0f} ms")
cursor = page["cursor"]
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
rss_before, cpu_before = rss_kib(), cpu_ticks()
polls = []
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /oauth/revocations?after={cursor}&wait=60 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\r\n".encode())
    polls.append(s)
time.sleep(2)
rss_parked, cpu_parked = rss_kib(), cpu_ticks()
time.sleep(10)
cpu_idle = cpu_ticks() - cpu_parked
print(f"1,000 parked long polls: RSS {rss_before} KiB -> {rss_parked} KiB (+{(rss_parked - rss_before) / 1000:.1f} KiB each); "
      f"CPU while parked for 10 s: {cpu_idle * 10} ms")
conn = http.client.HTTPConnection("127.0.0.1", port)  # the idle one was closed
started = time.time()
status, _ = call("POST", "/oauth/revoke", {"token": json.loads(call("POST", "/auth/login", {"email": "user1@bench.invalid", "password": "bench-password"})[1])["refreshToken"]})
woke = 0
for s in polls:
    s.settimeout(5)
    if b"revocations" in s.recv(65536):
        woke += 1
print(f"one revocation woke {woke} of 1,000 long polls in {time.time() - started:.2f} s")
for s in polls:
    s.close()
PY

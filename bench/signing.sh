#!/usr/bin/env bash
# Durable refresh and profile throughput under each signing algorithm, in
# interleaved runs (HS256 EdDSA ES256 RS256, then again) so machine noise
# hits all alike, with each figure's ratio to HS256. Loopback only; every
# load is bounded in time. Run on a quiet machine, on a release build.
#
#   bench/signing.sh [BINARY] [RESULTS_DIR]
#   RUNS=3 DURATION=8s ALGS="HS256 EdDSA" SCENARIOS="refresh profile" bench/signing.sh
set -euo pipefail
bin=${1:-target/release/latchkey} out=${2:-target/signing-bench}
runs=${RUNS:-3} duration=${DURATION:-8s}
algs=${ALGS:-HS256 EdDSA ES256 RS256} scenarios=${SCENARIOS:-refresh profile}
port=18191
mkdir -p "$out"; chmod 700 "$out"; rm -f "$out/results.jsonl"
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null || true' EXIT
for run in $(seq "$runs"); do
  for scenario in $scenarios; do
    for alg in $algs; do
      db=$out/$alg.redb
      [ -f "$db" ] || "$bin" bench --populate --data "$db" --users 1000 --log warn >/dev/null
      "$bin" serve --port $port --data "$db" --log warn --no-admin-socket --signing-alg "$alg" >>"$out/server.log" 2>&1 &
      server=$!
      for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.05; done
      "$bin" bench --url "http://127.0.0.1:$port" --users 1000 --json --scenario "$scenario" \
        --connections 64 --duration "$duration" \
        | sed "s/^{/{\"alg\":\"$alg\",\"run\":$run,/" | tee -a "$out/results.jsonl" \
        | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); t=r["total"]; print(r["alg"], r["scenario"], "run", r["run"], ":", round(t["rps"]), "req/s, p99", t["p99_ms"], "ms, non-2xx", r["non_2xx"])' || true
      kill "$server"; wait "$server" 2>/dev/null || true; server=
    done
  done
done
python3 - "$out/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault((r["scenario"], r["alg"]), []).append(r["total"]["rps"])
print("\n| scenario | algorithm | req/s (runs) | median | vs HS256 |")
print("|---|---|---|---|---|")
for (scenario, alg), values in sorted(by.items(), key=lambda kv: (kv[0][0], ["HS256","EdDSA","ES256","RS256"].index(kv[0][1]))):
    base = statistics.median(by.get((scenario, "HS256"), values))
    median = statistics.median(values)
    runs = " / ".join(f"{v/1000:.1f}k" for v in values)
    print(f"| {scenario} | {alg} | {runs} | {median/1000:.1f}k | {100*median/base:.0f} % |")
PY

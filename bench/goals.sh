#!/usr/bin/env bash
# Measures the performance goals of issue 3 with `latchkey bench` (and, when
# ../shared/bench and wrk are present, with the shared wrk scripts), three runs
# each. Loopback only; every load is bounded in time. Run on a quiet machine,
# never next to a build or a test suite.
#
#   bench/goals.sh [RESULTS_DIR]        (default: target/goals)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/goals}
mkdir -p "$out"
cargo build --release --locked -q
bin=$PWD/target/release/latchkey
shared=$PWD/../shared/bench
runs=${RUNS:-3}
duration=${DURATION:-10s}
port=18180
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start_server() { # DB [flags…] → sets $server
  local db=$1; shift
  "$bin" serve --port $port --data "$db" --log warn "$@" >>"$out/server.log" 2>&1 &
  server=$!; pids+=("$server")
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && return; sleep 0.05; done
  echo "server did not start" >&2; exit 1
}
stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; }
bench() { # LABEL [bench flags…]: one JSON line per run into results.jsonl
  local label=$1; shift
  "$bin" bench --url "http://127.0.0.1:$port" --users 1000 --json "$@" | sed "s/^{/{\"label\":\"$label\",/" | tee -a "$out/results.jsonl" || true
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

rm -f "$out/results.jsonl" "$out/wrk.jsonl"
small=$out/small.redb big=$out/big.redb
rm -f "$small" "$out/small.secret"
"$bin" bench --populate --data "$small" --users 1000 --log warn

for grace in 10s 0; do
  start_server "$small" --reuse-grace $grace
  for _ in $(seq $runs); do bench "refresh-grace-$grace" --scenario refresh --connections 64 --duration "$duration"; done
  stop_server
done

start_server "$small"
for _ in $(seq $runs); do bench profile --scenario profile --connections 64 --duration "$duration"; done
for _ in $(seq $runs); do bench login --scenario login --connections 8 --duration "$duration"; done
# Refresh while 32 connections hammer login.
for _ in $(seq $runs); do
  "$bin" bench --url "http://127.0.0.1:$port" --users 1000 --json --scenario login --connections 32 --duration 14s >/dev/null &
  flood=$!
  sleep 2
  bench refresh-under-login-flood --scenario refresh --connections 64 --duration "$duration"
  wait $flood || true
done
sleep 12 # hashing buffers are released after 10 s idle
echo "{\"label\":\"rss-idle-kib\",\"value\":$(rss_kib "$server")}" | tee -a "$out/results.jsonl"
"$bin" bench --url "http://127.0.0.1:$port" --users 1000 --json --scenario refresh --connections 64 --duration "$duration" >/dev/null &
load=$!
peak=0
while kill -0 $load 2>/dev/null; do r=$(rss_kib "$server"); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.2; done
echo "{\"label\":\"rss-refresh-load-kib\",\"value\":$peak}" | tee -a "$out/results.jsonl"
stop_server

if [ ! -f "$big" ]; then
  "$bin" bench --populate --data "$big" --users 1000000 --sessions 5000000 --log warn
fi
start_server "$big"
for _ in $(seq $runs); do bench big-refresh --scenario refresh --connections 64 --duration "$duration"; done
for _ in $(seq $runs); do bench big-profile --scenario profile --connections 64 --duration "$duration"; done
for _ in $(seq $runs); do
  "$bin" bench --url "http://127.0.0.1:$port" --users 1000 --json --scenario refresh --connections 64 --duration 5s >/dev/null 2>&1 &
  sleep 2; kill -9 "$server"; wait "$server" 2>/dev/null || true; sleep 4
  t0=$(date +%s.%N); start_server "$big"; t1=$(date +%s.%N)
  echo "{\"label\":\"big-start-after-kill9-s\",\"value\":$(printf "%.3f" "$(echo "$t1 - $t0" | bc)")}" | tee -a "$out/results.jsonl"
done
stop_server

if command -v wrk >/dev/null && [ -d "$shared" ]; then
  start_server "$small" --seed-user "ana@example.com:2:Ana:the-password"
  for kind in refresh profile; do
    for _ in $(seq $runs); do
      "$shared/mint_tokens.sh" -u "http://127.0.0.1:$port/auth/login" -n 64 -o "$out/rt.txt" --access-out "$out/at.txt" \
        -U ana@example.com -p the-password --user-field email --token-field refreshToken --access-field accessToken >/dev/null
      if [ $kind = refresh ]; then
        args=(-s "$shared/refresh_chain.lua" "http://127.0.0.1:$port" -- tokens="$out/rt.txt" in=refreshToken out=refreshToken)
      else
        args=(-s "$shared/profile.lua" "http://127.0.0.1:$port" -- tokens="$out/at.txt")
      fi
      python3 "$shared/wrkrun.py" --server-pid "$server" --label "wrk-$kind" --out "$out/wrk.jsonl" -- \
        -t2 -c64 -d"$duration" --latency "${args[@]}"
    done
  done
  for _ in $(seq $runs); do
    python3 "$shared/wrkrun.py" --server-pid "$server" --label wrk-login --out "$out/wrk.jsonl" -- \
      -t2 -c8 -d"$duration" --timeout 10s --latency -s "$shared/login.lua" "http://127.0.0.1:$port" -- \
      ufield=email user=ana@example.com password=the-password
  done
  stop_server
fi
python3 - "$out/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r)
for label, rs in by.items():
    if "value" in rs[0]:
        print(f"{label:28} median {statistics.median(r['value'] for r in rs)}  runs {[r['value'] for r in rs]}")
        continue
    ep = "refresh" if "refresh" in label else rs[0]["scenario"]
    rps = [r["by_endpoint"][ep]["rps"] for r in rs]
    p99 = [r["by_endpoint"][ep]["p99_ms"] for r in rs]
    errs = sum(sum(r["non_2xx"].values()) + r["transport_errors"] for r in rs)
    print(f"{label:28} median {statistics.median(rps):>8.0f} req/s  p99 {statistics.median(p99):6.2f} ms  runs {rps}  errors {errs}")
PY

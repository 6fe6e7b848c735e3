#!/usr/bin/env bash
# Compares two latchkey binaries on the refresh, profile and login figures,
# in interleaved runs (A B A B …) so machine noise hits both alike. Loopback
# only; every load is bounded in time. Run on a quiet machine.
#
#   bench/compare.sh OLD_BINARY NEW_BINARY [RESULTS_DIR]
#   RUNS=3 DURATION=8s SCENARIOS="refresh profile login" bench/compare.sh …
#   NEW_FLAGS="--metrics-bind 127.0.0.1:0" bench/compare.sh BIN BIN   (one binary, two settings)
set -euo pipefail
old=$1 new=$2 out=${3:-target/compare}
runs=${RUNS:-3} duration=${DURATION:-8s} scenarios=${SCENARIOS:-refresh profile login}
port=18190
mkdir -p "$out"; chmod 700 "$out"; rm -f "$out/results.jsonl"
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null || true' EXIT
for scenario in $scenarios; do
  connections=64; [ "$scenario" = login ] && connections=8
  for run in $(seq "$runs"); do
    for side in old new; do
      bin=${!side}
      flags_var=${side^^}_FLAGS
      flags=${!flags_var:-}
      db=$out/$side.redb
      [ -f "$db" ] || "$bin" bench --populate --data "$db" --users 1000 --log warn >/dev/null
      # shellcheck disable=SC2086 # flags are words on purpose
      "$bin" serve --port $port --data "$db" --log warn $flags >>"$out/server.log" 2>&1 &
      server=$!
      for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.05; done
      "$bin" bench --url "http://127.0.0.1:$port" --users 1000 --json --scenario "$scenario" \
        --connections $connections --duration "$duration" \
        | sed "s/^{/{\"side\":\"$side\",\"run\":$run,/" | tee -a "$out/results.jsonl" \
        | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); t=r["total"]; print(r["side"], r["scenario"], "run", r["run"], ":", round(t["rps"]), "req/s, p99", t["p99_ms"], "ms, non-2xx", r["non_2xx"])' || true
      kill "$server"; wait "$server" 2>/dev/null || true; server=
    done
  done
done

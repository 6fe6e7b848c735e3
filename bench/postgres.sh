#!/usr/bin/env bash
# Durable refresh on the PostgreSQL store against what pgbench does on the
# same server in the same run: `pgbench -N -c 16 -j 2` (its simple-update
# transaction), then latchkey refresh at 64 connections with one instance,
# then with two instances (one load generator, 64 connections spread over both).
# Loopback only; every load is bounded in time. Needs .ci/postgres (or
# PGURL=postgres://… of a database this script may fill).
#
#   bench/postgres.sh [BINARY] [RESULTS_DIR]      RUNS=3 DURATION=8s
set -euo pipefail
bin=${1:-target/release/latchkey} out=${2:-target/postgres-bench}
runs=${RUNS:-3} duration=${DURATION:-8s} seconds=${duration%s}
url=${PGURL:-$(.ci/postgres)}
mkdir -p "$out"; chmod 700 "$out"
secret="$out/secret"; head -c 32 /dev/urandom | base64 >"$secret"; chmod 600 "$secret"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
psql "$url" -qc "DROP SCHEMA IF EXISTS bench CASCADE; CREATE SCHEMA bench" >/dev/null
scoped="$url?options=-csearch_path%3Dbench"
pgbench -i -q -s 10 "$url" >/dev/null 2>&1
# The bench users, hashed cheaply, through a redb file and `store copy`.
rm -f "$out/seed.redb"
"$bin" bench --populate --data "$out/seed.redb" --users 1000 --log warn --argon2-memory 64 --argon2-iterations 1 >/dev/null
"$bin" store copy --from "$out/seed.redb" --to "$scoped" --log warn >/dev/null
serve() {  # PORT POOL
  "$bin" serve --port "$1" --database-pool "$2" --data "$out/data-$1/latchkey.redb" --database "$scoped" --secret-file "$secret" \
    --log warn --no-admin-socket --argon2-memory 64 --argon2-iterations 1 --max-sessions-per-user 100000 \
    >>"$out/server.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$1/healthz" && break; sleep 0.05; done
}
# One instance with the default pool of 16; the pair with 8 each, so the
# database serves as many connections in both cases.
pool_two=${POOL_TWO:-8}
serve 18195 16; serve 18196 "$pool_two"; serve 18197 "$pool_two"
rps() { python3 -c 'import json,sys; print(round(json.load(sys.stdin)["total"]["rps"]))'; }
for run in $(seq "$runs"); do
  tps=$(pgbench -N -c 16 -j 2 -T "$seconds" "$url" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
  one=$("$bin" bench --url http://127.0.0.1:18195 --users 1000 --json --scenario refresh --connections 64 --duration "$duration" | rps)
  # One load generator in both cases (64 connections, here spread over
  # both instances in turn), so only the number of latchkey processes differs.
  two=$("$bin" bench --url http://127.0.0.1:18196 --url http://127.0.0.1:18197 --users 1000 --json --scenario refresh --connections 64 --duration "$duration" | rps)
  echo "run $run: pgbench -N ${tps%.*} tps; refresh, one instance $one req/s ($(( 100 * one / ${tps%.*} )) % of pgbench); two instances $two req/s ($(( 100 * two / one )) % of one)"
done

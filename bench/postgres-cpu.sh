#!/usr/bin/env bash
# Where the CPU goes during a durable refresh load on one instance with the
# PostgreSQL store: cores used by PostgreSQL (all its processes), latchkey
# and the load generator over 4 s in the middle of an 8 s run, and how many
# commits share a WAL flush. Loopback only; bounded in time. Needs
# .ci/postgres (or PGURL=postgres://… of a database this script may fill).
#
#   bench/postgres-cpu.sh [BINARY] [RESULTS_DIR]
set -euo pipefail
bin=${1:-target/release/latchkey} out=${2:-target/postgres-cpu}
url=${PGURL:-$(.ci/postgres)}
port=18199
mkdir -p "$out"; chmod 700 "$out"; rm -rf "$out/data" "$out/seed.redb"
head -c 32 /dev/urandom | base64 >"$out/secret"; chmod 600 "$out/secret"
psql "$url" -qc "DROP SCHEMA IF EXISTS cpu_bench CASCADE; CREATE SCHEMA cpu_bench" >/dev/null 2>&1
scoped="$url?options=-csearch_path%3Dcpu_bench"
"$bin" bench --populate --data "$out/seed.redb" --users 1000 --log warn --argon2-memory 64 --argon2-iterations 1 >/dev/null
"$bin" store copy --from "$out/seed.redb" --to "$scoped" --log warn >/dev/null
"$bin" serve --port $port --data "$out/data/latchkey.redb" --database "$scoped" --secret-file "$out/secret" \
  --log warn --no-admin-socket --argon2-memory 64 --argon2-iterations 1 --max-sessions-per-user 100000 \
  >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.05; done
ticks() { local t=0; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
wal() { psql "$url" -tAc "SELECT wal_sync || ' ' || (SELECT sum(xact_commit) FROM pg_stat_database)::BIGINT FROM pg_stat_wal"; }
"$bin" bench --url "http://127.0.0.1:$port" --users 1000 --json --scenario refresh --connections 64 --duration 8s >"$out/bench.json" &
load=$!
sleep 2
read -r s0 c0 < <(wal)
p0=$(ticks $(pgrep -u postgres)); l0=$(ticks $server); g0=$(ticks $load); t0=$(date +%s.%N)
sleep 4
p1=$(ticks $(pgrep -u postgres)); l1=$(ticks $server); g1=$(ticks $load); t1=$(date +%s.%N)
read -r s1 c1 < <(wal)
wait $load
python3 - "$out/bench.json" "$(getconf CLK_TCK)" "$t0" "$t1" "$p0" "$p1" "$l0" "$l1" "$g0" "$g1" "$s0" "$s1" "$c0" "$c1" <<'PY'
import json, sys
bench, hz = sys.argv[1], int(sys.argv[2])
t0, t1 = float(sys.argv[3]), float(sys.argv[4])
p0, p1, l0, l1, g0, g1, s0, s1, c0, c1 = map(int, sys.argv[5:15])
secs = t1 - t0
rps = json.load(open(bench))["total"]["rps"]
cores = lambda a, b: (b - a) / hz / secs
print(f"refresh {rps:.0f} req/s; cores: PostgreSQL {cores(p0, p1):.2f}, latchkey {cores(l0, l1):.2f}, "
      f"load generator {cores(g0, g1):.2f}; WAL flushes {(s1 - s0) / secs:.0f}/s, "
      f"transactions {(c1 - c0) / secs:.0f}/s (reads included)")
PY

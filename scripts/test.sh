#!/usr/bin/env bash
# Runs the whole test suite against a real PostgreSQL.
#
# Finds a server in this order: $DATABASE_URL; the local default
# postgres://postgres@127.0.0.1:5432/postgres; otherwise starts a throwaway
# cluster from the local PostgreSQL binaries (installing Debian's `postgresql`
# package if they are missing) and stops it on exit. Installs Debian's
# `pgbouncer` and `nats-server` packages when missing (the pooler and relay
# tests start their own).
#
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -- --nocapture`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/pg.sh
source scripts/pg.sh
c3_find_or_start_postgres
c3_ensure_pgbouncer
c3_ensure_nats_server
echo "scripts/test.sh: using DATABASE_URL=$DATABASE_URL"
log=$(mktemp)
trap 'c3_stop_postgres; rm -f "$log"' EXIT
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Every "a later statement sees what committed meanwhile" step needs READ
# COMMITTED: the fence and warm-reconnect tests again, with the nodes'
# sessions defaulting to REPEATABLE READ (a database or role setting some
# teams use); c3 must say READ COMMITTED itself.
if [ "$status" -eq 0 ]; then
    C3_TEST_ISOLATION="repeatable read" cargo test -p c3-cache --test fenced_fills \
        --test warm_reconnect --test l2_never_goes_back "$@" 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
fi
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

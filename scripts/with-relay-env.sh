#!/usr/bin/env bash
# Runs a command in a relay-mode environment of its own: a throwaway
# PostgreSQL with wal_level = logical and a nats-server, each on a free port
# (installing Debian's `postgresql` and `nats-server` packages when missing),
# stopped and removed when the command ends. The command sees
#   DATABASE_URL, C3_RELAY_DATABASE_URL  the logical cluster
#   C3_NATS_URL                          the NATS server
#   C3_TRANSPORT=relay
#
#   scripts/with-relay-env.sh cargo run --features relay --example relay_fleet
#   scripts/with-relay-env.sh cargo run -p c3-bench --release -- --only relay
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/pg.sh
source scripts/pg.sh
[ "$#" -gt 0 ] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
trap 'c3_stop_nats; c3_stop_logical' EXIT
c3_start_logical_postgres
c3_start_nats
export DATABASE_URL="$C3_LOGICAL_DATABASE_URL" C3_RELAY_DATABASE_URL="$C3_LOGICAL_DATABASE_URL" C3_TRANSPORT=relay
"$@"

#!/usr/bin/env bash
# Sourced by scripts/*.sh: c3_find_or_start_postgres exports a working DATABASE_URL.

c3_pg_reachable() {
  # Uses psql when present; otherwise a bare TCP check of host:port.
  local url="$1"
  if command -v psql >/dev/null 2>&1; then
    PGCONNECT_TIMEOUT=3 psql "$url" -Atqc 'select 1' >/dev/null 2>&1
  else
    local hostport="${url#*@}"; hostport="${hostport%%/*}"
    timeout 3 bash -c "exec 3<>/dev/tcp/${hostport%:*}/${hostport##*:}" 2>/dev/null
  fi
}

c3_pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

c3_start_cluster() {
  # initdb and start a throwaway cluster on port $1 with the extra server
  # options $2 (installing Debian's postgresql package when no binaries are
  # found; initdb refuses to run as root, so the cluster then belongs to the
  # postgres user). Sets C3_CLUSTER_DIR and C3_CLUSTER_STOP (the stop command).
  local port="$1" options="$2" bindir dir
  if ! bindir=$(c3_pg_bindir); then
    echo "No PostgreSQL binaries found; installing Debian's postgresql package" >&2
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bindir=$(c3_pg_bindir) || { echo "could not install PostgreSQL" >&2; return 1; }
  fi
  dir=$(mktemp -d /tmp/c3-pg.XXXXXX)
  local as=()
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home "$dir" postgres
    chown postgres "$dir"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
  "${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 $options" start >/dev/null
  C3_CLUSTER_STOP=("${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -m fast stop)
  C3_CLUSTER_DIR="$dir"
}

c3_find_or_start_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then
    if c3_pg_reachable "$DATABASE_URL"; then export DATABASE_URL; return 0; fi
    echo "DATABASE_URL=$DATABASE_URL is not reachable; looking for another server" >&2
  fi
  local default="postgres://postgres@127.0.0.1:5432/postgres"
  if c3_pg_reachable "$default"; then export DATABASE_URL="$default"; return 0; fi

  local port=${C3_TEST_PG_PORT:-54329}
  c3_start_cluster "$port" "-c max_connections=300" || return 1
  C3_PG_STOP=("${C3_CLUSTER_STOP[@]}")
  C3_PG_DIR="$C3_CLUSTER_DIR"
  trap 'c3_stop_postgres' EXIT
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "started a throwaway PostgreSQL in $C3_PG_DIR on port $port" >&2
}

c3_stop_postgres() {
  if [ -n "${C3_PG_STOP:-}" ]; then "${C3_PG_STOP[@]}" >/dev/null 2>&1 || true; fi
  if [ -n "${C3_PG_DIR:-}" ]; then rm -rf "$C3_PG_DIR"; fi
}

c3_ensure_pgbouncer() {
  # The pooler tests start their own PgBouncer (transaction mode) on a free
  # port; they need the binary, installed here like PostgreSQL is.
  if [ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1; then return 0; fi
  echo "No pgbouncer found; installing Debian's pgbouncer package" >&2
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null \
    || { echo "could not install pgbouncer" >&2; return 1; }
}

c3_ensure_nats_server() {
  # The relay tests and the relay example start their own nats-server on a
  # free port; they need the binary (Debian's package; JetStream is not used).
  if [ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1; then return 0; fi
  echo "No nats-server found; installing Debian's nats-server package" >&2
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null \
    || { echo "could not install nats-server" >&2; return 1; }
}

c3_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

c3_start_logical_postgres() {
  # A throwaway cluster with wal_level = logical (the relay's slot) on a free
  # port: the server on 5432 usually runs `replica`, and changing that needs
  # a restart. Exports C3_LOGICAL_DATABASE_URL; stopped by c3_stop_logical.
  local port
  port=$(c3_free_port)
  c3_start_cluster "$port" "-c max_connections=400 -c wal_level=logical \
    -c max_replication_slots=16 -c max_wal_senders=16 -c wal_sender_timeout=10s" || return 1
  C3_LOGICAL_STOP=("${C3_CLUSTER_STOP[@]}")
  C3_LOGICAL_DIR="$C3_CLUSTER_DIR"
  export C3_LOGICAL_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "started a throwaway PostgreSQL (wal_level = logical) in $C3_LOGICAL_DIR on port $port" >&2
}

c3_stop_logical() {
  if [ -n "${C3_LOGICAL_STOP:-}" ]; then "${C3_LOGICAL_STOP[@]}" >/dev/null 2>&1 || true; fi
  if [ -n "${C3_LOGICAL_DIR:-}" ]; then rm -rf "$C3_LOGICAL_DIR"; fi
}

c3_start_nats() {
  # A nats-server of our own on a free port. Exports C3_NATS_URL.
  c3_ensure_nats_server || return 1
  local bin port
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  port=$(c3_free_port)
  "$bin" -a 127.0.0.1 -p "$port" >/dev/null 2>&1 &
  C3_NATS_PID=$!
  local i
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
  done
  export C3_NATS_URL="nats://127.0.0.1:$port"
  echo "started nats-server on port $port" >&2
}

c3_stop_nats() {
  if [ -n "${C3_NATS_PID:-}" ]; then kill "$C3_NATS_PID" 2>/dev/null || true; wait "$C3_NATS_PID" 2>/dev/null || true; fi
}

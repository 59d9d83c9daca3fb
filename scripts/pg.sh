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

c3_find_or_start_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then
    if c3_pg_reachable "$DATABASE_URL"; then export DATABASE_URL; return 0; fi
    echo "DATABASE_URL=$DATABASE_URL is not reachable; looking for another server" >&2
  fi
  local default="postgres://postgres@127.0.0.1:5432/postgres"
  if c3_pg_reachable "$default"; then export DATABASE_URL="$default"; return 0; fi

  local bindir
  if ! bindir=$(c3_pg_bindir); then
    echo "No PostgreSQL binaries found; installing Debian's postgresql package" >&2
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bindir=$(c3_pg_bindir) || { echo "could not install PostgreSQL" >&2; return 1; }
  fi
  local port=${C3_TEST_PG_PORT:-54329}
  local dir
  dir=$(mktemp -d /tmp/c3-pg.XXXXXX)
  # initdb refuses to run as root, so the cluster belongs to the postgres user.
  local as=()
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home "$dir" postgres
    chown postgres "$dir"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
  "${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
  C3_PG_STOP=("${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -m fast stop)
  C3_PG_DIR="$dir"
  trap 'c3_stop_postgres' EXIT
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "started a throwaway PostgreSQL in $dir on port $port" >&2
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

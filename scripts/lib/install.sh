# Installing what Foldline runs on, once per machine (idempotent, cached under $TOOLS): Debian
# packages, the hash-pinned Python tools, and crates.io builds of the S3 server, the DynamoDB
# API and the patched broker; and building Foldline's own release binaries. Nothing here
# starts a process. Source it; it defines functions only.

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

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

# Every binary of the workspace, release: scripts/up, every bench and the upgrade drill build
# this one set, so none of them re-compiles what another built.
build_release() {
  log "building Foldline (release, every binary of the workspace)"
  (cd "$REPO" && cargo build -q --release --workspace --bins)
}

install_all() {
  install_system_packages
  install_python_env
  install_s3s
  install_dynamodb
  install_broker
}

# The settings and helpers every script shares. Source it; it defines variables and functions.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Builds of third-party servers are cached under a stable path, outside the clone.
TOOLS="${FOLDLINE_TOOLS:-$HOME/.cache/foldline/tools}"
S3_ACCESS_KEY="${FOLDLINE_S3_ACCESS_KEY:-foldline}"
S3_SECRET_KEY="${FOLDLINE_S3_SECRET_KEY:-foldline-secret}"

log() { printf '\033[1m[foldline]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[foldline] error:\033[0m %s\n' "$*" >&2; exit 1; }

# timed NAME -- command...: runs it and logs how long it took (scripts/up's step times).
timed() {
  local name="$1" started=$SECONDS; shift 2
  "$@"
  log "$name: $((SECONDS - started)) s"
}

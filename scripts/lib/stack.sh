# Shared by scripts/up, scripts/down, scripts/test and the benches: installing
# (scripts/lib/install.sh) and running (scripts/lib/run.sh). Source it; it defines functions only.

source "$(dirname "${BASH_SOURCE[0]}")/install.sh"
source "$(dirname "${BASH_SOURCE[0]}")/run.sh"

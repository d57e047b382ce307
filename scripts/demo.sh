#!/usr/bin/env bash
# The main demo: boot a real Linux guest on our devices (see demo/guest.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_tools.sh
exec "$DENO" run --allow-all demo/guest.ts

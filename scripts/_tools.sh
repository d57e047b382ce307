# Sourced by the scripts: locate deno and bun from node_modules, repairing a
# binary that npm's skipped install script left missing.
DENO="$PWD/node_modules/.bin/deno"
BUN="$PWD/node_modules/.bin/bun"
if ! "$DENO" --version >/dev/null 2>&1; then
  (cd node_modules/deno && node ./install.cjs) >&2
fi
if ! "$BUN" --version >/dev/null 2>&1; then
  (cd node_modules/bun && node ./install.js) >&2
fi
export DENO BUN

# Test folders that run under Bun as well (the real-guest tests run under Deno only).
bun_test_dirs() {
  local d
  for d in tests/*/; do
    case "$d" in
      tests/guest/ | tests/e2e/) ;;
      *) printf './%s ' "${d%/}" ;;
    esac
  done
}

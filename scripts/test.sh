#!/usr/bin/env bash
# The whole test suite: static checks, unit tests under Deno and Bun, the real-guest tests
# (QEMU TCG + vhost-user), and the KVM tests (on /dev/kvm, or in a nested-KVM guest without it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_tools.sh

echo "== deno check / lint / fmt / doc"
"$DENO" check mod.ts sys/mod.ts vhost_user/ kvm/ testing/ launcher/ tests/ bench/ demo/ fuzz/
"$DENO" lint
"$DENO" fmt --check
# Every entry point of deno.json's "exports" (the published surface), linted together.
"$DENO" doc --lint $(sed -n '/"exports"/,/}/s/.*: *"\(\.\/[^"]*\.ts\)".*/\1/p' deno.json)

echo "== deno publish --dry-run"
"$DENO" publish --dry-run --allow-dirty 2>&1 | tail -n 3

echo "== unit tests (bun)"
"$BUN" test --timeout 60000 $(bun_test_dirs)

echo "== all tests but the KVM ones (deno; includes the real-guest tests and every runnable doc example)"
# --doc runs the @example blocks of the product modules (those not marked `ignore`).
"$DENO" test --allow-all --doc $(deno_test_dirs) $(git ls-files '*.ts' | grep -Ev '^(tests|bench|demo|fuzz)/')

reason="$(kvm_tests_impossible)"
if [[ -n "$reason" ]]; then
  echo "== KVM tests not run: $reason"
else
  echo "== KVM tests (deno and bun; $(hardware_kvm && echo "on /dev/kvm" || echo "in a nested-KVM guest"))"
  start=$SECONDS
  run_kvm_tests
  echo "== KVM tests passed in $((SECONDS - start)) s"
fi

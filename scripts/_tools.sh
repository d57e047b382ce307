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

# Test folders that run under Bun as well (the real-guest tests run under Deno only). The KVM
# tests are left out: run_kvm_tests runs them, under both.
bun_test_dirs() {
  local d
  for d in tests/*/; do
    case "$d" in
      tests/guest/ | tests/e2e/ | tests/kvm/) ;;
      *) printf './%s ' "${d%/}" ;;
    esac
  done
}

# Test folders for Deno on the host: all but the KVM tests.
deno_test_dirs() {
  local d
  for d in tests/*/; do
    [[ "$d" == tests/kvm/ ]] || printf '%s ' "$d"
  done
}

# Whether /dev/kvm here is usable and hardware-assisted (VT-x or AMD-V). A /dev/kvm without
# either CPU flag is a software KVM such as PVM (kvm_pvm, on Firecracker hosts): stock kernels
# stop there with a KVM internal error, so the KVM tests run in the nested guest instead
# (sys/runtime.ts, kvmUnavailableReason, is the same test for the library).
hardware_kvm() {
  [[ -r /dev/kvm && -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo
}

# Why the KVM tests cannot run on this machine at all (prints nothing when they can: on
# /dev/kvm, or inside the nested-KVM guest of scripts/kvm-guest.sh).
kvm_tests_impossible() {
  hardware_kvm && return 0
  if [[ "$(uname -m)" != x86_64 ]]; then
    echo "no /dev/kvm, and QEMU emulates SVM (nested KVM) on x86-64 hosts only"
  elif ! command -v qemu-system-x86_64 >/dev/null && ! command -v apt-get >/dev/null; then
    echo "no /dev/kvm, and neither qemu-system-x86_64 nor apt-get to install it"
  fi
}

# The KVM tests (tests/kvm/) under Deno and Bun: directly where /dev/kvm is usable, else inside a
# nested-KVM guest (QEMU TCG emulating AMD SVM; scripts/kvm-guest.sh). There, type-checking is
# skipped (deno check has covered tests/kvm/ on the host, and in the emulator it costs minutes).
run_kvm_tests() {
  if hardware_kvm; then
    "$DENO" test --allow-all tests/kvm/ && "$BUN" test --timeout 600000 ./tests/kvm
    return
  fi
  # The guest image the e2e boots, built on the host and copied into a folder of this run: the
  # host's build lock does not reach into the nested guest, so a rebuild of the shared cache
  # (by another checkout) must not happen under its feet.
  local cache="${VT_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtio-ts/guest}"
  local snap
  bash launcher/guest/build.sh >/dev/null
  snap="$(mktemp -d "$(dirname "$cache")/nested-guest.XXXXXX")"
  flock "$cache/.lock" cp -f "$cache"/{vmlinuz,initramfs.cpio.gz,stamp,kernel-package} "$snap/"
  # A no-op unless the copy is from other inputs (then it rebuilds there, on the host).
  VT_GUEST_CACHE="$snap" bash launcher/guest/build.sh >/dev/null
  local rc=0
  nested_kvm_run "$snap" deno || rc=$?
  ((rc != 0)) || nested_kvm_run "$snap" bun || rc=$?
  rm -rf "$snap"
  return "$rc"
}

# One runtime's KVM tests in a nested-KVM guest (its own boot, its own time limit). Emulated
# SMP is not always faithful: about one nested boot in twenty of a 4-vCPU guest on 2 emulated
# CPUs has reset before init, and once the nested guest itself stopped making progress until
# its time limit. So a run that fails is run once more, in a fresh nested guest, for the test
# files that failed (all of them after a time-out), and the retry is announced; a failure
# that repeats fails the stage. Directly on /dev/kvm nothing is retried.
nested_kvm_run() {
  local snap="$1" runtime="$2" log rc=0 files
  log="$(mktemp)"
  nested_kvm_files "$snap" "$runtime" tests/kvm/ 2>&1 | tee "$log"
  rc="${PIPESTATUS[0]}"
  if ((rc != 0)); then
    if [[ "$runtime" == deno ]]; then
      files="$(grep -o '=> \./tests/kvm/[A-Za-z0-9_]*\.ts' "$log" | sed 's/^=> //' | sort -u)"
    else
      # Bun repeats the failures in its summary, under the last file's name: a failing test
      # counts for the first file it appeared under.
      files="$(awk '/^\.?\/?tests\/kvm\/[A-Za-z0-9_]*\.ts:$/ { f = $0; sub(/:$/, "", f) }
        /^\(fail\)/ && f != "" { n = $0; sub(/ \[[0-9.]+m?s\]$/, "", n); if (!(n in seen)) { seen[n] = 1; print "./" f } }' \
        "$log" | sed 's#^\./\./#./#' | sort -u)"
    fi
    [[ -n "$files" ]] || files="tests/kvm/"
    echo "== RETRY: the nested $runtime run ended with status $rc; running once more:" $files
    rc=0
    # shellcheck disable=SC2086 # one word per file
    nested_kvm_files "$snap" "$runtime" $files || rc=$?
  fi
  rm -f "$log"
  return "$rc"
}

nested_kvm_files() {
  local snap="$1" runtime="$2"
  shift 2
  local cmd
  if [[ "$runtime" == deno ]]; then
    cmd="$(printf %q "$DENO") test --no-check --allow-all $*"
  else
    cmd="$(printf %q "$BUN") test --timeout 600000 $*"
  fi
  VT_NESTED_TIMEOUT="${VT_NESTED_TIMEOUT:-1200}" VT_GUEST_CACHE="$snap" \
    bash scripts/kvm-guest.sh bash -c "$cmd"
}

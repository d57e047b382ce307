#!/usr/bin/env bash
# Runs a command where /dev/kvm exists, on a host that has none: boots Debian's generic kernel
# under QEMU TCG with `-cpu max` (AMD SVM with nested paging is emulated), loads kvm_amd there,
# and runs the command in the host's own files (/ read-only under a tmpfs overlay; the project
# folder and the virtio-ts cache read-write at their host paths). The image is built and cached
# by launcher/nested/build.sh.
#
# usage: scripts/kvm-guest.sh COMMAND [ARG...]
#   Prints the command's output (stdout and stderr merged; stdin is /dev/null) and exits with its
#   exit status; 124 when the time limit ended the run; 125 when the guest stopped before the
#   command finished (the kernel console is kept in <cache>/last-console.log).
#   The command starts in the current folder if that is under a share, else in the project.
#
# Environment:
#   VT_NESTED_TIMEOUT=1800   seconds for the whole run, boot included
#   VT_NESTED_MEM=3G         guest RAM
#   VT_NESTED_SMP            guest CPUs (default: the host's, at most 4)
#   VT_NESTED_SHARE="DIR…"   more host folders to share read-write
#   VT_NESTED_CONSOLE=1      also copy the guest kernel console to stderr
#   Variables named VT_*, NO_COLOR and CI are passed to the command, as are PATH and HOME;
#   the command also gets VT_IN_NESTED_KVM=1.
#
# Cost on a 2-core host: ~5 s to boot; inside, everything runs ~20x slower than on the host.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
log() { echo "[kvm-guest] $*" >&2; }
(($# >= 1)) || { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

case "$(uname -m)" in
x86_64) ;;
*) log "needs an x86-64 host (QEMU emulates AMD SVM for x86-64 guests only)"; exit 2 ;;
esac

eval "$(bash "$ROOT/launcher/nested/build.sh" | grep '^VT_NESTED_[A-Z]*=')"
CACHE="$(dirname "$VT_NESTED_KERNEL")"

# --- the run folder (9p tag "vtrun"): the command as a script, the shares, later `rc` ---------
RUN="$(mktemp -d "$CACHE/run.XXXXXX")"
QEMU_PID=""
cleanup() {
  if [[ -n "$QEMU_PID" ]]; then
    kill "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
  fi
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SHARES=("$ROOT")
VT_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/virtio-ts"
mkdir -p "$VT_CACHE"
SHARES+=("$(cd "$VT_CACHE" && pwd -P)")
for d in ${VT_NESTED_SHARE:-}; do SHARES+=("$(cd "$d" && pwd -P)"); done
printf '%s\n' "${SHARES[@]}" >"$RUN/shares"

CWD="$ROOT"
here="$(pwd -P)"
for s in "${SHARES[@]}"; do [[ "$here" == "$s" || "$here" == "$s"/* ]] && CWD="$here"; done
# cmd.sh runs under the host's /bin/sh (maybe dash): quote for POSIX sh, not with bash's %q.
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
  echo "export PATH=$(shq "$PATH") HOME=$(shq "$HOME") TERM=dumb"
  [[ -t 1 ]] || echo "export NO_COLOR=1"
  echo "export VT_IN_NESTED_KVM=1" # /dev/kvm is emulated here: benchmarks say so
  while IFS= read -r name; do
    echo "export $name=$(shq "${!name}")"
  done < <(compgen -e | grep -E '^(VT_[A-Za-z0-9_]*|NO_COLOR|CI)$' || true)
  echo "cd $(shq "$CWD") || exit 125"
  printf 'exec'
  for arg in "$@"; do printf ' %s' "$(shq "$arg")"; done
  echo
} >"$RUN/cmd.sh"

# --- boot: ttyS0 = kernel console (to a file), ttyS1 = the command's output (to stdout) -------
FS=(-fsdev "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap"
  -device "virtio-9p-pci,fsdev=root,mount_tag=hostroot"
  -fsdev "local,id=run,path=$RUN,security_model=none"
  -device "virtio-9p-pci,fsdev=run,mount_tag=vtrun")
for i in "${!SHARES[@]}"; do
  FS+=(-fsdev "local,id=s$i,path=${SHARES[$i]},security_model=none,multidevs=remap"
    -device "virtio-9p-pci,fsdev=s$i,mount_tag=share$i")
done
smp="${VT_NESTED_SMP:-$(nproc)}"
((smp <= 4)) || smp=4
CONSOLE="$RUN/console.log"
start=$(date +%s)
timeout --kill-after=10 "${VT_NESTED_TIMEOUT:-1800}" qemu-system-x86_64 \
  -accel tcg -M pc -cpu max -smp "$smp" -m "${VT_NESTED_MEM:-3G}" \
  -kernel "$VT_NESTED_KERNEL" -initrd "$VT_NESTED_INITRAMFS" \
  -append "console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init" \
  -display none -nodefaults -no-user-config -no-reboot \
  -serial "file:$CONSOLE" -serial stdio "${FS[@]}" </dev/null &
QEMU_PID=$!
if [[ "${VT_NESTED_CONSOLE:-0}" == 1 ]]; then
  # Ends with QEMU (--pid), so nothing outlives the run.
  tail -n +1 -F --pid="$QEMU_PID" "$CONSOLE" 2>/dev/null | sed 's/^/[console] /' >&2 &
fi
set +e
wait "$QEMU_PID"
qemu_rc=$?
set -e
QEMU_PID=""
cp -f "$CONSOLE" "$CACHE/last-console.log" 2>/dev/null || true

marker() { tr -d '\r' <"$CONSOLE" | sed -n "s/.*$1.*uptime=\([0-9.]*\).*/\1/p" | tail -n1; }
if [[ -f "$RUN/rc" ]]; then
  rc="$(cat "$RUN/rc")"
  log "exit $rc; guest up at $(marker VT-NESTED-READY) s, done at $(marker VT-NESTED-DONE) s;" \
    "wall $(($(date +%s) - start)) s"
  exit "$rc"
fi
if [[ $qemu_rc == 124 || $qemu_rc == 137 ]]; then
  log "timed out after ${VT_NESTED_TIMEOUT:-1800} s (kernel console: $CACHE/last-console.log)"
  exit 124
fi
log "the guest stopped before the command finished (QEMU exit $qemu_rc); kernel console tail:"
tr -d '\r' <"$CONSOLE" | tail -n 30 >&2
exit 125

#!/bin/sh
# /init of the virtio-ts test guest (busybox ash). Independent of QEMU: fw_cfg is optional.
#
# Loads the virtio modules listed in /etc/vt-modules, runs ONE test script, prints markers on the
# console and powers off. The script is taken from the first of these that exists:
#   1. /vt/script            a file in the initramfs (e.g. an appended cpio archive; qemu.ts does this)
#   2. fw_cfg opt/vt/script  QEMU: -fw_cfg name=opt/vt/script,file=PATH
#   3. vt_run64=<base64>     kernel command line, base64 of the script (any characters)
#   4. vt_run="cmd; cmd"     kernel command line, plain (no double quotes inside)
# Kernel parameters without a dot are handed to init as environment variables, which is how
# vt_run/vt_run64/vt_exit/vt_shell/vt_nomod arrive here. Other knobs:
#   vt_exit=poweroff|reboot|halt   how to end (default poweroff; QEMU -no-reboot exits on reboot)
#   vt_shell=1                     drop to an interactive shell on the console after the script
#   vt_nomod=1                     do not load modules
#
# The script runs in a subshell with `set -e`, with the helpers below. Markers (one per line):
#   VT-BEGIN kernel=<release> uptime=<s>       init started (uptime = kernel boot time)
#   VT-MODULE-FAIL <path>                      one module failed to load
#   VT-MODULES ok=<n> failed=<n> uptime=<s>
#   VT-SCRIPT source=<file|fw_cfg|vt_run64|vt_run|none> bytes=<n>
#   VT-STEP: <name>                            printed by `step NAME`
#   VT-RESULT: PASS
#   VT-RESULT: FAIL <step> (exit <n>)          <step> = last `step` name, or "main"
#   VT-END uptime=<s>

export PATH=/bin:/sbin
export HOME=/ TERM="${TERM:-linux}"

mount -t devtmpfs devtmpfs /dev 2>/dev/null
# If the kernel found no /dev/console in the initramfs, fds 0-2 are closed: open them now.
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

vt_uptime() { cut -d' ' -f1 /proc/uptime; }
echo; echo "VT-BEGIN kernel=$(uname -r) uptime=$(vt_uptime)"

# ---- modules --------------------------------------------------------------------------------
mod_ok=0
mod_failed=0
if [ "${vt_nomod:-0}" != 1 ] && [ -f /etc/vt-modules ]; then
  while read -r ko; do
    [ -n "$ko" ] || continue
    if insmod "$ko" 2>/tmp/insmod.err; then
      mod_ok=$((mod_ok + 1))
    elif grep -q 'File exists' /tmp/insmod.err; then
      mod_ok=$((mod_ok + 1))
    else
      mod_failed=$((mod_failed + 1))
      echo "VT-MODULE-FAIL $ko: $(cat /tmp/insmod.err)"
    fi
  done </etc/vt-modules
fi
echo "VT-MODULES ok=$mod_ok failed=$mod_failed uptime=$(vt_uptime)"
# Give late probes (virtio devices bind right after their driver loads) a moment to settle.
[ -d /sys/bus/virtio ] && mdev -s 2>/dev/null

# ---- helpers for scripts --------------------------------------------------------------------
VT_STEP_FILE=/run/vt-step
echo main >"$VT_STEP_FILE"
# step NAME...: start a named step (the name FAIL reports).
step() {
  echo "$*" >"$VT_STEP_FILE"
  echo "VT-STEP: $*"
}
# fail MSG...: fail the current step with a message.
fail() {
  echo "VT-FAIL-MSG: $*"
  exit 1
}
# expect_eq ACTUAL EXPECTED [WHAT]: fail unless equal.
expect_eq() {
  [ "$1" = "$2" ] || fail "${3:-value}: got '$1', expected '$2'"
}
# wait_for PATH [TENTHS]: wait until PATH exists (default 5 s).
wait_for() {
  n="${2:-50}"
  while [ ! -e "$1" ]; do
    n=$((n - 1))
    [ "$n" -gt 0 ] || fail "timeout waiting for $1"
    sleep 0.1
  done
}

# ---- script ---------------------------------------------------------------------------------
FWCFG=/sys/firmware/qemu_fw_cfg/by_name/opt/vt/script/raw
SCRIPT=/run/vt-script
src=none
if [ -f /vt/script ]; then
  cp /vt/script "$SCRIPT" && src=file
elif [ -f "$FWCFG" ]; then
  cat "$FWCFG" >"$SCRIPT" && src=fw_cfg
elif [ -n "${vt_run64:-}" ]; then
  echo "$vt_run64" | base64 -d >"$SCRIPT" && src=vt_run64
elif [ -n "${vt_run:-}" ]; then
  printf '%s\n' "$vt_run" >"$SCRIPT" && src=vt_run
fi
unset vt_run vt_run64
echo "VT-SCRIPT source=$src bytes=$(wc -c <"$SCRIPT" 2>/dev/null || echo 0)"

if [ "$src" = none ]; then
  echo "VT-RESULT: FAIL no-script (exit 1)"
else
  (
    set -e
    cd /
    . "$SCRIPT"
  )
  rc=$?
  if [ "$rc" = 0 ]; then
    echo "VT-RESULT: PASS"
  else
    echo "VT-RESULT: FAIL $(cat "$VT_STEP_FILE") (exit $rc)"
  fi
fi
echo "VT-END uptime=$(vt_uptime)"

if [ "${vt_shell:-0}" = 1 ]; then
  setsid cttyhack sh -l
fi

sync
case "${vt_exit:-poweroff}" in
reboot) reboot -f ;;
halt) halt -f ;;
*) poweroff -f ;;
esac
# Still here: ask the kernel directly, then idle (init must never exit).
echo o >/proc/sysrq-trigger 2>/dev/null
while :; do sleep 3600; done

#!/usr/bin/env bash
# Builds the virtio-ts test guest: a stock Debian cloud kernel (bzImage) and a busybox initramfs
# holding the virtio modules and a small test runner as /init (launcher/guest/init.sh).
#
# Cached outside the work tree in ${VT_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtio-ts/guest}.
# Idempotent: a second run checks a stamp and exits in well under a second without network.
#
# Output (last lines of stdout, machine-readable):
#   VT_GUEST_KERNEL=<cache>/vmlinuz
#   VT_GUEST_INITRAMFS=<cache>/initramfs.cpio.gz
#
# Environment:
#   VT_GUEST_CACHE        cache folder (default above)
#   VT_GUEST_KERNEL_PKG   exact kernel package to use (default: newest
#                         linux-image-6.1.0-N-cloud-amd64-unsigned that apt knows, fixed once cached)
#   VT_GUEST_NO_QEMU=1    do not install the QEMU packages (e.g. for a KVM-only VMM run)
#   VT_GUEST_FORCE=1      rebuild the initramfs even when the stamp matches
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${VT_GUEST_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/virtio-ts/guest}"
export DEBIAN_FRONTEND=noninteractive

log() { echo "[guest/build] $*" >&2; }

# ---------------------------------------------------------------------------------------------
# 1. Host packages (dpkg -s first: a second run needs no network and no apt lock).
HOST_PKGS=(busybox-static kmod cpio e2fsprogs gcc libc6-dev)
if [[ "${VT_GUEST_NO_QEMU:-0}" != 1 ]]; then
  HOST_PKGS+=(qemu-system-x86 qemu-utils qemu-system-common)
fi
missing=()
for p in "${HOST_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
SUDO=()
if [[ "$(id -u)" != 0 ]]; then SUDO=(sudo -n); fi
apt_updated=0
apt_update_once() {
  if [[ $apt_updated == 0 ]]; then
    log "apt-get update"
    "${SUDO[@]}" apt-get update -qq >&2
    apt_updated=1
  fi
}
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    apt_update_once
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
fi

# ---------------------------------------------------------------------------------------------
# 2. Stamp: the build inputs are this script, init.sh, the guest tools and the kernel package name.
mkdir -p "$CACHE"
# One build at a time (parallel test runners may call this concurrently).
exec 9>"$CACHE/.lock"
flock 9
KPKG_FILE="$CACHE/kernel-package"
STAMP="$CACHE/stamp"
inputs_hash() {
  cat "$HERE/build.sh" "$HERE/init.sh" "$KPKG_FILE" "$HERE"/tools/*.c 2>/dev/null | sha256sum | cut -d' ' -f1
}
print_paths() {
  echo "VT_GUEST_KERNEL=$CACHE/vmlinuz"
  echo "VT_GUEST_INITRAMFS=$CACHE/initramfs.cpio.gz"
}
if [[ -n "${VT_GUEST_KERNEL_PKG:-}" ]] && [[ "$(cat "$KPKG_FILE" 2>/dev/null)" != "$VT_GUEST_KERNEL_PKG" ]]; then
  echo "$VT_GUEST_KERNEL_PKG" >"$KPKG_FILE"
fi
if [[ "${VT_GUEST_FORCE:-0}" != 1 && -f "$STAMP" && -f "$CACHE/vmlinuz" &&
  -f "$CACHE/initramfs.cpio.gz" && "$(cat "$STAMP")" == "$(inputs_hash)" ]]; then
  log "up to date ($(cat "$KPKG_FILE"))"
  print_paths
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# 3. Kernel package: fetched with apt-get download, unpacked with dpkg-deb -x (no scripts run).
find_kernel_pkg() {
  apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$' 2>/dev/null |
    cut -d' ' -f1 | sort -V | tail -n1
}
if [[ ! -s "$KPKG_FILE" ]]; then
  kpkg="$(find_kernel_pkg)"
  if [[ -z "$kpkg" ]]; then
    apt_update_once
    kpkg="$(find_kernel_pkg)"
  fi
  [[ -n "$kpkg" ]] || { log "no linux-image-6.1.0-*-cloud-amd64-unsigned in apt"; exit 1; }
  echo "$kpkg" >"$KPKG_FILE"
fi
KPKG="$(cat "$KPKG_FILE")"
KROOT="$CACHE/kernel/$KPKG"
if [[ ! -f "$KROOT/.unpacked" ]]; then
  log "fetching $KPKG"
  dl="$CACHE/download"
  rm -rf "$dl" "$KROOT"
  mkdir -p "$dl" "$KROOT"
  # _apt cannot write to a folder under root's home; download as the current user.
  if ! (cd "$dl" && apt-get download -o APT::Sandbox::User="$(id -un)" "$KPKG" >&2); then
    apt_update_once
    (cd "$dl" && apt-get download -o APT::Sandbox::User="$(id -un)" "$KPKG" >&2)
  fi
  dpkg-deb -x "$dl"/*.deb "$KROOT"
  rm -rf "$dl"
  touch "$KROOT/.unpacked"
fi
KVER="$(basename "$(ls -d "$KROOT"/lib/modules/*/ | head -n1)")"
MODDIR="$KROOT/lib/modules/$KVER"
cp -f "$KROOT/boot/vmlinuz-$KVER" "$CACHE/vmlinuz.tmp"
mv -f "$CACHE/vmlinuz.tmp" "$CACHE/vmlinuz"
[[ -f "$MODDIR/modules.dep" ]] || depmod -b "$KROOT" "$KVER"

# ---------------------------------------------------------------------------------------------
# 4. Modules: closure of the wanted set over modules.dep, in load order (deps first).
WANTED=(
  qemu_fw_cfg
  virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mmio
  rng_core virtio_rng
  virtio_blk virtio_scsi sd_mod
  virtio_net
  virtio_console
  virtio_balloon
  virtio_input
  vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
  fuse virtiofs
  libnvdimm nd_pmem virtio_pmem
  virtio_mem
  ext2 ext4 crc32c_generic
)
declare -A PATH_OF=() LOADED=()
# modules.dep: "kernel/x/y.ko: kernel/dep1.ko kernel/dep2.ko"; name = basename with - → _.
# modname PATH: sets MN (no subshell: this runs for every module of the kernel).
modname() { MN="${1##*/}"; MN="${MN%.ko*}"; MN="${MN//-/_}"; }
while IFS= read -r line; do
  p="${line%%:*}"
  modname "$p"
  PATH_OF["$MN"]="$p"
done <"$MODDIR/modules.dep"
declare -A BUILTIN=()
while IFS= read -r p; do
  modname "$p"
  BUILTIN["$MN"]=1
done <"$MODDIR/modules.builtin"

ORDER=()
add_module() { # add_module NAME: appends deps (deepest first) then NAME
  local name="$1" p deps d
  [[ -n "${LOADED[$name]:-}" ]] && return 0
  p="${PATH_OF[$name]}"
  deps="$(grep -m1 "^${p}:" "$MODDIR/modules.dep" | cut -d: -f2)"
  # modules.dep lists the full closure; modprobe loads it from the end backwards.
  local arr=($deps) i
  for ((i = ${#arr[@]} - 1; i >= 0; i--)); do
    modname "${arr[$i]}"
    add_module "$MN"
  done
  LOADED["$name"]=1
  ORDER+=("$p")
}
SKIPPED=()
for m in "${WANTED[@]}"; do
  if [[ -n "${PATH_OF[$m]:-}" ]]; then
    add_module "$m"
  elif [[ -n "${BUILTIN[$m]:-}" ]]; then
    SKIPPED+=("$m(builtin)")
  else
    SKIPPED+=("$m(absent)")
  fi
done
log "kernel $KVER; modules: ${#ORDER[@]}; not as modules: ${SKIPPED[*]:-none}"

# ---------------------------------------------------------------------------------------------
# 5. Initramfs tree.
STAGE="$CACHE/stage"
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,sbin,dev,proc,sys,tmp,run,mnt,etc,vt,lib/modules/"$KVER"}
BB=/bin/busybox # from busybox-static (it conflicts with the dynamic busybox package)
cp "$BB" "$STAGE/bin/busybox"
for applet in $("$STAGE/bin/busybox" --list); do
  [[ "$applet" == busybox ]] && continue
  ln -sf busybox "$STAGE/bin/$applet"
done
# Busybox here has mke2fs but no mkfs.ext2 alias applet.
printf '#!/bin/sh\nexec /bin/mke2fs "$@"\n' >"$STAGE/bin/mkfs.ext2"
chmod 755 "$STAGE/bin/mkfs.ext2"
# Guest tools: each launcher/guest/tools/NAME.c becomes a static /bin/NAME.
for src in "$HERE"/tools/*.c; do
  [[ -e "$src" ]] || continue
  name="$(basename "$src" .c)"
  gcc -static -O2 -Wall -o "$STAGE/bin/$name" "$src" >&2
done
for s in "$STAGE"/bin/*; do ln -sf "../bin/${s##*/}" "$STAGE/sbin/${s##*/}"; done
for p in "${ORDER[@]}"; do
  mkdir -p "$STAGE/lib/modules/$KVER/$(dirname "$p")"
  case "$p" in
  *.ko) cp "$MODDIR/$p" "$STAGE/lib/modules/$KVER/$p" ;;
  *.ko.xz) xz -dc "$MODDIR/$p" >"$STAGE/lib/modules/$KVER/${p%.xz}" ;;
  *.ko.zst) zstd -qdc "$MODDIR/$p" >"$STAGE/lib/modules/$KVER/${p%.zst}" ;;
  *.ko.gz) gzip -dc "$MODDIR/$p" >"$STAGE/lib/modules/$KVER/${p%.gz}" ;;
  esac
  echo "/lib/modules/$KVER/${p%.ko*}.ko" >>"$STAGE/etc/vt-modules"
done
cp "$MODDIR"/modules.{order,builtin} "$STAGE/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$STAGE" "$KVER" 2>/dev/null || true
echo "$KVER" >"$STAGE/etc/vt-kernel"
install -m 755 "$HERE/init.sh" "$STAGE/init"
# The kernel opens /dev/console for init before devtmpfs is mounted.
mknod -m 600 "$STAGE/dev/console" c 5 1 2>/dev/null || log "mknod failed (not root?): init reopens the console itself"
mknod -m 666 "$STAGE/dev/null" c 1 3 2>/dev/null || true

(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc --owner=0:0 --quiet | gzip -6 -n) >"$CACHE/initramfs.cpio.gz.tmp"
mv -f "$CACHE/initramfs.cpio.gz.tmp" "$CACHE/initramfs.cpio.gz"
rm -rf "$STAGE"
inputs_hash >"$STAMP"
log "built: $(du -h "$CACHE/initramfs.cpio.gz" | cut -f1) initramfs, kernel $KVER"
print_paths

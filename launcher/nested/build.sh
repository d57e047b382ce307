#!/usr/bin/env bash
# Builds the nested-KVM host image: Debian's generic kernel (linux-image-*-amd64; the cloud flavour
# has no kvm_amd) and a busybox initramfs with kvm_amd, virtio-9p and overlayfs, whose /init
# (init.sh here) loads them, mounts the host's files and runs one command. Booted under QEMU TCG
# with `-cpu max` (which emulates AMD SVM with nested paging) it gives a /dev/kvm on hosts that
# have none; scripts/kvm-guest.sh does that.
#
# Cached in ${VT_NESTED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtio-ts/nested}. The kernel
# package is the one linux-image-amd64 depends on when first fetched (versions move; delete the
# cache or set VT_NESTED_KERNEL_PKG to change it). A second run checks a stamp and exits in well
# under a second without network.
#
# Output (last lines of stdout, machine-readable):
#   VT_NESTED_KERNEL=<cache>/vmlinuz
#   VT_NESTED_INITRAMFS=<cache>/initramfs.cpio.gz
#
# Environment:
#   VT_NESTED_CACHE        cache folder (default above)
#   VT_NESTED_KERNEL_PKG   exact kernel package (default: what linux-image-amd64 depends on)
#   VT_NESTED_FORCE=1      rebuild the initramfs even when the stamp matches
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${VT_NESTED_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/virtio-ts/nested}"
export DEBIAN_FRONTEND=noninteractive
# What the host image needs, by module name; their dependencies come from modules.dep.
WANTED=(kvm_amd 9pnet_virtio 9p overlay virtio_pci)

log() { echo "[nested/build] $*" >&2; }

# ---------------------------------------------------------------------------------------------
# 1. Host packages (dpkg -s first: a second run needs no network and no apt lock).
HOST_PKGS=(qemu-system-x86 busybox-static kmod cpio)
missing=()
for p in "${HOST_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
SUDO=()
[[ "$(id -u)" == 0 ]] || SUDO=(sudo -n)
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
# 2. Stamp: the inputs are this script, init.sh, the kernel package and busybox.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
KPKG_FILE="$CACHE/kernel-package"
STAMP="$CACHE/stamp"
BB=/bin/busybox # busybox-static's (a dynamic busybox would need its libraries in the initramfs)
inputs_hash() {
  { cat "$HERE/build.sh" "$HERE/init.sh" "$KPKG_FILE" 2>/dev/null; sha256sum "$BB"; } |
    sha256sum | cut -d' ' -f1
}
print_paths() {
  echo "VT_NESTED_KERNEL=$CACHE/vmlinuz"
  echo "VT_NESTED_INITRAMFS=$CACHE/initramfs.cpio.gz"
}
if [[ -n "${VT_NESTED_KERNEL_PKG:-}" && "$(cat "$KPKG_FILE" 2>/dev/null)" != "$VT_NESTED_KERNEL_PKG" ]]; then
  echo "$VT_NESTED_KERNEL_PKG" >"$KPKG_FILE"
fi
if [[ "${VT_NESTED_FORCE:-0}" != 1 && -f "$STAMP" && -f "$CACHE/vmlinuz" &&
  -f "$CACHE/initramfs.cpio.gz" && "$(cat "$STAMP")" == "$(inputs_hash)" ]]; then
  log "up to date ($(cat "$KPKG_FILE"))"
  print_paths
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# 3. Kernel package: what the linux-image-amd64 metapackage depends on, fetched with
# apt-get download and unpacked with dpkg-deb -x (no maintainer scripts run, nothing installed).
find_kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1
}
if [[ ! -s "$KPKG_FILE" ]]; then
  kpkg="$(find_kernel_pkg)"
  if [[ -z "$kpkg" ]]; then
    apt_update_once
    kpkg="$(find_kernel_pkg)"
  fi
  [[ -n "$kpkg" ]] || { log "apt knows no linux-image-amd64"; exit 1; }
  echo "$kpkg" >"$KPKG_FILE"
fi
KPKG="$(cat "$KPKG_FILE")"
KROOT="$CACHE/kernel/$KPKG"
if [[ ! -f "$KROOT/.unpacked" ]]; then
  log "fetching $KPKG"
  dl="$CACHE/download"
  rm -rf "$dl" "$CACHE/kernel"
  mkdir -p "$dl" "$KROOT"
  # _apt cannot write to a folder under root's home; download as the current user.
  if ! (cd "$dl" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "$KPKG" >&2); then
    apt_update_once
    (cd "$dl" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "$KPKG" >&2)
  fi
  dpkg-deb -x "$dl"/*.deb "$KROOT"
  rm -rf "$dl" "$KROOT/usr"
  KVER="$(basename "$(ls -d "$KROOT"/lib/modules/*/ | head -n1)")"
  depmod -b "$KROOT" "$KVER"
  # Keep only the modules the image loads (the package unpacks to ~400 MB).
  keep="$(modprobe -d "$KROOT" -S "$KVER" --show-depends -a "${WANTED[@]}" | sed -n 's/^insmod \([^ ]*\).*/\1/p')"
  find "$KROOT/lib/modules/$KVER/kernel" -name '*.ko*' | { grep -vxF "$keep" || true; } | xargs -r rm -f
  touch "$KROOT/.unpacked"
fi
KVER="$(basename "$(ls -d "$KROOT"/lib/modules/*/ | head -n1)")"
cp -f "$KROOT/boot/vmlinuz-$KVER" "$CACHE/vmlinuz.tmp"
mv -f "$CACHE/vmlinuz.tmp" "$CACHE/vmlinuz"

# ---------------------------------------------------------------------------------------------
# 4. Modules in load order (dependencies first), as modprobe resolves them from modules.dep.
ORDER=()
declare -A SEEN=()
while read -r verb path _; do
  [[ "$verb" == insmod && -z "${SEEN[$path]:-}" ]] || continue
  SEEN["$path"]=1
  ORDER+=("$path")
done < <(modprobe -d "$KROOT" -S "$KVER" --show-depends -a "${WANTED[@]}")
[[ ${#ORDER[@]} -gt 0 ]] || { log "modprobe resolved no modules for ${WANTED[*]}"; exit 1; }

# ---------------------------------------------------------------------------------------------
# 5. Initramfs: static busybox, the modules (decompressed), their order, /init.
STAGE="$CACHE/stage"
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,dev,proc,sys,mod,etc}
cp "$BB" "$STAGE/bin/busybox"
n=0
for p in "${ORDER[@]}"; do
  n=$((n + 1))
  name="$(printf '%02d' "$n")-$(basename "${p%.ko*}").ko"
  case "$p" in
  *.ko) cp "$p" "$STAGE/mod/$name" ;;
  *.ko.xz) xz -dc "$p" >"$STAGE/mod/$name" ;;
  *.ko.zst) zstd -qdc "$p" >"$STAGE/mod/$name" ;;
  *.ko.gz) gzip -dc "$p" >"$STAGE/mod/$name" ;;
  esac
  echo "/mod/$name" >>"$STAGE/etc/modules"
done
install -m 755 "$HERE/init.sh" "$STAGE/init"
(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc --owner=0:0 --quiet | gzip -1 -n) >"$CACHE/initramfs.cpio.gz.tmp"
mv -f "$CACHE/initramfs.cpio.gz.tmp" "$CACHE/initramfs.cpio.gz"
rm -rf "$STAGE"
inputs_hash >"$STAMP"
log "built: kernel $KVER, ${#ORDER[@]} modules ($(basename -a "${ORDER[@]}" | tr '\n' ' '))"
print_paths

#!/usr/bin/env bash
# Builds the virtio-ts microVM guest kernel: a small x86-64 bzImage from Debian's linux-source-6.1
# with every virtio driver and virtio-mmio command-line devices built in (microvm.config here).
#
# Cached outside the work tree in ${VT_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtio-ts/kernel},
# keyed by a hash of this script, the fragment and the source package version. Idempotent: a
# second run checks the stamp and exits in well under a second (no apt, no network).
#
# Output (last lines of stdout, machine-readable):
#   VT_KVM_KERNEL=<cache>/bzImage
#   VT_KVM_KERNEL_CONFIG=<cache>/config
#
# Environment:
#   VT_KERNEL_CACHE    cache folder (default above)
#   VT_KERNEL_JOBS     make -j (default: nproc)
#   VT_KERNEL_FORCE=1  rebuild even when the stamp matches
#   VT_KERNEL_KEEP=1   keep the build tree (object files) after a successful build
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${VT_KERNEL_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/virtio-ts/kernel}"
FRAGMENT="$HERE/microvm.config"
SRCPKG=linux-source-6.1
export DEBIAN_FRONTEND=noninteractive

log() { echo "[kernel/build] $*" >&2; }
print_paths() {
  echo "VT_KVM_KERNEL=$CACHE/bzImage"
  echo "VT_KVM_KERNEL_CONFIG=$CACHE/config"
}

# ---------------------------------------------------------------------------------------------
# 1. Fast path: the stamp needs only dpkg-query (no apt lock, no network).
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
src_version() { dpkg-query -W -f='${Version}' "$SRCPKG" 2>/dev/null || true; }
build_key() {
  { cat "$HERE/build-kernel.sh" "$FRAGMENT"; echo "$SRCPKG=$1"; } | sha256sum | cut -c1-16
}
STAMP="$CACHE/stamp"
ver="$(src_version)"
if [[ "${VT_KERNEL_FORCE:-0}" != 1 && -n "$ver" && -f "$CACHE/bzImage" && -f "$STAMP" &&
  "$(cat "$STAMP")" == "$(build_key "$ver")" ]]; then
  log "up to date ($SRCPKG $ver)"
  print_paths
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# 2. Host packages (apt-get only for what dpkg does not already have).
PKGS=("$SRCPKG" build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  SUDO=()
  [[ "$(id -u)" == 0 ]] || SUDO=(sudo -n)
  log "installing ${missing[*]}"
  if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    "${SUDO[@]}" apt-get update -qq >&2
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
  ver="$(src_version)"
fi
KEY="$(build_key "$ver")"

# ---------------------------------------------------------------------------------------------
# 3. Source tree, unpacked once per package version.
SRC="$CACHE/src-$ver"
if [[ ! -f "$SRC/.unpacked" ]]; then
  log "unpacking /usr/src/$SRCPKG.tar.xz"
  rm -rf "$SRC" "$SRC.tmp"
  mkdir -p "$SRC.tmp"
  tar -xJf "/usr/src/$SRCPKG.tar.xz" -C "$SRC.tmp" --strip-components=1
  mv "$SRC.tmp" "$SRC"
  touch "$SRC/.unpacked"
fi

# ---------------------------------------------------------------------------------------------
# 4. Configure: tinyconfig + kvm_guest.config + our fragment, then check the fragment held.
OUT="$CACHE/build-$KEY"
mkdir -p "$OUT"
MAKE=(nice -n 10 make -C "$SRC" O="$OUT" ARCH=x86_64 -s)
start=$(date +%s)
"${MAKE[@]}" tinyconfig >&2
"$SRC/scripts/kconfig/merge_config.sh" -m -O "$OUT" "$OUT/.config" \
  "$SRC/kernel/configs/kvm_guest.config" "$FRAGMENT" >/dev/null
"${MAKE[@]}" olddefconfig >&2
bad=0
while IFS= read -r line; do
  if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
    want="${BASH_REMATCH[0]}"
    grep -qx "$want" "$OUT/.config" || { log "not applied: $want"; bad=1; }
  elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
    if grep -q "^${BASH_REMATCH[1]}=" "$OUT/.config"; then log "still set: ${BASH_REMATCH[1]}"; bad=1; fi
  fi
done <"$FRAGMENT"
if [[ $bad == 1 ]]; then
  log "the fragment did not fully apply (see above); fix launcher/guest/kernel/microvm.config"
  exit 1
fi

# ---------------------------------------------------------------------------------------------
# 5. Build.
log "building bzImage with -j${VT_KERNEL_JOBS:-$(nproc)} in $OUT"
"${MAKE[@]}" -j"${VT_KERNEL_JOBS:-$(nproc)}" bzImage >&2
cp -f "$OUT/arch/x86/boot/bzImage" "$CACHE/bzImage.tmp"
mv -f "$CACHE/bzImage.tmp" "$CACHE/bzImage"
cp -f "$OUT/.config" "$CACHE/config"
echo "$KEY" >"$STAMP"
log "built in $(($(date +%s) - start)) s: $(du -h "$CACHE/bzImage" | cut -f1) bzImage"
# Old build trees of other keys are dead weight; this one is kept only on request.
for d in "$CACHE"/build-*; do
  [[ "$d" == "$OUT" && "${VT_KERNEL_KEEP:-0}" == 1 ]] || rm -rf "$d"
done
print_paths

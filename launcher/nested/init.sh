#!/bin/busybox sh
# /init of the nested-KVM host (busybox ash), booted by scripts/kvm-guest.sh under QEMU TCG.
#
# Loads the modules of /etc/modules in order (kvm_amd among them, so /dev/kvm appears), puts the
# host's / (9p tag "hostroot", read-only) under a tmpfs overlay as the new root, mounts the
# read-write shares at their host paths, and runs the command the runner left in its run folder
# (9p tag "vtrun": cmd.sh, shares), with stdout and stderr on the second serial port (ttyS1).
# Writes the command's exit status to the run folder as `rc`, then powers off.
#
# Console markers (ttyS0): VT-NESTED-READY uptime=<s>, VT-NESTED-DONE rc=<n> uptime=<s>,
# VT-NESTED-DIE <why> (the command never ran).

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

uptime_s() { cut -d' ' -f1 /proc/uptime; }
die() {
  echo "VT-NESTED-DIE $*"
  poweroff -f
  sleep 5
}

while read -r ko; do
  insmod "$ko" || echo "VT-NESTED-MODULE-FAIL $ko"
done </etc/modules
[ -c /dev/kvm ] || { dmesg | grep -iE 'kvm|svm' | tail -n 5; die "no /dev/kvm"; }

O=trans=virtio,version=9p2000.L,msize=262144
mkdir -p /lower /rw /root2
mount -t 9p -o "$O,ro,cache=loose" hostroot /lower || die "9p hostroot"
mount -t tmpfs -o size=75% rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /root2 || die overlay
R=/root2
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
mount -t tmpfs tmp $R/tmp
mount -t tmpfs run $R/run
mkdir -p $R/run/vt
mount -t 9p -o "$O,cache=none" vtrun $R/run/vt || die "9p vtrun"
i=0
while read -r dir; do
  mkdir -p "$R$dir"
  mount -t 9p -o "$O,cache=mmap" "share$i" "$R$dir" || die "9p share $dir"
  i=$((i + 1))
done <$R/run/vt/shares

stty -F /dev/ttyS1 raw -echo
echo "VT-NESTED-READY uptime=$(uptime_s)"
# Through a pipe, so that the command's output is not a terminal (no colours, no redrawing).
{
  chroot $R /bin/sh /run/vt/cmd.sh </dev/null 2>&1
  echo "$?" >/run-rc
} | cat >/dev/ttyS1
rc="$(cat /run-rc 2>/dev/null || echo 125)"
echo "$rc" >$R/run/vt/rc
sync
echo "VT-NESTED-DONE rc=$rc uptime=$(uptime_s)"
poweroff -f

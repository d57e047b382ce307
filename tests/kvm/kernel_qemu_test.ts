// The microVM guest kernel (launcher/guest/kernel/build-kernel.sh) under QEMU TCG, so that it is
// checked on machines without KVM: `-M microvm,acpi=off` declares its virtio-mmio devices on the
// kernel command line exactly as our VMM does, and `noapic` makes the guest take interrupts
// through the 8259 PIC as it does on our VMM (which has neither ACPI nor an MP table). Runs only
// when the kernel is already built (it is not built here) and QEMU is installed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { bootGuest, qemuAvailable } from "../../launcher/qemu.ts";
import { kernelBuilt, kernelPath } from "../../launcher/kernel.ts";

const initramfs = join(
  process.env.VT_GUEST_CACHE ??
    join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "virtio-ts/guest"),
  "initramfs.cpio.gz",
);

function skipReason(): string | false {
  if (!kernelBuilt()) {
    return "skipped: microVM kernel not built (launcher/guest/kernel/build-kernel.sh)";
  }
  if (!existsSync(initramfs)) return "skipped: no test initramfs (bash launcher/guest/build.sh)";
  if (!qemuAvailable()) return "skipped: qemu-system-x86_64 not installed";
  return false;
}

test("the microVM kernel finds virtio-mmio command-line devices (QEMU microvm, PIC only)", {
  skip: skipReason(),
  timeout: 180_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), "vt-kernel-qemu-"));
  try {
    const disk = join(dir, "disk.img");
    const image = new Uint8Array(4 << 20);
    image.set(new TextEncoder().encode("VT-DISK"));
    writeFileSync(disk, image);
    const r = await bootGuest({
      guest: { kernel: kernelPath(), initramfs },
      machine: "microvm,acpi=off",
      memory: "256M",
      timeoutSec: 120,
      append: "reboot=t tsc_early_khz=2000000 noapic vt_nomod=1 vt_exit=reboot",
      args: [
        ...["-global", "virtio-mmio.force-legacy=false"],
        ...["-device", "virtio-rng-device"],
        ...["-drive", `file=${disk},format=raw,if=none,id=d0`],
        ...["-device", "virtio-blk-device,drive=d0"],
      ],
      script: [
        "step devices",
        "wait_for /sys/bus/virtio/devices/virtio1 50",
        "ids=\"$(cat /sys/bus/virtio/devices/*/device | tr '\\n' ' ')\"",
        'echo "VT-IDS: $ids"',
        'case "$ids" in *0x0004*0x0002*|*0x0002*0x0004*) ;; *) fail "devices: $ids" ;; esac',
        "step hwrng",
        'expect_eq "$(cat /sys/class/misc/hw_random/rng_current)" virtio_rng.0 rng_current',
        'expect_eq "$(dd if=/dev/hwrng bs=64 count=2 2>/dev/null | wc -c)" 128 hwrng',
        "step block",
        "wait_for /dev/vda",
        'expect_eq "$(head -c 7 /dev/vda)" VT-DISK vda',
        "step pic",
        "grep -q 'XT-PIC.*virtio' /proc/interrupts || fail \"virtio not on the PIC\"",
      ].join("\n"),
    });
    assert.ok(r.passed, `guest failed at ${r.failedStep}\n${r.output}\n${r.stderr}`);
    assert.match(r.output, /VT-BEGIN kernel=6\.1\./);
    assert.equal(r.exitCode, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

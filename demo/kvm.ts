/**
 * Boots a real Linux guest on OUR virtual machine monitor (kvm/): Debian's stock cloud kernel and
 * the busybox initramfs of launcher/guest, with a virtio entropy device and a virtio block device
 * (an 8 MiB scratch file) over virtio-mmio, declared to the guest in ACPI (or over virtio-pci with
 * MSI-X with `--pci`), and prints the guest console. Where /dev/kvm is absent it says so and
 * exits 0 (scripts/kvm-guest.sh runs it in a nested-KVM guest).
 *
 * Run: `node_modules/.bin/deno run --allow-all demo/kvm.ts [--no-block] [--cpus N] [--pci]` (the
 * console is output-only: host input is not forwarded to the guest).
 *
 * @module
 */

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MicroVm } from "../kvm/mod.ts";
import { kvmUnavailableReason } from "../sys/mod.ts";
import { RngDevice } from "../devices/rng.ts";
import { BlockDevice } from "../devices/block.ts";
import type { VirtioDevice } from "../devices/device.ts";
import { ensureGuest, scriptCpio } from "../launcher/qemu.ts";

const args = globalThis.process?.argv ?? [];
if (!MicroVm.available()) {
  console.log(
    `demo/kvm.ts: ${kvmUnavailableReason()}; this demo needs KVM ` +
      "(scripts/kvm-guest.sh node_modules/.bin/deno run --allow-all demo/kvm.ts runs it nested)",
  );
  process.exit(0);
}

const withBlock = !args.includes("--no-block");
const pci = args.includes("--pci");
const cpusAt = args.indexOf("--cpus");
const cpus = cpusAt >= 0 ? Number(args[cpusAt + 1]) : 1;
const script = [
  'echo "CPUs: $(nproc)"',
  "step devices",
  "wait_for /sys/bus/virtio/devices/virtio0",
  'for d in /sys/bus/virtio/devices/*; do echo "$d: device $(cat $d/device)"; done',
  "step hwrng",
  "wait_for /dev/hwrng",
  'echo "rng_current: $(cat /sys/class/misc/hw_random/rng_current)"',
  "dd if=/dev/hwrng bs=32 count=1 2>/dev/null | hexdump -C",
  ...(withBlock
    ? ["step block", "wait_for /dev/vda", "cat /sys/block/vda/size", "head -c 32 /dev/vda; echo"]
    : []),
  ...(pci ? ["step interrupts", "grep -E 'CPU|virtio' /proc/interrupts"] : []),
].join("\n");

console.error("demo/kvm.ts: building or finding the guest kernel and initramfs…");
const guest = await ensureGuest();
const base = new Uint8Array(readFileSync(guest.initramfs));
const extra = scriptCpio(script);
const initrd = new Uint8Array(base.byteLength + extra.byteLength);
initrd.set(base);
initrd.set(extra, base.byteLength);

const dir = mkdtempSync(join(tmpdir(), "vt-kvm-demo-"));
const devices: VirtioDevice[] = [new RngDevice()];
if (withBlock) {
  const disk = join(dir, "disk.img");
  const image = new Uint8Array(8 << 20);
  image.set(new TextEncoder().encode("hello from the host's disk image"));
  writeFileSync(disk, image);
  devices.push(new BlockDevice({ path: disk }));
}
const vm = MicroVm.create({
  kernel: new Uint8Array(readFileSync(guest.kernel)),
  initrd,
  cmdline: pci ? "console=ttyS0 panic=-1 quiet" : "console=ttyS0 panic=-1 pci=off quiet",
  cpus,
  transport: pci ? "pci" : "mmio",
  devices,
  onError: (e) => console.error(`device error: ${e.message}`),
});
console.error(`demo/kvm.ts: cmdline: ${vm.cmdline}`);
try {
  const result = await vm.run({ timeoutMs: 120_000 });
  console.error(
    `\ndemo/kvm.ts: guest stopped (${result.reason}) after ${result.elapsedMs.toFixed(0)} ms, ` +
      `${result.exits} exits to user space`,
  );
} finally {
  vm.close();
  rmSync(dir, { recursive: true, force: true });
}

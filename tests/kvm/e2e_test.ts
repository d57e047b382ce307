// End to end on KVM: boots the microVM kernel (launcher/guest/kernel) with the busybox initramfs of
// tests/guest on OUR VMM (kvm/vmm.ts) with an entropy device and a block device over
// virtio-mmio (queue kicks through ioeventfd, interrupts through irqfd), and checks from inside
// the guest that both devices were found and work. Skips where /dev/kvm is absent, before
// building anything. Runs under Deno and Bun (the vCPU runs in a Worker on both).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hasKvm } from "../../sys/mod.ts";
import { MicroVm, NO_KVM_REASON } from "../../kvm/mod.ts";
import { RngDevice } from "../../devices/rng.ts";
import { BlockDevice } from "../../devices/block.ts";
import { ensureGuest, scriptCpio } from "../../launcher/qemu.ts";
import { ensureKernel } from "../../launcher/kernel.ts";

const DISK_MAGIC = "VIRTIO-TS-KVM-E2E";
const GUEST_SCRIPT = `
step devices
wait_for /sys/bus/virtio/devices/virtio1 50
ids="$(cat /sys/bus/virtio/devices/*/device | tr '\\n' ' ')"
echo "VT-DEVICE-IDS: $ids"
case "$ids" in *0x0004*) ;; *) fail "no virtio-rng among: $ids" ;; esac
case "$ids" in *0x0002*) ;; *) fail "no virtio-blk among: $ids" ;; esac
step hwrng
wait_for /dev/hwrng
echo "VT-RNG-CURRENT: $(cat /sys/class/misc/hw_random/rng_current)"
n="$(dd if=/dev/hwrng bs=64 count=4 2>/dev/null | wc -c)"
expect_eq "$n" 256 "bytes read from /dev/hwrng"
step block-read
wait_for /dev/vda
expect_eq "$(head -c ${DISK_MAGIC.length} /dev/vda)" "${DISK_MAGIC}" "first bytes of /dev/vda"
step block-write
echo "written-by-guest" | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null
`;

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a);
  out.set(b, a.byteLength);
  return out;
}

test("MicroVm boots Linux with virtio-rng and virtio-blk over virtio-mmio on KVM", {
  skip: hasKvm() ? false : NO_KVM_REASON,
  timeout: 30 * 60_000,
}, async () => {
  const kernelPath = await ensureKernel({ verbose: true });
  const guest = await ensureGuest();
  const dir = mkdtempSync(join(tmpdir(), "vt-kvm-e2e-"));
  const disk = join(dir, "disk.img");
  const image = new Uint8Array(8 << 20);
  image.set(new TextEncoder().encode(DISK_MAGIC));
  writeFileSync(disk, image);
  const rng = new RngDevice();
  const block = new BlockDevice({ path: disk });
  let console = "";
  const errors: Error[] = [];
  const vm = MicroVm.create({
    kernel: new Uint8Array(readFileSync(kernelPath)),
    initrd: concat(new Uint8Array(readFileSync(guest.initramfs)), scriptCpio(GUEST_SCRIPT)),
    cmdline: "console=ttyS0 reboot=k panic=-1 pci=off quiet vt_nomod=1 vt_exit=reboot",
    memorySize: 256 << 20,
    devices: [rng, block],
    console: (text) => (console += text),
    onError: (e) => errors.push(e),
  });
  try {
    const result = await vm.run({ timeoutMs: 60_000 });
    const show = `\n--- console ---\n${console}\n--- errors ---\n${errors.join("\n")}`;
    assert.equal(result.reason, "reset", `the guest should reboot when done${show}`);
    assert.match(console, /VT-RESULT: PASS/, show);
    assert.match(console, /VT-RNG-CURRENT: virtio_rng/, show);
    assert.ok(rng.bytesServed >= 256, `rng served ${rng.bytesServed} bytes`);
    const after = readFileSync(disk);
    assert.equal(new TextDecoder().decode(after.subarray(512, 528)), "written-by-guest");
    assert.ok(result.elapsedMs < 60_000);
  } finally {
    vm.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

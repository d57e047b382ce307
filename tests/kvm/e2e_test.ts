// End to end on KVM: boots Debian's stock cloud kernel and the busybox initramfs of the test guest
// (launcher/guest/build.sh: no kernel of our own) on OUR VMM (kvm/vmm.ts) with 1, 2 and 4 vCPUs,
// an entropy device and a multi-queue block device over virtio-mmio, which the guest finds in
// the ACPI DSDT our VMM writes (queue kicks through ioeventfd, interrupts through irqfd and the
// I/O APIC). From inside the guest it checks the CPU count, the TSC-deadline timer, both devices,
// and that the block device has one queue per CPU and each CPU's reads use its own queue. Needs
// /dev/kvm (scripts/test.sh runs tests/kvm/ inside a nested-KVM guest where the host has none).
// Runs under Deno and Bun (each vCPU runs in a Worker on both).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvmUnavailableReason } from "../../sys/mod.ts";
import { MicroVm } from "../../kvm/mod.ts";
import { RngDevice } from "../../devices/rng.ts";
import { BlockDevice } from "../../devices/block.ts";
import { ensureGuest, scriptCpio } from "../../launcher/qemu.ts";
import { concatBytes } from "../../testing/mod.ts";

const DISK_MAGIC = "VIRTIO-TS-KVM-E2E";

function guestScript(cpus: number): string {
  return `
step cpus
expect_eq "$(nproc)" ${cpus} "nproc"
step tsc-deadline
grep -qw tsc_deadline_timer /proc/cpuinfo || fail "no tsc_deadline_timer flag"
step acpi-devices
ls /sys/bus/acpi/devices | grep -q '^LNRO0005:' || fail "no LNRO0005 device in ACPI"
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
step block-queues
expect_eq "$(ls /sys/block/vda/mq | wc -l)" ${cpus} "blk-mq hardware queues"
echo "VT-MQ: $(for q in /sys/block/vda/mq/*; do printf '%s=%s ' "\${q##*/}" "$(cat $q/cpu_list)"; done)"
c=0
while [ $c -lt ${cpus} ]; do
  taskset -c $c dd if=/dev/vda of=/dev/null bs=4096 count=4 skip=$((c * 4)) iflag=direct 2>/dev/null ||
    fail "direct read on CPU $c"
  c=$((c + 1))
done
step interrupts
grep -E 'IO-APIC.*virtio' /proc/interrupts || fail "virtio interrupts do not go through the I/O APIC"
step block-write
echo "written-by-guest" | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null
`;
}

for (const cpus of [1, 2, 4]) {
  test(
    `MicroVm boots the stock Debian kernel on ${cpus} vCPU(s) with virtio-rng and a ${cpus}-queue virtio-blk found through ACPI`,
    {
      skip: kvmUnavailableReason() === undefined ? false : `skipped: ${kvmUnavailableReason()}`,
      timeout: 10 * 60_000,
    },
    async () => {
      const guest = await ensureGuest();
      const dir = mkdtempSync(join(tmpdir(), "vt-kvm-e2e-"));
      const disk = join(dir, "disk.img");
      const image = new Uint8Array(8 << 20);
      image.set(new TextEncoder().encode(DISK_MAGIC));
      writeFileSync(disk, image);
      const rng = new RngDevice();
      const block = new BlockDevice({ path: disk, numQueues: cpus });
      // Which request queues the guest kicked (the transport runs a queue on each kick).
      const kicks = new Array<number>(cpus).fill(0);
      const processQueue = block.processQueue.bind(block);
      block.processQueue = (index: number) => {
        kicks[index]++;
        return processQueue(index);
      };
      let console = "";
      const errors: Error[] = [];
      const vm = MicroVm.create({
        kernel: new Uint8Array(readFileSync(guest.kernel)),
        initrd: concatBytes(
          new Uint8Array(readFileSync(guest.initramfs)),
          scriptCpio(guestScript(cpus)),
        ),
        cmdline: "console=ttyS0 panic=-1 pci=off quiet",
        memorySize: 256 << 20,
        cpus,
        devices: [rng, block],
        console: (text) => (console += text),
        onError: (e) => errors.push(e),
      });
      try {
        const result = await vm.run({ timeoutMs: 5 * 60_000 });
        const show =
          `\nreason ${result.reason}${
            result.detail ? ` (${result.detail})` : ""
          }, ${result.exits} exits, ${result.elapsedMs.toFixed(0)} ms` +
          `\n--- console ---\n${console}\n--- errors ---\n${errors.join("\n")}`;
        assert.match(console, /VT-RESULT: PASS/, show);
        assert.equal(result.reason, "poweroff", `the guest powers off through ACPI S5${show}`);
        assert.match(console, /VT-RNG-CURRENT: virtio_rng/, show);
        assert.ok(rng.bytesServed >= 256, `rng served ${rng.bytesServed} bytes`);
        // One CPU per queue, every CPU in some queue.
        const mq = /VT-MQ: (.*)/.exec(console)?.[1].trim().split(/\s+/) ?? [];
        const lists = mq.map((e) => e.split("=")[1]).sort();
        assert.deepEqual(lists, Array.from({ length: cpus }, (_, i) => String(i)).sort(), show);
        assert.ok(kicks.every((k) => k > 0), `kicks per queue: ${kicks}${show}`);
        const after = readFileSync(disk);
        assert.equal(new TextDecoder().decode(after.subarray(512, 528)), "written-by-guest");
      } finally {
        vm.close();
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
}

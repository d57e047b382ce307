// End to end on KVM with virtio over PCI: boots Debian's stock cloud kernel and the busybox
// initramfs of the test guest (launcher/guest/build.sh) on OUR VMM with `transport: "pci"`: no
// device on the command line and no `pci=off`. The guest finds the host bridge and the devices
// through ACPI (PCI0, MCFG) and configuration mechanism #1, `virtio_pci` binds them, and from
// inside the guest the script checks the CPUs, the PCI functions and their driver, entropy, the
// block device (one queue per CPU, each CPU's reads on its own queue, a write), and that the
// virtio interrupts are MSI-X (`PCI-MSIX` in /proc/interrupts). A third case boots with
// `pci=nomsi` and transitional devices, and re-binds `virtio_pci` with `force_legacy=1`: the
// legacy I/O BAR with INTx through the I/O APIC (`IO-APIC … fasteoi`). One boot per case.
// Needs /dev/kvm (scripts/test.sh runs tests/kvm/ inside a nested-KVM guest where the host has
// none). Runs under Deno and Bun.
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
import process from "node:process";

const DISK_MAGIC = "VIRTIO-TS-KVM-PCI";

interface Case {
  name: string;
  cpus: number;
  /** Legacy driver (virtio_pci force_legacy=1) with INTx (pci=nomsi). */
  legacy: boolean;
}

const CASES: Case[] = [
  { name: "1 vCPU, modern virtio-pci with MSI-X", cpus: 1, legacy: false },
  { name: "2 vCPUs, modern virtio-pci with MSI-X", cpus: 2, legacy: false },
  { name: "1 vCPU, legacy driver on transitional devices with INTx", cpus: 1, legacy: true },
];

function guestScript(c: Case): string {
  const rebind = c.legacy
    ? `
step legacy-rebind
ko="$(grep '/virtio_pci\\.ko$' /etc/vt-modules)"
rmmod virtio_pci || fail "rmmod virtio_pci"
insmod "$ko" force_legacy=1 || fail "insmod virtio_pci force_legacy=1"
`
    : "";
  const vectors = c.cpus + 1;
  const irqCheck = c.legacy
    ? `grep -qE 'IO-APIC.*fasteoi.*virtio' /proc/interrupts || fail "no level-triggered virtio IRQ"
if grep -q 'PCI-MSI' /proc/interrupts; then fail "MSI in use with pci=nomsi"; fi`
    : `grep -qE 'PCI-MSI.*virtio[0-9]+-(req|input)' /proc/interrupts || fail "no MSI-X queue IRQ"
if grep -q 'IO-APIC.*virtio' /proc/interrupts; then fail "a virtio IRQ on the I/O APIC"; fi
expect_eq "$(ls /sys/bus/pci/devices/0000:00:02.0/msi_irqs | wc -l)" ${vectors} "MSI-X vectors"`;
  return `
step cpus
expect_eq "$(nproc)" ${c.cpus} "nproc"
step pci-functions
for f in /sys/bus/pci/devices/*; do
  echo "VT-PCI: \${f##*/} $(cat $f/vendor):$(cat $f/device) class=$(cat $f/class) driver=$(basename "$(readlink $f/driver 2>/dev/null)")"
done
expect_eq "$(cat /sys/bus/pci/devices/0000:00:00.0/class)" 0x060000 "host bridge class"
grep -q 'PCI MMCONFIG' /proc/iomem && echo "VT-MMCONFIG: yes" || echo "VT-MMCONFIG: no"
# (No _OSC: Linux keeps to conventional PCI, which is what these functions are; it says so.)
dmesg | grep -iE 'ACPI (BIOS )?(Error|Warning)|AE_[A-Z_]+' | grep -v '_OSC' |
  sed 's/^/VT-ACPI-COMPLAINT: /' || true
${rebind}
step virtio-pci-bound
wait_for /sys/bus/virtio/devices/virtio1 50
for f in 0000:00:01.0 0000:00:02.0; do
  expect_eq "$(basename "$(readlink /sys/bus/pci/devices/$f/driver)")" virtio-pci "driver of $f"
done
ids="$(cat /sys/bus/virtio/devices/*/device | tr '\\n' ' ')"
echo "VT-DEVICE-IDS: $ids"
case "$ids" in *0x0004*) ;; *) fail "no virtio-rng among: $ids" ;; esac
case "$ids" in *0x0002*) ;; *) fail "no virtio-blk among: $ids" ;; esac
# Feature bit 32 (VERSION_1) tells the modern driver from the legacy one.
for d in /sys/bus/virtio/devices/*; do
  expect_eq "$(cut -c33 $d/features)" ${c.legacy ? 0 : 1} "VERSION_1 of \${d##*/}"
done
step hwrng
wait_for /dev/hwrng
echo "VT-RNG-CURRENT: $(cat /sys/class/misc/hw_random/rng_current)"
n="$(dd if=/dev/hwrng bs=64 count=4 2>/dev/null | wc -c)"
expect_eq "$n" 256 "bytes read from /dev/hwrng"
step block-read
wait_for /dev/vda
expect_eq "$(head -c ${DISK_MAGIC.length} /dev/vda)" "${DISK_MAGIC}" "first bytes of /dev/vda"
step block-queues
expect_eq "$(ls /sys/block/vda/mq | wc -l)" ${c.cpus} "blk-mq hardware queues"
c=0
while [ $c -lt ${c.cpus} ]; do
  taskset -c $c dd if=/dev/vda of=/dev/null bs=4096 count=4 skip=$((c * 4)) iflag=direct 2>/dev/null ||
    fail "direct read on CPU $c"
  c=$((c + 1))
done
step block-write
echo "written-by-guest" | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null
step interrupts
grep -E 'virtio|CPU' /proc/interrupts | sed 's/^/VT-IRQ: /'
${irqCheck}
`;
}

for (const c of CASES) {
  test(
    `MicroVm boots the stock Debian kernel over PCI (${c.name}): virtio_pci binds rng and block`,
    {
      skip: kvmUnavailableReason() === undefined ? false : `skipped: ${kvmUnavailableReason()}`,
      timeout: 10 * 60_000,
    },
    async () => {
      const guest = await ensureGuest();
      const dir = mkdtempSync(join(tmpdir(), "vt-kvm-pci-"));
      const disk = join(dir, "disk.img");
      const image = new Uint8Array(8 << 20);
      image.set(new TextEncoder().encode(DISK_MAGIC));
      writeFileSync(disk, image);
      const rng = new RngDevice();
      const block = new BlockDevice({ path: disk, numQueues: c.cpus });
      const kicks = new Array<number>(c.cpus).fill(0);
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
          scriptCpio(guestScript(c)),
        ),
        cmdline: `console=ttyS0 panic=-1 quiet${c.legacy ? " pci=nomsi" : ""}`,
        memorySize: 256 << 20,
        cpus: c.cpus,
        devices: [rng, block],
        transport: "pci",
        pci: { transitional: c.legacy },
        console: (text) => (console += text),
        onError: (e) => errors.push(e),
      });
      try {
        assert.doesNotMatch(vm.cmdline, /virtio_mmio|pci=off/);
        const result = await vm.run({ timeoutMs: 5 * 60_000 });
        const show =
          `\nreason ${result.reason}${
            result.detail ? ` (${result.detail})` : ""
          }, ${result.exits} exits, ${result.elapsedMs.toFixed(0)} ms` +
          `\n--- console ---\n${console}\n--- errors ---\n${errors.join("\n")}`;
        assert.match(console, /VT-RESULT: PASS/, show);
        assert.equal(result.reason, "poweroff", `the guest powers off through ACPI S5${show}`);
        assert.match(console, /VT-PCI: 0000:00:00\.0 0x1b36:0x0008 class=0x060000/, show);
        assert.match(console, /VT-RNG-CURRENT: virtio_rng/, show);
        assert.match(console, /VT-MMCONFIG: yes/, `the guest uses our ECAM window${show}`);
        assert.doesNotMatch(console, /VT-ACPI-COMPLAINT/, show);
        assert.ok(rng.bytesServed >= 256, `rng served ${rng.bytesServed} bytes`);
        assert.ok(kicks.every((k) => k > 0), `kicks per queue: ${kicks}${show}`);
        const after = readFileSync(disk);
        assert.equal(new TextDecoder().decode(after.subarray(512, 528)), "written-by-guest");
        // The excerpt of the guest's /proc/interrupts, for the record.
        process.stderr.write(
          `[${c.name}] ` + console.split("\n").filter((l) => l.startsWith("VT-IRQ")).join("\n") +
            "\n",
        );
      } finally {
        vm.close();
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
}

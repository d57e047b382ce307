/**
 * The main demo: a real Linux guest uses our TypeScript devices.
 *
 * With /dev/kvm, the guest boots on our own VMM (kvm/) with the devices on
 * virtio-mmio. Without it, QEMU (TCG, no KVM) is the VMM and our devices are
 * vhost-user backends, each started from the CLI (`vhost_user/main.ts`) as
 * its own process. The guest's console shows the drivers bound, a read of
 * /dev/hwrng, a write/read round trip on /dev/vda and a clean poweroff.
 *
 * Run: `npm run demo` (or `node_modules/.bin/deno run --allow-all demo/guest.ts`)
 *
 * @module
 */

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import process from "node:process";
import { ensureGuest, Sandbox } from "../launcher/mod.ts";
import { hasKvm } from "../sys/mod.ts";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

const SCRIPT = `
step drivers
for d in /sys/bus/virtio/devices/*; do
  echo "$(basename $d): device $(cat $d/device) vendor $(cat $d/vendor) driver $(basename $(readlink $d/driver))"
done
step hwrng
echo "hw_random current: $(cat /sys/class/misc/hw_random/rng_current)"
dd if=/dev/hwrng bs=32 count=1 2>/dev/null | hexdump -C
step vda
wait_for /dev/vda
echo "/dev/vda: $(cat /sys/block/vda/size) sectors, serial '$(cat /sys/block/vda/serial 2>/dev/null)'"
echo "hello from the guest, written through virtio-blk to a TypeScript backend" > /tmp/msg
dd if=/tmp/msg of=/dev/vda bs=512 seek=8 conv=sync,fsync 2>/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c $(wc -c < /tmp/msg) > /tmp/back
cmp /tmp/msg /tmp/back && echo "read back: $(cat /tmp/back)"
step poweroff
`;

async function qemuDemo(): Promise<number> {
  console.log(
    "/dev/kvm not present: QEMU (TCG) is the VMM, our devices are vhost-user backends",
  );
  await ensureGuest();
  const dir = mkdtempSync(join(tmpdir(), "vt-demo-"));
  const disk = join(dir, "disk.img");
  writeFileSync(disk, new Uint8Array(0));
  truncateSync(disk, 64 << 20);
  // Each backend is the CLI in its own process, as a user would run it.
  const box = await Sandbox.start({
    dir,
    backendStdout: "inherit",
    devices: [
      { id: "rng", kind: "rng", cli: [] },
      {
        id: "blk",
        kind: "blk",
        cli: ["--file", disk, "--serial", "vt-demo"],
        qemuProperties: "num-queues=1",
      },
    ],
  });
  try {
    const result = await box.boot({ script: SCRIPT, echo: true, timeoutSec: 180 });
    console.log(
      `\nguest ${result.passed ? "passed" : "FAILED"} and exited with ${result.exitCode} ` +
        `after ${(result.elapsedMs / 1000).toFixed(1)} s`,
    );
    return result.passed ? 0 : 1;
  } finally {
    await box.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function kvmDemo(): Promise<number> {
  console.log("/dev/kvm present: booting the guest on our own VMM (kvm/) over virtio-mmio");
  const deno = join(root, "node_modules", ".bin", "deno");
  const child = spawn(deno, ["run", "--allow-all", join(root, "demo", "kvm.ts")], {
    stdio: "inherit",
  });
  return await new Promise((resolve) => child.once("exit", (code) => resolve(code ?? 1)));
}

process.exitCode = hasKvm() ? await kvmDemo() : await qemuDemo();

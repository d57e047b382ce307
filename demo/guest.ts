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
import { bootGuest, ensureGuest } from "../launcher/qemu.ts";
import { startBackend } from "../launcher/backends.ts";
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
  const rngSock = join(dir, "rng.sock");
  const blkSock = join(dir, "blk.sock");
  const backends = [
    await startBackend(["--socket", rngSock, "--device", "rng"], { stdout: "inherit" }),
    await startBackend(
      ["--socket", blkSock, "--device", "blk", "--file", disk, "--serial", "vt-demo"],
      { stdout: "inherit" },
    ),
  ];
  try {
    const result = await bootGuest({
      args: [
        ...["-chardev", `socket,id=rng,path=${rngSock}`],
        ...["-device", "vhost-user-rng-pci,chardev=rng"],
        ...["-chardev", `socket,id=blk,path=${blkSock}`],
        ...["-device", "vhost-user-blk-pci,chardev=blk,num-queues=1"],
      ],
      script: SCRIPT,
      echo: true,
      timeoutSec: 180,
    });
    console.log(
      `\nguest ${result.passed ? "passed" : "FAILED"} and exited with ${result.exitCode} ` +
        `after ${(result.elapsedMs / 1000).toFixed(1)} s`,
    );
    return result.passed ? 0 : 1;
  } finally {
    for (const b of backends) await b.stop();
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

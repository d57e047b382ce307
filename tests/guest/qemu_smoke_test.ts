// Smoke test of the test guest itself (kernel + initramfs + init), using QEMU's OWN virtio
// devices (virtio-rng-pci, virtio-blk-pci): it proves that the image boots, loads its modules and
// runs scripts. Our device implementations are tested elsewhere.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bootGuest, ensureGuest, type GuestImage, qemuAvailable } from "../../launcher/qemu.ts";

async function guestOrSkip(t: { skip: (msg: string) => void }): Promise<GuestImage | undefined> {
  try {
    return await ensureGuest();
  } catch (e) {
    if (!qemuAvailable()) {
      t.skip(`qemu-system-x86_64 is not installed and could not be installed: ${e}`);
      return undefined;
    }
    throw e;
  }
}

const SCRIPT = `
step devices
ls /sys/bus/virtio/devices/
ids=$(cat /sys/bus/virtio/devices/*/device | sort | tr '\\n' ' ')
echo "ids: $ids"
expect_eq "$ids" "0x0002 0x0004 " "virtio device ids"

step hwrng
wait_for /dev/hwrng
cat /sys/class/misc/hw_random/rng_current
dd if=/dev/hwrng bs=64 count=1 2>/dev/null > /tmp/rnd
expect_eq "$(wc -c < /tmp/rnd)" 64 "random bytes"
hexdump -C /tmp/rnd

step blk-raw
wait_for /dev/vda
expect_eq "$(cat /sys/block/vda/size)" 131072 "vda sectors"
i=0; while [ $i -lt 256 ]; do printf 'virtio-ts pattern line %08d\\n' $i; i=$((i+1)); done > /tmp/pat
dd if=/tmp/pat of=/dev/vda bs=4096 conv=fsync 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back bs=4096 count=2 2>/dev/null
cmp /tmp/pat /tmp/back
echo "pattern ok: $(md5sum < /tmp/pat)"

step ext2
mkfs.ext2 -q /dev/vda >/dev/null
mkdir -p /mnt/d
mount -t ext2 /dev/vda /mnt/d
cp /tmp/pat /mnt/d/pat
umount /mnt/d
mount -t ext2 /dev/vda /mnt/d
cmp /tmp/pat /mnt/d/pat
grep -q ' /mnt/d ext' /proc/mounts
umount /mnt/d
echo "ext2 ok"
`;

test("test guest boots under QEMU and drives virtio-rng-pci and virtio-blk-pci", {
  timeout: 300_000,
}, async (t) => {
  const guest = await guestOrSkip(t);
  if (!guest) return;
  const dir = mkdtempSync(join(tmpdir(), "vt-smoke-"));
  try {
    const img = join(dir, "disk.img");
    writeFileSync(img, new Uint8Array(0));
    // 64 MiB sparse disk.
    truncateSync(img, 64 * 1024 * 1024);
    const r = await bootGuest({
      guest,
      script: SCRIPT,
      timeoutSec: 120,
      args: [
        ...["-device", "virtio-rng-pci"],
        ...["-drive", `file=${img},if=none,id=d0,format=raw`],
        ...["-device", "virtio-blk-pci,drive=d0"],
      ],
    });
    const info = `exit ${r.exitCode}, ${r.elapsedMs} ms, boot-to-init ${r.bootToInitMs} ms`;
    assert.ok(r.passed, `guest failed (${info}, step ${r.failedStep}):\n${r.output}\n${r.stderr}`);
    assert.deepEqual(r.steps, ["devices", "hwrng", "blk-raw", "ext2"]);
    assert.match(r.output, /^VT-MODULES ok=\d+ failed=0/m);
    assert.match(r.output, /^pattern ok/m);
    console.log(`guest smoke: ${info}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test(
  "guest reports the failing step, for every script transport",
  { timeout: 300_000 },
  async (t) => {
    const guest = await guestOrSkip(t);
    if (!guest) return;
    for (const via of ["initramfs", "fw_cfg", "cmdline"] as const) {
      const r = await bootGuest({
        guest,
        scriptVia: via,
        script: `step first\necho "it's \\"quoted\\" $((1+1))"\nstep second\nfalse\nstep never\n`,
        timeoutSec: 60,
      });
      assert.equal(r.exitCode, 0, `${via}: ${r.output}\n${r.stderr}`);
      assert.equal(r.passed, false, via);
      assert.equal(r.failedStep, "second", `${via}: ${r.output}`);
      assert.deepEqual(r.steps, ["first", "second"], via);
      assert.match(r.output, /^it's "quoted" 2$/m, via);
      assert.match(
        r.output,
        new RegExp(
          `^VT-SCRIPT source=${
            via === "initramfs" ? "file" : via === "cmdline" ? "vt_run64" : "fw_cfg"
          } `,
          "m",
        ),
      );
    }
  },
);

test(
  "guest runs a plain vt_run script from the kernel command line",
  { timeout: 300_000 },
  async (t) => {
    const guest = await guestOrSkip(t);
    if (!guest) return;
    const r = await bootGuest({
      guest,
      append: `vt_run="step one; uname -r; test -d /sys/bus/virtio"`,
      timeoutSec: 60,
    });
    assert.ok(r.passed, r.output);
    assert.deepEqual(r.steps, ["one"]);
  },
);

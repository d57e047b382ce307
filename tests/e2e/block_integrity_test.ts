// Data integrity of the block device against a real Linux guest (QEMU TCG, vhost-user):
// flushed data survives a SIGKILL of the backend process, a filesystem made and written
// by the guest survives a new boot, and the guest negotiated the features we offer.
// Three boots, each a few seconds; the backend runs as its own process (the CLI).

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { assertBytes, yesPattern } from "../../testing/bytes.ts";
import type { ChildProcess } from "node:child_process";
import {
  closeSync,
  mkdtempSync,
  openSync,
  readSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bootGuest, type BootResult, ensureGuest } from "../../launcher/qemu.ts";
import { startBackend } from "../../launcher/backends.ts";

const MiB = 1 << 20;
const DISK_SIZE = 128 * MiB;
const PATTERN_OFFSET = 4 * MiB;
const PATTERN_SIZE = 4 * MiB;

const PATTERN_LINE = "FLUSHED-BEFORE-SIGKILL-0123456789";

async function boot(
  dir: string,
  disk: string,
  script: string,
  onOutput?: (chunk: string, backend: ChildProcess) => void,
): Promise<BootResult> {
  const socket = join(dir, `blk-${Math.random().toString(36).slice(2)}.sock`);
  const backend = await startBackend([
    ...["--socket", socket, "--device", "blk", "--file", disk],
    ...["--serial", "vt-integrity", "--queues", "2"],
  ]);
  let seen = "";
  try {
    return await bootGuest({
      args: [
        ...["-chardev", `socket,id=blk,path=${socket}`],
        ...["-device", "vhost-user-blk-pci,chardev=blk,num-queues=2"],
        ...["-smp", "2"],
      ],
      script,
      timeoutSec: 180,
      // Markers can be split across chunks: match on everything seen so far.
      onOutput: onOutput && ((chunk: string) => onOutput(seen += chunk, backend.child)),
    });
  } finally {
    await backend.stop();
  }
}

const WRITE_AND_FLUSH = `
step write
wait_for /dev/vda
yes ${PATTERN_LINE} | head -c ${PATTERN_SIZE} > /tmp/pat
dd if=/tmp/pat of=/dev/vda bs=1048576 seek=${PATTERN_OFFSET / MiB} oflag=direct 2>/dev/null
# fsync on the block device issues VIRTIO_BLK_T_FLUSH
dd if=/dev/null of=/dev/vda conv=fsync 2>/dev/null
echo VT-FLUSHED
sleep 1
`;

const VERIFY_AND_MKFS = `
step features
wait_for /dev/vda
q=/sys/block/vda/queue
echo "VT-SYSFS serial=$(cat /sys/block/vda/serial) lbs=$(cat $q/logical_block_size) \\
pbs=$(cat $q/physical_block_size) wc=$(cat $q/write_cache | tr " " _) \\
discard=$(cat $q/discard_max_hw_bytes) wz=$(cat $q/write_zeroes_max_bytes) \\
segs=$(cat $q/max_segments) segsize=$(cat $q/max_segment_size) hwkb=$(cat $q/max_hw_sectors_kb) \\
ro=$(cat /sys/block/vda/ro) mq=$(ls /sys/block/vda/mq | wc -l)"
for d in /sys/bus/virtio/devices/*; do
  [ "$(cat $d/device)" = 0x0002 ] && echo "VT-FEATURES $(cat $d/features)"
done
step verify-flushed
yes ${PATTERN_LINE} | head -c ${PATTERN_SIZE} > /tmp/pat
dd if=/dev/vda bs=1048576 skip=${PATTERN_OFFSET / MiB} count=${
  PATTERN_SIZE / MiB
} 2>/dev/null | cmp /tmp/pat -
echo VT-SECOND-BOOT-SEES-DATA
step discard
blkdiscard -o 0 -l 1048576 /dev/vda 2>&1 || echo "blkdiscard unavailable"
step mkfs
mkfs.ext2 -q /dev/vda
mkdir -p /mnt
mount -t ext2 /dev/vda /mnt
echo "written in boot 2 through our block device" > /mnt/hello.txt
dd if=/dev/urandom of=/mnt/blob bs=65536 count=16 2>/dev/null
md5sum /mnt/blob | cut -d' ' -f1 > /mnt/blob.md5
sync
umount /mnt
echo VT-FS-WRITTEN
`;

const CHECK_FS = `
step mount
wait_for /dev/vda
mkdir -p /mnt
mount -t ext2 /dev/vda /mnt
expect_eq "$(cat /mnt/hello.txt)" "written in boot 2 through our block device" hello
expect_eq "$(md5sum /mnt/blob | cut -d' ' -f1)" "$(cat /mnt/blob.md5)" blob
umount /mnt
echo VT-FS-OK
`;

describe("block device data integrity with a real guest", { timeout: 600_000 }, () => {
  let dir: string;
  let disk: string;
  let first: BootResult;
  let second: BootResult;
  let third: BootResult;
  let killed = false;

  before(async () => {
    await ensureGuest();
    dir = mkdtempSync(join(tmpdir(), "vt-integrity-"));
    disk = join(dir, "disk.img");
    writeFileSync(disk, new Uint8Array(0));
    truncateSync(disk, DISK_SIZE);
    first = await boot(dir, disk, WRITE_AND_FLUSH, (chunk, backend) => {
      if (!killed && chunk.includes("VT-FLUSHED")) {
        killed = true;
        backend.kill("SIGKILL");
      }
    });
    second = await boot(dir, disk, VERIFY_AND_MKFS);
    third = await boot(dir, disk, CHECK_FS);
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("every byte flushed before the backend was SIGKILLed is in the image", () => {
    assert.ok(killed, first.output);
    const fd = openSync(disk, "r");
    const got = new Uint8Array(PATTERN_SIZE);
    readSync(fd, got, 0, PATTERN_SIZE, PATTERN_OFFSET);
    closeSync(fd);
    assertBytes(got, yesPattern(PATTERN_LINE, PATTERN_SIZE));
  });

  it("a second boot reads the flushed data back", () => {
    assert.match(second.output, /^VT-SECOND-BOOT-SEES-DATA$/m, second.output);
  });

  it("the guest negotiated every block feature offered (feature bits and sysfs)", () => {
    const m = second.output.match(/^VT-SYSFS (.*)$/m);
    assert.ok(m, second.output);
    const f = Object.fromEntries(m[1].trim().split(/\s+/).map((kv) => kv.split("=")));
    assert.equal(f.serial, "vt-integrity");
    assert.equal(f.lbs, "512");
    assert.equal(f.ro, "0");
    assert.equal(f.wc, "write_back"); // FLUSH + CONFIG_WCE in writeback mode
    assert.ok(Number(f.discard) > 0, `discard_max_hw_bytes ${f.discard}`);
    assert.ok(Number(f.wz) > 0, `write_zeroes_max_bytes ${f.wz}`);
    assert.ok(Number(f.segs) > 1, `max_segments ${f.segs}`); // SEG_MAX
    assert.equal(f.mq, "2"); // VIRTIO_BLK_F_MQ
    // The driver's negotiated feature bits, one character per bit from bit 0.
    const bits = /^VT-FEATURES ([01]+)$/m.exec(second.output)?.[1];
    assert.ok(bits, second.output);
    const named: Record<string, number> = {
      SIZE_MAX: 1,
      SEG_MAX: 2,
      BLK_SIZE: 6,
      FLUSH: 9,
      TOPOLOGY: 10,
      CONFIG_WCE: 11,
      MQ: 12,
      DISCARD: 13,
      WRITE_ZEROES: 14,
      INDIRECT_DESC: 28,
      EVENT_IDX: 29,
      VERSION_1: 32,
    };
    const missing = Object.entries(named).filter(([, bit]) => bits[bit] !== "1");
    assert.deepEqual(missing, [], `not negotiated by the guest: ${bits}`);
    assert.equal(bits[5], "0", "RO is not offered for a writable disk");
  });

  it("a filesystem made and written by the guest survives into a new boot", () => {
    assert.match(second.output, /^VT-FS-WRITTEN$/m, second.output);
    assert.equal(second.passed, true, second.output);
    assert.match(third.output, /^VT-FS-OK$/m, third.output);
    assert.equal(third.passed, true, third.output);
  });
});

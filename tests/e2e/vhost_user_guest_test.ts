// Real Linux guest (QEMU TCG, no KVM) driving our devices over vhost-user: the
// kernel's own virtio-rng and virtio-blk drivers against our TypeScript backends.
// One boot serves every check below; the guest script prints markers that the
// assertions read back.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { assertBytes, yesPattern } from "../../testing/bytes.ts";
import {
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BootResult, ensureGuest, Qmp, Sandbox } from "../../launcher/mod.ts";
import { RngDevice } from "../../devices/rng.ts";
import { BlockDevice, FileBackend, OverlayBackend } from "../../devices/block.ts";

const MiB = 1 << 20;
const PATTERN_OFFSET = MiB; // bytes into /dev/vda
const DISK_SIZE = 64 * MiB;
const SHRUNK_SIZE = 32 * MiB;

const PATTERN_LINE = "VIRTIO-TS-PATTERN-0123456789";
const BASE_SIZE = 8 * MiB;
const BASE_LINE = "VT-BASE-IMAGE";
const OVERLAY_LINE = "VT-OVERLAY-WRITE";
const OVERLAY_SECTOR = 3; // not on a cluster boundary: both ends are copied up
const OVERLAY_BYTES = 192 * 512;

const SCRIPT = `
step devices
for d in /sys/bus/virtio/devices/*; do echo "VT-DEV $(basename $d) $(cat $d/device)"; done
wait_for /dev/vda
wait_for /dev/vdb
wait_for /dev/vdc
step hwrng
expect_eq "$(cat /sys/class/misc/hw_random/rng_current)" virtio_rng.0 rng-current
n=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c)
expect_eq "$n" 64 hwrng-bytes
a=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | hexdump -v -e '/1 "%02x"')
b=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | hexdump -v -e '/1 "%02x"')
echo "VT-HWRNG $a $b"
[ "$a" != "$b" ] || fail "two hwrng reads are equal"
step blk-size
expect_eq "$(cat /sys/block/vda/size)" ${DISK_SIZE / 512} vda-sectors
step blk-write
yes ${PATTERN_LINE} | head -c 1048576 > /tmp/pat
dd if=/tmp/pat of=/dev/vda bs=65536 seek=${PATTERN_OFFSET / 65536} conv=fsync 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
step blk-readback
dd if=/dev/vda bs=65536 skip=${PATTERN_OFFSET / 65536} count=16 2>/dev/null > /tmp/back
cmp /tmp/pat /tmp/back
echo VT-READBACK-OK
step blk-readonly
expect_eq "$(cat /sys/block/vdb/ro)" 1 vdb-ro
expect_eq "$(cat /sys/block/vdb/queue/logical_block_size)" 4096 vdb-logical-block-size
expect_eq "$(cat /sys/block/vdb/queue/physical_block_size)" 16384 vdb-physical-block-size
echo "VT-VDB-BLOCKS $(cat /sys/block/vdb/queue/logical_block_size) $(cat /sys/block/vdb/queue/physical_block_size)"
blockdev --setrw /dev/vdb
if dd if=/tmp/pat of=/dev/vdb bs=4096 count=1 oflag=direct 2>/tmp/err; then fail "write to read-only disk succeeded"; fi
echo "VT-RO-REFUSED $(cat /tmp/err | head -1)"
step blk-overlay
expect_eq "$(head -n 1 /dev/vdc)" ${BASE_LINE} vdc-base-line
yes ${OVERLAY_LINE} | head -c ${OVERLAY_BYTES} > /tmp/ov
dd if=/tmp/ov of=/dev/vdc bs=512 seek=${OVERLAY_SECTOR} conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vdc bs=512 skip=${OVERLAY_SECTOR} count=${
  OVERLAY_BYTES / 512
} iflag=direct 2>/dev/null | cmp /tmp/ov -
expect_eq "$(head -n 1 /dev/vdc)" ${BASE_LINE} vdc-base-line-after
echo VT-OVERLAY-OK
step blk-packed
f=$(cat /sys/block/vda/device/features)
echo "VT-VDA-FEATURES $f"
expect_eq "$(echo "$f" | cut -c35)" 1 vda-ring-packed
step blk-cache-restart
echo "write through" > /sys/block/vda/cache_type
expect_eq "$(cat /sys/block/vda/cache_type)" "write through" cache-type-before
echo VT-PAUSE-NOW
sleep 2
expect_eq "$(cat /sys/block/vda/cache_type)" "write through" cache-type-after
expect_eq "$(cat /sys/block/vda/queue/write_cache)" "write through" queue-write-cache-after
dd if=/tmp/pat of=/dev/vda bs=65536 seek=${PATTERN_OFFSET / 65536} count=1 conv=fsync 2>/dev/null
echo VT-CACHE-KEPT
step blk-resize
echo VT-SHRINK-NOW
i=0
while [ "$(cat /sys/block/vda/size)" != "${SHRUNK_SIZE / 512}" ] && [ $i -lt 100 ]; do
  usleep 100000; i=$((i + 1))
done
expect_eq "$(cat /sys/block/vda/size)" ${SHRUNK_SIZE / 512} vda-sectors-after-resize
echo "VT-RESIZED $(cat /sys/block/vda/size)"
dd if=/dev/vda bs=65536 skip=${
  PATTERN_OFFSET / 65536
} count=16 iflag=direct 2>/dev/null | cmp /tmp/pat -
echo VT-STILL-SERVING
`;

describe("real Linux guest over vhost-user (QEMU TCG)", { timeout: 600_000 }, () => {
  let dir: string;
  let result: BootResult;
  let box: Sandbox;
  let rng: RngDevice;
  let vda: BlockDevice;
  let vdb: BlockDevice;
  const errors: string[] = [];
  const vdaLog: string[] = [];
  let writethroughWhilePaused: boolean | undefined;

  before(async () => {
    await ensureGuest();
    dir = mkdtempSync(join(tmpdir(), "vt-e2e-"));
    const vdaPath = join(dir, "vda.img");
    const vdbPath = join(dir, "vdb.img");
    writeFileSync(vdaPath, new Uint8Array(0));
    truncateSync(vdaPath, DISK_SIZE);
    writeFileSync(vdbPath, new Uint8Array(16 * MiB).fill(0x5a));
    rng = new RngDevice();
    vda = new BlockDevice({ path: vdaPath, serial: "vt-e2e-vda" });
    // 4 KiB logical blocks in 16 KiB physical ones: BLK_SIZE and TOPOLOGY as the guest sees them.
    vdb = new BlockDevice({
      path: vdbPath,
      readOnly: true,
      blockSize: 4096,
      physicalBlockSize: 16384,
    });
    const onError = (e: Error) => errors.push(e.message);
    writeFileSync(join(dir, "base.img"), yesPattern(BASE_LINE, BASE_SIZE));
    box = await Sandbox.start({
      dir,
      devices: [
        { id: "rng", kind: "rng", device: rng, backendOptions: { onError } },
        {
          id: "vda",
          kind: "blk",
          device: vda,
          backendOptions: { onError, log: (m) => vdaLog.push(m) },
          // The packed ring (virtio 1.2 §2.8), negotiated by the guest's own driver.
          qemuProperties: "num-queues=1,packed=on",
        },
        { id: "vdb", kind: "blk", device: vdb, backendOptions: { onError } },
        {
          // A copy-on-write overlay over a base image, served by the CLI in its own process,
          // in poll mode against the guest's own driver.
          id: "vdc",
          kind: "blk",
          cli: [
            ...["--file", join(dir, "base.img"), "--overlay", join(dir, "vdc.cow")],
            ...["--poll-us", "200"],
          ],
          qemuProperties: "num-queues=1",
        },
      ],
    });
    const qmpSocket = join(dir, "qmp.sock");
    let paused: Promise<void> | undefined;
    let shrunk = false;
    let seen = "";
    result = await box.boot({
      script: SCRIPT,
      qmpSocket,
      timeoutSec: 240,
      onOutput: (chunk: string) => {
        seen += chunk; // a marker can be split across chunks
        if (paused === undefined && seen.includes("VT-PAUSE-NOW")) {
          // Pause and resume the VM: QEMU stops every vhost-user ring (GET_VRING_BASE) and
          // restarts them (SET_FEATURES again, the rings again), as around a migration.
          paused = (async () => {
            const qmp = await Qmp.connect(qmpSocket);
            try {
              await qmp.execute("stop");
              writethroughWhilePaused = vda.writethrough;
              await qmp.execute("cont");
            } finally {
              qmp.close();
            }
          })().catch((e) => void errors.push(`qmp: ${e.message}`));
        }
        if (!shrunk && seen.includes("VT-SHRINK-NOW")) {
          shrunk = true;
          // The disk shrinks under the guest.
          truncateSync(vdaPath, SHRUNK_SIZE);
          vda.updateCapacity();
        }
      },
    });
    if (!result.passed) console.error(result.output);
    await paused;
    // Killed hard: what the guest flushed must already be in the overlay.
    const vdc = box.processes.get("vdc")!;
    vdc.child.kill("SIGKILL");
    await vdc.stop();
  });

  after(async () => {
    await box?.stop();
    vda?.remove();
    vdb?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("the guest binds its virtio drivers to our rng and three block devices", () => {
    const types = [...result.output.matchAll(/^VT-DEV \S+ (0x[0-9a-f]+)$/gm)].map((m) => m[1])
      .sort();
    assert.deepEqual(types, ["0x0002", "0x0002", "0x0002", "0x0004"], result.output);
  });

  it("the guest reads /dev/hwrng from our rng device", () => {
    assert.ok(result.steps.includes("hwrng"), result.output);
    assert.match(result.output, /^VT-HWRNG [0-9a-f]{32} [0-9a-f]{32}$/m);
    assert.ok(rng.bytesServed >= 64 + 32, `served ${rng.bytesServed} bytes`);
  });

  it("a pattern written by the guest is read back and is in the host image file", () => {
    assert.match(result.output, /^VT-READBACK-OK$/m, result.output);
    const fd = openSync(join(dir, "vda.img"), "r");
    const got = new Uint8Array(MiB);
    readSync(fd, got, 0, MiB, PATTERN_OFFSET);
    closeSync(fd);
    assertBytes(got, yesPattern(PATTERN_LINE, MiB));
    assert.ok(vda.stats.writes > 0 && vda.stats.flushes > 0, JSON.stringify(vda.stats));
  });

  it("a read-only disk with 4 KiB blocks: RO, BLK_SIZE and TOPOLOGY reach the guest", () => {
    assert.match(result.output, /^VT-VDB-BLOCKS 4096 16384$/m, result.output);
    // VIRTIO_BLK_F_RO was negotiated: the guest marks the disk read-only and refuses
    // writes itself (the device-side refusal is covered by the block unit tests).
    assert.ok(result.steps.includes("blk-readonly"), result.output);
    assert.match(result.output, /^VT-RO-REFUSED .*(I\/O error|Read-only|Operation not permitted)/m);
    assert.equal(vdb.stats.writes, 0);
  });

  it("a copy-on-write overlay takes the guest's writes and leaves the base image alone", () => {
    assert.match(result.output, /^VT-OVERLAY-OK$/m, result.output);
    assertBytes(
      new Uint8Array(readFileSync(join(dir, "base.img"))),
      yesPattern(BASE_LINE, BASE_SIZE),
      "base image unchanged",
    );
    // The overlay, reopened after the backend was SIGKILLed, holds the flushed write.
    const disk = OverlayBackend.openFile(
      new FileBackend(join(dir, "base.img"), { readOnly: true }),
      join(dir, "vdc.cow"),
    );
    try {
      const at = OVERLAY_SECTOR * 512;
      const got = new Uint8Array(OVERLAY_BYTES + 2048);
      disk.read([got], at - 1024);
      const base = yesPattern(BASE_LINE, BASE_SIZE);
      assertBytes(got.subarray(0, 1024), base.subarray(at - 1024, at));
      assertBytes(
        got.subarray(1024, 1024 + OVERLAY_BYTES),
        yesPattern(OVERLAY_LINE, OVERLAY_BYTES),
      );
      assertBytes(
        got.subarray(1024 + OVERLAY_BYTES),
        base.subarray(at + OVERLAY_BYTES, at + OVERLAY_BYTES + 1024),
      );
      assert.ok(disk.allocatedClusters >= 1);
    } finally {
      disk.close();
    }
  });

  it("a resize on the host reaches the guest as a config change; the backend keeps serving", () => {
    // The backend sends CONFIG_CHANGE_MSG on its backend request channel; QEMU reads the new
    // capacity (GET_CONFIG) and interrupts the guest, whose disk shrinks.
    assert.match(
      result.output,
      new RegExp(`^VT-RESIZED ${SHRUNK_SIZE / 512}$`, "m"),
      result.output,
    );
    assert.match(result.output, /^VT-STILL-SERVING$/m);
    assert.ok(box.backends.get("vda")!.connections === 1);
  });

  it("the guest negotiates the packed ring with our backend (VIRTIO_F_RING_PACKED)", () => {
    assert.ok(result.steps.includes("blk-packed"), result.output);
    assert.match(result.output, /^VT-VDA-FEATURES [01]{34}1/m, result.output);
    assert.equal(vda.stats.writes > 0 && vda.stats.reads > 0, true);
  });

  it("writethrough chosen by the guest survives a pause that restarts the rings", () => {
    assert.match(result.output, /^VT-CACHE-KEPT$/m, result.output);
    assert.ok(vdaLog.some((m) => /vring 0 stopped/.test(m)), vdaLog.join("\n"));
    assert.ok(vdaLog.filter((m) => /vring 0 started/.test(m)).length >= 2, vdaLog.join("\n"));
    assert.equal(writethroughWhilePaused, true);
    assert.equal(vda.writethrough, true, "still writethrough after the run");
  });

  it("the guest run passes and powers off cleanly", () => {
    assert.equal(result.passed, true, result.output);
    assert.equal(result.exitCode, 0);
  });
});

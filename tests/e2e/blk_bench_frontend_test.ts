// The end-to-end block benchmark's frontend (bench/_blk_load.ts over vhost_user/frontend.ts)
// against both backends it compares: ours (the CLI, its own process) and
// qemu-storage-daemon. It must negotiate with both, pass the read-back check against both,
// run every workload, and notice a backend that fails requests, so the benchmark's
// comparison is honest. Small op budgets: this checks behaviour, not speed.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureGuest } from "../../launcher/qemu.ts";
import { startBackend } from "../../launcher/backends.ts";
import { BlkLoadError, WORKLOADS } from "../../bench/_blk_load.ts";
import {
  type BackendProcess,
  connectLoad,
  hasQsd,
  readImage,
  startOurs,
  startQsd,
  writeBenchImage,
} from "../../bench/_blk_backends.ts";

const MiB = 1 << 20;
const DISK = 64 * MiB;

let dir = "";
let image = "";

function hostRead(offset: number, length: number): Uint8Array {
  return readImage(image, offset, length);
}

before(async () => {
  // qemu-storage-daemon comes with the guest's host packages (qemu-system-common).
  if (!hasQsd()) await ensureGuest();
  dir = mkdtempSync(join(tmpdir(), "virtio-ts-blkbench-"));
  image = join(dir, "disk.img");
  writeBenchImage(image, DISK / MiB);
});

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const CONTENDERS = ["ours", "ours --queue-threads, 2 queues", "qemu-storage-daemon"] as const;
for (const which of CONTENDERS) {
  describe(`benchmark frontend against ${which}`, () => {
    it("negotiates, reads back what it wrote, and runs every workload", async () => {
      const socket = join(dir, `${which.split(" ")[0]}-${which.length}.sock`);
      const rings = which === "ours --queue-threads, 2 queues" ? 2 : 1;
      const proc: BackendProcess = which === "qemu-storage-daemon"
        ? await startQsd(image, socket)
        : await startOurs(image, socket, { queueThreads: rings > 1, queues: rings });
      try {
        const { frontend, loads } = await connectLoad(socket, { rings });
        try {
          for (const [i, load] of loads.entries()) {
            assert.equal(load.capacity, DISK);
            const checked = await load.verify(hostRead, { count: 40, seed: 5 + i });
            assert.ok(checked >= MiB + 30 * 4096, `checked ${checked} bytes`);
          }
          for (const w of WORKLOADS) {
            // Every ring at once.
            const rs = await Promise.all(
              loads.map((l, i) => l.run(w, { maxOps: 48, durationMs: 60_000, seed: 3 + i })),
            );
            for (const r of rs) {
              assert.equal(r.ops, 48, `${w.name}: every submitted request completed`);
              assert.equal(r.bytes, 48 * w.blockSize);
            }
          }
          // The check still holds after the load (the ring wrapped meanwhile).
          for (const load of loads) await load.verify(hostRead, { count: 8, seed: 99 });
        } finally {
          await frontend.close();
        }
      } finally {
        await proc.stop();
      }
    });
  });
}

describe("benchmark frontend against a failing backend", () => {
  it("stops with BlkLoadError when writes complete with IOERR (read-only disk)", async () => {
    const socket = join(dir, "ro.sock");
    const proc = await startBackend([
      ...["--socket", socket, "--device", "blk", "--file", image, "--readonly"],
    ]);
    try {
      const first = await connectLoad(socket);
      try {
        await assert.rejects(
          first.load.verify(hostRead, { count: 4 }),
          (e: unknown) => e instanceof BlkLoadError && /status 1/.test(e.message),
        );
        await assert.rejects(
          first.load.run(WORKLOADS[0], { maxOps: 4 }),
          /unusable after an earlier failure/,
        );
      } finally {
        await first.frontend.close();
      }
      const second = await connectLoad(socket);
      try {
        await assert.rejects(
          second.load.run(WORKLOADS.find((w) => w.op === "write")!, { maxOps: 4 }),
          (e: unknown) => e instanceof BlkLoadError && /status 1/.test(e.message),
        );
      } finally {
        await second.frontend.close();
      }
      // Reads of the read-only disk still work on a fresh connection (one frontend at a time).
      const third = await connectLoad(socket);
      try {
        const r = await third.load.run(WORKLOADS[0], { maxOps: 8 });
        assert.equal(r.ops, 8);
      } finally {
        await third.frontend.close();
      }
    } finally {
      await proc.stop();
    }
  });
});

// Random and half-random FUSE requests through the virtio-fs device: plausible headers with
// random opcodes, node ids and handles (known ones and forged ones), random argument bytes
// and names, random chain shapes. The device must never throw, every reply must be a
// well-formed FUSE reply for its request, descriptors stay within the caps, nothing appears
// outside the share, and a good request still works afterwards.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { FUSE_OUT_HEADER_SIZE, fuseHasReply, fuseRequest } from "../../devices/fs.ts";
import { fsRig } from "./_fs_rig.ts";

function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

describe("virtio-fs fuzz", () => {
  it("thousands of random requests: no throw, well-formed replies, bounded descriptors", async () => {
    const rig = fsRig({ maxInodes: 64, maxHandles: 32, posixLocks: true, flock: true });
    const rand = rng(0xf5f5);
    const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)];
    const fdsBefore = readdirSync("/proc/self/fd").length;
    try {
      const s = rig.session;
      await s.init();
      const good = ["a", "b", "dir", "x y", "\u00e9", "l"];
      const bad = ["..", ".", "a/b", "", "n".repeat(300)];
      const name = () => rand() < 0.85 ? pick(good) : pick(bad);
      const nodes = [1];
      const forged = [0, 99, 2 ** 40];
      // Argument sizes by opcode (as Linux sends them), so most requests parse and reach the
      // server; the values inside are small random numbers (handles, modes, sizes, offsets).
      const FIXED: Record<number, number> = {
        1: 0,
        2: 8,
        3: 16,
        4: 88,
        5: 0,
        6: 0,
        8: 16,
        9: 8,
        10: 0,
        11: 0,
        12: 8,
        13: 8,
        14: 8,
        15: 40,
        16: 40,
        17: 0,
        18: 24,
        20: 16,
        21: 16,
        22: 8,
        23: 8,
        24: 0,
        25: 24,
        27: 8,
        28: 40,
        29: 24,
        30: 16,
        31: 48,
        32: 48,
        33: 48,
        34: 8,
        35: 16,
        36: 8,
        42: 8,
        43: 32,
        44: 40,
        45: 16,
        46: 24,
        47: 56,
        48: 40,
        49: 4,
        50: 8,
      };
      const ops = Object.keys(FIXED).map(Number);
      let replies = 0;
      for (let i = 0; i < 4000; i++) {
        // INIT and DESTROY end the session: rare, so the rest gets somewhere.
        const opcode = rand() < 0.005
          ? pick([26, 38])
          : rand() < 0.95
          ? pick(ops)
          : Math.floor(rand() * 5000);
        const parts: Uint8Array[] = [];
        const size = FIXED[opcode] ?? Math.floor(rand() * 96);
        const fixed = new Uint8Array(rand() < 0.9 ? size : Math.floor(rand() * 96));
        const fv = new DataView(fixed.buffer);
        for (let j = 0; j + 4 <= fixed.length; j += 4) {
          const r = rand();
          fv.setUint32(
            j,
            r < 0.5
              ? Math.floor(rand() * 8)
              : r < 0.8
              ? Math.floor(rand() * 0o200000)
              : Math.floor(rand() * 2 ** 32),
            true,
          );
        }
        if (opcode === 16 && fixed.length >= 20) {
          // WRITE: data that matches its size field, mostly.
          const n = Math.floor(rand() * 5000);
          fv.setUint32(16, rand() < 0.9 ? n : n + 1, true);
          parts.push(fixed, new Uint8Array(n).fill(0x61));
        } else {
          parts.push(fixed);
          if (rand() < 0.8) {
            parts.push(new TextEncoder().encode(name() + (rand() < 0.95 ? "\0" : "")));
          }
          if (rand() < 0.4) parts.push(new TextEncoder().encode(name() + "\0"));
        }
        const header = {
          nodeid: rand() < 0.85 ? pick(nodes) : pick(forged),
          unique: BigInt(i + 1),
          len: rand() < 0.03 ? Math.floor(rand() * 400) : undefined,
          totalExtlen: rand() < 0.02 ? Math.floor(rand() * 4) : 0,
        };
        const req = fuseRequest(opcode, header, ...parts);
        const writable = rand() < 0.05 ? [] : [rand() < 0.2 ? Math.floor(rand() * 300) : 16 + 8192];
        const queue = rand() < 0.05 ? 0 : 1;
        const out = await s.transport.roundTrip(queue, [req], writable);
        if (opcode === 26 || opcode === 38) {
          // The session ended (or restarted with random arguments): a proper one again.
          await s.init();
          nodes.length = 1;
        }
        if (out.length === 0) continue;
        assert.ok(out.length >= FUSE_OUT_HEADER_SIZE, `opcode ${opcode}: ${out.length} bytes`);
        const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
        assert.equal(v.getUint32(0, true), out.length, "out.len is the used length");
        const error = v.getInt32(4, true);
        assert.ok(error <= 0 && error > -4096, `error ${error}`);
        if (error !== 0) assert.equal(out.length, FUSE_OUT_HEADER_SIZE, "an error carries no data");
        else replies++;
        const unique = v.getBigUint64(8, true);
        assert.ok(unique === BigInt(i + 1) || unique === 0n);
        if (!fuseHasReply(opcode) && queue === 1 && header.len === undefined) {
          assert.fail(`opcode ${opcode} has no reply but got ${out.length} bytes`);
        }
        // Node ids the server hands out become targets of later requests.
        if (error === 0 && [1, 6, 8, 9, 13, 35].includes(opcode) && out.length >= 24) {
          const id = Number(v.getBigUint64(16, true));
          if (id > 1 && !nodes.includes(id)) nodes.push(id);
        }
      }
      assert.ok(replies > 300, `${replies} successful replies`);
      const stats = rig.device.stats;
      assert.ok(stats.inodes <= 65 && stats.handles <= 32, JSON.stringify(stats));
      assert.ok(readdirSync("/proc/self/fd").length - fdsBefore <= 65 + 32 + 32);
      // Still serving.
      await s.init();
      await s.mkdir(1, "after-fuzz");
      assert.ok((await s.lookup(1, "after-fuzz")).nodeid > 1);
      assert.deepEqual(readdirSync(rig.outside), ["secret"], "nothing appeared outside");
      assert.ok(
        rig.errors.every((e) => e.kind === "InvalidInput"),
        String(rig.errors.find((e) => e.kind !== "InvalidInput")),
      );
    } finally {
      rig.close();
    }
  });
});

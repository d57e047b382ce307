// Randomised hostile-driver test of the block device: thousands of requests, most of them
// well formed and many of them not (short or missing headers, wrong directions, ranges past the
// end or beyond 2^53, odd lengths, unknown types, missing status bytes, reserved flags), through
// the real queue and device. Properties checked on every request:
// - nothing throws and every chain comes back in the used ring;
// - the used length is 0, 1 or every writable byte, and a status byte is 0, 1 or 2;
// - a request reported OK was valid, and a valid request built without mutation is OK;
// - the disk changes exactly as the OK requests say: a shadow copy is kept and compared with
//   every OK read and, at the end, byte for byte;
// - the device keeps serving afterwards.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { assertBytes } from "../../testing/bytes.ts";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { SplitQueue } from "../../queue/split.ts";
import { type DriverBuffer, DriverQueue } from "../../testing/queue_driver.ts";
import { VirtioDeviceConfig, VirtioQueueConfig } from "../../devices/device.ts";
import {
  BlockDevice,
  blockRangeSegment,
  blockRequestHeader,
  MemoryBackend,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from "../../devices/block.ts";

const SECTORS = 512; // a 256 KiB disk
const DISK = SECTORS * 512;

class Rand {
  #x: number;
  constructor(seed: number) {
    this.#x = seed >>> 0 || 1;
  }
  u32(): number {
    let x = this.#x;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (this.#x = x >>> 0);
  }
  int(n: number): number {
    return this.u32() % n;
  }
  chance(p: number): boolean {
    return this.u32() / 0x1_0000_0000 < p;
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}

/** Split `n` bytes into 1–4 pieces (of any sizes). */
function pieces(r: Rand, n: number): number[] {
  const out: number[] = [];
  let left = n;
  while (left > 0) {
    const take = out.length === 3 ? left : Math.max(1, Math.min(left, r.int(left) + 1));
    out.push(take);
    left -= take;
  }
  return out;
}

interface Built {
  buffers: DriverBuffer[];
  /** What a correct device must do, when the request is well formed. */
  expect?:
    | { kind: "in"; offset: number; length: number }
    | { kind: "out"; offset: number; data: Uint8Array }
    | { kind: "zero"; ranges: [number, number][] }
    | { kind: "flush" }
    | { kind: "id" };
  /** Whether the status byte is the chain's last device-writable byte, alone in its buffer. */
  hasStatus: boolean;
}

function sectorFor(r: Rand, sectors: number): number {
  const k = r.int(10);
  if (k === 0) return SECTORS - sectors + 1 + r.int(4); // just past the end
  if (k === 1) return 2 ** 53 + r.int(1000); // beyond the safe integers
  if (k === 2) return 0xffff_ffff + r.int(2); // 32-bit edge
  return r.int(Math.max(1, SECTORS - sectors + 1));
}

function build(r: Rand): Built {
  const pick = r.int(8);
  const sectors = 1 + r.int(16);
  const sector = sectorFor(r, sectors);
  const valid = sector + sectors <= SECTORS;
  switch (pick) {
    case 0:
    case 1: {
      const len = sectors * 512;
      return {
        buffers: [
          { readable: blockRequestHeader(VIRTIO_BLK_T_IN, sector) },
          ...pieces(r, len).map((n) => ({ writable: n })),
          { writable: 1 },
        ],
        expect: valid ? { kind: "in", offset: sector * 512, length: len } : undefined,
        hasStatus: true,
      };
    }
    case 2:
    case 3: {
      const data = r.bytes(sectors * 512);
      const parts: DriverBuffer[] = [];
      let at = 0;
      for (const n of pieces(r, data.length)) {
        parts.push({ readable: data.subarray(at, at + n) });
        at += n;
      }
      return {
        buffers: [{ readable: blockRequestHeader(VIRTIO_BLK_T_OUT, sector) }, ...parts, {
          writable: 1,
        }],
        expect: valid ? { kind: "out", offset: sector * 512, data } : undefined,
        hasStatus: true,
      };
    }
    case 4: {
      const type = r.chance(0.5) ? VIRTIO_BLK_T_DISCARD : VIRTIO_BLK_T_WRITE_ZEROES;
      const count = 1 + r.int(3);
      const segs: Uint8Array[] = [];
      const ranges: [number, number][] = [];
      let ok = true;
      for (let i = 0; i < count; i++) {
        const n = 1 + r.int(64);
        const s = sectorFor(r, n);
        const unmap = type === VIRTIO_BLK_T_WRITE_ZEROES && r.chance(0.5);
        segs.push(blockRangeSegment(s, n, unmap ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0));
        if (s + n > SECTORS) ok = false;
        ranges.push([s * 512, n * 512]);
      }
      const body = new Uint8Array(16 * count);
      segs.forEach((s, i) => body.set(s, 16 * i));
      return {
        buffers: [{ readable: blockRequestHeader(type, 0) }, { readable: body }, { writable: 1 }],
        expect: ok ? { kind: "zero", ranges } : undefined,
        hasStatus: true,
      };
    }
    case 5:
      return {
        buffers: [{ readable: blockRequestHeader(VIRTIO_BLK_T_FLUSH, 0) }, { writable: 1 }],
        expect: { kind: "flush" },
        hasStatus: true,
      };
    case 6:
      return {
        buffers: [{ readable: blockRequestHeader(VIRTIO_BLK_T_GET_ID, 0) }, { writable: 20 }, {
          writable: 1,
        }],
        expect: { kind: "id" },
        hasStatus: true,
      };
    default: {
      // Garbage: a random mix of readable and writable buffers, or a random header.
      const buffers: DriverBuffer[] = [];
      const n = 1 + r.int(4);
      let writableSeen = false;
      for (let i = 0; i < n; i++) {
        if (writableSeen || r.chance(0.4)) {
          buffers.push({ writable: 1 + r.int(600) });
          writableSeen = true;
        } else {
          buffers.push({ readable: r.bytes(1 + r.int(40)) });
        }
      }
      return { buffers, hasStatus: false };
    }
  }
}

/** Optionally damage a well-formed request so it must be refused (or answered UNSUPP). */
function mutate(r: Rand, b: Built): Built {
  // Only requests built well formed are damaged (garbage is already garbage).
  if (!r.chance(0.25) || !b.hasStatus || b.buffers.length < 2) return b;
  const buffers = [...b.buffers];
  const kind = b.expect?.kind;
  switch (r.int(4)) {
    case 0: // short header
      buffers[0] = { readable: (buffers[0] as { readable: Uint8Array }).readable.subarray(0, 7) };
      return { buffers, hasStatus: true };
    case 1: // no status byte: the last data byte becomes the status, leaving an odd length
      if (kind !== "in") return b;
      buffers.pop();
      return { buffers, hasStatus: false };
    case 2: { // unknown type
      const h = new Uint8Array((buffers[0] as { readable: Uint8Array }).readable);
      new DataView(h.buffer).setUint32(0, 100 + r.int(1000), true);
      buffers[0] = { readable: h };
      return { buffers, hasStatus: true };
    }
    default: { // an odd data length (GET_ID may be longer than the ID: not a fault)
      if (buffers.length < 3 || kind === "id") return b;
      const d = buffers[1];
      buffers[1] = "writable" in d ? { writable: d.writable + 1 } : {
        readable: new Uint8Array([...d.readable, 0]),
      };
      return { buffers, hasStatus: true };
    }
  }
}

describe("BlockDevice under a hostile driver (randomised)", () => {
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: 1500 requests keep the disk consistent with what was acknowledged`, () => {
      const r = new Rand(seed * 7919);
      const shadow = r.bytes(DISK);
      const backend = new MemoryBackend(shadow.slice());
      const errors: string[] = [];
      const blk = new BlockDevice({
        backend,
        serial: "fuzz",
        queueSize: 256,
        onError: (e) => errors.push(e.message),
      });
      const features = BigInt(blk.getAvailFeatures(0)) | (BigInt(blk.getAvailFeatures(1)) << 32n);
      blk.setAckedFeatures(0, Number(features & 0xffffffffn));
      blk.setAckedFeatures(1, Number(features >> 32n));
      const mem = GuestMemory.create(4 << 20);
      const driver = new DriverQueue(mem, { size: 256, eventIdx: true });
      const queue = new SplitQueue(256);
      driver.program(queue);
      blk.activate(
        new VirtioDeviceConfig({
          memory: mem,
          queues: [new VirtioQueueConfig(0, queue, { notify() {} })],
          deviceChangeNotifier: { notify() {} },
          ackedFeatures: blk.ackedFeatures(),
        }),
      );
      let oks = 0, refused = 0;
      for (let i = 0; i < 1500; i++) {
        const original = build(r);
        const req = mutate(r, original);
        const damaged = req !== original;
        const writable = req.buffers.reduce((n, b) => n + ("writable" in b ? b.writable : 0), 0);
        const head = driver.addChain(req.buffers, { indirect: r.chance(0.3) });
        assert.doesNotThrow(() => blk.processQueue(0));
        const used = driver.takeUsed();
        assert.ok(used !== null && used.id === head, `request ${i} came back`);
        assert.equal(driver.takeUsed(), null);
        assert.ok(
          used.len === 0 || used.len === 1 || used.len === writable,
          `request ${i}: used length ${used.len} of ${writable} writable bytes`,
        );
        const status = used.len === 0 ? undefined : used.written[writable - 1];
        if (status !== undefined) assert.ok(status <= VIRTIO_BLK_S_UNSUPP, `status ${status}`);
        const ok = status === VIRTIO_BLK_S_OK && used.len === writable;
        const e = req.hasStatus ? (damaged ? undefined : original.expect) : undefined;
        if (e !== undefined) {
          assert.ok(ok, `request ${i}: a valid ${e.kind} was refused (status ${status})`);
        }
        if (!ok) {
          refused++;
          continue;
        }
        oks++;
        assert.ok(
          e !== undefined,
          `request ${i}: an invalid request was acknowledged: ${
            JSON.stringify(req.buffers.map((b) =>
              "writable" in b
                ? `w${b.writable}`
                : `r${b.readable.length}:${[...b.readable.subarray(0, 16)]}`
            ))
          } damaged=${damaged} expect=${JSON.stringify(original.expect)?.slice(0, 80)}`,
        );
        switch (e.kind) {
          case "in":
            assertBytes(
              used.written.subarray(0, e.length),
              shadow.subarray(e.offset, e.offset + e.length),
              `request ${i}: read data`,
            );
            break;
          case "out":
            shadow.set(e.data, e.offset);
            break;
          case "zero":
            for (const [off, len] of e.ranges) shadow.fill(0, off, off + len);
            break;
          case "id":
            assert.equal(new TextDecoder().decode(used.written.subarray(0, 4)), "fuzz");
            break;
        }
      }
      assertBytes(backend.bytes, shadow, "the disk holds exactly what was acknowledged");
      assert.ok(oks > 500 && refused > 200, `${oks} OK, ${refused} refused`);
      assert.equal(blk.stats.errors, refused);
      // Still serving.
      driver.addChain([{ readable: blockRequestHeader(VIRTIO_BLK_T_IN, 0) }, { writable: 512 }, {
        writable: 1,
      }]);
      blk.processQueue(0);
      const last = driver.takeUsed()!;
      assert.equal(last.written[512], VIRTIO_BLK_S_OK);
      assertBytes(last.written.subarray(0, 512), shadow.subarray(0, 512));
    });
  }
});

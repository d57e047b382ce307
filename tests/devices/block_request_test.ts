import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { SplitQueue, VIRTIO_F_INDIRECT_DESC } from "../../queue/split.ts";
import { type DriverBuffer, DriverQueue } from "../../testing/queue_driver.ts";
import type { DescriptorChain } from "../../queue/chain.ts";
import { featureBit } from "../../devices/device.ts";
import {
  blockRangeSegment,
  blockRequestHeader,
  type BlockRequestLimits,
  parseRequest,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_FLUSH_OUT,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_GET_LIFETIME,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_SECURE_ERASE,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from "../../devices/block.ts";

const LIMITS: BlockRequestLimits = {
  capacitySectors: 1024,
  readOnly: false,
  blockSize: 512,
  discard: true,
  maxDiscardSegments: 4,
  maxDiscardSectors: 256,
  writeZeroes: true,
  maxWriteZeroesSegments: 2,
  maxWriteZeroesSectors: 128,
};

/** A request header with garbage in the reserved field, which the parser must ignore. */
function hdr(type: number, sector: number | bigint = 0): Uint8Array {
  const b = blockRequestHeader(type, sector);
  new DataView(b.buffer).setUint32(4, 0xdeadbeef, true);
  return b;
}

const seg = blockRangeSegment;

function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

const R = (bytes: Uint8Array | number): DriverBuffer => ({
  readable: typeof bytes === "number" ? new Uint8Array(bytes) : bytes,
});
const W = (n: number): DriverBuffer => ({ writable: n });
const STATUS = W(1);

function chainOf(buffers: DriverBuffer[], indirect = false): DescriptorChain {
  const mem = GuestMemory.create(1 << 20);
  const driver = new DriverQueue(mem, { size: 16 });
  const queue = new SplitQueue(16);
  driver.program(queue);
  if (indirect) queue.setFeatures(featureBit(VIRTIO_F_INDIRECT_DESC));
  driver.addChain(buffers, { indirect });
  const chain = queue.pop(mem);
  assert.ok(chain !== null);
  return chain;
}

interface Good {
  name: string;
  chain: DriverBuffer[];
  indirect?: boolean;
  limits?: Partial<BlockRequestLimits>;
  type: number;
  sector?: number;
  length?: number;
  segments?: { sector: number; numSectors: number; unmap: boolean }[];
}

const good: Good[] = [
  {
    name: "IN over three writable segments",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 10)), W(512), W(256), W(256), STATUS],
    type: VIRTIO_BLK_T_IN,
    sector: 10,
    length: 1024,
  },
  {
    name: "IN whose status shares the last data descriptor",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 3)), W(1025)],
    type: VIRTIO_BLK_T_IN,
    sector: 3,
    length: 1024,
  },
  {
    name: "IN through an indirect table",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 7)), W(512), STATUS],
    indirect: true,
    type: VIRTIO_BLK_T_IN,
    sector: 7,
    length: 512,
  },
  {
    name: "IN ending exactly at the capacity",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 1022)), W(1024), STATUS],
    type: VIRTIO_BLK_T_IN,
    sector: 1022,
    length: 1024,
  },
  {
    name: "IN of no data",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 5)), STATUS],
    type: VIRTIO_BLK_T_IN,
    sector: 5,
    length: 0,
  },
  {
    name: "OUT with header and data in one descriptor",
    chain: [R(cat(hdr(VIRTIO_BLK_T_OUT, 2), new Uint8Array(512))), STATUS],
    type: VIRTIO_BLK_T_OUT,
    sector: 2,
    length: 512,
  },
  {
    name: "OUT over two readable segments",
    chain: [R(hdr(VIRTIO_BLK_T_OUT, 0)), R(1024), R(512), STATUS],
    type: VIRTIO_BLK_T_OUT,
    sector: 0,
    length: 1536,
  },
  {
    name: "OUT aligned to 4 KiB blocks",
    chain: [R(hdr(VIRTIO_BLK_T_OUT, 8)), R(4096), STATUS],
    limits: { blockSize: 4096 },
    type: VIRTIO_BLK_T_OUT,
    sector: 8,
    length: 4096,
  },
  { name: "FLUSH", chain: [R(hdr(VIRTIO_BLK_T_FLUSH)), STATUS], type: VIRTIO_BLK_T_FLUSH },
  {
    name: "legacy FLUSH_OUT is a FLUSH",
    chain: [R(hdr(VIRTIO_BLK_T_FLUSH_OUT)), STATUS],
    type: VIRTIO_BLK_T_FLUSH,
  },
  {
    name: "FLUSH on a read-only disk",
    chain: [R(hdr(VIRTIO_BLK_T_FLUSH)), STATUS],
    limits: { readOnly: true },
    type: VIRTIO_BLK_T_FLUSH,
  },
  {
    name: "GET_ID with 20 bytes of room",
    chain: [R(hdr(VIRTIO_BLK_T_GET_ID)), W(20), STATUS],
    type: VIRTIO_BLK_T_GET_ID,
    length: 20,
  },
  {
    name: "IN on a read-only disk",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 1)), W(512), STATUS],
    limits: { readOnly: true },
    type: VIRTIO_BLK_T_IN,
    sector: 1,
    length: 512,
  },
  {
    name: "DISCARD of two segments",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(cat(seg(0, 8), seg(1000, 24))), STATUS],
    type: VIRTIO_BLK_T_DISCARD,
    segments: [
      { sector: 0, numSectors: 8, unmap: false },
      { sector: 1000, numSectors: 24, unmap: false },
    ],
  },
  {
    name: "WRITE_ZEROES with and without UNMAP",
    chain: [
      R(cat(hdr(VIRTIO_BLK_T_WRITE_ZEROES), seg(4, 4, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))),
      R(seg(100, 128)),
      STATUS,
    ],
    type: VIRTIO_BLK_T_WRITE_ZEROES,
    segments: [
      { sector: 4, numSectors: 4, unmap: true },
      { sector: 100, numSectors: 128, unmap: false },
    ],
  },
];

interface Bad {
  name: string;
  chain: DriverBuffer[];
  limits?: Partial<BlockRequestLimits>;
  /** Expected status; `undefined` for a chain that cannot be answered. */
  status: number | undefined;
  reason: RegExp;
}

const bad: Bad[] = [
  {
    name: "no device-writable byte at all",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 0)), R(512)],
    status: undefined,
    reason: /status/,
  },
  {
    name: "status byte placed in a readable buffer",
    chain: [R(hdr(VIRTIO_BLK_T_OUT, 0)), R(512), R(1)],
    status: undefined,
    reason: /status/,
  },
  {
    name: "header of 8 bytes",
    chain: [R(8), W(512), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /header of 8 bytes/,
  },
  { name: "no header", chain: [STATUS], status: VIRTIO_BLK_S_IOERR, reason: /header of 0/ },
  {
    name: "header one byte short",
    chain: [R(hdr(VIRTIO_BLK_T_IN).subarray(0, 15)), W(512), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /header of 15/,
  },
  {
    name: "IN with device-readable data",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 0)), R(512), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /IN with 512 device-readable/,
  },
  {
    name: "OUT with device-writable data",
    chain: [R(hdr(VIRTIO_BLK_T_OUT, 0)), W(512), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /OUT with 512 device-writable/,
  },
  {
    name: "IN of 100 bytes",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 0)), W(100), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /not a multiple of 512/,
  },
  {
    name: "OUT of 513 bytes",
    chain: [R(hdr(VIRTIO_BLK_T_OUT, 0)), R(513), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /not a multiple of 512/,
  },
  {
    name: "IN starting at the capacity",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 1024)), W(512), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /beyond capacity/,
  },
  {
    name: "IN crossing the end",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 1023)), W(1024), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /beyond capacity/,
  },
  {
    name: "OUT crossing the end",
    chain: [R(hdr(VIRTIO_BLK_T_OUT, 1020)), R(4096), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /beyond capacity/,
  },
  {
    name: "sector 2^53 (beyond safe integers)",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 1n << 53n)), W(512), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /2\^53/,
  },
  {
    name: "sector 2^64 - 1",
    chain: [R(hdr(VIRTIO_BLK_T_IN, (1n << 64n) - 1n)), W(512), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /beyond capacity/,
  },
  {
    // sector * 512 + len would pass 2^53: only exact integer checks catch it.
    name: "range ending past 2^53 bytes on a 2^53-byte disk",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 2 ** 44 - 1)), W(1024), STATUS],
    limits: { capacitySectors: 2 ** 44 },
    status: VIRTIO_BLK_S_IOERR,
    reason: /beyond capacity/,
  },
  {
    name: "OUT to a read-only disk",
    chain: [R(hdr(VIRTIO_BLK_T_OUT, 0)), R(512), STATUS],
    limits: { readOnly: true },
    status: VIRTIO_BLK_S_IOERR,
    reason: /read-only/,
  },
  {
    name: "IN not aligned to 4 KiB blocks",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 1)), W(4096), STATUS],
    limits: { blockSize: 4096 },
    status: VIRTIO_BLK_S_IOERR,
    reason: /not aligned/,
  },
  {
    name: "IN of half a 4 KiB block",
    chain: [R(hdr(VIRTIO_BLK_T_IN, 8)), W(2048), STATUS],
    limits: { blockSize: 4096 },
    status: VIRTIO_BLK_S_IOERR,
    reason: /not aligned/,
  },
  {
    name: "SCSI command type (legacy)",
    chain: [R(hdr(2)), STATUS],
    status: VIRTIO_BLK_S_UNSUPP,
    reason: /type 2/,
  },
  {
    name: "GET_LIFETIME",
    chain: [R(hdr(VIRTIO_BLK_T_GET_LIFETIME)), W(8), STATUS],
    status: VIRTIO_BLK_S_UNSUPP,
    reason: /type 10/,
  },
  {
    name: "SECURE_ERASE",
    chain: [R(hdr(VIRTIO_BLK_T_SECURE_ERASE)), R(seg(0, 1)), STATUS],
    status: VIRTIO_BLK_S_UNSUPP,
    reason: /type 14/,
  },
  {
    name: "type 0xffffffff",
    chain: [R(hdr(0xffffffff)), STATUS],
    status: VIRTIO_BLK_S_UNSUPP,
    reason: /type 4294967295/,
  },
  {
    name: "GET_ID without room",
    chain: [R(hdr(VIRTIO_BLK_T_GET_ID)), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /room/,
  },
  {
    name: "GET_ID with readable data",
    chain: [R(hdr(VIRTIO_BLK_T_GET_ID)), R(4), W(20), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /device-readable/,
  },
  {
    name: "DISCARD not negotiated",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(seg(0, 1)), STATUS],
    limits: { discard: false },
    status: VIRTIO_BLK_S_UNSUPP,
    reason: /not negotiated/,
  },
  {
    name: "WRITE_ZEROES not negotiated",
    chain: [R(hdr(VIRTIO_BLK_T_WRITE_ZEROES)), R(seg(0, 1)), STATUS],
    limits: { writeZeroes: false },
    status: VIRTIO_BLK_S_UNSUPP,
    reason: /not negotiated/,
  },
  {
    name: "DISCARD without segments",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /not whole segments/,
  },
  {
    name: "DISCARD with 20 bytes of segments",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(20), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /not whole segments/,
  },
  {
    name: "DISCARD with device-writable data",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(seg(0, 1)), W(16), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /device-writable/,
  },
  {
    name: "DISCARD of more segments than max_discard_seg",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(cat(...[0, 1, 2, 3, 4].map((s) => seg(s, 1)))), STATUS],
    status: VIRTIO_BLK_S_UNSUPP,
    reason: /5 segments, at most 4/,
  },
  {
    name: "WRITE_ZEROES of more segments than max_write_zeroes_seg",
    chain: [R(hdr(VIRTIO_BLK_T_WRITE_ZEROES)), R(cat(seg(0, 1), seg(1, 1), seg(2, 1))), STATUS],
    status: VIRTIO_BLK_S_UNSUPP,
    reason: /3 segments, at most 2/,
  },
  {
    name: "DISCARD with the UNMAP flag",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(seg(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)), STATUS],
    status: VIRTIO_BLK_S_UNSUPP,
    reason: /UNMAP/,
  },
  {
    name: "WRITE_ZEROES with a reserved flag",
    chain: [R(hdr(VIRTIO_BLK_T_WRITE_ZEROES)), R(seg(0, 1, 2)), STATUS],
    status: VIRTIO_BLK_S_UNSUPP,
    reason: /reserved flags 0x2/,
  },
  {
    name: "reserved flag in a later segment wins over an earlier bad range",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(cat(seg(5000, 1), seg(0, 1, 0x80000000))), STATUS],
    status: VIRTIO_BLK_S_UNSUPP,
    reason: /segment 1 has reserved flags/,
  },
  {
    name: "DISCARD segment above max_discard_sectors",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(seg(0, 257)), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /257 sectors, at most 256/,
  },
  {
    name: "WRITE_ZEROES segment past the end",
    chain: [R(hdr(VIRTIO_BLK_T_WRITE_ZEROES)), R(cat(seg(0, 1), seg(1000, 100))), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /segment 1: sectors 1000 \+100 beyond capacity/,
  },
  {
    name: "DISCARD segment at sector 2^63",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(seg(1n << 63n, 1)), STATUS],
    status: VIRTIO_BLK_S_IOERR,
    reason: /beyond capacity/,
  },
  {
    name: "DISCARD not aligned to 4 KiB blocks",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(seg(8, 4)), STATUS],
    limits: { blockSize: 4096 },
    status: VIRTIO_BLK_S_IOERR,
    reason: /not aligned/,
  },
  {
    name: "DISCARD on a read-only disk",
    chain: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(seg(0, 1)), STATUS],
    limits: { readOnly: true },
    status: VIRTIO_BLK_S_IOERR,
    reason: /read-only/,
  },
];

describe("parseRequest", () => {
  for (const c of good) {
    it(`accepts ${c.name}`, () => {
      const chain = chainOf(c.chain, c.indirect);
      const req = parseRequest(chain, { ...LIMITS, ...c.limits });
      assert.ok(req.ok, req.ok ? "" : req.reason);
      assert.equal(req.type, c.type);
      assert.equal(req.sector, c.sector ?? 0);
      assert.equal(req.offset, (c.sector ?? 0) * 512);
      assert.equal(req.length, c.length ?? 0);
      assert.deepEqual(
        req.segments.map((s) => ({ sector: s.sector, numSectors: s.numSectors, unmap: s.unmap })),
        c.segments ?? [],
      );
      for (const s of req.segments) {
        assert.equal(s.offset, s.sector * 512);
        assert.equal(s.length, s.numSectors * 512);
      }
    });
  }

  for (const c of bad) {
    it(`refuses ${c.name}`, () => {
      const chain = chainOf(c.chain);
      const req = parseRequest(chain, { ...LIMITS, ...c.limits });
      assert.equal(req.ok, false);
      if (req.ok) return;
      assert.equal(req.status, c.status);
      assert.match(req.reason, c.reason);
    });
  }

  it("leaves the reader at an OUT request's data and the writer untouched", () => {
    const data = new Uint8Array(512).map((_, i) => i & 0xff);
    const chain = chainOf([
      R(cat(hdr(VIRTIO_BLK_T_OUT, 1), data.subarray(0, 100))),
      R(data.subarray(100)),
      STATUS,
    ]);
    const req = parseRequest(chain, LIMITS);
    assert.ok(req.ok);
    assert.equal(chain.reader.remaining, 512);
    const got = new Uint8Array(512);
    chain.reader.readExact(got);
    assert.deepEqual(got, data);
    assert.equal(chain.writer.written, 0);
    assert.equal(chain.writer.remaining, 1);
  });

  it("writes nothing into guest memory", () => {
    const mem = GuestMemory.create(1 << 20);
    const driver = new DriverQueue(mem, { size: 16 });
    const queue = new SplitQueue(16);
    driver.program(queue);
    driver.addChain([R(hdr(VIRTIO_BLK_T_IN, 2000)), W(512), STATUS]);
    const chain = queue.pop(mem)!;
    const before = mem.slice(0, 1 << 20).slice();
    const req = parseRequest(chain, LIMITS);
    assert.equal(req.ok, false);
    assert.deepEqual(mem.slice(0, 1 << 20), before);
  });
});

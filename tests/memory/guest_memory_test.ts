import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory, GuestMemoryError, GuestRegion } from "../../memory/guest_memory.ts";

/** Asserts `fn` throws a GuestMemoryError for exactly this address and length. */
function assertOutOfBounds(fn: () => unknown, addr: number, len: number): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof GuestMemoryError, `expected GuestMemoryError, got ${e}`);
    assert.ok(e instanceof RangeError);
    assert.equal(e.name, "GuestMemoryError");
    assert.equal(e.addr, addr);
    assert.equal(e.len, len);
    return true;
  });
}

/** Two adjacent 4 KiB regions at 0x1000 and 0x2000, a gap, then 4 KiB at 0x10000. */
function threeRegions(): GuestMemory {
  return new GuestMemory([
    { base: 0x10000, buffer: new ArrayBuffer(0x1000) },
    { base: 0x1000, buffer: new ArrayBuffer(0x1000) },
    { base: 0x2000, buffer: new ArrayBuffer(0x1000) },
  ]);
}

describe("GuestMemory regions", () => {
  it("sorts regions by base and reports the total size", () => {
    const mem = threeRegions();
    assert.deepEqual(mem.regions.map((r) => r.base), [0x1000, 0x2000, 0x10000]);
    assert.equal(mem.totalSize, 0x3000);
  });

  it("finds the region holding an address, and none in gaps", () => {
    const mem = threeRegions();
    assert.equal(mem.findRegion(0x1000)?.base, 0x1000);
    assert.equal(mem.findRegion(0x1fff)?.base, 0x1000);
    assert.equal(mem.findRegion(0x2000)?.base, 0x2000);
    assert.equal(mem.findRegion(0x10fff)?.base, 0x10000);
    assert.equal(mem.findRegion(0xfff), undefined);
    assert.equal(mem.findRegion(0x3000), undefined);
    assert.equal(mem.findRegion(0x11000), undefined);
  });

  it("findRegionIndex() gives the index in regions, -1 in gaps", () => {
    const mem = threeRegions();
    assert.equal(mem.findRegionIndex(0x1000), 0);
    assert.equal(mem.findRegionIndex(0x2fff), 1);
    assert.equal(mem.findRegionIndex(0x10000), 2);
    assert.equal(mem.findRegionIndex(0x1fff), 0, "after a hit in another region");
    assert.equal(mem.findRegionIndex(0x3000), -1);
    assert.equal(mem.findRegionIndex(-1), -1);
    assert.equal(mem.findRegionIndex(NaN), -1);
  });

  it("rejects overlapping regions", () => {
    assert.throws(
      () =>
        new GuestMemory([
          { base: 0x1000, buffer: new ArrayBuffer(0x1000) },
          { base: 0x1fff, buffer: new ArrayBuffer(0x10) },
        ]),
      RangeError,
    );
    assert.throws(
      () =>
        new GuestMemory([
          { base: 0x2000, buffer: new ArrayBuffer(0x100) },
          { base: 0x1000, buffer: new ArrayBuffer(0x2000) },
        ]),
      /overlap/,
    );
  });

  it("accepts regions that touch without overlapping", () => {
    const mem = new GuestMemory([
      { base: 0, buffer: new ArrayBuffer(0x100) },
      { base: 0x100, buffer: new ArrayBuffer(0x100) },
    ]);
    assert.equal(mem.regions.length, 2);
  });

  it("rejects an empty region list and bad region parameters", () => {
    assert.throws(() => new GuestMemory([]), RangeError);
    assert.throws(() => new GuestRegion({ base: -1, buffer: new ArrayBuffer(16) }), RangeError);
    assert.throws(() => new GuestRegion({ base: 0.5, buffer: new ArrayBuffer(16) }), RangeError);
    assert.throws(() => new GuestRegion({ base: 0, buffer: new ArrayBuffer(0) }), RangeError);
    assert.throws(
      () => new GuestRegion({ base: 0, buffer: new ArrayBuffer(16), offset: 8, size: 9 }),
      RangeError,
    );
    assert.throws(
      () => new GuestRegion({ base: 2 ** 53 - 8, buffer: new ArrayBuffer(16) }),
      RangeError,
    );
  });

  it("maps a window of a larger buffer with offset and size", () => {
    const buffer = new ArrayBuffer(64);
    const mem = new GuestMemory([{ base: 0x4000, buffer, offset: 16, size: 32 }]);
    mem.writeU8(0x4000, 0xaa);
    assert.equal(new Uint8Array(buffer)[16], 0xaa);
    assertOutOfBounds(() => mem.readU8(0x4020), 0x4020, 1);
  });

  it("works over a SharedArrayBuffer", () => {
    const mem = GuestMemory.create(0x1000, true);
    assert.ok(mem.regions[0].bytes.buffer instanceof SharedArrayBuffer);
    mem.writeU32(0x10, 0x01020304);
    assert.equal(mem.readU32(0x10), 0x01020304);
  });
});

describe("GuestMemory bounds", () => {
  it("throws GuestMemoryError with addr and len outside every region", () => {
    const mem = threeRegions();
    assertOutOfBounds(() => mem.readU8(0x0), 0x0, 1);
    assertOutOfBounds(() => mem.readU32(0x3000), 0x3000, 4);
    assertOutOfBounds(() => mem.writeU64(0x8000, 1n), 0x8000, 8);
    assertOutOfBounds(() => mem.slice(0x11000, 1), 0x11000, 1);
    assertOutOfBounds(() => mem.read(0x5000, new Uint8Array(3)), 0x5000, 3);
  });

  it("throws GuestMemoryError for an access crossing the end of a region", () => {
    const mem = threeRegions();
    assertOutOfBounds(() => mem.readU16(0x10fff), 0x10fff, 2);
    assertOutOfBounds(() => mem.readU32(0x10ffe), 0x10ffe, 4);
    assertOutOfBounds(() => mem.readU64(0x10ff9), 0x10ff9, 8);
    assertOutOfBounds(() => mem.writeU32(0x10ffd, 0), 0x10ffd, 4);
    // Crossing from 0x1000.. into the adjacent 0x2000 region: single accesses stay in one region.
    assertOutOfBounds(() => mem.readU32(0x1ffe), 0x1ffe, 4);
    assertOutOfBounds(() => mem.slice(0x1ff0, 0x20), 0x1ff0, 0x20);
    assertOutOfBounds(() => mem.dataView(0x1ffc, 8), 0x1ffc, 8);
    assert.throws(() => mem.resolve(0x1ffc, 8), /crossing the end of a region/);
  });

  it("accepts the last bytes of a region", () => {
    const mem = threeRegions();
    mem.writeU16(0x10ffe, 0xbeef);
    assert.equal(mem.readU16(0x10ffe), 0xbeef);
    mem.writeU64(0x1ff8, 0x1122334455667788n);
    assert.equal(mem.readU64(0x1ff8), 0x1122334455667788n);
  });

  it("rejects addresses that are not safe non-negative integers", () => {
    const mem = GuestMemory.create(0x1000);
    assertOutOfBounds(() => mem.resolve(-1, 1), -1, 1);
    assertOutOfBounds(() => mem.resolve(2 ** 53, 1), 2 ** 53, 1);
    assertOutOfBounds(() => mem.resolve(NaN, 1), NaN, 1);
    assertOutOfBounds(() => mem.resolve(0, -1), 0, -1);
    assert.equal(mem.checkRange(-1, 1), false);
    assert.equal(mem.checkSpan(0.5, 1), false);
  });

  it("checkRange needs one region, checkSpan accepts adjacent regions", () => {
    const mem = threeRegions();
    assert.equal(mem.checkRange(0x1000, 0x1000), true);
    assert.equal(mem.checkRange(0x1800, 0x1000), false);
    assert.equal(mem.checkSpan(0x1800, 0x1000), true);
    assert.equal(mem.checkSpan(0x1000, 0x2000), true);
    assert.equal(mem.checkSpan(0x1000, 0x2001), false);
    assert.equal(mem.checkSpan(0x2800, 0xe000), false);
    // An empty range at the end of a region is in bounds; one in a gap is not.
    assert.equal(mem.checkRange(0x11000, 0), true);
    assert.equal(mem.checkRange(0x5000, 0), false);
  });
});

describe("GuestMemory accessors", () => {
  it("reads and writes u8, u16, u32 and u64 little-endian", () => {
    const mem = GuestMemory.create(0x100);
    mem.writeU8(0, 0x1ff);
    assert.equal(mem.readU8(0), 0xff);
    mem.writeU16(2, 0x1234);
    assert.deepEqual([...mem.slice(2, 2)], [0x34, 0x12]);
    assert.equal(mem.readU16(2), 0x1234);
    mem.writeU32(4, 0xdeadbeef);
    assert.deepEqual([...mem.slice(4, 4)], [0xef, 0xbe, 0xad, 0xde]);
    assert.equal(mem.readU32(4), 0xdeadbeef);
    mem.writeU64(8, 0x0102030405060708n);
    assert.deepEqual([...mem.slice(8, 8)], [8, 7, 6, 5, 4, 3, 2, 1]);
    assert.equal(mem.readU64(8), 0x0102030405060708n);
  });

  it("accessors work at unaligned addresses", () => {
    const mem = GuestMemory.create(0x100);
    mem.writeU32(0x11, 0xcafef00d);
    assert.equal(mem.readU32(0x11), 0xcafef00d);
    mem.writeU64(0x23, 0xffffffffffffffffn);
    assert.equal(mem.readU64(0x23), 0xffffffffffffffffn);
  });

  it("writeU64 truncates to 64 bits, including negative values", () => {
    const mem = GuestMemory.create(0x100);
    mem.writeU64(0, -1n);
    assert.equal(mem.readU64(0), 0xffffffffffffffffn);
    mem.writeU64(0, (1n << 64n) + 5n);
    assert.equal(mem.readU64(0), 5n);
  });

  it("readU64Number returns safe integers and -1 above 2^53", () => {
    const mem = GuestMemory.create(0x100);
    mem.writeU64(0, 2n ** 53n - 1n);
    assert.equal(mem.readU64Number(0), 2 ** 53 - 1);
    mem.writeU64(0, 2n ** 53n);
    assert.equal(mem.readU64Number(0), -1);
    mem.writeU64(0, 0x1_0000_0001n);
    assert.equal(mem.readU64Number(0), 0x1_0000_0001);
  });

  it("accessors reach the right region", () => {
    const mem = threeRegions();
    mem.writeU32(0x1000, 1);
    mem.writeU32(0x2000, 2);
    mem.writeU32(0x10000, 3);
    assert.equal(mem.regions[0].view.getUint32(0, true), 1);
    assert.equal(mem.regions[1].view.getUint32(0, true), 2);
    assert.equal(mem.regions[2].view.getUint32(0, true), 3);
    assert.equal(mem.readU32(0x1000), 1);
    assert.equal(mem.readU32(0x10000), 3);
    assert.equal(mem.readU32(0x2000), 2);
  });
});

describe("GuestMemory copies", () => {
  it("write and read span adjacent regions", () => {
    const mem = threeRegions();
    const src = new Uint8Array(0x1000).map((_, i) => i * 7);
    mem.write(0x1c00, src);
    const dst = new Uint8Array(src.length);
    mem.read(0x1c00, dst);
    assert.deepEqual(dst, src);
    // The bytes really landed in both regions.
    assert.equal(mem.regions[0].bytes[0xc00], src[0]);
    assert.equal(mem.regions[1].bytes[0], src[0x400]);
    assert.equal(mem.regions[1].bytes[0xbff], src[0xfff]);
  });

  it("a copy that runs into a gap throws and copies nothing", () => {
    const mem = threeRegions();
    const src = new Uint8Array(0x20).fill(0x55);
    assertOutOfBounds(() => mem.write(0x2ff0, src), 0x2ff0, 0x20);
    assert.equal(mem.readU8(0x2ff0), 0);
    const dst = new Uint8Array(0x20).fill(9);
    assertOutOfBounds(() => mem.read(0x2ff0, dst), 0x2ff0, 0x20);
    assert.ok(dst.every((b) => b === 9));
  });

  it("fill spans adjacent regions and checks bounds first", () => {
    const mem = threeRegions();
    mem.fill(0x1ff0, 0x20, 0xab);
    assert.equal(mem.readU8(0x1fef), 0);
    assert.equal(mem.readU8(0x1ff0), 0xab);
    assert.equal(mem.readU8(0x200f), 0xab);
    assert.equal(mem.readU8(0x2010), 0);
    assertOutOfBounds(() => mem.fill(0x2ff0, 0x20, 1), 0x2ff0, 0x20);
    assert.equal(mem.readU8(0x2ff0), 0);
  });
});

describe("GuestMemory zero-copy views", () => {
  it("slice() aliases guest memory in both directions", () => {
    const mem = GuestMemory.create(0x1000);
    const view = mem.slice(0x100, 16);
    view[0] = 0x42;
    assert.equal(mem.readU8(0x100), 0x42);
    mem.writeU8(0x10f, 0x24);
    assert.equal(view[15], 0x24);
    assert.equal(view.length, 16);
  });

  it("dataView() aliases guest memory at the right offset", () => {
    const buffer = new ArrayBuffer(0x200);
    const mem = new GuestMemory([{ base: 0x8000, buffer, offset: 0x100 }]);
    const dv = mem.dataView(0x8010, 8);
    dv.setUint32(0, 0xa1b2c3d4, true);
    assert.equal(mem.readU32(0x8010), 0xa1b2c3d4);
    assert.equal(new DataView(buffer).getUint32(0x110, true), 0xa1b2c3d4);
    assert.equal(dv.byteLength, 8);
  });

  it("the region u16 array aliases aligned 16-bit words", () => {
    const mem = GuestMemory.create(0x100);
    mem.writeU16(0x20, 0xbeef);
    assert.equal(Atomics.load(mem.regions[0].u16, 0x10), 0xbeef);
  });

  it("the region u16 array refuses a region at an odd buffer offset", () => {
    const region = new GuestRegion({ base: 0, buffer: new ArrayBuffer(0x100), offset: 1 });
    assert.throws(() => region.u16, RangeError);
  });
});

describe("GuestMemory.insertRegion", () => {
  it("adds a region in address order while views of the others stay valid", () => {
    const mem = new GuestMemory([{ base: 0x10000, buffer: new ArrayBuffer(0x1000) }]);
    const view = mem.slice(0x10000, 4);
    mem.readU32(0x10000); // warm the lookup cache on the old region
    const added = mem.insertRegion({ base: 0x1000, buffer: new ArrayBuffer(0x1000) });
    assert.deepEqual(mem.regions.map((r) => r.base), [0x1000, 0x10000]);
    assert.equal(mem.findRegion(0x1800), added);
    mem.writeU32(0x1ffc, 5);
    assert.equal(mem.readU32(0x1ffc), 5);
    view[0] = 9;
    assert.equal(mem.readU8(0x10000), 9);
    assert.equal(mem.findRegionIndex(0x10000), 1);
    assert.equal(mem.totalSize, 0x2000);
  });

  it("refuses a region that overlaps one already there", () => {
    const mem = new GuestMemory([{ base: 0x10000, buffer: new ArrayBuffer(0x1000) }]);
    for (const base of [0xf001, 0x10000, 0x10fff]) {
      assert.throws(
        () => mem.insertRegion({ base, buffer: new ArrayBuffer(0x1000) }),
        RangeError,
        `base ${base.toString(16)}`,
      );
    }
    mem.insertRegion({ base: 0x11000, buffer: new ArrayBuffer(0x1000) }); // adjacent is fine
    assert.ok(mem.checkSpan(0x10800, 0x1000));
  });
});

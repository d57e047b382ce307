// MappedGuestRam: the narrow view of guest RAM the VMM gives its balloon. Releases must be
// page-aligned and inside one RAM range; private mappings read back zero, shared ones (a memfd)
// lose their backing store too (MADV_REMOVE).
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { close, fstat, ftruncate, memfdCreate, mmapAnonymous, mmapFd } from "../../sys/mod.ts";
import { MappedGuestRam } from "../../devices/guest_ram.ts";
import { residentBytes } from "./_rss.ts";

const PAGE = 4096;

describe("MappedGuestRam", () => {
  it("describes its ranges and releases private pages (they read zero)", () => {
    const a = mmapAnonymous(16 * PAGE);
    const b = mmapAnonymous(16 * PAGE);
    try {
      const ram = new MappedGuestRam([
        { base: 0x100000, mapping: b, offset: 4 * PAGE, size: 8 * PAGE },
        { base: 0, mapping: a },
      ]);
      assert.deepEqual(ram.ranges, [
        { base: 0, size: 16 * PAGE },
        { base: 0x100000, size: 8 * PAGE },
      ]);
      new Uint8Array(b.buffer).fill(7);
      ram.discard(0x100000 + PAGE, 2 * PAGE);
      const bytes = new Uint8Array(b.buffer);
      assert.equal(bytes[5 * PAGE - 1], 7);
      assert.equal(bytes[5 * PAGE], 0);
      assert.equal(bytes[7 * PAGE - 1], 0);
      assert.equal(bytes[7 * PAGE], 7);
    } finally {
      a.unmap();
      b.unmap();
    }
  });

  it("refuses unaligned ranges and ranges outside RAM or across two ranges", () => {
    const m = mmapAnonymous(32 * PAGE);
    try {
      const ram = new MappedGuestRam([
        { base: 0, mapping: m, size: 16 * PAGE },
        { base: 16 * PAGE, mapping: m, offset: 16 * PAGE },
      ]);
      for (
        const [addr, len] of [
          [1, PAGE],
          [0, 100],
          [0, 0],
          [-PAGE, PAGE],
          [32 * PAGE, PAGE],
          [15 * PAGE, 2 * PAGE], // across the two ranges
          [NaN, PAGE],
        ]
      ) {
        assert.throws(() => ram.discard(addr, len), RangeError, `${addr} +${len}`);
      }
    } finally {
      m.unmap();
    }
  });

  it("refuses ranges that do not fit their mapping, are unaligned or overlap", () => {
    const m = mmapAnonymous(4 * PAGE);
    try {
      assert.throws(() => new MappedGuestRam([{ base: 0, mapping: m, size: 8 * PAGE }]));
      assert.throws(() => new MappedGuestRam([{ base: 100, mapping: m }]));
      assert.throws(() => new MappedGuestRam([{ base: 0, mapping: m, offset: 10 }]));
      assert.throws(() =>
        new MappedGuestRam([{ base: 0, mapping: m }, { base: PAGE, mapping: m }])
      );
      assert.throws(() => new MappedGuestRam([], { pageSize: 3000 }));
    } finally {
      m.unmap();
    }
  });

  it("a shared mapping loses its backing store (MADV_REMOVE)", () => {
    const fd = memfdCreate("ram");
    ftruncate(fd, 16 * PAGE);
    const m = mmapFd(fd, 16 * PAGE);
    const other = mmapFd(fd, 16 * PAGE);
    try {
      new Uint8Array(m.buffer).fill(3);
      const ram = new MappedGuestRam([{ base: 0, mapping: m }], { shared: true });
      ram.discard(4 * PAGE, 4 * PAGE);
      // Gone from the file itself: another mapping of it reads zero too.
      assert.equal(residentBytes(m.address + BigInt(4 * PAGE), 4 * PAGE), 0);
      assert.equal(new Uint8Array(other.buffer)[5 * PAGE], 0);
      assert.equal(new Uint8Array(other.buffer)[3 * PAGE], 3);
      assert.equal(fstat(fd).size, 16 * PAGE);
    } finally {
      m.unmap();
      other.unmap();
      close(fd);
    }
  });
});

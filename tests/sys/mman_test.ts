import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  close,
  ftruncate,
  MADV_DONTNEED,
  madvise,
  MAP_ANONYMOUS,
  MAP_SHARED,
  Mapping,
  memfdCreate,
  mmapAnonymous,
  mmapFd,
  munmap,
  pread,
  PROT_READ,
  pwrite,
  SysError,
  unsafeView,
} from "../../sys/mod.ts";

describe("mmapFd()", () => {
  it("two MAP_SHARED mappings of one memfd see each other's writes", () => {
    const fd = memfdCreate("shared");
    ftruncate(fd, 64 * 1024);
    const a = mmapFd(fd, 64 * 1024);
    const b = mmapFd(fd, 64 * 1024, 0, { flags: MAP_SHARED });
    try {
      assert.notEqual(a.address, b.address);
      assert.equal(a.buffer.byteLength, 64 * 1024);
      const va = new DataView(a.buffer);
      const vb = new DataView(b.buffer);
      va.setUint32(0x1000, 0x12345678, true);
      assert.equal(vb.getUint32(0x1000, true), 0x12345678);
      vb.setBigUint64(64 * 1024 - 8, 0xfeedfacecafebeefn, true);
      assert.equal(va.getBigUint64(64 * 1024 - 8, true), 0xfeedfacecafebeefn);
      // The file sees it too.
      const buf = new Uint8Array(4);
      pread(fd, buf, 0x1000);
      assert.deepEqual([...buf], [0x78, 0x56, 0x34, 0x12]);
      pwrite(fd, new Uint8Array([0xab]), 7);
      assert.equal(new Uint8Array(a.buffer)[7], 0xab);
    } finally {
      a.unmap();
      b.unmap();
      close(fd);
    }
  });

  it("maps at a page offset", () => {
    const fd = memfdCreate("offset");
    ftruncate(fd, 3 * 4096);
    pwrite(fd, new Uint8Array([42]), 2 * 4096);
    const m = mmapFd(fd, 4096, 2 * 4096, { prot: PROT_READ });
    try {
      assert.equal(new Uint8Array(m.buffer)[0], 42);
    } finally {
      m.unmap();
      close(fd);
    }
  });

  it("stays valid after the descriptor is closed", () => {
    const fd = memfdCreate("closed");
    ftruncate(fd, 4096);
    const m = mmapFd(fd, 4096);
    close(fd);
    new Uint8Array(m.buffer)[100] = 1;
    assert.equal(new Uint8Array(m.buffer)[100], 1);
    m.unmap();
  });

  it("fails with SysError on a bad descriptor and RangeError on bad lengths", () => {
    assert.throws(() => mmapFd(-1, 4096), (e: unknown) => {
      assert.ok(e instanceof SysError);
      assert.equal(e.call, "mmap");
      assert.equal(e.code, "EBADF");
      return true;
    });
    assert.throws(() => mmapFd(0, 0), RangeError);
    assert.throws(() => mmapFd(0, 4096, -4096), RangeError);
  });
});

describe("mmapAnonymous()", () => {
  it("gives zeroed, writable memory", () => {
    const m = mmapAnonymous(1 << 20);
    try {
      assert.ok(m instanceof Mapping);
      assert.equal(m.length, 1 << 20);
      assert.equal(m.buffer.byteLength, 1 << 20);
      assert.equal(m.address % 4096n, 0n);
      const bytes = new Uint8Array(m.buffer);
      assert.equal(bytes[12345], 0);
      bytes.fill(0x5a, 4096, 8192);
      const view = new DataView(m.buffer);
      view.setUint16(0xfffe, 0xbeef, true);
      assert.equal(view.getUint16(0xfffe, true), 0xbeef);
      assert.equal(bytes[8191], 0x5a);
      assert.equal(bytes[8192], 0);
    } finally {
      m.unmap();
    }
  });

  it("reserves a large range lazily (MAP_NORESERVE)", () => {
    const m = mmapAnonymous(4 * 1024 * 1024 * 1024);
    try {
      const view = new DataView(m.buffer);
      view.setUint8(3 * 1024 * 1024 * 1024, 7);
      assert.equal(view.getUint8(3 * 1024 * 1024 * 1024), 7);
    } finally {
      m.unmap();
    }
  });

  it("madvise(MADV_DONTNEED) gives pages back as zeros", () => {
    const m = mmapAnonymous(8192);
    try {
      const bytes = new Uint8Array(m.buffer);
      bytes.fill(1);
      madvise(m.address + 4096n, 4096, MADV_DONTNEED);
      assert.equal(bytes[4095], 1);
      assert.equal(bytes[4096], 0);
      assert.equal(bytes[8191], 0);
    } finally {
      m.unmap();
    }
  });

  it("always adds MAP_ANONYMOUS and shares through unsafeView()", () => {
    const m = mmapAnonymous(4096, { flags: MAP_SHARED | MAP_ANONYMOUS });
    try {
      const alias = unsafeView(m.address, 4096);
      new Uint8Array(m.buffer)[9] = 99;
      assert.equal(new Uint8Array(alias)[9], 99);
      assert.equal(unsafeView(m.address, 0).byteLength, 0);
    } finally {
      m.unmap();
    }
  });
});

describe("Mapping.unmap() and munmap()", () => {
  it("detaches the buffer so stale views cannot reach unmapped memory", () => {
    const m = mmapAnonymous(4096);
    const before = new Uint8Array(m.buffer);
    before[0] = 1;
    assert.equal(m.mapped, true);
    m.unmap();
    assert.equal(m.mapped, false);
    assert.equal(m.buffer.byteLength, 0);
    assert.equal(before.length, 0, "views of the old buffer are empty");
    assert.equal(before[0], undefined);
    m.unmap(); // idempotent
  });

  it("munmap() unmaps a raw range and rejects bad arguments", () => {
    const m = mmapAnonymous(2 * 4096);
    // Unmap the second page by address; the first stays usable.
    munmap(m.address + 4096n, 4096);
    new Uint8Array(m.buffer)[0] = 3;
    assert.equal(new Uint8Array(m.buffer)[0], 3);
    munmap(m.address, 4096);
    assert.throws(() => munmap(1n, 4096), (e: unknown) => {
      assert.ok(e instanceof SysError);
      assert.equal(e.code, "EINVAL");
      return true;
    });
    assert.throws(() => munmap(m.address, 0), RangeError);
  });
});

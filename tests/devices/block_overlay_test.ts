import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { assertBytes } from "../../testing/bytes.ts";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  FileBackend,
  MemoryBackend,
  OVERLAY_CLUSTER_SIZE,
  OverlayBackend,
  OverlayError,
  overlayLayout,
} from "../../devices/block.ts";

const KiB = 1024;
const CS = 4 * KiB; // a small cluster size keeps the cases readable

let dir = "";
before(() => {
  dir = fs.mkdtempSync(join(tmpdir(), "virtio-ts-overlay-"));
});
after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Byte i of the base disk: a hash of i, with no short period, so misplaced bytes show. */
function baseByte(i: number): number {
  return Math.imul(i + 1, 0x9e3779b1) >>> 24;
}

/** The base disk's bytes (see {@linkcode baseByte}). */
function baseBytes(size: number): Uint8Array {
  return new Uint8Array(size).map((_, i) => baseByte(i));
}

function memOverlay(size = 64 * KiB, clusterSize = CS) {
  const base = new MemoryBackend(baseBytes(size), { readOnly: true });
  const store = new MemoryBackend(overlayLayout(size, clusterSize).storeSize);
  const disk = new OverlayBackend(base, store, { format: true, clusterSize });
  return { base, store, disk };
}

function readAll(disk: { read(b: Uint8Array[], o: number): void; size: number }): Uint8Array {
  const out = new Uint8Array(disk.size);
  disk.read([out], 0);
  return out;
}

describe("overlayLayout()", () => {
  it("puts the bitmap after the header and the data on a cluster boundary", () => {
    const l = overlayLayout(1 << 30);
    assert.equal(l.clusterSize, OVERLAY_CLUSTER_SIZE);
    assert.equal(l.clusters, 16384);
    assert.equal(l.bitmapOffset, 4096);
    assert.equal(l.bitmapBytes, 4096);
    assert.equal(l.dataOffset, 65536);
    assert.equal(l.storeSize, 65536 + (1 << 30));
    // A size that is not a whole number of clusters still gets a bit for its tail.
    assert.equal(overlayLayout(CS + 512, CS).clusters, 2);
  });

  it("rejects bad cluster sizes and sizes", () => {
    assert.throws(() => overlayLayout(4096, 1000), RangeError);
    assert.throws(() => overlayLayout(4096, 2048), RangeError);
    assert.throws(() => overlayLayout(4096, 4 << 20), RangeError);
    assert.throws(() => overlayLayout(-1), RangeError);
  });
});

describe("OverlayBackend", () => {
  it("reads the base until written, then the overlay; the base is never written", () => {
    const { base, disk } = memOverlay();
    const original = base.bytes.slice();
    assertBytes(readAll(disk), original);
    disk.write([new Uint8Array(CS).fill(0xaa)], 2 * CS);
    const expected = original.slice();
    expected.fill(0xaa, 2 * CS, 3 * CS);
    assertBytes(readAll(disk), expected);
    assertBytes(base.bytes, original);
    assert.equal(disk.allocatedClusters, 1);
  });

  it("copies up the rest of a partly written cluster from the base", () => {
    const { base, disk } = memOverlay();
    // 512 bytes in the middle of cluster 1, and a write straddling clusters 3 and 4.
    disk.write([new Uint8Array(512).fill(0xbb)], CS + 1024);
    disk.write([new Uint8Array(1024).fill(0xcc), new Uint8Array(1024).fill(0xdd)], 4 * CS - 1024);
    const expected = base.bytes.slice();
    expected.fill(0xbb, CS + 1024, CS + 1536);
    expected.fill(0xcc, 4 * CS - 1024, 4 * CS);
    expected.fill(0xdd, 4 * CS, 4 * CS + 1024);
    assertBytes(readAll(disk), expected);
    assert.equal(disk.allocatedClusters, 3);
  });

  it("splits a scattered read across written and unwritten clusters", () => {
    const { base, disk } = memOverlay();
    disk.write([new Uint8Array(CS).fill(0x11)], CS);
    disk.write([new Uint8Array(CS).fill(0x33)], 3 * CS);
    // Segments of odd sizes over clusters 0..4: base, overlay, base, overlay, base.
    const segs = [1000, 5000, 3000, 7000, 4480].map((n) => new Uint8Array(n));
    disk.read(segs, 0);
    const got = new Uint8Array(20480);
    let at = 0;
    for (const s of segs) {
      got.set(s, at);
      at += s.length;
    }
    const expected = base.bytes.slice(0, 20480);
    expected.fill(0x11, CS, 2 * CS);
    expected.fill(0x33, 3 * CS, 4 * CS);
    assertBytes(got, expected);
  });

  it("write zeroes and discard read as zeroes afterwards, not as the base", () => {
    const { disk } = memOverlay();
    disk.writeZeroes(CS + 512, 2 * CS, false);
    disk.discard(8 * CS, CS);
    const all = readAll(disk);
    assert.ok(all.subarray(CS + 512, 3 * CS + 512).every((b) => b === 0));
    assert.ok(all.subarray(8 * CS, 9 * CS).every((b) => b === 0));
    assert.equal(all[CS + 511], baseByte(CS + 511), "copied-up neighbour kept");
    assert.equal(all[3 * CS + 512], baseByte(3 * CS + 512));
  });

  it("handles a disk whose size is not a whole number of clusters", () => {
    const { base, disk } = memOverlay(CS * 3 + 1536);
    disk.write([new Uint8Array(512).fill(9)], 3 * CS + 512);
    const expected = base.bytes.slice();
    expected.fill(9, 3 * CS + 512, 3 * CS + 1024);
    assertBytes(readAll(disk), expected);
  });

  it("keeps flushed writes across reopening; unflushed bitmap changes are not persisted", () => {
    const { base, store, disk } = memOverlay();
    disk.write([new Uint8Array(CS).fill(0x42)], 5 * CS);
    disk.flush();
    disk.write([new Uint8Array(CS).fill(0x43)], 6 * CS);
    // "Crash": reopen the same store without flush or close.
    const again = new OverlayBackend(base, store);
    const all = readAll(again);
    assert.ok(all.subarray(5 * CS, 6 * CS).every((b) => b === 0x42));
    assert.equal(all[6 * CS], baseByte(6 * CS), "the unflushed write is lost, as allowed");
    assert.equal(again.allocatedClusters, 1);
  });

  it("a failed read leaves nothing behind for the next one", () => {
    // A base without a short period, so bytes read into the wrong place cannot look right.
    let x = 99;
    const base = new MemoryBackend(
      new Uint8Array(64 * KiB).map(() => {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        return x & 0xff;
      }),
      { readOnly: true },
    );
    const store = new MemoryBackend(overlayLayout(base.size, CS).storeSize);
    new OverlayBackend(base, store, { format: true, clusterSize: CS });
    let fail = true;
    const flaky = new Proxy(base, {
      get(target, prop, receiver) {
        if (prop === "read") {
          return (bufs: Uint8Array[], offset: number) => {
            if (fail) {
              fail = false;
              throw new Error("EIO");
            }
            target.read(bufs, offset);
          };
        }
        return Reflect.get(target, prop, receiver);
      },
    });
    const disk = new OverlayBackend(flaky, store);
    disk.write([new Uint8Array(CS).fill(0x77)], CS);
    // Spans base, overlay and base: split into runs, the first of which fails.
    const parts = [new Uint8Array(1024), new Uint8Array(3 * CS - 1024)];
    assert.throws(() => disk.read(parts, 0), /EIO/);
    disk.read(parts, 0);
    const got = new Uint8Array([...parts[0], ...parts[1]]);
    const expected = base.bytes.slice(0, 3 * CS);
    expected.fill(0x77, CS, 2 * CS);
    assertBytes(got, expected);
  });

  it("refuses a store that is not an overlay for this base", () => {
    const { store } = memOverlay();
    const otherBase = new MemoryBackend(128 * KiB, { readOnly: true });
    assert.throws(() => new OverlayBackend(otherBase, store), /for a 65536-byte disk/);
    const garbage = new MemoryBackend(overlayLayout(64 * KiB).storeSize);
    assert.throws(
      () => new OverlayBackend(new MemoryBackend(64 * KiB), garbage),
      (e: unknown) => e instanceof OverlayError && /bad magic/.test((e as Error).message),
    );
    const small = new MemoryBackend(8 * KiB);
    assert.throws(
      () => new OverlayBackend(new MemoryBackend(64 * KiB), small, { format: true }),
      /needed/,
    );
    // A corrupted cluster size in the header.
    const { store: s2 } = memOverlay();
    new DataView(s2.bytes.buffer).setUint32(12, 3000, true);
    assert.throws(
      () => new OverlayBackend(new MemoryBackend(64 * KiB), s2),
      /Bad overlay header/,
    );
    const ro = new MemoryBackend(overlayLayout(64 * KiB).storeSize, { readOnly: true });
    assert.throws(() => new OverlayBackend(new MemoryBackend(64 * KiB), ro), /writable/);
  });

  it("as files: two overlays share one read-only base image and persist across close", () => {
    const basePath = join(dir, "base.img");
    const size = 1 << 20;
    fs.writeFileSync(basePath, baseBytes(size));
    const before = fs.readFileSync(basePath);
    const paths = [join(dir, "g1.cow"), join(dir, "g2.cow")];
    for (const [i, p] of paths.entries()) {
      const disk = OverlayBackend.openFile(new FileBackend(basePath, { readOnly: true }), p);
      disk.write([new Uint8Array(4096).fill(0x60 + i)], 65536 * (i + 1) + 512);
      disk.close();
    }
    assertBytes(fs.readFileSync(basePath), before, "base image untouched");
    for (const [i, p] of paths.entries()) {
      const disk = OverlayBackend.openFile(new FileBackend(basePath, { readOnly: true }), p);
      try {
        const all = readAll(disk);
        const expected = baseBytes(size);
        expected.fill(0x60 + i, 65536 * (i + 1) + 512, 65536 * (i + 1) + 4608);
        assertBytes(all, expected);
        assert.equal(disk.allocatedClusters, 1, "one 64 KiB cluster each");
      } finally {
        disk.close();
      }
      // Sparse: only the header, bitmap and one cluster take space.
      const st = fs.statSync(p);
      assert.equal(st.size, overlayLayout(size).storeSize);
      assert.ok(st.blocks * 512 <= 256 * KiB, `${st.blocks} blocks allocated`);
    }
  });
});

describe("OverlayBackend against a model (randomised)", () => {
  for (const seed of [11, 22, 33]) {
    it(`seed ${seed}: writes, zeroes, flushes, crashes and reopens`, () => {
      let x = seed;
      const rnd = (n: number) => {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        return (x >>> 0) % n;
      };
      const size = 64 * CS + 1536; // a partial last cluster too
      const sectors = size / 512;
      const { base, store } = memOverlay(size);
      let disk = new OverlayBackend(base, store);
      const shadow = base.bytes.slice();
      const clusters = Math.ceil(size / CS);
      let alloc = new Set<number>();
      let persisted = new Set<number>();
      const touch = (off: number, len: number) => {
        for (let c = Math.floor(off / CS); c <= Math.floor((off + len - 1) / CS); c++) alloc.add(c);
      };
      const views = (len: number): Uint8Array[] => {
        const out: Uint8Array[] = [];
        let left = len;
        while (left > 0) {
          const n = Math.min(left, 1 + rnd(3 * CS));
          out.push(new Uint8Array(n));
          left -= n;
        }
        return out;
      };
      for (let step = 0; step < 600; step++) {
        const sector = rnd(sectors);
        const len = 512 * Math.min(1 + rnd(3 * CS / 512), sectors - sector);
        const off = sector * 512;
        const op = rnd(100);
        if (op < 35) {
          const parts = views(len);
          for (const p of parts) for (let i = 0; i < p.length; i++) p[i] = rnd(256);
          disk.write(parts, off);
          let at = off;
          for (const p of parts) {
            shadow.set(p, at);
            at += p.length;
          }
          touch(off, len);
        } else if (op < 45) {
          if (rnd(2) === 0) disk.discard(off, len);
          else disk.writeZeroes(off, len, rnd(2) === 0);
          shadow.fill(0, off, off + len);
          touch(off, len);
        } else if (op < 85) {
          const parts = views(len);
          disk.read(parts, off);
          let at = off;
          for (const p of parts) {
            assertBytes(p, shadow.subarray(at, at + p.length), `step ${step}: read at ${at}`);
            at += p.length;
          }
        } else if (op < 93) {
          disk.flush();
          persisted = new Set(alloc);
        } else if (op < 97) {
          // A crash: reopen the store as it is, without flushing. The store here loses no
          // data, so clusters named by the persisted bitmap show their latest bytes and the
          // rest fall back to the base.
          disk = new OverlayBackend(base, store);
          for (let c = 0; c < clusters; c++) {
            if (persisted.has(c)) continue;
            const start = c * CS, end = Math.min(size, start + CS);
            shadow.set(base.bytes.subarray(start, end), start);
          }
          alloc = new Set(persisted);
        } else {
          disk.close();
          disk = new OverlayBackend(base, store);
          persisted = new Set(alloc);
        }
        assert.equal(disk.allocatedClusters, alloc.size, `step ${step}: allocated clusters`);
      }
      assertBytes(readAll(disk), shadow);
      assertBytes(base.bytes, baseBytes(size), "the base was never written");
    });
  }
});

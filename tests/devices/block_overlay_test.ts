import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
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

/** Bytes where byte i of the disk is (i * 7 + 1) & 0xff, different from any write below. */
function baseBytes(size: number): Uint8Array {
  return new Uint8Array(size).map((_, i) => (i * 7 + 1) & 0xff);
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
    assert.deepEqual(readAll(disk), original);
    disk.write([new Uint8Array(CS).fill(0xaa)], 2 * CS);
    const expected = original.slice();
    expected.fill(0xaa, 2 * CS, 3 * CS);
    assert.deepEqual(readAll(disk), expected);
    assert.deepEqual(base.bytes, original);
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
    assert.deepEqual(readAll(disk), expected);
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
    assert.deepEqual(got, expected);
  });

  it("write zeroes and discard read as zeroes afterwards, not as the base", () => {
    const { disk } = memOverlay();
    disk.writeZeroes(CS + 512, 2 * CS, false);
    disk.discard(8 * CS, CS);
    const all = readAll(disk);
    assert.ok(all.subarray(CS + 512, 3 * CS + 512).every((b) => b === 0));
    assert.ok(all.subarray(8 * CS, 9 * CS).every((b) => b === 0));
    assert.equal(all[CS + 511], ((CS + 511) * 7 + 1) & 0xff, "copied-up neighbour kept");
    assert.equal(all[3 * CS + 512], ((3 * CS + 512) * 7 + 1) & 0xff);
  });

  it("handles a disk whose size is not a whole number of clusters", () => {
    const { base, disk } = memOverlay(CS * 3 + 1536);
    disk.write([new Uint8Array(512).fill(9)], 3 * CS + 512);
    const expected = base.bytes.slice();
    expected.fill(9, 3 * CS + 512, 3 * CS + 1024);
    assert.deepEqual(readAll(disk), expected);
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
    assert.equal(all[6 * CS], (6 * CS * 7 + 1) & 0xff, "the unflushed write is lost, as allowed");
    assert.equal(again.allocatedClusters, 1);
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
    assert.deepEqual(fs.readFileSync(basePath), before, "base image untouched");
    for (const [i, p] of paths.entries()) {
      const disk = OverlayBackend.openFile(new FileBackend(basePath, { readOnly: true }), p);
      try {
        const all = readAll(disk);
        const expected = baseBytes(size);
        expected.fill(0x60 + i, 65536 * (i + 1) + 512, 65536 * (i + 1) + 4608);
        assert.deepEqual(all, expected);
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

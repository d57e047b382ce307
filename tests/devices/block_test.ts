import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { assertBytes } from "../../testing/bytes.ts";
import * as fs from "node:fs";
import { spawnSync } from "node:child_process";
import process from "node:process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestMemory } from "../../memory/guest_memory.ts";
import {
  SplitQueue,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "../../queue/split.ts";
import { type DriverBuffer, DriverQueue, type UsedEntry } from "../../testing/queue_driver.ts";
import {
  DEVICE_DRIVER_OK,
  DEVICE_NEEDS_RESET,
  featureBit,
  TYPE_BLOCK,
  VIRTIO_F_VERSION_1,
  VirtioDeviceConfig,
  VirtioError,
  VirtioQueueConfig,
} from "../../devices/device.ts";
import {
  BLOCK_CONFIG_SIZE,
  type BlockBackend,
  BlockConfigOffset,
  BlockDevice,
  type BlockOptions,
  blockRangeSegment,
  blockRequestHeader,
  FileBackend,
  MemoryBackend,
  OverlayBackend,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_S_IOERR,
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
import { MMIO_CONFIG_OFFSET, type MmioError, MmioTransport } from "../../transport/mmio.ts";
import {
  close as closeFd,
  ftruncate,
  IOV_MAX,
  mappedAddressOf,
  memfdCreate,
  mmapFd,
} from "../../sys/mod.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";

// ---------------------------------------------------------------------------
// Fixtures

let dir = "";
before(() => {
  dir = fs.mkdtempSync(join(tmpdir(), "virtio-ts-blk-"));
});
after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The byte a fresh test image holds at `offset`: varies within and across sectors. */
/** Byte `offset` of a test image: a hash of the offset, so misplaced bytes never look right. */
function pattern(offset: number): number {
  return Math.imul(offset + 1, 0x9e3779b1) >>> 24;
}

let imageCount = 0;
/** A new image file of `sectors` sectors filled with {@link pattern}. */
function image(sectors: number): string {
  const path = join(dir, `disk${imageCount++}.raw`);
  const bytes = new Uint8Array(sectors * 512);
  for (let i = 0; i < bytes.length; i++) bytes[i] = pattern(i);
  fs.writeFileSync(path, bytes);
  return path;
}

function fileBytes(path: string, offset: number, len: number): Uint8Array {
  return new Uint8Array(fs.readFileSync(path)).subarray(offset, offset + len);
}

function patternBytes(offset: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = pattern(offset + i);
  return out;
}

function randomBytes(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const hdr = blockRequestHeader;
const segment = blockRangeSegment;

function allFeatures(dev: BlockDevice): bigint {
  return BigInt(dev.getAvailFeatures(0)) | (BigInt(dev.getAvailFeatures(1)) << 32n);
}

/** A device activated directly with driver-side queues, as a transport would. */
class Rig {
  readonly dev: BlockDevice;
  readonly mem: GuestMemory;
  readonly drivers: DriverQueue[] = [];
  readonly interrupts: number[] = [];
  readonly errors: VirtioError[] = [];
  readonly hostErrors: VirtioError[] = [];
  configChanges = 0;

  constructor(
    options: BlockOptions,
    opts: {
      features?: bigint;
      queues?: number;
      queueSize?: number;
      gaps?: boolean;
      memory?: GuestMemory;
    } = {},
  ) {
    this.mem = opts.memory ?? GuestMemory.create(16 << 20);
    this.dev = new BlockDevice({ ...options, onError: (e) => this.errors.push(e) });
    const features = allFeatures(this.dev) & (opts.features ?? ~0n);
    this.dev.setAckedFeatures(0, Number(features & 0xffffffffn));
    this.dev.setAckedFeatures(1, Number(features >> 32n));
    const eventIdx = (features & featureBit(VIRTIO_F_EVENT_IDX)) !== 0n;
    const count = opts.queues ?? 1;
    const qcs: VirtioQueueConfig[] = [];
    for (let i = 0; i < count; i++) {
      const driver = new DriverQueue(this.mem, {
        size: opts.queueSize ?? 64,
        ringBase: 0x10000 + 0x10000 * i,
        bufferBase: 0x100000 + 0x200000 * i,
        bufferEnd: 0x300000 + 0x200000 * i,
        gaps: opts.gaps ?? true,
        eventIdx,
      });
      const queue = new SplitQueue(this.dev.queueMaxSizes()[i]);
      driver.program(queue);
      this.drivers.push(driver);
      this.interrupts.push(0);
      qcs.push(new VirtioQueueConfig(i, queue, { notify: () => this.interrupts[i]++ }));
    }
    this.dev.activate(
      new VirtioDeviceConfig({
        memory: this.mem,
        queues: qcs,
        deviceChangeNotifier: { notify: () => this.configChanges++ },
        ackedFeatures: this.dev.ackedFeatures(),
        onError: (e) => this.hostErrors.push(e),
      }),
    );
  }

  /** Add a chain to queue `q` without serving it. */
  add(buffers: DriverBuffer[], opts: { q?: number; indirect?: boolean } = {}): number {
    return this.drivers[opts.q ?? 0].addChain(buffers, { indirect: opts.indirect });
  }

  /** Add a chain, serve the queue, and take its used entry. */
  submit(buffers: DriverBuffer[], opts: { q?: number; indirect?: boolean } = {}): UsedEntry {
    const q = opts.q ?? 0;
    const head = this.add(buffers, opts);
    this.dev.processQueue(q);
    const used = this.drivers[q].takeUsed();
    assert.ok(used !== null, "request was not completed");
    assert.equal(used.id, head);
    return used;
  }

  /** IN of the sum of `lens` bytes at `sector`, data split into `lens`. */
  read(
    sector: number,
    lens: number[],
    opts: { q?: number; indirect?: boolean } = {},
  ): { status: number; data: Uint8Array; len: number } {
    const used = this.submit(
      [{ readable: hdr(VIRTIO_BLK_T_IN, sector) }, ...lens.map((n) => ({ writable: n })), {
        writable: 1,
      }],
      opts,
    );
    const total = lens.reduce((a, b) => a + b, 0);
    return { status: used.written[total], data: used.written.subarray(0, total), len: used.len };
  }

  /** OUT of `data` at `sector`, split into pieces of `lens` bytes (default: one). */
  write(
    sector: number,
    data: Uint8Array,
    opts: { q?: number; indirect?: boolean; lens?: number[] } = {},
  ): { status: number; len: number } {
    const pieces: DriverBuffer[] = [];
    let off = 0;
    for (const n of opts.lens ?? [data.length]) {
      pieces.push({ readable: data.subarray(off, off + n) });
      off += n;
    }
    const used = this.submit(
      [{ readable: hdr(VIRTIO_BLK_T_OUT, sector) }, ...pieces, { writable: 1 }],
      opts,
    );
    return { status: used.written[0], len: used.len };
  }

  /** A request with only a status byte to write. */
  simple(type: number, data?: Uint8Array): { status: number; len: number } {
    const bufs: DriverBuffer[] = [{ readable: hdr(type) }];
    if (data !== undefined) bufs.push({ readable: data });
    bufs.push({ writable: 1 });
    const used = this.submit(bufs);
    return { status: used.written[0], len: used.len };
  }
}

/** A backend that forwards to another and can be told to fail or to watch calls. */
class SpyBackend implements BlockBackend {
  readonly inner: BlockBackend;
  failNext: "read" | "write" | "flush" | "discard" | undefined;
  readonly calls: string[] = [];
  onFlush: (() => void) | undefined;
  lastViews: readonly Uint8Array[] = [];

  constructor(inner: BlockBackend) {
    this.inner = inner;
  }
  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get canUnmap(): boolean {
    return this.inner.canUnmap;
  }
  #maybeFail(op: "read" | "write" | "flush" | "discard"): void {
    this.calls.push(op);
    if (this.failNext === op) {
      this.failNext = undefined;
      throw new Error(`injected ${op} failure`);
    }
  }
  read(bufs: readonly Uint8Array[], offset: number): void {
    this.#maybeFail("read");
    this.lastViews = [...bufs];
    this.inner.read(bufs, offset);
  }
  write(bufs: readonly Uint8Array[], offset: number): void {
    this.#maybeFail("write");
    this.lastViews = [...bufs];
    this.inner.write(bufs, offset);
  }
  flush(): void {
    this.#maybeFail("flush");
    this.onFlush?.();
    this.inner.flush();
  }
  discard(offset: number, length: number): void {
    this.#maybeFail("discard");
    this.inner.discard(offset, length);
  }
  writeZeroes(offset: number, length: number, unmap: boolean): void {
    this.calls.push(unmap ? "zeroes+unmap" : "zeroes");
    this.inner.writeZeroes(offset, length, unmap);
  }
  close(): void {
    this.inner.close();
  }
}

// ---------------------------------------------------------------------------

describe("BlockDevice", () => {
  it("offers the block features and lays out the configuration space", () => {
    const path = image(2048);
    const dev = new BlockDevice({
      path,
      numQueues: 4,
      queueSize: 128,
      blockSize: 4096,
      physicalBlockSize: 16384,
    });
    try {
      assert.equal(dev.deviceType(), TYPE_BLOCK);
      assert.deepEqual(dev.queueMaxSizes(), [128, 128, 128, 128]);
      const f = allFeatures(dev);
      for (
        const bit of [
          VIRTIO_F_VERSION_1,
          VIRTIO_F_INDIRECT_DESC,
          VIRTIO_F_EVENT_IDX,
          VIRTIO_BLK_F_SIZE_MAX,
          VIRTIO_BLK_F_SEG_MAX,
          VIRTIO_BLK_F_BLK_SIZE,
          VIRTIO_BLK_F_FLUSH,
          VIRTIO_BLK_F_TOPOLOGY,
          VIRTIO_BLK_F_CONFIG_WCE,
          VIRTIO_BLK_F_MQ,
          VIRTIO_BLK_F_DISCARD,
          VIRTIO_BLK_F_WRITE_ZEROES,
        ]
      ) {
        assert.ok((f & featureBit(bit)) !== 0n, `feature ${bit} offered`);
      }
      assert.equal(f & featureBit(VIRTIO_BLK_F_RO), 0n);

      const cfg = new Uint8Array(BLOCK_CONFIG_SIZE);
      dev.readConfig(0, cfg);
      const v = new DataView(cfg.buffer);
      const O = BlockConfigOffset;
      assert.equal(v.getBigUint64(O.capacity, true), 2048n);
      assert.equal(dev.capacity, 2048);
      assert.equal(v.getUint32(O.sizeMax, true), 1 << 20);
      assert.equal(v.getUint32(O.segMax, true), 126);
      assert.equal(v.getUint32(O.geometry, true), 0);
      assert.equal(v.getUint32(O.blkSize, true), 4096);
      assert.equal(v.getUint8(O.physicalBlockExp), 2);
      assert.equal(v.getUint8(O.alignmentOffset), 0);
      assert.equal(v.getUint16(O.minIoSize, true), 4);
      assert.equal(v.getUint8(O.writeback), 1);
      assert.equal(v.getUint8(O.writeback + 1), 0, "unused0 is zero");
      assert.equal(v.getUint16(O.numQueues, true), 4);
      assert.equal(v.getUint32(O.maxDiscardSectors, true), 0x3ffff8);
      assert.equal(v.getUint32(O.maxDiscardSeg, true), 32);
      assert.equal(v.getUint32(O.discardSectorAlignment, true), 8);
      assert.equal(v.getUint32(O.maxWriteZeroesSectors, true), 0x3ffff8);
      assert.equal(v.getUint32(O.maxWriteZeroesSeg, true), 32);
      assert.equal(v.getUint8(O.writeZeroesMayUnmap), 1);
      assertBytes(cfg.subarray(57), new Uint8Array(BLOCK_CONFIG_SIZE - 57), "rest is zero");

      // Reads of a part of a field see the same bytes.
      const part = new Uint8Array(2);
      dev.readConfig(O.numQueues, part);
      assertBytes(part, new Uint8Array([4, 0]));
      assert.throws(() => dev.readConfig(BLOCK_CONFIG_SIZE - 1, new Uint8Array(2)), VirtioError);
    } finally {
      dev.remove();
    }
  });

  it("rejects bad options", () => {
    const backend = new MemoryBackend(4096);
    assert.throws(() => new BlockDevice({}), TypeError);
    assert.throws(() => new BlockDevice({ backend, path: "/nonexistent" }), TypeError);
    assert.throws(() => new BlockDevice({ backend, serial: "x".repeat(21) }), RangeError);
    assert.throws(() => new BlockDevice({ backend, serial: "caf\u00e9" }), RangeError);
    assert.throws(() => new BlockDevice({ backend, queueSize: 100 }), RangeError);
    assert.throws(() => new BlockDevice({ backend, numQueues: 0 }), RangeError);
    assert.throws(() => new BlockDevice({ backend, blockSize: 256 }), RangeError);
    assert.throws(() => new BlockDevice({ backend, blockSize: 4096, physicalBlockSize: 512 }));
    assert.throws(() => new BlockDevice({ path: join(dir, "missing.raw") }));
  });

  it("IN reads sectors of the image across a multi-segment chain", () => {
    const path = image(256);
    const rig = new Rig({ path });
    try {
      const r = rig.read(5, [512, 1536, 512, 1024]);
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      assert.equal(r.len, 3584 + 1, "used length counts data and status");
      assertBytes(r.data, patternBytes(5 * 512, 3584));
      assert.equal(rig.dev.stats.reads, 1);
      assert.equal(rig.dev.stats.bytesRead, 3584);
      assert.equal(rig.interrupts[0], 1);
      assert.deepEqual(rig.errors, []);
    } finally {
      rig.dev.remove();
    }
  });

  it("on memfd-mapped guest memory, scattered segments move by preadv/pwritev or node:fs alike", () => {
    const fd = memfdCreate("guest");
    ftruncate(fd, 16 << 20);
    const mapping = mmapFd(fd, 16 << 20);
    const memory = new GuestMemory([{ base: 0, buffer: mapping.buffer }]);
    try {
      for (const ffi of [true, false]) {
        const path = image(256);
        const backend = new FileBackend(path, { ffi });
        assert.equal(backend.usesFfi, ffi);
        const rig = new Rig({ backend }, { memory });
        try {
          const data = randomBytes(8192, ffi ? 7 : 8);
          const w = rig.write(16, data, { lens: [512, 4096, 1024, 2560] });
          assert.equal(w.status, VIRTIO_BLK_S_OK);
          assertBytes(fileBytes(path, 16 * 512, 8192), data);
          assertBytes(fileBytes(path, 15 * 512, 512), patternBytes(15 * 512, 512));
          const r = rig.read(16, [4096, 512, 3584]);
          assert.equal(r.status, VIRTIO_BLK_S_OK);
          assertBytes(r.data, data);
          // The last sector of the disk, split across segments.
          const end = rig.read(255, [256, 256]);
          assertBytes(end.data, patternBytes(255 * 512, 512));
        } finally {
          backend.close();
        }
      }
    } finally {
      mapping.unmap();
      closeFd(fd);
    }
  });

  it("serves a copy-on-write overlay: writes land in the overlay, the base image is untouched", () => {
    const basePath = image(2048); // 1 MiB
    const baseBefore = fs.readFileSync(basePath);
    const cow = join(dir, `overlay${imageCount++}.cow`);
    const disk = OverlayBackend.openFile(new FileBackend(basePath, { readOnly: true }), cow);
    const rig = new Rig({ backend: disk });
    try {
      assert.equal(rig.dev.readOnly, false, "the overlay is writable over a read-only base");
      const data = randomBytes(6144, 77);
      // Straddles the first 64 KiB cluster boundary, in uneven segments.
      const w = rig.write(120, data, { lens: [1024, 3072, 2048] });
      assert.equal(w.status, VIRTIO_BLK_S_OK);
      const r = rig.read(112, [4096, 8192, 4096]);
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      const expected = patternBytes(112 * 512, 16384);
      expected.set(data, 8 * 512);
      assertBytes(r.data, expected);
      const f = rig.submit([{ readable: hdr(VIRTIO_BLK_T_FLUSH) }, { writable: 1 }]);
      assert.equal(f.written[0], VIRTIO_BLK_S_OK);
      assertBytes(fs.readFileSync(basePath), baseBefore);
    } finally {
      disk.close();
    }
    // A new overlay instance sees the flushed data.
    const again = OverlayBackend.openFile(new FileBackend(basePath, { readOnly: true }), cow);
    try {
      const out = new Uint8Array(6144);
      again.read([out], 120 * 512);
      assertBytes(out, randomBytes(6144, 77));
      assert.equal(again.allocatedClusters, 2);
    } finally {
      again.close();
    }
  });

  it("OUT writes an indirect multi-segment chain to the file and IN reads it back", () => {
    const path = image(256);
    const rig = new Rig({ path });
    try {
      const data = randomBytes(4096, 42);
      const w = rig.write(100, data, { indirect: true, lens: [512, 1024, 2048, 512] });
      assert.equal(w.status, VIRTIO_BLK_S_OK);
      assert.equal(w.len, 1);
      assertBytes(fileBytes(path, 100 * 512, 4096), data);
      // Neighbours untouched.
      assertBytes(fileBytes(path, 99 * 512, 512), patternBytes(99 * 512, 512));
      assertBytes(fileBytes(path, 108 * 512, 512), patternBytes(108 * 512, 512));

      const r = rig.read(100, [1024, 3072], { indirect: true });
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      assertBytes(r.data, data);
      assert.equal(rig.dev.stats.writes, 1);
      assert.equal(rig.dev.stats.bytesWritten, 4096);
    } finally {
      rig.dev.remove();
    }
  });

  it("accepts header, data and status sharing descriptors", () => {
    const path = image(64);
    const rig = new Rig({ path });
    try {
      const data = randomBytes(1024, 7);
      const head = new Uint8Array(16 + 1024);
      head.set(hdr(VIRTIO_BLK_T_OUT, 3));
      head.set(data, 16);
      const w = rig.submit([{ readable: head }, { writable: 1 }]);
      assert.equal(w.written[0], VIRTIO_BLK_S_OK);
      const r = rig.submit([{ readable: hdr(VIRTIO_BLK_T_IN, 3) }, { writable: 1025 }]);
      assert.equal(r.len, 1025);
      assert.equal(r.written[1024], VIRTIO_BLK_S_OK);
      assertBytes(r.written.subarray(0, 1024), data);
    } finally {
      rig.dev.remove();
    }
  });

  it("hands guest-memory views to the backend without copying", () => {
    const spy = new SpyBackend(new MemoryBackend(64 * 512));
    const rig = new Rig({ backend: spy });
    rig.read(0, [512, 512]);
    assert.equal(spy.lastViews.length, 2);
    const guest = rig.mem.regions[0].bytes.buffer;
    for (const v of spy.lastViews) assert.equal(v.buffer, guest);
    rig.write(1, randomBytes(1024, 3), { lens: [256, 768] });
    assert.equal(spy.lastViews.length, 2);
    for (const v of spy.lastViews) assert.equal(v.buffer, guest);
  });

  it("FLUSH completes only after the backend flushed", () => {
    const path = image(64);
    const spy = new SpyBackend(new FileBackend(path));
    const rig = new Rig({ backend: spy });
    try {
      let usedAtFlush = -1;
      spy.onFlush = () => {
        usedAtFlush = rig.drivers[0].usedIdx();
      };
      const f = rig.simple(VIRTIO_BLK_T_FLUSH);
      assert.equal(f.status, VIRTIO_BLK_S_OK);
      assert.equal(f.len, 1);
      assert.equal(usedAtFlush, 0, "flush ran before the request was used");
      assert.deepEqual(spy.calls, ["flush"]);
      assert.equal(rig.dev.stats.flushes, 1);

      spy.failNext = "flush";
      assert.equal(rig.simple(VIRTIO_BLK_T_FLUSH).status, VIRTIO_BLK_S_IOERR);
      assert.equal(rig.errors.at(-1)?.kind, "IOError");
    } finally {
      spy.close();
    }
  });

  it("GET_ID returns the serial, NUL-padded to 20 bytes", () => {
    const short = new Rig({ backend: new MemoryBackend(4096), serial: "disk-0" });
    const u = short.submit([{ readable: hdr(VIRTIO_BLK_T_GET_ID) }, { writable: 20 }, {
      writable: 1,
    }]);
    assert.equal(u.len, 21);
    assert.equal(u.written[20], VIRTIO_BLK_S_OK);
    const expected = new Uint8Array(20);
    expected.set(new TextEncoder().encode("disk-0"));
    assertBytes(u.written.subarray(0, 20), expected);

    const full = new Rig({ backend: new MemoryBackend(4096), serial: "ABCDEFGHIJKLMNOPQRST" });
    const v = full.submit([{ readable: hdr(VIRTIO_BLK_T_GET_ID) }, { writable: 21 }]);
    assert.equal(v.written[20], VIRTIO_BLK_S_OK);
    assert.equal(new TextDecoder().decode(v.written.subarray(0, 20)), "ABCDEFGHIJKLMNOPQRST");

    // A larger buffer gets the ID then zeroes: every byte counted in len was written.
    const big = short.submit([{ readable: hdr(VIRTIO_BLK_T_GET_ID) }, { writable: 64 }, {
      writable: 1,
    }]);
    assert.equal(big.len, 65);
    assertBytes(big.written.subarray(20, 64), new Uint8Array(44));
  });

  it("DISCARD punches a hole in the image file and the range reads as zeroes", () => {
    const sectors = 8192; // 4 MiB
    const path = image(sectors);
    const fd = fs.openSync(path, "r+");
    fs.fdatasyncSync(fd);
    fs.closeSync(fd);
    const backend = new FileBackend(path);
    const rig = new Rig({ backend });
    try {
      const blocksBefore = fs.statSync(path).blocks;
      const used = rig.submit([
        { readable: hdr(VIRTIO_BLK_T_DISCARD) },
        { readable: segment(2048, 4096) }, // the middle 2 MiB
        { writable: 1 },
      ]);
      assert.equal(used.written[0], VIRTIO_BLK_S_OK);
      assert.equal(used.len, 1);
      const r = rig.read(2048, [4096]);
      assertBytes(r.data, new Uint8Array(4096));
      const r2 = rig.read(2048 + 4096 - 8, [4096]);
      assertBytes(r2.data, new Uint8Array(4096));
      assertBytes(fileBytes(path, 2047 * 512, 512), patternBytes(2047 * 512, 512));
      assertBytes(fileBytes(path, 6144 * 512, 512), patternBytes(6144 * 512, 512));
      assert.equal(fs.statSync(path).size, sectors * 512, "size is kept");
      if (backend.punchesHoles) {
        const blocksAfter = fs.statSync(path).blocks;
        assert.ok(
          blocksBefore - blocksAfter >= 2 * 2048 * 0.9,
          `blocks ${blocksBefore} -> ${blocksAfter}`,
        );
      }
      assert.equal(rig.dev.stats.discards, 1);
    } finally {
      backend.close();
    }
  });

  it("DISCARD falls back to writing zeroes without fallocate", () => {
    const path = image(64);
    const backend = new FileBackend(path, { fallocate: false });
    const rig = new Rig({ backend });
    try {
      const used = rig.submit([
        { readable: hdr(VIRTIO_BLK_T_DISCARD) },
        { readable: segment(8, 16) },
        { writable: 1 },
      ]);
      assert.equal(used.written[0], VIRTIO_BLK_S_OK);
      assertBytes(fileBytes(path, 8 * 512, 16 * 512), new Uint8Array(16 * 512));
      assertBytes(fileBytes(path, 24 * 512, 512), patternBytes(24 * 512, 512));
    } finally {
      backend.close();
    }
  });

  it("WRITE_ZEROES zeroes ranges with and without UNMAP", () => {
    const path = image(512);
    const inner = new FileBackend(path);
    const spy = new SpyBackend(inner);
    const rig = new Rig({ backend: spy });
    try {
      const segs = new Uint8Array(32);
      segs.set(segment(10, 6, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP));
      segs.set(segment(300, 100), 16);
      const used = rig.submit([
        { readable: hdr(VIRTIO_BLK_T_WRITE_ZEROES) },
        { readable: segs },
        { writable: 1 },
      ]);
      assert.equal(used.written[0], VIRTIO_BLK_S_OK);
      assert.deepEqual(spy.calls, ["zeroes+unmap", "zeroes"]);
      assertBytes(rig.read(10, [3072]).data, new Uint8Array(3072));
      assertBytes(rig.read(300, [51200]).data, new Uint8Array(51200));
      assertBytes(rig.read(9, [512]).data, patternBytes(9 * 512, 512));
      assertBytes(rig.read(16, [512]).data, patternBytes(16 * 512, 512));
      assertBytes(rig.read(400, [512]).data, patternBytes(400 * 512, 512));

      // Without fallocate the zeroes are written.
      const path2 = image(64);
      const plain = new FileBackend(path2, { fallocate: false });
      const rig2 = new Rig({ backend: plain });
      const u2 = rig2.submit([
        { readable: hdr(VIRTIO_BLK_T_WRITE_ZEROES) },
        { readable: segment(1, 2, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) },
        { writable: 1 },
      ]);
      assert.equal(u2.written[0], VIRTIO_BLK_S_OK);
      assertBytes(fileBytes(path2, 512, 1024), new Uint8Array(1024));
      plain.close();
    } finally {
      spy.close();
    }
  });

  it("DISCARD and WRITE_ZEROES are UNSUPP when not negotiated", () => {
    const rig = new Rig({ backend: new MemoryBackend(8192) }, {
      features: ~(featureBit(VIRTIO_BLK_F_DISCARD) | featureBit(VIRTIO_BLK_F_WRITE_ZEROES)),
    });
    assert.equal(rig.simple(VIRTIO_BLK_T_DISCARD, segment(0, 1)).status, VIRTIO_BLK_S_UNSUPP);
    assert.equal(rig.simple(VIRTIO_BLK_T_WRITE_ZEROES, segment(0, 1)).status, VIRTIO_BLK_S_UNSUPP);
  });

  it("a read-only disk offers RO, refuses writes with IOERR and leaves the file alone", () => {
    const path = image(64);
    const rig = new Rig({ path, readOnly: true });
    try {
      const f = allFeatures(rig.dev);
      assert.ok((f & featureBit(VIRTIO_BLK_F_RO)) !== 0n);
      assert.equal(f & featureBit(VIRTIO_BLK_F_DISCARD), 0n);
      assert.equal(f & featureBit(VIRTIO_BLK_F_WRITE_ZEROES), 0n);
      const before = fs.readFileSync(path);
      const w = rig.write(0, randomBytes(512, 9));
      assert.equal(w.status, VIRTIO_BLK_S_IOERR);
      assert.equal(rig.simple(VIRTIO_BLK_T_DISCARD, segment(0, 1)).status, VIRTIO_BLK_S_UNSUPP);
      assertBytes(fs.readFileSync(path), before);
      const r = rig.read(0, [512]);
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      assertBytes(r.data, patternBytes(0, 512));
      assert.equal(rig.simple(VIRTIO_BLK_T_FLUSH).status, VIRTIO_BLK_S_OK);
    } finally {
      rig.dev.remove();
    }
  });

  it("a read past the end fails with IOERR and the device keeps serving", () => {
    const path = image(64);
    const rig = new Rig({ path });
    try {
      const bad = rig.read(63, [1024]);
      assert.equal(bad.status, VIRTIO_BLK_S_IOERR);
      assert.equal(bad.len, 0, "nothing but the trailing status byte was written");
      assert.equal(rig.errors.length, 1);
      assert.equal(rig.errors[0].kind, "InvalidInput");
      assert.match(rig.errors[0].message, /beyond capacity/);
      assert.equal(rig.hostErrors.length, 1, "the transport hears it too");
      assert.equal(rig.hostErrors[0].needsReset, false);
      const good = rig.read(63, [512]);
      assert.equal(good.status, VIRTIO_BLK_S_OK);
      assertBytes(good.data, patternBytes(63 * 512, 512));
      assert.equal(rig.dev.stats.errors, 1);
    } finally {
      rig.dev.remove();
    }
  });

  it("a backend failure becomes IOERR for that request only", () => {
    const spy = new SpyBackend(new MemoryBackend(64 * 512));
    const rig = new Rig({ backend: spy });
    spy.failNext = "write";
    assert.equal(rig.write(1, randomBytes(512, 1)).status, VIRTIO_BLK_S_IOERR);
    assert.equal(rig.errors.at(-1)?.kind, "IOError");
    assert.match(rig.errors.at(-1)!.message, /injected write failure/);
    spy.failNext = "read";
    const r = rig.read(1, [512]);
    assert.equal(r.status, VIRTIO_BLK_S_IOERR);
    assert.equal(r.len, 0);
    const data = randomBytes(512, 2);
    assert.equal(rig.write(1, data).status, VIRTIO_BLK_S_OK);
    assertBytes(rig.read(1, [512]).data, data);
    assert.equal(rig.dev.stats.errors, 2);
  });

  it("answers unknown request types with UNSUPP", () => {
    const rig = new Rig({ backend: new MemoryBackend(4096) });
    for (const type of [2, 3, 10, 14, 16, 99]) {
      const r = rig.simple(type);
      assert.equal(r.status, VIRTIO_BLK_S_UNSUPP, `type ${type}`);
      assert.equal(r.len, 1);
    }
  });

  it("returns a chain without a status byte with used length 0", () => {
    const rig = new Rig({ backend: new MemoryBackend(4096) });
    const used = rig.submit([{ readable: hdr(VIRTIO_BLK_T_IN, 0) }, {
      readable: new Uint8Array(512),
    }]);
    assert.equal(used.len, 0);
    assert.equal(rig.errors.length, 1);
    assert.match(rig.errors[0].message, /status/);
    assert.equal(rig.read(0, [512]).status, VIRTIO_BLK_S_OK);
  });

  it("writeback toggle: in writethrough mode every write is flushed before completing", () => {
    const disk = new MemoryBackend(64 * 512);
    const rig = new Rig({ backend: disk });
    assert.equal(rig.dev.writethrough, false);
    rig.write(0, randomBytes(512, 1));
    assert.equal(disk.flushes, 0, "writeback: no flush per write");

    rig.dev.writeConfig(BlockConfigOffset.writeback, new Uint8Array([0]));
    const b = new Uint8Array(1);
    rig.dev.readConfig(BlockConfigOffset.writeback, b);
    assert.equal(b[0], 0);
    assert.equal(rig.dev.writethrough, true);
    rig.write(0, randomBytes(512, 2));
    assert.equal(disk.flushes, 1);
    rig.submit([
      { readable: hdr(VIRTIO_BLK_T_WRITE_ZEROES) },
      { readable: segment(0, 1) },
      { writable: 1 },
    ]);
    assert.equal(disk.flushes, 2);

    rig.dev.writeConfig(BlockConfigOffset.writeback, new Uint8Array([7]));
    rig.dev.readConfig(BlockConfigOffset.writeback, b);
    assert.equal(b[0], 1, "any non-zero value selects writeback");
    rig.write(0, randomBytes(512, 3));
    assert.equal(disk.flushes, 2);

    // Only the writeback byte is writable.
    assert.throws(() => rig.dev.writeConfig(0, new Uint8Array(8)), VirtioError);
    assert.throws(
      () => rig.dev.writeConfig(BlockConfigOffset.writeback, new Uint8Array(4)),
      VirtioError,
    );
    assert.throws(() => rig.dev.writeConfig(BlockConfigOffset.numQueues, new Uint8Array(2)));
  });

  it("honours the negotiated cache rules", () => {
    // CONFIG_WCE without FLUSH: writeback reads 0 and writes are stable on completion.
    const a = new MemoryBackend(4096);
    const rigA = new Rig({ backend: a }, { features: ~featureBit(VIRTIO_BLK_F_FLUSH) });
    const b = new Uint8Array(1);
    rigA.dev.readConfig(BlockConfigOffset.writeback, b);
    assert.equal(b[0], 0);
    rigA.write(0, randomBytes(512, 1));
    assert.equal(a.flushes, 1);

    // FLUSH without CONFIG_WCE: the device's default mode (writeback here) holds.
    const c = new MemoryBackend(4096);
    const rigC = new Rig({ backend: c }, { features: ~featureBit(VIRTIO_BLK_F_CONFIG_WCE) });
    rigC.write(0, randomBytes(512, 1));
    assert.equal(c.flushes, 0);

    // A writethrough default.
    const d = new MemoryBackend(4096);
    const rigD = new Rig({ backend: d, writeback: false });
    rigD.dev.readConfig(BlockConfigOffset.writeback, b);
    assert.equal(b[0], 0);
    rigD.write(0, randomBytes(512, 1));
    assert.equal(d.flushes, 1);
  });

  it("serves two queues independently (MQ)", () => {
    const disk = new MemoryBackend(256 * 512);
    const rig = new Rig({ backend: disk, numQueues: 2 }, { queues: 2 });
    assert.ok((allFeatures(rig.dev) & featureBit(VIRTIO_BLK_F_MQ)) !== 0n);
    const d0 = randomBytes(1024, 10);
    const d1 = randomBytes(1024, 11);
    const out = (sector: number, d: Uint8Array): DriverBuffer[] => [
      { readable: hdr(VIRTIO_BLK_T_OUT, sector) },
      { readable: d },
      { writable: 1 },
    ];
    rig.add(out(0, d0), { q: 0 });
    rig.add(out(100, d1), { q: 1 });

    rig.dev.processQueue(1);
    assert.equal(rig.drivers[1].pendingUsed(), 1);
    assert.equal(rig.drivers[0].pendingUsed(), 0, "queue 0 waits for its own notification");
    assert.deepEqual(rig.interrupts, [0, 1]);
    assertBytes(disk.bytes.subarray(100 * 512, 102 * 512), d1);
    assertBytes(disk.bytes.subarray(0, 1024), new Uint8Array(1024));

    rig.dev.processQueue(0);
    assert.equal(rig.drivers[0].pendingUsed(), 1);
    assert.deepEqual(rig.interrupts, [1, 1]);
    assert.equal(rig.drivers[0].takeUsed()!.written[0], VIRTIO_BLK_S_OK);
    assert.equal(rig.drivers[1].takeUsed()!.written[0], VIRTIO_BLK_S_OK);
    assertBytes(disk.bytes.subarray(0, 1024), d0);

    assertBytes(rig.read(100, [1024], { q: 0 }).data, d1);
    assertBytes(rig.read(0, [1024], { q: 1 }).data, d0);
  });

  it("activates with only the first of several queues", () => {
    const rig = new Rig({ backend: new MemoryBackend(4096), numQueues: 4 }, { queues: 1 });
    assert.equal(rig.read(0, [512]).status, VIRTIO_BLK_S_OK);
    rig.dev.processQueue(3);
    assert.equal(rig.errors.length, 1, "a queue that was never set up is reported");
  });

  it("with EVENT_IDX, interrupts follow used_event and kicks follow avail_event", () => {
    const rig = new Rig({ backend: new MemoryBackend(64 * 512) });
    assert.ok((rig.dev.ackedFeatures() & featureBit(VIRTIO_F_EVENT_IDX)) !== 0n);
    const dq = rig.drivers[0];
    assert.equal(dq.eventIdx, true);
    dq.autoUsedEvent = false; // move used_event by hand

    rig.read(0, [512]); // used 0 -> 1 passes used_event 0
    assert.equal(rig.interrupts[0], 1);
    dq.setUsedEvent(3); // interrupt only once used.idx passes 3
    rig.read(0, [512]); // -> 2
    rig.read(0, [512]); // -> 3
    assert.equal(rig.interrupts[0], 1);
    rig.read(0, [512]); // -> 4: passes 3
    assert.equal(rig.interrupts[0], 2);

    // The device re-armed avail_event at its next available index: the next add needs a kick.
    rig.add([{ readable: hdr(VIRTIO_BLK_T_FLUSH) }, { writable: 1 }]);
    assert.equal(dq.kickNeeded(), true);
    rig.dev.processQueue(0);
    assert.equal(dq.takeUsed()?.written[0], VIRTIO_BLK_S_OK);
  });

  it("rounds the capacity down to whole blocks and enforces block alignment", () => {
    const rig = new Rig({ backend: new MemoryBackend(10 * 4096 + 1000), blockSize: 4096 });
    assert.equal(rig.dev.capacity, 80);
    assert.equal(rig.read(1, [4096]).status, VIRTIO_BLK_S_IOERR);
    assert.equal(rig.read(8, [4096]).status, VIRTIO_BLK_S_OK);
    assert.equal(rig.read(72, [8192]).status, VIRTIO_BLK_S_IOERR);
  });

  it("updateCapacity picks up a grown image and signals a configuration change", () => {
    const path = image(64);
    const rig = new Rig({ path });
    try {
      assert.equal(rig.read(64, [512]).status, VIRTIO_BLK_S_IOERR);
      fs.truncateSync(path, 128 * 512);
      assert.equal(rig.dev.updateCapacity(), 128);
      assert.equal(rig.configChanges, 1);
      const cap = new Uint8Array(8);
      rig.dev.readConfig(BlockConfigOffset.capacity, cap);
      assert.equal(new DataView(cap.buffer).getBigUint64(0, true), 128n);
      const r = rig.read(64, [512]);
      assert.equal(r.status, VIRTIO_BLK_S_OK);
      assertBytes(r.data, new Uint8Array(512));
      assert.equal(rig.dev.updateCapacity(), 128);
      assert.equal(rig.configChanges, 1, "no change, no notification");
    } finally {
      rig.dev.remove();
    }
  });

  it("serves many requests in one notification with random gaps between buffers", () => {
    const disk = new MemoryBackend(1024 * 512);
    const rig = new Rig({ backend: disk }, { queueSize: 128 });
    const expected = new Uint8Array(disk.bytes.length);
    for (let i = 0; i < 40; i++) {
      const data = randomBytes(512 * (1 + (i % 4)), 100 + i);
      const sector = (i * 23) % 1000;
      const lens = data.length === 512 ? [512] : [256, data.length - 256];
      const pieces: DriverBuffer[] = [];
      let off = 0;
      for (const n of lens) {
        pieces.push({ readable: data.subarray(off, off + n) });
        off += n;
      }
      rig.add([{ readable: hdr(VIRTIO_BLK_T_OUT, sector) }, ...pieces, { writable: 1 }], {
        indirect: i % 2 === 0,
      });
      expected.set(data, sector * 512);
    }
    rig.dev.processQueue(0);
    const used = rig.drivers[0].takeAllUsed();
    assert.equal(used.length, 40);
    for (const u of used) assert.equal(u.written[0], VIRTIO_BLK_S_OK);
    assert.equal(rig.interrupts[0], 1, "one interrupt for the batch");
    assertBytes(disk.bytes, expected);
  });
});

describe("BlockDevice behind MmioTransport", () => {
  it("initialises like a guest driver and serves reads, writes, flushes and config writes", () => {
    const path = image(2048);
    const dev = new BlockDevice({ path, serial: "mmio-disk", numQueues: 2 });
    const mem = GuestMemory.create(8 << 20);
    let irqs = 0;
    const mmioErrors: MmioError[] = [];
    const transport = new MmioTransport(dev, mem, {
      interrupt: () => irqs++,
      onError: (e) => mmioErrors.push(e),
    });
    const driver = new MmioDriver(transport, mem);
    try {
      const queues = driver.init();
      assert.equal(queues.length, 2);
      assert.ok((driver.status() & DEVICE_DRIVER_OK) !== 0);
      assert.ok((driver.features & featureBit(VIRTIO_F_EVENT_IDX)) !== 0n);
      assert.ok((driver.features & featureBit(VIRTIO_BLK_F_MQ)) !== 0n);
      const cfg = new DataView(driver.readConfig(0, BLOCK_CONFIG_SIZE).buffer);
      assert.equal(cfg.getBigUint64(BlockConfigOffset.capacity, true), 2048n);
      assert.equal(cfg.getUint16(BlockConfigOffset.numQueues, true), 2);

      // Write then read back on queue 1, the way Linux lays out requests.
      const data = randomBytes(8192, 77);
      queues[1].addChain([
        { readable: hdr(VIRTIO_BLK_T_OUT, 512) },
        { readable: data.subarray(0, 4096) },
        { readable: data.subarray(4096) },
        { writable: 1 },
      ]);
      assert.equal(driver.kick(1), true);
      const w = queues[1].takeUsed()!;
      assert.equal(w.written[0], VIRTIO_BLK_S_OK);
      assert.ok(irqs >= 1);
      assert.ok(driver.ackInterrupt() !== 0);
      assertBytes(fileBytes(path, 512 * 512, 8192), data);

      queues[0].addChain([{ readable: hdr(VIRTIO_BLK_T_FLUSH) }, { writable: 1 }]);
      driver.kick(0);
      assert.equal(queues[0].takeUsed()!.written[0], VIRTIO_BLK_S_OK);

      queues[0].addChain([
        { readable: hdr(VIRTIO_BLK_T_IN, 512) },
        { writable: 8192 },
        { writable: 1 },
      ], { indirect: true });
      driver.kick(0);
      const r = queues[0].takeUsed()!;
      assert.equal(r.len, 8193);
      assert.equal(r.written[8192], VIRTIO_BLK_S_OK);
      assertBytes(r.written.subarray(0, 8192), data);

      queues[0].addChain([{ readable: hdr(VIRTIO_BLK_T_GET_ID) }, { writable: 20 }, {
        writable: 1,
      }]);
      driver.kick(0);
      const id = queues[0].takeUsed()!;
      assert.equal(new TextDecoder().decode(id.written.subarray(0, 9)), "mmio-disk");

      // The driver switches to writethrough through the config window.
      transport.write(MMIO_CONFIG_OFFSET + BlockConfigOffset.writeback, new Uint8Array([0]));
      assert.equal(dev.writethrough, true);
      assert.equal(driver.readConfig(BlockConfigOffset.writeback, 1)[0], 0);
      // A write to a read-only field is refused and reported, never thrown.
      transport.write(MMIO_CONFIG_OFFSET + BlockConfigOffset.capacity, new Uint8Array(4));
      assert.equal(mmioErrors.length, 1);
      assert.equal(mmioErrors[0].code, "ConfigAccess");
      assert.equal(driver.readConfig(0, 8)[0], 0, "capacity unchanged (2048 = 0x800)");

      // A bad request is answered; the device does not need a reset.
      queues[0].addChain([
        { readable: hdr(VIRTIO_BLK_T_IN, 4096) },
        { writable: 512 },
        { writable: 1 },
      ]);
      driver.kick(0);
      assert.equal(queues[0].takeUsed()!.written[512], VIRTIO_BLK_S_IOERR);
      assert.equal(driver.status() & DEVICE_NEEDS_RESET, 0);

      // Reset restores the default cache mode, and the device can be initialised again.
      transport.writeU32(0x70, 0);
      assert.equal(dev.isActive, false);
      assert.equal(driver.readConfig(BlockConfigOffset.writeback, 1)[0], 1);
      const again = driver.init({ queues: 1 });
      again[0].addChain([{ readable: hdr(VIRTIO_BLK_T_IN, 512) }, { writable: 512 }, {
        writable: 1,
      }]);
      driver.kick(0);
      const r2 = again[0].takeUsed()!;
      assert.equal(r2.written[512], VIRTIO_BLK_S_OK);
      assertBytes(r2.written.subarray(0, 512), data.subarray(0, 512));
    } finally {
      dev.remove();
    }
  });
});

describe("FileBackend", () => {
  it("zero-fills what lies past the end of a shrunk image", () => {
    const path = image(4);
    const backend = new FileBackend(path, { size: 4 * 512 });
    try {
      fs.truncateSync(path, 1000);
      const a = new Uint8Array(512).fill(0xee);
      const b = new Uint8Array(512).fill(0xee);
      const c = new Uint8Array(512).fill(0xee);
      backend.read([a, b, c], 0);
      assertBytes(a, patternBytes(0, 512));
      assertBytes(b.subarray(0, 488), patternBytes(512, 488));
      assertBytes(b.subarray(488), new Uint8Array(24));
      assertBytes(c, new Uint8Array(512));
      const d = new Uint8Array(16).fill(1);
      backend.read([d], 1500);
      assertBytes(d, new Uint8Array(16));
    } finally {
      backend.close();
    }
  });

  it("reads and writes more views than one preadv/pwritev takes", () => {
    const path = image(8);
    const backend = new FileBackend(path);
    try {
      const data = randomBytes(3000, 5);
      const views: Uint8Array[] = [];
      for (let i = 0; i < 3000; i++) views.push(data.subarray(i, i + 1));
      backend.write(views, 100);
      assertBytes(fileBytes(path, 100, 3000), data);
      const back = new Uint8Array(3000);
      const outViews: Uint8Array[] = [];
      for (let i = 0; i < 3000; i++) outViews.push(back.subarray(i, i + 1));
      backend.read(outViews, 100);
      assertBytes(back, data);
    } finally {
      backend.close();
    }
  });

  it("reports the size of the file and refuses writes when read-only", () => {
    const path = image(3);
    const rw = new FileBackend(path);
    assert.equal(rw.size, 1536);
    assert.equal(rw.readOnly, false);
    rw.close();
    rw.close(); // idempotent
    const ro = new FileBackend(path, { readOnly: true });
    try {
      assert.equal(ro.readOnly, true);
      assert.throws(() => ro.write([new Uint8Array(512)], 0));
    } finally {
      ro.close();
    }
    assert.throws(() => new FileBackend(path, { size: -1 }), RangeError);
  });
});

// A block device node is served like a file: its size comes from sysfs and the I/O is the
// same positional I/O. A loop device over a scratch file stands in for a disk.
function attachLoop(file: string): string | undefined {
  try {
    const r = spawnSync("losetup", ["--find", "--show", file], { encoding: "utf8" });
    return r.status === 0 ? r.stdout.trim() : undefined;
  } catch {
    return undefined;
  }
}

const loopSkip: string | false = (() => {
  if (process.getuid?.() !== 0) return "skipped: a loop device needs root";
  const probe = join(tmpdir(), `virtio-ts-loop-probe-${process.pid}.img`);
  fs.writeFileSync(probe, new Uint8Array(65536));
  const dev = attachLoop(probe);
  if (dev !== undefined) spawnSync("losetup", ["-d", dev]);
  fs.rmSync(probe, { force: true });
  return dev === undefined ? "skipped: no loop device (losetup failed)" : false;
})();

describe("BlockDevice on a block device node", () => {
  it("serves a loop device: size from sysfs, reads and writes reach the disk", {
    skip: loopSkip,
  }, () => {
    const path = image(8192); // 4 MiB
    const dev = attachLoop(path)!;
    try {
      const rig = new Rig({ path: dev, serial: "loop" });
      try {
        const backend = rig.dev.backend as FileBackend;
        assert.equal(backend.size, 8192 * 512, "size from /sys/dev/block/…/size");
        const cfg = new Uint8Array(8);
        rig.dev.readConfig(BlockConfigOffset.capacity, cfg);
        assert.equal(new DataView(cfg.buffer).getUint32(0, true), 8192);
        assertBytes(rig.read(100, [4096, 512]).data, patternBytes(100 * 512, 4608));
        const data = randomBytes(8192, 5);
        assert.equal(rig.write(2000, data, { lens: [4096, 4096] }).status, VIRTIO_BLK_S_OK);
        const f = rig.submit([{ readable: hdr(VIRTIO_BLK_T_FLUSH) }, { writable: 1 }]);
        assert.equal(f.written[0], VIRTIO_BLK_S_OK);
        // The loop device writes through to its backing file.
        spawnSync("blockdev", ["--flushbufs", dev]);
        assertBytes(fileBytes(path, 2000 * 512, 8192), data, "backing file");
        // Past the end of the device is refused.
        assert.notEqual(rig.read(8192, [512]).status, VIRTIO_BLK_S_OK);
      } finally {
        rig.dev.remove();
      }
    } finally {
      spawnSync("losetup", ["-d", dev]);
    }
  });
});

// ---------------------------------------------------------------------------
// Guest memory made of several adjacent regions, as a frontend with several memory backends
// (or hotplugged memory) describes it: buffers may straddle the boundaries.

/**
 * The first region boundary the buffers below straddle; above the Rig's buffer area, so the
 * buffers placed around it never meet the ones the driver allocates.
 */
const EDGE = 0x400000;
/** A one-page region right after it, so one buffer can touch three regions. */
const PAGE = 0x1000;
const GUEST = 16 << 20;

/** [0, EDGE), [EDGE, EDGE + PAGE), [EDGE + PAGE, GUEST), each over its own ArrayBuffer. */
function threeRegions(): GuestMemory {
  return new GuestMemory([
    { base: 0, buffer: new ArrayBuffer(EDGE) },
    { base: EDGE, buffer: new ArrayBuffer(PAGE) },
    { base: EDGE + PAGE, buffer: new ArrayBuffer(GUEST - EDGE - PAGE) },
  ]);
}

/**
 * OUT of 12 KiB at `sector` whose first buffer touches all three regions, then IN of it back
 * into buffers that do too (the status byte sits on the far side of the boundary); returns the
 * data written and the views the backend got for the IN.
 */
function roundTripAcrossRegions(rig: Rig, spy: SpyBackend, sector: number): Uint8Array {
  const data = randomBytes(12288, sector);
  const out = rig.submit([
    { readable: hdr(VIRTIO_BLK_T_OUT, sector) },
    { readable: data.subarray(0, 8192), at: EDGE - 1536 }, // 1536 + 4096 + 2560
    { readable: data.subarray(8192) },
    { writable: 1, at: EDGE + PAGE + 0x3000 },
  ]);
  assert.equal(out.written[0], VIRTIO_BLK_S_OK);
  assert.equal(out.len, 1);
  assert.equal(spy.lastViews.length, 4, "one view per region piece, plus the second buffer");
  const inn = rig.submit([
    { readable: hdr(VIRTIO_BLK_T_IN, sector) },
    { writable: 6144, at: EDGE - 512 }, // 512 + 4096 + 1536
    { writable: 6144 },
    { writable: 1, at: EDGE + PAGE + 0x4000 },
  ]);
  assert.equal(inn.written[12288], VIRTIO_BLK_S_OK);
  assert.equal(inn.len, 12289);
  assertBytes(inn.written.subarray(0, 12288), data);
  assert.equal(spy.lastViews.length, 4);
  const lens = spy.lastViews.map((v) => v.length);
  assert.deepEqual(lens.slice(0, 3), [512, 4096, 1536]);
  return data;
}

describe("BlockDevice on guest memory of adjacent regions", () => {
  it("IN and OUT buffers straddling region boundaries, through MemoryBackend", () => {
    const disk = new MemoryBackend(256 * 512);
    const spy = new SpyBackend(disk);
    const mem = threeRegions();
    const rig = new Rig({ backend: spy }, { memory: mem });
    const data = roundTripAcrossRegions(rig, spy, 10);
    assertBytes(disk.bytes.subarray(10 * 512, 10 * 512 + 12288), data);
    // The views alias the three regions' own buffers: nothing was copied in between.
    assert.deepEqual(
      spy.lastViews.slice(0, 3).map((v) => v.buffer),
      mem.regions.map((r) => r.bytes.buffer),
    );
    // Through an indirect table that itself straddles the boundary.
    const more = randomBytes(4096, 99);
    const head = rig.drivers[0].addChain([
      { readable: hdr(VIRTIO_BLK_T_OUT, 40) },
      { readable: more, at: EDGE + PAGE - 2048 },
      { writable: 1 },
    ], { indirectAt: EDGE - 24 });
    rig.dev.processQueue(0);
    const used = rig.drivers[0].takeUsed()!;
    assert.equal(used.id, head);
    assert.equal(used.written[0], VIRTIO_BLK_S_OK);
    assertBytes(disk.bytes.subarray(40 * 512, 40 * 512 + 4096), more);
    assert.deepEqual(rig.errors, []);
  });

  it("a buffer over a hole between regions is refused and the disk is untouched", () => {
    const hole = EDGE;
    const mem = new GuestMemory([
      { base: 0, buffer: new ArrayBuffer(hole) },
      { base: hole + PAGE, buffer: new ArrayBuffer(GUEST - hole - PAGE) },
    ]);
    const disk = new MemoryBackend(64 * 512);
    const rig = new Rig({ backend: disk }, { memory: mem });
    // Data that runs from the first region into the hole, as raw descriptors (the driver
    // harness cannot put bytes there, nor read them back).
    const d = rig.drivers[0];
    const header = d.alloc(16);
    const status = d.alloc(1);
    for (const type of [VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_IN]) {
      mem.write(header, hdr(type, 0));
      mem.writeU8(status, 0xee);
      const dataFlags = VIRTQ_DESC_F_NEXT | (type === VIRTIO_BLK_T_IN ? VIRTQ_DESC_F_WRITE : 0);
      d.writeDescriptor(0, { addr: header, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 1 });
      d.writeDescriptor(1, { addr: hole - 512, len: 1024, flags: dataFlags, next: 2 });
      d.writeDescriptor(2, { addr: status, len: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 });
      d.publish(0);
      rig.dev.processQueue(0);
      const used = d.takeUsed()!;
      assert.deepEqual([used.id, used.len], [0, 0]);
      assert.equal(mem.readU8(status), 0xee, "the chain was refused whole");
    }
    assert.ok(disk.bytes.every((b) => b === 0), "nothing reached the disk");
    assert.deepEqual(rig.errors.map((e) => e.kind), ["QueueError", "QueueError"]);
    assert.match(rig.errors[0].message, /DescriptorOutOfBounds/);
    // The device goes on serving.
    assert.equal(rig.write(0, randomBytes(512, 2)).status, VIRTIO_BLK_S_OK);
  });

  it("FileBackend on memfd regions mapped at adjacent guest addresses: one iovec per piece", () => {
    // One memfd, three mappings of consecutive parts of it at consecutive guest addresses:
    // exactly what a vhost-user frontend's memory table describes.
    const fd = memfdCreate("guest");
    ftruncate(fd, GUEST);
    const maps = [
      mmapFd(fd, EDGE, 0),
      mmapFd(fd, PAGE, EDGE),
      mmapFd(fd, GUEST - EDGE - PAGE, EDGE + PAGE),
    ];
    const memory = new GuestMemory([
      { base: 0, buffer: maps[0].buffer },
      { base: EDGE, buffer: maps[1].buffer },
      { base: EDGE + PAGE, buffer: maps[2].buffer },
    ]);
    try {
      for (const ffi of [true, false]) {
        const path = image(4096);
        const backend = new FileBackend(path, { ffi });
        assert.equal(backend.usesFfi, ffi);
        const spy = new SpyBackend(backend);
        const rig = new Rig({ backend: spy }, { memory });
        try {
          const data = roundTripAcrossRegions(rig, spy, 16);
          assertBytes(fileBytes(path, 16 * 512, 12288), data);
          assertBytes(fileBytes(path, 15 * 512, 512), patternBytes(15 * 512, 512));
          // Each piece lies in its own mapping, so each is an iovec of its own for preadv.
          assert.deepEqual(
            spy.lastViews.slice(0, 3).map((v) => v.buffer),
            maps.map((m) => m.buffer),
          );
          for (const v of spy.lastViews) assert.notEqual(mappedAddressOf(v), undefined);

          // More pieces than one preadv/pwritev takes (IOV_MAX): 1030 sectors in an indirect
          // table, two of them straddling a boundary, so 1032 views.
          const sectors = 1030;
          const big = randomBytes(sectors * 512, ffi ? 3 : 4);
          const bufs: DriverBuffer[] = [];
          for (let i = 0; i < sectors; i++) {
            const at = i === 0 ? EDGE - 256 : i === 1 ? EDGE + PAGE - 256 : undefined;
            bufs.push({ readable: big.subarray(i * 512, (i + 1) * 512), at });
          }
          const w = rig.submit([{ readable: hdr(VIRTIO_BLK_T_OUT, 100) }, ...bufs, {
            writable: 1,
          }], { indirect: true });
          assert.equal(w.written[0], VIRTIO_BLK_S_OK);
          assert.equal(spy.lastViews.length, sectors + 2);
          assert.ok(spy.lastViews.length > IOV_MAX);
          assertBytes(fileBytes(path, 100 * 512, big.length), big);
          const back: DriverBuffer[] = bufs.map((b) => ({ writable: 512, at: b.at }));
          const r = rig.submit([{ readable: hdr(VIRTIO_BLK_T_IN, 100) }, ...back, {
            writable: 1,
          }], { indirect: true });
          assert.equal(r.len, big.length + 1);
          assertBytes(r.written.subarray(0, big.length), big);
          assert.deepEqual(rig.errors, []);
        } finally {
          backend.close();
        }
      }
    } finally {
      for (const m of maps) m.unmap();
      closeFd(fd);
    }
  });
});

// ---------------------------------------------------------------------------
// The used length (virtio 1.2 §2.7.8.2): the device must have written at least `len` bytes,
// counted from the start of the chain's writable part, and may write more. So `len` may never
// claim a byte the device did not write, and should not fall short of the bytes it wrote from
// the start either: it is the longest prefix of the writable part that was written.
//
// What was written is found without instrumenting the device: each request runs twice, on
// fresh devices, with its writable buffers pre-filled with 0x00 and then with 0xff. The device
// writes the same value to the same byte in both runs (same disk, same request), and a value
// cannot equal both canaries, so a byte was written exactly when it differs from its canary in
// at least one run, including bytes rewritten with the value they already held in one run.
// From that set the test checks: `len` is its longest prefix, and beyond `len` only the
// status byte was written (it follows the data, so after untouched data it cannot be counted),
// or data a failed read may have left (`mayWriteData`).

/** A read whose backend fills the first half of the views, then fails. */
class HalfReadBackend extends MemoryBackend {
  override read(bufs: readonly Uint8Array[], offset: number): void {
    super.read(bufs.slice(0, Math.ceil(bufs.length / 2)), offset);
    throw new Error("injected failure midway through a read");
  }
}

interface UsedLengthCase {
  name: string;
  /** Device-readable buffers, then writable buffers given by their length. */
  buffers: DriverBuffer[];
  backend?: () => BlockBackend;
  options?: Partial<BlockOptions>;
  /** Fail this backend call. */
  fail?: "read" | "write" | "flush" | "discard";
  /** The used length expected. */
  len: number;
  /** The status expected in the last writable byte, when there is one. */
  status?: number;
  /** A failed read may leave data bytes written beyond `len`. */
  mayWriteData?: boolean;
}

const W = (n: number): DriverBuffer => ({ writable: n });
const R = (b: Uint8Array): DriverBuffer => ({ readable: b });
const OK = VIRTIO_BLK_S_OK;
const IOERR = VIRTIO_BLK_S_IOERR;
const UNSUPP = VIRTIO_BLK_S_UNSUPP;

const USED_LENGTH_CASES: UsedLengthCase[] = [
  // IN: data then status, every byte written.
  { name: "IN of one sector", buffers: [R(hdr(0, 1)), W(512), W(1)], len: 513, status: OK },
  {
    name: "IN across segments, status sharing the last one",
    buffers: [R(hdr(0, 2)), W(1024), W(512), W(513)],
    len: 2049,
    status: OK,
  },
  { name: "IN of no data", buffers: [R(hdr(0, 2)), W(1)], len: 1, status: OK },
  { name: "IN past the capacity", buffers: [R(hdr(0, 63)), W(1024), W(1)], len: 0, status: IOERR },
  { name: "IN of a partial sector", buffers: [R(hdr(0, 1)), W(100), W(1)], len: 0, status: IOERR },
  {
    name: "IN with device-readable data",
    buffers: [R(hdr(0, 1)), R(new Uint8Array(512)), W(512), W(1)],
    len: 0,
    status: IOERR,
  },
  {
    name: "IN failing before any data",
    buffers: [R(hdr(0, 1)), W(512), W(1)],
    fail: "read",
    len: 0,
    status: IOERR,
  },
  {
    name: "IN failing midway",
    buffers: [R(hdr(0, 1)), W(512), W(512), W(512), W(512), W(1)],
    backend: () => new HalfReadBackend(64 * 512),
    len: 0,
    status: IOERR,
    mayWriteData: true,
  },
  // OUT: only the status byte is written.
  { name: "OUT", buffers: [R(hdr(1, 1)), R(randomBytes(512, 1)), W(1)], len: 1, status: OK },
  {
    name: "OUT with a device-writable data buffer",
    buffers: [R(hdr(1, 1)), W(512), W(1)],
    len: 0,
    status: IOERR,
  },
  {
    name: "OUT failing",
    buffers: [R(hdr(1, 1)), R(randomBytes(512, 1)), W(1)],
    fail: "write",
    len: 1,
    status: IOERR,
  },
  {
    name: "OUT to a read-only disk",
    buffers: [R(hdr(1, 1)), R(randomBytes(512, 1)), W(1)],
    options: { readOnly: true },
    len: 1,
    status: IOERR,
  },
  // FLUSH: only the status byte, whatever room the driver gave.
  { name: "FLUSH", buffers: [R(hdr(VIRTIO_BLK_T_FLUSH)), W(1)], len: 1, status: OK },
  {
    name: "FLUSH with a device-writable data buffer",
    buffers: [R(hdr(VIRTIO_BLK_T_FLUSH)), W(512), W(1)],
    len: 0,
    status: OK,
  },
  {
    name: "FLUSH with device-readable data",
    buffers: [R(hdr(VIRTIO_BLK_T_FLUSH)), R(new Uint8Array(512)), W(1)],
    len: 1,
    status: OK,
  },
  {
    name: "FLUSH failing",
    buffers: [R(hdr(VIRTIO_BLK_T_FLUSH)), W(1)],
    fail: "flush",
    len: 1,
    status: IOERR,
  },
  // GET_ID: the ID, NUL-padded to the room given, then the status.
  { name: "GET_ID", buffers: [R(hdr(VIRTIO_BLK_T_GET_ID)), W(20), W(1)], len: 21, status: OK },
  {
    name: "GET_ID with less room than the ID",
    buffers: [R(hdr(VIRTIO_BLK_T_GET_ID)), W(8), W(1)],
    len: 9,
    status: OK,
  },
  {
    name: "GET_ID with more room than the ID",
    buffers: [R(hdr(VIRTIO_BLK_T_GET_ID)), W(64), W(1)],
    len: 65,
    status: OK,
  },
  {
    name: "GET_ID without room",
    buffers: [R(hdr(VIRTIO_BLK_T_GET_ID)), W(1)],
    len: 1,
    status: IOERR,
  },
  // DISCARD and WRITE_ZEROES: only the status byte.
  {
    name: "DISCARD",
    buffers: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(segment(8, 8)), W(1)],
    len: 1,
    status: OK,
  },
  {
    name: "DISCARD failing",
    buffers: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(segment(8, 8)), W(1)],
    fail: "discard",
    len: 1,
    status: IOERR,
  },
  {
    name: "DISCARD not negotiated",
    buffers: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(segment(8, 8)), W(1)],
    options: { discard: false },
    len: 1,
    status: UNSUPP,
  },
  {
    name: "DISCARD with a device-writable data buffer",
    buffers: [R(hdr(VIRTIO_BLK_T_DISCARD)), R(segment(8, 8)), W(16), W(1)],
    len: 0,
    status: IOERR,
  },
  {
    name: "WRITE_ZEROES with UNMAP",
    buffers: [
      R(hdr(VIRTIO_BLK_T_WRITE_ZEROES)),
      R(segment(8, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)),
      W(1),
    ],
    len: 1,
    status: OK,
  },
  {
    name: "WRITE_ZEROES past the capacity",
    buffers: [R(hdr(VIRTIO_BLK_T_WRITE_ZEROES)), R(segment(60, 8)), W(1)],
    len: 1,
    status: IOERR,
  },
  // Types the device does not serve, and chains it cannot answer.
  { name: "an unknown type", buffers: [R(hdr(99)), W(1)], len: 1, status: UNSUPP },
  {
    name: "an unknown type with a device-writable data buffer",
    buffers: [R(hdr(99)), W(4096), W(1)],
    len: 0,
    status: UNSUPP,
  },
  {
    name: "GET_LIFETIME (unsupported) with room for its answer",
    buffers: [R(hdr(10)), W(48), W(1)],
    len: 0,
    status: UNSUPP,
  },
  { name: "a short header", buffers: [R(new Uint8Array(8)), W(1)], len: 1, status: IOERR },
  { name: "no device-writable byte", buffers: [R(hdr(0, 1)), R(new Uint8Array(512))], len: 0 },
];

/** Run `c` on a fresh device with its writable buffers pre-filled with `canary`. */
function runWithCanary(c: UsedLengthCase, canary: number): UsedEntry {
  const disk = c.backend?.() ?? new MemoryBackend(64 * 512);
  for (let i = 0; i < disk.size; i += 512) {
    disk.write([patternBytes(i, 512)], i);
  }
  const spy = new SpyBackend(disk);
  spy.failNext = c.fail;
  const rig = new Rig({ backend: spy, serial: "used-length", ...c.options });
  const d = rig.drivers[0];
  const buffers = c.buffers.map((b) => {
    if (!("writable" in b)) return b;
    const at = d.alloc(b.writable);
    rig.mem.fill(at, b.writable, canary);
    return { writable: b.writable, at };
  });
  const used = rig.submit(buffers);
  assert.equal(spy.failNext, undefined, "the injected failure happened");
  return used;
}

describe("BlockDevice used length", () => {
  for (const c of USED_LENGTH_CASES) {
    it(`is the written prefix of the writable part: ${c.name}`, () => {
      const low = runWithCanary(c, 0x00);
      const high = runWithCanary(c, 0xff);
      const size = low.written.length;
      const written = (i: number) => low.written[i] !== 0x00 || high.written[i] !== 0xff;
      let prefix = 0;
      while (prefix < size && written(prefix)) prefix++;
      assert.equal(low.len, high.len);
      assert.equal(low.len, c.len, "the used length");
      if (c.mayWriteData) {
        // The device cannot know how far a failed read got: the length may fall short (the
        // note under virtio 1.2 §2.7.8.2), never claim more than was written.
        assert.ok(low.len <= prefix, "the used length claims no unwritten byte");
      } else {
        assert.equal(low.len, prefix, "the used length is exactly the written prefix");
      }
      for (let i = prefix; i < size; i++) {
        if (!written(i)) continue;
        const isStatus = i === size - 1;
        assert.ok(isStatus || c.mayWriteData, `byte ${i} written beyond the used length`);
      }
      if (c.status !== undefined) {
        assert.ok(written(size - 1), "the status byte was written");
        assert.equal(low.written[size - 1], c.status);
      } else {
        assert.equal(size, 0);
      }
    });
  }
});

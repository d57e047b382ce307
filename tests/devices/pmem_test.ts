// virtio-pmem (virtio 1.2 §5.19) driven through the MMIO transport by the driver harness. The
// file is mapped where our VMM places device memory (DeviceMemorySpace.attach), so the guest's
// writes land in the file's pages; FLUSH is answered 0 after fdatasync, anything else -1. The
// file is checked before it is mapped (regular, a multiple of 2 MiB) and mapped exactly to its
// end: a mapping past it would raise SIGBUS, and this test touches every byte of the region.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { GuestMemory } from "../../memory/guest_memory.ts";
import {
  DEVICE_NEEDS_RESET,
  DeviceResources,
  featureBit,
  type ResourceConstraint,
  type VirtioSharedMemoryList,
} from "../../devices/device.ts";
import {
  PMEM_REGION_ALIGN,
  PMEM_SIZE_ALIGN,
  PmemConfigOffset,
  PmemDevice,
  VIRTIO_PMEM_F_SHMEM_REGION,
  VIRTIO_PMEM_REQ_TYPE_FLUSH,
  VIRTIO_PMEM_RESP_EIO,
  VIRTIO_PMEM_RESP_OK,
} from "../../devices/pmem.ts";
import { DeviceMemorySpace } from "../../kvm/device_memory.ts";
import { type MmioError, MmioRegister, MmioTransport } from "../../transport/mmio.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";
import type { DriverQueue } from "../../testing/queue_driver.ts";

const MiB = 1 << 20;
const SIZE = 4 * MiB;
const BASE = 0x1_0000_0000;
const ALL = ~0n & 0xffff_ffff_ffff_ffffn;
let dir = "";

before(() => {
  dir = mkdtempSync(join(tmpdir(), "vt-pmem-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, size: number, fill = 0): string {
  const path = join(dir, name);
  writeFileSync(path, new Uint8Array(size).fill(fill));
  return path;
}

interface Rig {
  path: string;
  mem: GuestMemory;
  device: PmemDevice;
  shm: VirtioSharedMemoryList;
  transport: MmioTransport;
  driver: MmioDriver;
  queue: DriverQueue;
  errors: MmioError[];
}

function rig(name: string, features = ALL): Rig {
  const path = file(name, SIZE, 0x11);
  const mem = GuestMemory.create(4 * MiB);
  const device = new PmemDevice({ path, shmemRegion: true });
  const space = new DeviceMemorySpace({ memory: mem, setSlot: () => {} });
  const shm = space.attach(device, { base: 0xd000_0000, size: 0x1000, irq: 5 })!;
  const errors: MmioError[] = [];
  const transport = new MmioTransport(device, mem, {
    onError: (e) => errors.push(e),
    shmRegions: shm,
  });
  const driver = new MmioDriver(transport, mem);
  const [queue] = driver.init({ features });
  return { path, mem, device, shm, transport, driver, queue, errors };
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, true);
  return b;
}

function send(r: Rig, req: Uint8Array, room = 4) {
  const buffers: ({ readable: Uint8Array } | { writable: number })[] = [];
  if (req.length > 0) buffers.push({ readable: req });
  if (room > 0) buffers.push({ writable: room });
  const head = r.queue.addChain(buffers);
  r.driver.kick(0, true);
  const used = r.queue.takeUsed();
  assert.ok(used !== null);
  assert.equal(used.id, head);
  return used;
}

function ret(used: { len: number; written: Uint8Array }): number {
  assert.equal(used.len, 4);
  return new DataView(used.written.buffer, used.written.byteOffset).getUint32(0, true);
}

describe("virtio-pmem", () => {
  it("asks for a window of the file's size and a slot; the whole file is the region", () => {
    const r = rig("place.img");
    try {
      const needs: ResourceConstraint[] = [];
      r.device.getResourceRequirements(needs, false);
      assert.deepEqual(needs.slice(-2), [
        { type: "MemAddress", size: SIZE, align: PMEM_REGION_ALIGN },
        { type: "KvmMemSlot" },
      ]);
      assert.equal(r.shm.guestAddr, BASE);
      assert.equal(r.shm.len, SIZE);
      assert.equal(r.device.mapping!.length, SIZE, "mapped exactly to the end of the file");
      assert.deepEqual(r.shm.regionList, [{ offset: 0, len: SIZE }]);
      // Every byte is backed by the file.
      const region = r.shm.mmapRegion.bytes;
      assert.ok(region.every((b) => b === 0x11));
    } finally {
      r.device.remove();
    }
  });

  it("offers SHMEM_REGION only when asked", () => {
    const path = file("offer.img", PMEM_SIZE_ALIGN);
    const d = new PmemDevice({ path });
    assert.equal(d.getAvailFeatures(0) & (1 << VIRTIO_PMEM_F_SHMEM_REGION), 0);
    d.remove();
  });

  it("without SHMEM_REGION the configuration has start and size; with it, zeroes and shared memory 0", () => {
    const plain = rig("config.img", ALL & ~featureBit(VIRTIO_PMEM_F_SHMEM_REGION));
    try {
      const cfg = new DataView(plain.driver.readConfig(0, 16).buffer);
      assert.equal(Number(cfg.getBigUint64(PmemConfigOffset.start, true)), BASE);
      assert.equal(Number(cfg.getBigUint64(PmemConfigOffset.size, true)), SIZE);
    } finally {
      plain.device.remove();
    }
    const shm = rig("shm.img");
    try {
      assert.deepEqual(shm.driver.readConfig(0, 16), new Uint8Array(16));
      shm.transport.writeU32(MmioRegister.ShmSel, 0);
      assert.equal(shm.transport.readU32(MmioRegister.ShmLenLow), SIZE);
      assert.equal(shm.transport.readU32(MmioRegister.ShmBaseLow), 0);
      assert.equal(shm.transport.readU32(MmioRegister.ShmBaseHigh), 1);
      shm.transport.writeU32(MmioRegister.ShmSel, 1);
      assert.equal(shm.transport.readU32(MmioRegister.ShmLenLow), 0xffffffff);
    } finally {
      shm.device.remove();
    }
  });

  it("guest writes reach the file; FLUSH answers 0 after fdatasync", () => {
    const r = rig("flush.img");
    try {
      r.mem.write(BASE + SIZE - 5, new TextEncoder().encode("hello"));
      r.mem.writeU32(BASE, 0xcafef00d);
      assert.equal(ret(send(r, u32(VIRTIO_PMEM_REQ_TYPE_FLUSH))), VIRTIO_PMEM_RESP_OK);
      assert.equal(r.device.counters.flushes, 1);
      const data = readFileSync(r.path);
      assert.equal(data.length, SIZE);
      assert.equal(new TextDecoder().decode(data.subarray(SIZE - 5)), "hello");
      assert.equal(data.readUInt32LE(0), 0xcafef00d);
    } finally {
      r.device.remove();
    }
  });

  it("unknown types and short requests get -1; no room for the answer: not acted on", () => {
    const r = rig("bad.img");
    try {
      assert.equal(ret(send(r, u32(1))), VIRTIO_PMEM_RESP_EIO);
      assert.equal(ret(send(r, u32(0xffffffff))), VIRTIO_PMEM_RESP_EIO);
      assert.equal(ret(send(r, new Uint8Array([0, 0]))), VIRTIO_PMEM_RESP_EIO);
      assert.equal(ret(send(r, new Uint8Array(0))), VIRTIO_PMEM_RESP_EIO);
      assert.equal(r.device.counters.badRequests, 4);
      assert.equal(send(r, u32(0), 0).len, 0);
      assert.equal(send(r, u32(0), 3).len, 0);
      assert.equal(r.device.counters.unanswerable, 2);
      assert.equal(r.device.counters.flushes, 0);
      // A longer request and a longer response buffer are fine: 4 bytes each are used.
      const long = new Uint8Array(16);
      assert.equal(ret(send(r, long, 64)), VIRTIO_PMEM_RESP_OK);
      assert.deepEqual(r.errors, []);
    } finally {
      r.device.remove();
    }
  });

  it("refuses a file that is empty, not a multiple of 2 MiB, not regular, missing, or already in use", () => {
    assert.throws(() => new PmemDevice({ path: file("empty.img", 0) }), RangeError);
    assert.throws(
      () => new PmemDevice({ path: file("odd.img", PMEM_SIZE_ALIGN + 4096) }),
      RangeError,
    );
    assert.throws(() => new PmemDevice({ path: join(dir, "missing.img") }), /ENOENT/);
    const sub = join(dir, "sub");
    mkdirSync(sub);
    assert.throws(() => new PmemDevice({ path: sub }), /EISDIR/);
    const path = file("locked.img", PMEM_SIZE_ALIGN);
    const first = new PmemDevice({ path });
    assert.throws(() => new PmemDevice({ path }), /EWOULDBLOCK|EAGAIN/);
    first.remove();
    new PmemDevice({ path }).remove(); // the lock went with the first device
  });

  it("refuses missing resources, a second placement, placement after remove, and activation unplaced", () => {
    const path = file("res.img", SIZE);
    const d = new PmemDevice({ path });
    assert.throws(() => d.setResource(new DeviceResources([{ type: "KvmMemSlot", slot: 1 }])));
    assert.throws(() =>
      d.setResource(
        new DeviceResources([{ type: "MemAddress", base: BASE, size: SIZE - 4096 }, {
          type: "KvmMemSlot",
          slot: 1,
        }]),
      )
    );
    const mem = GuestMemory.create(4 * MiB);
    const driver = new MmioDriver(new MmioTransport(d, mem), mem);
    driver.init();
    assert.ok(driver.status() & DEVICE_NEEDS_RESET, "no region: activation refused");
    const res = new DeviceResources([
      { type: "MemAddress", base: BASE, size: SIZE },
      { type: "KvmMemSlot", slot: 1 },
    ]);
    d.setResource(res);
    assert.throws(() => d.setResource(res), /already placed/);
    d.remove();
    d.remove(); // twice is fine
    assert.throws(() => d.setResource(res), /removed/);
  });
});

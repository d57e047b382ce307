// The hostile-driver conformance suite (testing/conformance.ts) against every device we ship:
// rng, block, net, vsock, fs, console, balloon, virtio-mem and pmem, each through the real MMIO
// transport, split and packed rings.
// Every device added later gets a line here.

import { after } from "node:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type ConformanceHints, testConformance } from "../../testing/conformance.ts";
import { RngDevice } from "../../devices/rng.ts";
import {
  BlockDevice,
  blockRequestHeader,
  MemoryBackend,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_IN,
} from "../../devices/block.ts";
import { MemoryNetBackend, NetDevice } from "../../devices/net.ts";
import { VsockDevice } from "../../devices/vsock.ts";
import { FsDevice, FUSE_INIT, FUSE_OUT_HEADER_SIZE, fuseRequest } from "../../devices/fs.ts";
import { concatBytes, ethFrame, netHeader } from "../../testing/net_driver.ts";
import { ConsoleDevice } from "../../devices/console.ts";
import { BalloonDevice } from "../../devices/balloon.ts";
import {
  decodeMemResponse,
  encodeMemRequest,
  MemDevice,
  VIRTIO_MEM_REQ_STATE,
  VIRTIO_MEM_RESP_ACK,
} from "../../devices/mem.ts";
import {
  PMEM_REGION_ALIGN,
  PMEM_SIZE_ALIGN,
  PmemDevice,
  VIRTIO_PMEM_RESP_OK,
} from "../../devices/pmem.ts";
import { DeviceResources } from "../../devices/device.ts";
import {
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_TYPE_STREAM,
  vsockHeader,
} from "../../devices/_vsock_packet.ts";

export const rngHints: ConformanceHints = {
  name: "virtio-rng",
  validRequest: () => ({
    queue: 0,
    buffers: [{ writable: 16 }],
    check: (u) => u.len >= 1 && u.len <= 16 ? undefined : `used length ${u.len}, not 1..16`,
  }),
};

export const blockHints: ConformanceHints = {
  name: "virtio-blk",
  validRequest: () => ({
    queue: 0,
    buffers: [{ readable: blockRequestHeader(VIRTIO_BLK_T_IN, 1) }, { writable: 512 }, {
      writable: 1,
    }],
    check: (u) =>
      u.len !== 513
        ? `used length ${u.len}, not 513`
        : u.written[512] !== VIRTIO_BLK_S_OK
        ? `status ${u.written[512]}`
        : u.written[0] !== 0x5a
        ? `read ${u.written[0]} where the disk holds 0x5a`
        : undefined,
  }),
};

export function blockDevice(): BlockDevice {
  const disk = new MemoryBackend(64 << 10);
  disk.bytes.fill(0x5a);
  return new BlockDevice({ backend: disk });
}

const fsDirs: string[] = [];

/** A block device on an image file: requests go through preadv/pwritev (FFI) on guest views. */
export function blockFileDevice(): BlockDevice {
  const dir = mkdtempSync(join(tmpdir(), "virtio-ts-conformance-blk-"));
  fsDirs.push(dir);
  const path = join(dir, "disk.img");
  writeFileSync(path, new Uint8Array(64 << 10).fill(0x5a));
  return new BlockDevice({ path });
}

export const netHints: ConformanceHints = {
  name: "virtio-net",
  // 0 receives (buffers wait for frames), 1 transmits, 2 is the control queue.
  lazyQueues: [0],
  lazyBuffer: () => ({ writable: 1526 }),
  // A frame arriving from the wire makes the device take receive buffers.
  stimulate: (device) =>
    ((device as NetDevice).backend as MemoryNetBackend).inject(
      concatBytes(netHeader(), ethFrame({ dst: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56] })),
    ),
  validRequest: () => ({
    queue: 1,
    buffers: [{ readable: concatBytes(netHeader(), ethFrame()) }],
    check: (u) => u.len === 0 ? undefined : `transmit chain used length ${u.len}, not 0`,
  }),
};

export function netDevice(): NetDevice {
  return new NetDevice({ backend: new MemoryNetBackend(), mac: "52:54:00:12:34:56" });
}

export const vsockHints: ConformanceHints = {
  name: "virtio-vsock",
  // 0 receives and 2 carries events: buffers wait there until the device has something.
  lazyQueues: [0, 2],
  lazyBuffer: (q) => ({ writable: q === 0 ? 44 + 4096 : 8 }),
  // A transport reset makes the device take an event buffer.
  stimulate: (device, q) => {
    if (q === 2) (device as VsockDevice).transportReset();
  },
  validRequest: () => ({
    queue: 1,
    buffers: [{
      readable: vsockHeader({
        srcCid: 3,
        dstCid: 2,
        srcPort: 40000,
        dstPort: 1234,
        type: VIRTIO_VSOCK_TYPE_STREAM,
        op: VIRTIO_VSOCK_OP_REQUEST,
        bufAlloc: 65536,
      }),
    }],
    check: (u) => u.len === 0 ? undefined : `transmit chain used length ${u.len}, not 0`,
  }),
};

export function fsDevice(): FsDevice {
  const dir = mkdtempSync(join(tmpdir(), "virtio-ts-conformance-"));
  writeFileSync(join(dir, "file"), "hello\n");
  fsDirs.push(dir);
  return new FsDevice({ sharedDir: dir, tag: "conformance" });
}

export const fsHints: ConformanceHints = {
  name: "virtio-fs",
  validRequest: () => {
    const init = new Uint8Array(64);
    const v = new DataView(init.buffer);
    v.setUint32(0, 7, true);
    v.setUint32(4, 38, true);
    return {
      queue: 1,
      buffers: [{ readable: fuseRequest(FUSE_INIT, { unique: 77n }, init) }, { writable: 256 }],
      check: (u) => {
        if (u.len < FUSE_OUT_HEADER_SIZE) return `reply of ${u.len} bytes`;
        const h = new DataView(u.written.buffer, u.written.byteOffset);
        if (h.getUint32(0, true) !== u.len) {
          return `reply length ${h.getUint32(0, true)} != ${u.len}`;
        }
        if (h.getBigUint64(8, true) !== 77n) return `reply to ${h.getBigUint64(8, true)}, not 77`;
        return undefined;
      },
    };
  },
};

export const consoleHints: ConformanceHints = {
  name: "virtio-console",
  // 0 receives (buffers wait for host input), 1 transmits.
  lazyQueues: [0],
  lazyBuffer: () => ({ writable: 256 }),
  validRequest: () => ({
    queue: 1,
    buffers: [{ readable: new TextEncoder().encode("conformance\n") }],
    check: (u) => u.len === 0 ? undefined : `transmit chain used length ${u.len}, not 0`,
  }),
};

export const balloonHints: ConformanceHints = {
  name: "virtio-balloon",
  // 2 is the statistics queue: the device holds the driver's buffer until it polls again.
  lazyQueues: [2],
  lazyBuffer: () => ({ readable: new Uint8Array(10) }),
  holdsChains: true,
  // Inflate one page frame number (outside this guest's RAM: counted and ignored, never freed).
  validRequest: () => ({
    queue: 0,
    buffers: [{ readable: new Uint8Array([1, 0, 0, 0]) }],
    check: (u) => u.len === 0 ? undefined : `inflate chain used length ${u.len}, not 0`,
  }),
};

const MEM_BASE = 0x1_0000_0000;

/** A virtio-mem device placed as our VMM places it (a window above RAM, its own slot). */
export function memDevice(): MemDevice {
  const d = new MemDevice({ regionSize: 128 << 20, requestedSize: 16 << 20 });
  d.setResource(
    new DeviceResources([
      { type: "MemAddress", base: MEM_BASE, size: 128 << 20 },
      { type: "KvmMemSlot", slot: 1 },
    ]),
  );
  return d;
}

export const memHints: ConformanceHints = {
  name: "virtio-mem",
  validRequest: () => ({
    queue: 0,
    buffers: [{ readable: encodeMemRequest(VIRTIO_MEM_REQ_STATE, MEM_BASE, 1) }, {
      writable: 10,
    }],
    check: (u) => {
      if (u.len !== 10) return `used length ${u.len}, not 10`;
      const r = decodeMemResponse(u.written);
      return r.type === VIRTIO_MEM_RESP_ACK ? undefined : `response ${r.type}, not ACK`;
    },
  }),
  cleanup: (d) => (d as MemDevice).remove(),
};

/** A pmem device on a 2 MiB image file, placed as our VMM places it. */
export function pmemDevice(): PmemDevice {
  const dir = mkdtempSync(join(tmpdir(), "virtio-ts-conformance-pmem-"));
  fsDirs.push(dir);
  const path = join(dir, "pmem.img");
  writeFileSync(path, new Uint8Array(PMEM_SIZE_ALIGN));
  const d = new PmemDevice({ path });
  d.setResource(
    new DeviceResources([
      { type: "MemAddress", base: MEM_BASE, size: PMEM_REGION_ALIGN },
      { type: "KvmMemSlot", slot: 1 },
    ]),
  );
  return d;
}

export const pmemHints: ConformanceHints = {
  name: "virtio-pmem",
  // FLUSH (type 0), answered with a 4-byte status after fdatasync.
  validRequest: () => ({
    queue: 0,
    buffers: [{ readable: new Uint8Array(4) }, { writable: 4 }],
    check: (u) =>
      u.len !== 4
        ? `used length ${u.len}, not 4`
        : new DataView(u.written.buffer, u.written.byteOffset).getUint32(0, true) !==
            VIRTIO_PMEM_RESP_OK
        ? "FLUSH did not answer OK"
        : undefined,
  }),
  cleanup: (d) => (d as PmemDevice).remove(),
};

after(() => {
  for (const d of fsDirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

testConformance("virtio-rng", () => new RngDevice(), rngHints);
testConformance("virtio-blk", blockDevice, blockHints);
testConformance("virtio-blk on a file", blockFileDevice, {
  ...blockHints,
  name: "virtio-blk (file)",
});
testConformance("virtio-net", netDevice, netHints);
testConformance("virtio-vsock", () => new VsockDevice({ guestCid: 3 }), vsockHints);
testConformance("virtio-fs", fsDevice, fsHints);
testConformance("virtio-console", () => new ConsoleDevice(), consoleHints);
testConformance("virtio-balloon", () => new BalloonDevice(), balloonHints);
testConformance("virtio-mem", memDevice, memHints);
testConformance("virtio-pmem", pmemDevice, pmemHints);

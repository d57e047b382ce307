/**
 * Request generators of the device targets: plausible requests for each device (and some
 * implausible ones), which the rig then mutates.
 *
 * @module
 */

import * as nodeNet from "node:net";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RngDevice } from "../devices/rng.ts";
import {
  BlockDevice,
  blockRangeSegment,
  blockRequestHeader,
  MemoryBackend,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "../devices/block.ts";
import { MemoryNetBackend, NetDevice } from "../devices/net.ts";
import { VsockDevice } from "../devices/vsock.ts";
import { FsDevice, fuseRequest } from "../devices/fs.ts";
import { vsockHeader } from "../devices/_vsock_packet.ts";
import { concatBytes, ethFrame, ipv4Frame, netHeader } from "../testing/net_driver.ts";
import type { VirtioDevice } from "../devices/device.ts";
import { INTERESTING_32, mutateBytes, type Prng } from "./prng.ts";
import type { DeviceRig, DeviceSpec, FuzzBuffer, FuzzRequest } from "./_device_rig.ts";

/** Random junk: a chain of random buffers on a random queue. */
export function junkRequest(r: Prng, queues: number): FuzzRequest {
  const buffers: FuzzBuffer[] = [];
  const n = 1 + r.int(4);
  for (let i = 0; i < n; i++) {
    buffers.push(r.chance(0.5) ? { bytes: r.bytes(r.size(128)) } : { writable: r.size(4096) });
  }
  return { queue: r.int(queues + 1), buffers };
}

// -----------------------------------------------------------------------------------------

const rng: DeviceSpec = {
  name: "rng",
  create(r) {
    let counter = 0;
    return new RngDevice({
      queueSize: 16,
      source: (buf) => {
        for (let i = 0; i < buf.length; i++) buf[i] = counter++;
      },
      maxBytesPerRequest: r.chance(0.5) ? undefined : 1 + r.int(70000),
      maxBytesPerPass: r.chance(0.5) ? undefined : 1 + r.int(1 << 20),
      rateLimit: r.chance(0.1) ? { bytes: 1 + r.int(4096), periodMs: 1 + r.int(5) } : undefined,
    });
  },
  request(r) {
    const buffers: FuzzBuffer[] = [];
    if (r.chance(0.1)) buffers.push({ bytes: r.bytes(r.size(32)) });
    const n = 1 + (r.chance(0.2) ? r.int(4) : 0);
    for (let i = 0; i < n; i++) buffers.push({ writable: r.size(4096) });
    return { queue: r.chance(0.97) ? 0 : r.int(3), buffers };
  },
};

// -----------------------------------------------------------------------------------------

const DISK = 64 << 10;

const blockFiles = new WeakMap<VirtioDevice, string>();

const block: DeviceSpec = {
  name: "block",
  create(r) {
    // A third of the episodes on an image file: preadv/pwritev (FFI) on guest views.
    let path: string | undefined;
    let dir: string | undefined;
    if (r.chance(0.3)) {
      dir = mkdtempSync(join(tmpdir(), "virtio-ts-fuzz-blk-"));
      path = join(dir, "disk.img");
      writeFileSync(path, new Uint8Array(DISK).fill(0x5a));
    }
    const disk = path === undefined
      ? new MemoryBackend(DISK, { readOnly: r.chance(0.1) })
      : undefined;
    disk?.bytes.fill(0x5a);
    const dev = new BlockDevice({
      backend: disk,
      path,
      readOnly: path !== undefined && r.chance(0.1) ? true : undefined,
      queueSize: 16,
      numQueues: r.chance(0.3) ? 2 : 1,
      blockSize: r.chance(0.2) ? 4096 : 512,
      serial: r.chance(0.5) ? "fuzz" : "",
      writeback: r.chance(0.5),
      sizeMax: r.chance(0.2) ? r.size(1 << 20) : undefined,
      maxDiscardSegments: r.chance(0.2) ? r.int(4) : undefined,
    });
    if (dir !== undefined) blockFiles.set(dev, dir);
    return dev;
  },
  release(device) {
    device.remove?.();
    const dir = blockFiles.get(device);
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  },
  request(r, rig) {
    const sectors = DISK / 512;
    const sector = r.pick([
      0,
      1,
      r.int(sectors),
      sectors - 1,
      sectors,
      sectors + r.int(8),
      0xffffffff,
      2 ** 53 - 1,
    ]);
    const type = r.chance(0.9)
      ? r.pick([
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_FLUSH,
        VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
      ])
      : r.pick(INTERESTING_32);
    const len = r.chance(0.8) ? 512 * r.int(9) : r.size(4096);
    const buffers: FuzzBuffer[] = [{ bytes: blockRequestHeader(type, sector) }];
    if (type === VIRTIO_BLK_T_OUT) buffers.push({ bytes: r.bytes(len) });
    if (type === VIRTIO_BLK_T_DISCARD || type === VIRTIO_BLK_T_WRITE_ZEROES) {
      const n = 1 + r.int(3);
      const body = new Uint8Array(16 * n);
      for (let i = 0; i < n; i++) {
        body.set(blockRangeSegment(r.int(sectors + 4), 1 + r.int(64), r.int(3)), 16 * i);
      }
      buffers.push({ bytes: body });
    }
    if (type === VIRTIO_BLK_T_IN) buffers.push({ writable: len });
    if (type === VIRTIO_BLK_T_GET_ID) buffers.push({ writable: r.pick([20, 19, 21, 512]) });
    if (r.chance(0.95)) buffers.push({ writable: 1 });
    return { queue: r.chance(0.9) ? 0 : r.int(rig.queues.length + 1), buffers };
  },
};

// -----------------------------------------------------------------------------------------

const net: DeviceSpec = {
  name: "net",
  create(r) {
    const pairs = r.chance(0.3) ? 2 : 1;
    return new NetDevice({
      backend: new MemoryNetBackend(),
      mac: "52:54:00:12:34:56",
      queuePairs: pairs,
      queueSize: 16,
      mtu: r.chance(0.2) ? 68 + r.int(9000) : undefined,
      rxBacklogBytes: 64 << 10,
    });
  },
  lazy: [{ queue: 0, buffer: 1526 }, { queue: 2, buffer: 1526 }],
  request(r, rig) {
    const n = rig.queues.length;
    const ctrl = n % 2 === 1 ? n - 1 : -1;
    if (ctrl >= 0 && r.chance(0.2)) {
      const data = r.bytes(r.size(32));
      return {
        queue: ctrl,
        buffers: [{ bytes: concatBytes(new Uint8Array([r.int(7), r.int(6)]), data) }, {
          writable: r.chance(0.95) ? 1 : r.size(8),
        }],
      };
    }
    const pair = r.int(Math.max(1, (n - (ctrl >= 0 ? 1 : 0)) >> 1));
    const hdr = netHeader(
      r.chance(0.7) ? {} : {
        flags: r.int(8),
        gsoType: r.pick([0, 1, 3, 4, 0x80, 0x81, r.int(256)]),
        hdrLen: r.size(200),
        gsoSize: r.size(9000),
        csumStart: r.size(200),
        csumOffset: r.size(64),
        numBuffers: r.int(3),
      },
      r.chance(0.9) ? 12 : r.pick([10, 0, 11, 13]),
    );
    const frame = r.chance(0.5)
      ? ipv4Frame({ data: r.bytes(r.size(1500)), proto: r.pick([6, 17]), partial: r.chance(0.3) })
        .frame
      : ethFrame({
        payload: r.bytes(r.size(1500)),
      });
    const body = concatBytes(hdr, frame);
    const buffers: FuzzBuffer[] = r.chance(0.8)
      ? [{ bytes: body }]
      : [{ bytes: body.subarray(0, 12) }, { bytes: body.subarray(12) }];
    return { queue: 2 * pair + 1, buffers };
  },
  stimulate(rig) {
    ((rig.device as NetDevice).backend as MemoryNetBackend).inject(
      concatBytes(netHeader(), ethFrame({ dst: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56] })),
    );
  },
  host(r, rig) {
    const backend = (rig.device as NetDevice).backend as MemoryNetBackend;
    backend.takeSent();
    if (r.chance(0.5)) {
      const frame = r.chance(0.5) ? ipv4Frame({ data: r.bytes(r.size(1400)) }).frame : r.bytes(
        r.size(2000),
      );
      const withHdr = concatBytes(netHeader(), frame);
      backend.inject(r.chance(0.8) ? withHdr : mutateBytes(r, withHdr));
    }
  },
};

// -----------------------------------------------------------------------------------------

// Host side of the hybrid Unix-socket model: guest connections to port 1235 reach a Unix
// socket server that echoes (and sends a burst now and then), so data from a host socket fills
// receive buffers in batches.
const vsockHosts = new WeakMap<
  VirtioDevice,
  { server: nodeNet.Server; dir: string; conns: nodeNet.Socket[] }
>();

const vsock: DeviceSpec = {
  name: "vsock",
  create(r) {
    const dir = mkdtempSync(join(tmpdir(), "virtio-ts-fuzz-vsock-"));
    const uds = join(dir, "v.sock");
    const dev = new VsockDevice({
      guestCid: 3,
      seqpacket: r.chance(0.7),
      queueSize: 16,
      udsPath: uds,
    });
    dev.listen(1234, ({ readable, writable }) => {
      readable.pipeTo(writable).catch(() => {});
    });
    const conns: nodeNet.Socket[] = [];
    const server = nodeNet.createServer({ allowHalfOpen: true }, (s) => {
      conns.push(s);
      s.on("error", () => {});
      s.on("data", (d: Uint8Array) => {
        if (!s.destroyed && s.writable) s.write(d);
      });
    });
    server.on("error", () => {});
    server.listen(`${uds}_1235`);
    vsockHosts.set(dev, { server, dir, conns });
    return dev;
  },
  release(device) {
    device.remove?.();
    const h = vsockHosts.get(device);
    if (h === undefined) return;
    for (const c of h.conns) c.destroy();
    h.server.close();
    rmSync(h.dir, { recursive: true, force: true });
  },
  stimulate(rig, queue) {
    if (queue === 2) (rig.device as VsockDevice).transportReset();
  },
  host(r, rig) {
    // A transport reset now and then: the device takes an event buffer (and drops connections).
    if (r.chance(0.02)) (rig.device as VsockDevice).transportReset();
    const h = vsockHosts.get(rig.device);
    if (h === undefined || h.conns.length === 0) return;
    const c = h.conns[r.int(h.conns.length)];
    if (!c.destroyed && c.writable) c.write(r.bytes(r.size(8192)));
    if (r.chance(0.02)) c.end();
  },
  lazy: [{ queue: 0, buffer: 44 + 512 }, { queue: 2, buffer: 8 }],
  request(r) {
    const payload = r.chance(0.5) ? new Uint8Array(0) : r.bytes(r.size(600));
    const h = vsockHeader({
      srcCid: r.chance(0.95) ? 3 : r.pick(INTERESTING_32),
      dstCid: r.chance(0.95) ? 2 : r.pick(INTERESTING_32),
      srcPort: r.pick([40000, 40001, 40002, r.u32()]),
      dstPort: r.pick([1234, 1234, 1235, r.u32()]),
      len: r.chance(0.9) ? payload.length : r.pick(INTERESTING_32),
      type: r.chance(0.9) ? r.pick([1, 2]) : r.int(5),
      op: r.chance(0.95) ? 1 + r.int(7) : r.int(256),
      flags: r.chance(0.8) ? 0 : r.int(4),
      bufAlloc: r.pick([65536, 0, 1, 0xffffffff, r.u32()]),
      fwdCnt: r.pick([0, r.int(1000), r.u32()]),
    });
    const buffers: FuzzBuffer[] = r.chance(0.7)
      ? [{ bytes: concatBytes(h, payload) }]
      : [{ bytes: h }, { bytes: payload }];
    return { queue: r.chance(0.95) ? 1 : r.int(4), buffers };
  },
};

// -----------------------------------------------------------------------------------------

// Fixed argument sizes by opcode, as Linux sends them.
const FUSE_ARGS: Record<number, number> = {
  1: 0,
  2: 8,
  3: 16,
  4: 88,
  5: 0,
  6: 0,
  8: 16,
  9: 8,
  10: 0,
  11: 0,
  12: 8,
  13: 8,
  14: 8,
  15: 40,
  16: 40,
  17: 0,
  18: 24,
  20: 16,
  21: 16,
  22: 8,
  23: 8,
  24: 0,
  25: 24,
  27: 8,
  28: 40,
  29: 24,
  30: 16,
  31: 48,
  32: 48,
  33: 48,
  34: 8,
  35: 16,
  36: 8,
  42: 8,
  43: 32,
  44: 40,
  45: 16,
  46: 24,
  47: 56,
  48: 40,
  49: 4,
  50: 8,
};
const FUSE_OPS = Object.keys(FUSE_ARGS).map(Number);
const NAMES = ["file", "dir", "new", "x y", "\u00e9", "..", ".", "a/b", "", "n".repeat(300)];
const fsDirs = new WeakMap<VirtioDevice, string>();

const fs: DeviceSpec = {
  name: "fs",
  memorySize: 128 << 10,
  // Requests waiting for a POSIX lock stay with the device until the lock is free.
  holdsChains: true,
  create(r) {
    const dir = mkdtempSync(join(tmpdir(), "virtio-ts-fuzz-"));
    writeFileSync(join(dir, "file"), "hello\n".repeat(100));
    mkdirSync(join(dir, "dir"));
    const dev = new FsDevice({
      sharedDir: dir,
      tag: "fuzz",
      queueSize: 16,
      maxInodes: 64,
      maxHandles: 32,
      readOnly: r.chance(0.1),
      posixLocks: r.chance(0.3),
      flock: r.chance(0.3),
    });
    fsDirs.set(dev, dir);
    return dev;
  },
  release(device) {
    device.remove?.();
    const dir = fsDirs.get(device);
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  },
  request(r, rig) {
    const opcode = r.chance(0.005) ? r.pick([26, 38]) : r.chance(0.95) ? r.pick(FUSE_OPS) : r.int(
      5000,
    );
    const fixed = new Uint8Array(r.chance(0.9) ? (FUSE_ARGS[opcode] ?? r.size(96)) : r.size(96));
    const fv = new DataView(fixed.buffer);
    for (let j = 0; j + 4 <= fixed.length; j += 4) {
      fv.setUint32(j, r.chance(0.5) ? r.int(8) : r.chance(0.6) ? r.int(0o200000) : r.u32(), true);
    }
    const parts: Uint8Array[] = [fixed];
    if (opcode === 16 && fixed.length >= 20) {
      const n = r.size(3000);
      fv.setUint32(16, r.chance(0.9) ? n : n + 1, true);
      parts.push(new Uint8Array(n).fill(0x61));
    } else {
      if (r.chance(0.8)) {
        parts.push(new TextEncoder().encode(r.pick(NAMES) + (r.chance(0.95) ? "\0" : "")));
      }
      if (r.chance(0.3)) parts.push(new TextEncoder().encode(r.pick(NAMES) + "\0"));
    }
    const req = fuseRequest(opcode, {
      nodeid: r.chance(0.85) ? r.int(10) : r.pick([0, 2 ** 40, 2 ** 53 - 1]),
      unique: BigInt(1 + r.int(1 << 30)),
      len: r.chance(0.03) ? r.size(400) : undefined,
      totalExtlen: r.chance(0.02) ? r.int(4) : 0,
    }, ...parts);
    const buffers: FuzzBuffer[] = [{ bytes: req }];
    if (r.chance(0.95)) buffers.push({ writable: r.chance(0.8) ? 4096 + 16 : r.size(300) });
    return { queue: r.chance(0.9) ? 1 : r.int(rig.queues.length + 1), buffers };
  },
};

/** The device targets, by name. */
export const DEVICE_SPECS: readonly DeviceSpec[] = [rng, block, net, vsock, fs];

/** Silence unused-type warnings for the rig import (types only). */
export type { DeviceRig };

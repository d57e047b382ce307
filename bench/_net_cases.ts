/**
 * virtio-net in process: the device path both ways with the driver harness on one side and a
 * backend that costs nothing on the other, for 64-byte and 1500-byte frames and 64 KiB TCP
 * segmentation-offload frames.
 *
 * - transmit: the driver publishes a batch of pre-built chains (header and frame in one
 *   descriptor); one `processQueue` pops each, checks its header, hands header and frame views
 *   to a backend that only counts them, and completes the chains.
 * - receive: the driver publishes a batch of receive buffers (2 KiB each, merged as Linux does
 *   with MRG_RXBUF; 64 KiB frames span 33 of them); the backend offers a batch of frames, which
 *   the device checks, filters, steers and copies in, publishing each frame's buffers at once.
 *
 * Runtime-neutral.
 *
 * @module
 */

import { GuestMemory } from "../memory/guest_memory.ts";
import { SplitQueue } from "../queue/split.ts";
import { DriverQueue } from "../testing/queue_driver.ts";
import { VirtioDeviceConfig, VirtioQueueConfig } from "../devices/device.ts";
import {
  ALL_OFFLOADS,
  type NetBackend,
  type NetBackendEvents,
  NetDevice,
  type NetOffloads,
  type NetSendResult,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_TCPV4,
} from "../devices/net.ts";
import { concatBytes, ethFrame, ipv4Frame, netHeader } from "../testing/net_driver.ts";
import type { BenchCase } from "./_cases.ts";

/** A backend that takes every frame and counts it, and offers a pre-built frame on demand. */
class NullBackend implements NetBackend {
  readonly queuePairs = 1;
  readonly offloads: Readonly<NetOffloads> = ALL_OFFLOADS;
  sent = 0;
  sentBytes = 0;
  frame: Uint8Array = new Uint8Array(0);
  pending = 0;
  events: NetBackendEvents | undefined;
  start(events: NetBackendEvents): void {
    this.events = events;
  }
  stop(): void {
    this.events = undefined;
  }
  receive(_queue: number, buf: Uint8Array): number {
    if (this.pending === 0) return -1;
    this.pending--;
    buf.set(this.frame);
    return this.frame.length;
  }
  send(_queue: number, parts: readonly Uint8Array[]): NetSendResult {
    this.sent++;
    for (let i = 0; i < parts.length; i++) this.sentBytes += parts[i].length;
    return "sent";
  }
  setGuestOffloads(): void {}
  close(): void {}
}

const MAC = new Uint8Array([2, 0, 0, 0, 0, 1]);
const RING = 1024;
const RX_BUFFER = 2048;

interface Rig {
  net: NetDevice;
  backend: NullBackend;
  rx: DriverQueue;
  tx: DriverQueue;
}

function rig(): Rig {
  const memory = GuestMemory.create(160 << 20);
  const backend = new NullBackend();
  const net = new NetDevice({ backend, mac: MAC, queueSize: RING });
  const rx = new DriverQueue(memory, {
    size: RING,
    ringBase: 0x10000,
    bufferBase: 0x100000,
    bufferEnd: 80 << 20,
    gaps: false,
  });
  const tx = new DriverQueue(memory, {
    size: RING,
    ringBase: 0x40000,
    bufferBase: 80 << 20,
    bufferEnd: 160 << 20,
    gaps: false,
  });
  const rq = new SplitQueue(RING);
  const tq = new SplitQueue(RING);
  rx.program(rq);
  tx.program(tq);
  const features = BigInt(net.getAvailFeatures(0)) | (BigInt(net.getAvailFeatures(1)) << 32n);
  net.setAckedFeatures(0, Number(features & 0xffffffffn));
  net.setAckedFeatures(1, Number(features >> 32n));
  net.activate(
    new VirtioDeviceConfig({
      memory,
      queues: [
        new VirtioQueueConfig(0, rq, { notify() {} }),
        new VirtioQueueConfig(1, tq, { notify() {} }),
      ],
      deviceChangeNotifier: { notify() {} },
      ackedFeatures: net.ackedFeatures(),
    }),
  );
  return { net, backend, rx, tx };
}

/** What one case sends: the header and the frame. */
interface Shape {
  label: string;
  header: Uint8Array;
  frame: Uint8Array;
}

function shapes(): Shape[] {
  const small = ethFrame({ dst: MAC, payload: new Uint8Array(64 - 14) });
  const mtu = ethFrame({ dst: MAC, payload: new Uint8Array(1500 - 14).fill(0x5a) });
  const tso = ipv4Frame({ dst: MAC, data: new Uint8Array(65536 - 54), partial: true });
  return [
    { label: "64 B frames", header: netHeader(), frame: small },
    { label: "1500 B frames", header: netHeader(), frame: mtu },
    {
      label: "64 KiB TSO frames",
      header: netHeader({
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gsoType: VIRTIO_NET_HDR_GSO_TCPV4,
        gsoSize: 1448,
        hdrLen: tso.headerLength,
        csumStart: tso.csumStart,
        csumOffset: tso.csumOffset,
      }),
      frame: tso.frame,
    },
  ];
}

function batchFor(frameLen: number): number {
  return frameLen > 9000 ? 16 : 256;
}

/**
 * Transmit: a batch of pre-built chains through the device to a backend that counts them.
 * @param s The frame shape.
 * @returns The case.
 */
function txCase(s: Shape): BenchCase {
  const r = rig();
  const batch = batchFor(s.frame.length);
  const chain = concatBytes(s.header, s.frame);
  const heads = Array.from(
    { length: batch },
    () => r.tx.addChain([{ readable: chain }], { publish: false }),
  );
  return {
    name: `net TX ${s.label} (batch ${batch})`,
    group: "net",
    batch,
    descriptors: batch,
    bytes: s.frame.length * batch,
    run() {
      const before = r.backend.sent;
      for (let i = 0; i < batch; i++) r.tx.publish(heads[i]);
      r.net.processQueue(1);
      r.tx.setLastUsed(r.tx.usedIdx());
      if (r.backend.sent - before !== batch) throw new Error("net TX lost frames");
    },
  };
}

/**
 * Receive: a batch of frames from the backend into 2 KiB merged receive buffers.
 * @param s The frame shape.
 * @returns The case.
 */
function rxCase(s: Shape): BenchCase {
  const r = rig();
  const batch = batchFor(s.frame.length);
  const perFrame = Math.ceil((s.frame.length + 12) / RX_BUFFER);
  const buffers = batch * perFrame;
  const heads = Array.from(
    { length: buffers },
    () => r.rx.addChain([{ writable: RX_BUFFER }], { publish: false }),
  );
  r.backend.frame = concatBytes(s.header, s.frame);
  return {
    name: `net RX ${s.label} (batch ${batch}, ${perFrame} buffer${perFrame > 1 ? "s" : ""} each)`,
    group: "net",
    batch,
    descriptors: buffers,
    bytes: s.frame.length * batch,
    run() {
      const before = r.net.stats.rxFrames;
      for (let i = 0; i < buffers; i++) r.rx.publish(heads[i]);
      r.backend.pending = batch;
      r.backend.events!.readable(0);
      r.rx.setLastUsed(r.rx.usedIdx());
      if (r.net.stats.rxFrames - before !== batch) throw new Error("net RX lost frames");
    },
  };
}

/** Every net case: each shape both ways. */
export function netCases(): BenchCase[] {
  const out: BenchCase[] = [];
  for (const s of shapes()) out.push(txCase(s), rxCase(s));
  return out;
}

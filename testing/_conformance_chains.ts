/**
 * Hand-written chains for the conformance cases: raw split chains and indirect tables,
 * raw packed lists, and the attacks several cases share (buffers across memory regions,
 * buffers of 4 GiB, rings set up over each other). Private to `testing/`.
 *
 * @module
 */

import { MmioRegister } from "../transport/mmio.ts";
import {
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FEATURES_OK,
} from "../devices/device.ts";
import {
  usedRingSize,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "../queue/split.ts";
import { DRIVER_OPT_IN_FEATURES } from "./queue_driver.ts";
import type { Rig } from "./_conformance_harness.ts";

/** Every feature but the driver harness's opt-in ones. */
export const ALL = ~DRIVER_OPT_IN_FEATURES & 0xffff_ffff_ffff_ffffn;
/** 2^64, for addresses that wrap. */
export const U64_TOP = 1n << 64n;
/** The MMIO register offsets. */
export const R = MmioRegister;

/** One descriptor of a hand-written chain. */
export interface RawDesc {
  addr: number | bigint;
  len: number;
  flags?: number;
  /** Index in this list the descriptor links to (a loop), or a raw `next` value. */
  linkTo?: number;
  next?: number;
}

/**
 * Write a hand-made split chain at descriptor indices from the top of the table; NEXT links
 * follow the list unless a descriptor says otherwise. Nothing is published.
 */
export function splitChain(rig: Rig, q: number, descs: RawDesc[]): number {
  const dq = rig.split[q];
  const idx = descs.map(() => rig.hostileIndex(q));
  descs.forEach((d, i) => {
    const last = i === descs.length - 1;
    let flags = d.flags ?? 0;
    let next = 0;
    if (d.linkTo !== undefined) {
      flags |= VIRTQ_DESC_F_NEXT;
      next = idx[d.linkTo];
    } else if (d.next !== undefined) {
      flags |= VIRTQ_DESC_F_NEXT;
      next = d.next;
    } else if (!last) {
      flags |= VIRTQ_DESC_F_NEXT;
      next = idx[i + 1];
    }
    dq.writeDescriptor(idx[i], { addr: d.addr, len: d.len, flags, next });
  });
  return idx[0];
}

/** Write an indirect table (NEXT links follow the list unless said otherwise). */
export function indirectTable(
  rig: Rig,
  q: number,
  descs: RawDesc[],
  entries = descs.length,
): number {
  const table = rig.alloc(q, 16 * Math.max(entries, 1), 16);
  const dq = rig.split[q];
  descs.forEach((d, i) => {
    const last = i === descs.length - 1;
    let flags = d.flags ?? 0;
    let next = 0;
    if (d.linkTo !== undefined) {
      flags |= VIRTQ_DESC_F_NEXT;
      next = d.linkTo;
    } else if (d.next !== undefined) {
      flags |= VIRTQ_DESC_F_NEXT;
      next = d.next;
    } else if (!last) {
      flags |= VIRTQ_DESC_F_NEXT;
      next = i + 1;
    }
    if (dq !== undefined) dq.writeDescriptor(i, { addr: d.addr, len: d.len, flags, next }, table);
    else {
      rig.packed[q].writeDescriptor(i, { addr: d.addr, len: d.len, id: 0, flags }, table);
    }
  });
  return table;
}

/** A small readable buffer of junk and a small writable one, as a plausible body. */
export function junk(rig: Rig, q: number): { ro: number; rw: number } {
  const ro = rig.alloc(q, 64);
  rig.memory.fill(ro, 64, 0x5a);
  return { ro, rw: rig.alloc(q, 64) };
}

/** Publish a refused split chain, expecting used length 0 or NEEDS_RESET. */
export function refuse(rig: Rig, q: number, what: string, descs: RawDesc[]): void {
  const head = splitChain(rig, q, descs);
  rig.split[q].publish(head);
  rig.expectRefused(q, head, what);
}

/** Build, arm, allow, kick: the usual end of a split attack. */
export function fire(rig: Rig, q: number, allow: [number, number][] = []): void {
  rig.arm();
  for (const [a, n] of allow) rig.watch.allow(a, n);
  rig.kick(q);
  rig.stimulate(q);
}

/** A ring case: the attack on queue `q`. */
export type SplitAttack = (rig: Rig, q: number) => void | Promise<void>;

/**
 * A valid request whose largest buffer runs from the first memory region into the second: the
 * regions are adjacent, so the buffer is valid and the request must work as usual.
 */
export async function crossing(rig: Rig, q: number): Promise<void> {
  const v = rig.request(q);
  if (v.queue !== q) return fire(rig, q);
  const lens = v.buffers.map((b) => "readable" in b ? b.readable.length : b.writable);
  let big = 0;
  for (let i = 1; i < lens.length; i++) if (lens[i] > lens[big]) big = i;
  let before = 0;
  for (let i = 0; i < big; i++) before += lens[i];
  let at = rig.regionBoundary - before - Math.max(1, lens[big] >> 1);
  const buffers = v.buffers.map((b, i) => {
    const placed = { ...b, at };
    at += lens[i];
    return placed;
  });
  const id = rig.addChain(q, buffers);
  rig.arm();
  rig.kick(q);
  await rig.settle();
  const used = rig.verify();
  if (rig.isLazy(q) || rig.needsReset() || rig.hints.validRequest === undefined) {
    if (rig.needsReset()) {
      rig.failures.push(
        "a request whose buffer spans two adjacent memory regions broke the device",
      );
    }
    return;
  }
  const e = used[q].find((u) => u.id === id);
  if (e === undefined) {
    rig.failures.push("a request whose buffer spans two adjacent memory regions did not complete");
    return;
  }
  const problem = v.check?.(e);
  if (problem !== undefined) {
    rig.failures.push(`a request whose buffer spans two adjacent memory regions: ${problem}`);
  }
}

/** Buffers adding up to nearly 4 GiB (overlapping guest memory), readable or writable. */
export function hugeChain(rig: Rig, q: number, n: number, writable: boolean): void {
  const flags = writable ? VIRTQ_DESC_F_WRITE : 0;
  const descs: RawDesc[] = [];
  let count = n;
  if (!writable) descs.push({ addr: 0, len: rig.memorySize });
  if (!rig.indirect) count = Math.min(n, (rig.size(q) >> 1) - 2);
  for (let i = descs.length; i < count; i++) descs.push({ addr: 0, len: rig.memorySize, flags });
  if (!writable) descs.push({ addr: rig.alloc(q, 16), len: 16, flags: VIRTQ_DESC_F_WRITE });
  if (rig.format === "packed") {
    const table = indirectTable(rig, q, descs);
    const id = rig.hostileIndex(q);
    rig.packed[q].addRaw([{
      addr: table,
      len: 16 * descs.length,
      id,
      flags: VIRTQ_DESC_F_INDIRECT,
    }]);
  } else if (rig.indirect) {
    const table = indirectTable(rig, q, descs);
    rig.split[q].publish(splitChain(rig, q, [{
      addr: table,
      len: 16 * descs.length,
      flags: VIRTQ_DESC_F_INDIRECT,
    }]));
  } else {
    rig.split[q].publish(splitChain(rig, q, descs));
  }
  rig.arm();
  if (writable) rig.watch.allow(0, rig.memorySize);
  else rig.watch.allow(descs[descs.length - 1].addr as number, 16);
  rig.kick(q);
}

/**
 * Set the device up again with queue `q`'s rings where `layout` says (the others as the driver
 * harness lays them out), then offer one request there.
 */
export function overlapSetup(
  rig: Rig,
  q: number,
  layout: (base: number, size: number) => { desc: number; avail: number; used: number },
): void {
  const size = rig.size(q);
  rig.w(R.Status, 0);
  rig.w(R.Status, DEVICE_ACKNOWLEDGE);
  rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
  rig.driver.writeDriverFeatures(rig.features);
  rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
  const base = 0x10000 + 0x10000 * q;
  const at = layout(base, size);
  for (let i = 0; i < rig.queueCount; i++) {
    rig.w(R.QueueSel, i);
    rig.w(R.QueueNum, size);
    const dq = rig.split[i];
    const a = i === q ? at : { desc: dq.descTable, avail: dq.availRing, used: dq.usedRing };
    rig.w(R.QueueDescLow, a.desc);
    rig.w(R.QueueDescHigh, 0);
    rig.w(R.QueueDriverLow, a.avail);
    rig.w(R.QueueDriverHigh, 0);
    rig.w(R.QueueDeviceLow, a.used);
    rig.w(R.QueueDeviceHigh, 0);
    rig.w(R.QueueReady, 1);
  }
  // One request in the overlapping rings, written by hand.
  const buf = rig.alloc(q, 64);
  rig.memory.fill(at.desc, 16 * size, 0);
  rig.memory.writeU64(at.desc, BigInt(buf));
  rig.memory.writeU32(at.desc + 8, 64);
  rig.memory.writeU16(at.desc + 12, VIRTQ_DESC_F_WRITE);
  rig.memory.writeU16(at.avail + 4, 0);
  rig.memory.writeU16(at.avail + 2, 1);
  rig.arm();
  rig.watch.allow(at.used, usedRingSize(size));
  rig.watch.allow(buf, 64);
  rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK | DEVICE_DRIVER_OK);
  rig.instrument();
  rig.kick(q);
}

/** Make a raw packed list available; each entry's id is the list's unless given. */
export function packedList(
  rig: Rig,
  q: number,
  descs: { addr: number | bigint; len: number; flags?: number; id?: number }[],
): number {
  const id = rig.hostileIndex(q);
  return rig.packed[q].addRaw(descs.map((d, i) => ({
    addr: d.addr,
    len: d.len,
    id: d.id ?? id,
    flags: (d.flags ?? 0) | (i < descs.length - 1 ? VIRTQ_DESC_F_NEXT : 0),
  })));
}

/** Make a raw packed list available that the device must refuse. */
export function refusePacked(
  rig: Rig,
  q: number,
  what: string,
  descs: { addr: number | bigint; len: number; flags?: number; id?: number }[],
): void {
  rig.expectRefused(q, packedList(rig, q, descs), what);
}

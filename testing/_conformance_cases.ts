/**
 * The cases of the hostile-driver conformance suite: hand-written malformed split and packed
 * rings and chains, and abuse of the virtio-mmio register file. Each case builds its attack,
 * arms the memory watch, notifies; the runner then lets the device settle, checks what must
 * hold (see {@linkcode Rig.verify}) and that a valid request still works. Private to `testing/`.
 *
 * @module
 */

import {
  MMIO_CONFIG_OFFSET,
  MMIO_WINDOW_SIZE,
  MmioRegister,
  MmioTransport,
} from "../transport/mmio.ts";
import {
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FAILED,
  DEVICE_FEATURES_OK,
  DEVICE_NEEDS_RESET,
  featureBit,
  VIRTIO_F_VERSION_1,
} from "../devices/device.ts";
import {
  availRingSize,
  usedRingSize,
  VIRTIO_F_INDIRECT_DESC,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "../queue/split.ts";
import { VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED } from "../queue/packed.ts";
import { DRIVER_OPT_IN_FEATURES, DriverQueue } from "./queue_driver.ts";
import type { Rig, RingFormat } from "./_conformance_harness.ts";

/** One case: what it is called, where it runs, and the attack. */
export interface CaseDef {
  /** Unique name, e.g. `split: descriptor loop (queue 1)`. */
  name: string;
  /** Ring format, or `mmio` for register abuse on a reset device. */
  kind: RingFormat | "mmio";
  /** Driver features for the set-up (default: all but the opt-in ones). */
  features?: bigint;
  /** Whether the rings are still the driver's own afterwards (default true). */
  sameRings?: boolean;
  /** The attack: build, `rig.arm()`, allow what the device may write, notify. */
  run(rig: Rig): void | Promise<void>;
}

const ALL = ~DRIVER_OPT_IN_FEATURES & 0xffff_ffff_ffff_ffffn;
const U64_TOP = 1n << 64n;
const R = MmioRegister;

interface RawDesc {
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
function splitChain(rig: Rig, q: number, descs: RawDesc[]): number {
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
function indirectTable(rig: Rig, q: number, descs: RawDesc[], entries = descs.length): number {
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
function junk(rig: Rig, q: number): { ro: number; rw: number } {
  const ro = rig.alloc(q, 64);
  rig.memory.fill(ro, 64, 0x5a);
  return { ro, rw: rig.alloc(q, 64) };
}

/** Publish a refused split chain, expecting used length 0 or NEEDS_RESET. */
function refuse(rig: Rig, q: number, what: string, descs: RawDesc[]): void {
  const head = splitChain(rig, q, descs);
  rig.split[q].publish(head);
  rig.expectRefused(q, head, what);
}

/** Build, arm, allow, kick: the usual end of a split attack. */
function fire(rig: Rig, q: number, allow: [number, number][] = []): void {
  rig.arm();
  for (const [a, n] of allow) rig.watch.allow(a, n);
  rig.kick(q);
}

type SplitAttack = (rig: Rig, q: number) => void | Promise<void>;

interface SplitCase {
  name: string;
  features?: (rig: { offered: bigint }) => bigint;
  sameRings?: boolean;
  /** Only when the driver negotiated indirect descriptors. */
  needsIndirect?: boolean;
  run: SplitAttack;
}

const SPLIT: SplitCase[] = [
  {
    name: "descriptor loop",
    run(rig, q) {
      const { ro } = junk(rig, q);
      refuse(rig, q, "a chain whose second descriptor links back to the first", [
        { addr: ro, len: 16 },
        { addr: ro, len: 16, linkTo: 0 },
      ]);
      fire(rig, q);
    },
  },
  {
    name: "descriptor linked to itself",
    run(rig, q) {
      const { ro } = junk(rig, q);
      refuse(rig, q, "a descriptor whose next is itself", [{ addr: ro, len: 8, linkTo: 0 }]);
      fire(rig, q);
    },
  },
  {
    name: "next index out of range",
    run(rig, q) {
      const { ro } = junk(rig, q);
      refuse(rig, q, "next = queue size", [{ addr: ro, len: 8, next: rig.size(q) }]);
      refuse(rig, q, "next = 0xffff", [{ addr: ro, len: 8, next: 0xffff }]);
      fire(rig, q);
    },
  },
  {
    name: "head index out of range",
    run(rig, q) {
      rig.split[q].publish(rig.size(q));
      rig.expectBroken(q, "an available ring entry naming descriptor = queue size");
      fire(rig, q);
    },
  },
  {
    name: "head index 0xffff",
    run(rig, q) {
      rig.split[q].publish(0xffff);
      rig.expectBroken(q, "an available ring entry naming descriptor 0xffff");
      fire(rig, q);
    },
  },
  {
    name: "buffers past the end of guest memory",
    run(rig, q) {
      const end = rig.memorySize;
      refuse(rig, q, "a readable buffer crossing the end of memory", [{ addr: end - 8, len: 16 }]);
      refuse(rig, q, "a buffer starting at the end of memory", [{ addr: end, len: 1 }]);
      refuse(rig, q, "a writable buffer crossing the end of memory", [{
        addr: end - 4,
        len: 8,
        flags: VIRTQ_DESC_F_WRITE,
      }]);
      refuse(rig, q, "a 0xffffffff-byte buffer", [{
        addr: 0x1000,
        len: 0xffffffff,
        flags: VIRTQ_DESC_F_WRITE,
      }]);
      fire(rig, q);
    },
  },
  {
    name: "addresses that wrap at 2^64",
    run(rig, q) {
      const { ro } = junk(rig, q);
      refuse(rig, q, "a buffer at 2^64 - 8 of 16 bytes (wraps to 8)", [
        { addr: ro, len: 8 },
        { addr: U64_TOP - 8n, len: 16 },
      ]);
      refuse(rig, q, "a writable buffer at 2^64 - 1", [{
        addr: U64_TOP - 1n,
        len: 2,
        flags: VIRTQ_DESC_F_WRITE,
      }]);
      refuse(rig, q, "a buffer at 2^53", [{ addr: 2n ** 53n, len: 1 }]);
      refuse(rig, q, "a buffer at 2^63", [{ addr: 2n ** 63n, len: 64 }]);
      fire(rig, q);
    },
  },
  {
    name: "readable buffer after a writable one",
    run(rig, q) {
      const { ro, rw } = junk(rig, q);
      refuse(rig, q, "a readable descriptor after a writable one", [
        { addr: rw, len: 16, flags: VIRTQ_DESC_F_WRITE },
        { addr: ro, len: 16 },
      ]);
      fire(rig, q);
    },
  },
  {
    name: "indirect table inside an indirect table",
    needsIndirect: true,
    run(rig, q) {
      const { ro } = junk(rig, q);
      const inner = indirectTable(rig, q, [{ addr: ro, len: 8 }]);
      const outer = indirectTable(rig, q, [{ addr: inner, len: 16, flags: VIRTQ_DESC_F_INDIRECT }]);
      refuse(rig, q, "a nested indirect descriptor (virtio 1.2 §2.7.5.3.1)", [{
        addr: outer,
        len: 16,
        flags: VIRTQ_DESC_F_INDIRECT,
      }]);
      fire(rig, q);
    },
  },
  {
    name: "indirect descriptor with NEXT",
    needsIndirect: true,
    run(rig, q) {
      const { ro } = junk(rig, q);
      const table = indirectTable(rig, q, [{ addr: ro, len: 8 }]);
      refuse(rig, q, "INDIRECT and NEXT both set (virtio 1.2 §2.7.5.3.1)", [
        { addr: table, len: 16, flags: VIRTQ_DESC_F_INDIRECT },
        { addr: ro, len: 8 },
      ]);
      fire(rig, q);
    },
  },
  {
    name: "indirect tables of bad lengths and places",
    needsIndirect: true,
    run(rig, q) {
      const { ro } = junk(rig, q);
      const table = indirectTable(rig, q, [{ addr: ro, len: 8 }]);
      const I = VIRTQ_DESC_F_INDIRECT;
      refuse(rig, q, "an indirect table of length 0", [{ addr: table, len: 0, flags: I }]);
      refuse(rig, q, "an indirect table of length 17", [{ addr: table, len: 17, flags: I }]);
      refuse(rig, q, "an indirect table of 65537 entries", [{
        addr: 0x1000,
        len: 16 * 65537,
        flags: I,
      }]);
      refuse(rig, q, "an indirect table crossing the end of memory", [{
        addr: rig.memorySize - 16,
        len: 32,
        flags: I,
      }]);
      refuse(rig, q, "an indirect table at 2^64 - 16", [{
        addr: U64_TOP - 16n,
        len: 32,
        flags: I,
      }]);
      fire(rig, q);
    },
  },
  {
    name: "loops and bad links inside an indirect table",
    needsIndirect: true,
    run(rig, q) {
      const { ro } = junk(rig, q);
      const I = VIRTQ_DESC_F_INDIRECT;
      const loop = indirectTable(rig, q, [{ addr: ro, len: 8 }, { addr: ro, len: 8, linkTo: 0 }]);
      refuse(rig, q, "an indirect table whose entries loop", [{ addr: loop, len: 32, flags: I }]);
      const out = indirectTable(rig, q, [{ addr: ro, len: 8, next: 2 }, { addr: ro, len: 8 }]);
      refuse(rig, q, "an indirect entry linking past its table", [{
        addr: out,
        len: 32,
        flags: I,
      }]);
      fire(rig, q);
    },
  },
  {
    name: "chain of more than 4 GiB",
    needsIndirect: true,
    run(rig, q) {
      // 520 entries of the whole memory each (overlapping): more than 2^32 - 1 bytes in all.
      const n = Math.ceil(2 ** 32 / rig.memorySize) + 8;
      const descs: RawDesc[] = [];
      for (let i = 0; i < n; i++) descs.push({ addr: 0, len: rig.memorySize });
      const table = indirectTable(rig, q, descs);
      refuse(rig, q, "a chain whose lengths add up past 2^32 - 1", [{
        addr: table,
        len: 16 * n,
        flags: VIRTQ_DESC_F_INDIRECT,
      }]);
      fire(rig, q);
    },
  },
  {
    name: "indirect descriptor without VIRTIO_F_INDIRECT_DESC",
    features: () => ALL & ~featureBit(VIRTIO_F_INDIRECT_DESC),
    run(rig, q) {
      const { ro } = junk(rig, q);
      const table = indirectTable(rig, q, [{ addr: ro, len: 8 }]);
      refuse(rig, q, "an indirect descriptor the driver did not negotiate", [{
        addr: table,
        len: 16,
        flags: VIRTQ_DESC_F_INDIRECT,
      }]);
      fire(rig, q);
    },
  },
  {
    name: "WRITE flag on the descriptor of an indirect table is ignored",
    needsIndirect: true,
    async run(rig, q) {
      // virtio 1.2 §2.7.5.3.2: the device MUST ignore it. A valid request must work as usual.
      const v = rig.request(q);
      const { buffers, placed } = rig.place(q, v.buffers);
      const table = indirectTable(
        rig,
        q,
        buffers.map((b, i) => ({
          addr: placed[i].addr,
          len: placed[i].len,
          flags: "writable" in b ? VIRTQ_DESC_F_WRITE : 0,
        })),
      );
      const head = splitChain(rig, q, [{
        addr: table,
        len: 16 * buffers.length,
        flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE,
      }]);
      rig.split[q].publish(head);
      rig.arm();
      for (const p of placed) if (p.writable) rig.watch.allow(p.addr, p.len);
      rig.kick(q);
      await rig.settle();
      if (rig.isLazy(q) || rig.hints.validRequest === undefined) return;
      const used = rig.verify();
      const e = used[q].find((u) => u.id === head);
      if (e === undefined) {
        rig.failures.push(
          "a valid request behind an indirect descriptor with WRITE set did not " +
            "complete (virtio 1.2 §2.7.5.3.2: the device must ignore that flag)",
        );
      } else if (v.queue === q && v.check !== undefined) {
        const written = new Uint8Array(
          placed.filter((p) => p.writable).reduce((n, p) => n + p.len, 0),
        );
        let off = 0;
        for (const p of placed) {
          if (!p.writable) continue;
          rig.memory.read(p.addr, written.subarray(off, off + p.len));
          off += p.len;
        }
        const problem = v.check({ id: e.id, len: e.len, written });
        if (problem !== undefined) {
          rig.failures.push(`behind an indirect WRITE descriptor: ${problem}`);
        }
      }
    },
  },
  {
    name: "available index more than the queue size ahead",
    run(rig, q) {
      const dq = rig.split[q];
      dq.setAvailIdx(dq.availIdx + rig.size(q) + 1);
      rig.expectBroken(q, "avail.idx moved past a whole ring (virtio 1.2 §2.7.6)");
      fire(rig, q);
    },
  },
  {
    name: "available index going backwards",
    run(rig, q) {
      const dq = rig.split[q];
      dq.setAvailIdx(dq.availIdx - 1);
      rig.expectBroken(q, "avail.idx one behind the device (65535 entries ahead)");
      fire(rig, q);
    },
  },
  {
    name: "every available entry names the same chain",
    run(rig, q) {
      const v = rig.request(q);
      const head = rig.addChain(q, v.buffers, { publish: false });
      const dq = rig.split[q];
      for (let i = 0; i < rig.size(q); i++) dq.publish(head);
      rig.arm();
      rig.kick(q);
    },
  },
  {
    name: "zero-length descriptors",
    run(rig, q) {
      const { ro, rw } = junk(rig, q);
      const head = splitChain(rig, q, [
        { addr: ro, len: 0 },
        { addr: rw, len: 0, flags: VIRTQ_DESC_F_WRITE },
        { addr: 0, len: 0, flags: VIRTQ_DESC_F_WRITE },
      ]);
      rig.split[q].publish(head);
      fire(rig, q);
    },
  },
  {
    name: "indices wrap at 65535",
    async run(rig, q) {
      // Device and driver both at 65530: the next requests cross the 16-bit wrap.
      const start = 65530;
      const dev = rig.transport.queues[q];
      dev.nextAvail = start;
      dev.nextUsed = start;
      const dq = rig.split[q];
      dq.setAvailIdx(start);
      dq.setLastUsed(start);
      rig.memory.writeU16(dq.usedRing + 2, start);
      const heads: number[] = [];
      const n = Math.min(12, rig.size(q) - 2);
      const lazy = rig.isLazy(q);
      for (let i = 0; i < n; i++) heads.push(rig.addChain(q, rig.request(q).buffers));
      rig.arm();
      rig.kick(q);
      await rig.settle();
      const used = rig.verify();
      if (lazy || rig.needsReset()) return;
      const got = new Set(used[q].map((u) => u.id));
      const missing = heads.filter((h) => !got.has(h));
      if (missing.length > 0) {
        rig.failures.push(
          `across the index wrap, ${missing.length} of ${n} requests did not ` +
            `complete (used.idx ${dq.usedIdx()})`,
        );
      }
      const v = rig.hints.validRequest?.();
      if (v !== undefined && v.queue === q && v.check !== undefined) {
        for (const u of used[q]) {
          const problem = v.check(u);
          if (problem !== undefined) {
            rig.failures.push(`across the index wrap: ${problem}`);
            break;
          }
        }
      }
    },
  },
  {
    name: "self-feeding ring: the device writes over the available ring and descriptors",
    run(rig, q) {
      // A request whose writable buffer is the available ring and the descriptor table: what
      // the device writes becomes the driver's next entries (a read landing on the ring).
      const dq = rig.split[q];
      const v = rig.request(q);
      const readable = v.buffers.filter((b) => "readable" in b);
      const { placed } = rig.place(q, readable);
      const descs: RawDesc[] = placed.map((p) => ({ addr: p.addr, len: p.len }));
      descs.push({
        addr: dq.availRing,
        len: availRingSize(rig.size(q)),
        flags: VIRTQ_DESC_F_WRITE,
      });
      descs.push({ addr: dq.descTable, len: 16 * rig.size(q), flags: VIRTQ_DESC_F_WRITE });
      const head = splitChain(rig, q, descs);
      dq.publish(head);
      fire(rig, q, [
        [dq.availRing, availRingSize(rig.size(q))],
        [dq.descTable, 16 * rig.size(q)],
      ]);
    },
  },
  {
    name: "driver refills the ring as fast as the device takes from it",
    async run(rig, q) {
      // A driver on another CPU (or a ring that feeds itself) keeps the ring from ever being
      // empty: each pass must stop at its budget and give the event loop back (the meter
      // fails a pass that goes on), and the ring must still be served on later turns.
      const dq = rig.split[q];
      const v = rig.request(q);
      const head = rig.addChain(q, v.buffers, { publish: false });
      dq.publish(head);
      const limit = 3 * rig.meter.limits.chains + 7;
      let fed = 0;
      const devQueue = rig.transport.queues[q];
      rig.onPop = (taken) => {
        if (taken !== devQueue || fed >= limit) return;
        fed++;
        dq.publish(head);
        rig.watch.sync(dq.availRing, availRingSize(rig.size(q)));
      };
      rig.arm();
      rig.kick(q);
      await rig.settle();
      rig.onPop = undefined;
      if (rig.isLazy(q) || rig.needsReset()) return;
      if (rig.meter.totalChains <= limit) {
        rig.notes.push(
          `the device took ${rig.meter.totalChains} of ${limit + 1} chains a ` +
            `busy driver offered (it may wait for room elsewhere)`,
        );
      }
      if (rig.meter.passes < 2 && rig.meter.totalChains > rig.meter.limits.chains) {
        rig.failures.push(`${rig.meter.totalChains} chains were served in one pass`);
      }
    },
  },
  {
    name: "writable buffers of nearly 4 GiB",
    run(rig, q) {
      const n = Math.floor(0xffff_ffff / rig.memorySize);
      hugeChain(rig, q, n, true);
    },
  },
  {
    name: "readable buffers of nearly 4 GiB",
    run(rig, q) {
      const n = Math.floor(0xffff_ffff / rig.memorySize) - 1;
      hugeChain(rig, q, n, false);
    },
  },
  {
    name: "valid request with its buffers grown to 4 GiB",
    run(rig, q) {
      const v = rig.request(q);
      if (v.queue !== q) return fire(rig, q);
      const { placed } = rig.place(q, v.buffers);
      // The first buffer of each direction grows to the whole of memory, repeated.
      const descs: RawDesc[] = [];
      for (const p of placed) {
        descs.push({ addr: p.addr, len: p.len, flags: p.writable ? VIRTQ_DESC_F_WRITE : 0 });
      }
      const w = descs.findIndex((d) => (d.flags ?? 0) & VIRTQ_DESC_F_WRITE);
      const grow = w >= 0 ? w : descs.length - 1;
      const big: RawDesc = { addr: 0, len: rig.memorySize, flags: descs[grow].flags };
      const reps = Math.floor(0xffff_ffff / rig.memorySize) - 2;
      const all = [...descs.slice(0, grow), ...new Array(reps).fill(big), ...descs.slice(grow)];
      const dq = rig.split[q];
      let head: number;
      if (rig.indirect) {
        const table = indirectTable(rig, q, all);
        head = splitChain(rig, q, [{
          addr: table,
          len: 16 * all.length,
          flags: VIRTQ_DESC_F_INDIRECT,
        }]);
      } else {
        head = splitChain(rig, q, all.slice(0, Math.min(all.length, rig.size(q) >> 1)));
      }
      dq.publish(head);
      fire(
        rig,
        q,
        (big.flags ?? 0) & VIRTQ_DESC_F_WRITE ? [[0, rig.memorySize]] : placed
          .filter((p) => p.writable).map((p) => [p.addr, p.len] as [number, number]),
      );
    },
  },
  {
    name: "writable buffer over the used ring",
    run(rig, q) {
      const dq = rig.split[q];
      const v = rig.request(q);
      const readable = v.buffers.filter((b) => "readable" in b);
      const { placed } = rig.place(q, readable);
      const descs: RawDesc[] = placed.map((p) => ({ addr: p.addr, len: p.len }));
      descs.push({ addr: dq.usedRing, len: usedRingSize(rig.size(q)), flags: VIRTQ_DESC_F_WRITE });
      dq.publish(splitChain(rig, q, descs));
      fire(rig, q);
    },
  },
  {
    name: "readable and writable buffers are the same memory",
    run(rig, q) {
      const v = rig.request(q);
      const { placed } = rig.place(q, v.buffers.filter((b) => "readable" in b));
      const at = placed[0]?.addr ?? rig.alloc(q, 64);
      const descs: RawDesc[] = placed.map((p) => ({ addr: p.addr, len: p.len }));
      const allow: [number, number][] = [];
      for (const b of v.buffers) {
        if (!("writable" in b)) continue;
        descs.push({ addr: at, len: b.writable, flags: VIRTQ_DESC_F_WRITE });
        allow.push([at, b.writable]);
      }
      if (descs.length === placed.length) {
        descs.push({ addr: at, len: 16, flags: VIRTQ_DESC_F_WRITE });
        allow.push([at, 16]);
      }
      rig.split[q].publish(splitChain(rig, q, descs));
      fire(rig, q, allow);
    },
  },
  {
    name: "garbage in avail.flags and used_event",
    async run(rig, q) {
      // Notification suppression fields are hints: garbage there changes when the driver is
      // interrupted, never what the device does with the request.
      const dq = rig.split[q];
      rig.memory.writeU16(dq.availRing, 0xffff);
      rig.memory.writeU16(dq.availRing + 4 + 2 * rig.size(q), 0x8765);
      const head = rig.addChain(q, rig.request(q).buffers);
      rig.arm();
      rig.kick(q);
      await rig.settle();
      const used = rig.verify();
      if (rig.isLazy(q) || rig.needsReset() || rig.hints.validRequest?.().queue !== q) return;
      if (used[q].find((u) => u.id === head) === undefined) {
        rig.failures.push(
          "a valid request with garbage avail.flags and used_event did not complete",
        );
      }
    },
  },
  {
    name: "buffers running from one memory region into the next",
    run: crossing,
  },
  {
    name: "rings overlapping each other at set-up",
    sameRings: false,
    run(rig, q) {
      overlapSetup(rig, q, (d) => ({ desc: d, avail: d + 8, used: d + 16 }));
    },
  },
  {
    name: "used ring over the available ring",
    sameRings: false,
    run(rig, q) {
      overlapSetup(rig, q, (d, size) => ({ desc: d, avail: d + 16 * size, used: d + 16 * size }));
    },
  },
];

/**
 * A valid request whose largest buffer runs from the first memory region into the second: the
 * regions are adjacent, so the buffer is valid and the request must work as usual.
 */
async function crossing(rig: Rig, q: number): Promise<void> {
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

function hugeChain(rig: Rig, q: number, n: number, writable: boolean): void {
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
function overlapSetup(
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

// ---------------------------------------------------------------------------------------------
// Packed rings

interface PackedCase {
  name: string;
  needsIndirect?: boolean;
  sameRings?: boolean;
  run: SplitAttack;
}

/** Make a raw packed list available; each entry's id is the list's unless given. */
function packedList(
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

function refusePacked(
  rig: Rig,
  q: number,
  what: string,
  descs: { addr: number | bigint; len: number; flags?: number; id?: number }[],
): void {
  rig.expectRefused(q, packedList(rig, q, descs), what);
}

const PACKED: PackedCase[] = [
  {
    name: "list longer than the ring",
    run(rig, q) {
      const { ro } = junk(rig, q);
      const size = rig.size(q);
      const descs = [];
      for (let i = 0; i < size; i++) descs.push({ addr: ro, len: 8 });
      // Every descriptor has NEXT, the last too: the list never ends.
      const id = rig.hostileIndex(q);
      rig.packed[q].addRaw(descs.map((d) => ({ ...d, id, flags: VIRTQ_DESC_F_NEXT })));
      rig.expectBroken(q, "a list of every descriptor of the ring, the last with NEXT");
      fire(rig, q);
    },
  },
  {
    name: "buffer id out of range",
    run(rig, q) {
      const { ro } = junk(rig, q);
      rig.packed[q].addRaw([{ addr: ro, len: 8, id: rig.size(q), flags: 0 }]);
      rig.expectBroken(q, "a list whose buffer id is the queue size");
      fire(rig, q);
    },
  },
  {
    name: "buffers past the end of memory and at 2^64",
    run(rig, q) {
      const end = rig.memorySize;
      refusePacked(rig, q, "a buffer crossing the end of memory", [{ addr: end - 8, len: 16 }]);
      refusePacked(rig, q, "a buffer at 2^64 - 8 (wraps)", [{ addr: U64_TOP - 8n, len: 16 }]);
      refusePacked(rig, q, "a 0xffffffff-byte writable buffer", [{
        addr: 0x1000,
        len: 0xffffffff,
        flags: VIRTQ_DESC_F_WRITE,
      }]);
      fire(rig, q);
    },
  },
  {
    name: "readable buffer after a writable one",
    run(rig, q) {
      const { ro, rw } = junk(rig, q);
      refusePacked(rig, q, "a readable descriptor after a writable one", [
        { addr: rw, len: 16, flags: VIRTQ_DESC_F_WRITE },
        { addr: ro, len: 16 },
      ]);
      fire(rig, q);
    },
  },
  {
    name: "indirect misuse",
    needsIndirect: true,
    run(rig, q) {
      const { ro } = junk(rig, q);
      const table = indirectTable(rig, q, [{ addr: ro, len: 8 }]);
      const I = VIRTQ_DESC_F_INDIRECT;
      refusePacked(rig, q, "an indirect descriptor inside a list (virtio 1.2 §2.8.19)", [
        { addr: ro, len: 8 },
        { addr: table, len: 16, flags: I },
      ]);
      refusePacked(rig, q, "an indirect table of length 0", [{ addr: table, len: 0, flags: I }]);
      refusePacked(rig, q, "an indirect table of length 17", [{ addr: table, len: 17, flags: I }]);
      refusePacked(rig, q, "an indirect table past the end of memory", [{
        addr: rig.memorySize - 16,
        len: 32,
        flags: I,
      }]);
      fire(rig, q);
    },
  },
  {
    name: "later descriptor of a list not made available",
    run(rig, q) {
      const { ro } = junk(rig, q);
      const p = rig.packed[q];
      const pos = p.availPosition & 0x7fff;
      packedList(rig, q, [{ addr: ro, len: 8 }, { addr: ro, len: 8 }]);
      // The second descriptor's AVAIL/USED bits say "not available" for this wrap.
      const second = (pos + 1) % rig.size(q);
      const flagsAt = p.descTable + 16 * second + 14;
      const f = rig.memory.readU16(flagsAt);
      rig.memory.writeU16(flagsAt, f ^ (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED));
      rig.expectBroken(q, "a list whose second descriptor is not available");
      fire(rig, q);
    },
  },
  {
    name: "ring wraps three times",
    async run(rig, q) {
      const n = 3 * rig.size(q) + 1;
      let done = 0;
      rig.arm();
      for (let i = 0; i < n && !rig.needsReset(); i++) {
        // A lazy queue keeps its buffers until it has data: stop when the ring is full.
        if (rig.packed[q].freeDescriptors < 4) break;
        rig.supplyLazy();
        const v = rig.request(q);
        const { buffers, placed } = rig.place(q, v.buffers);
        for (const pl of placed) if (pl.writable) rig.watch.allow(pl.addr, pl.len);
        for (const pl of placed) if (!pl.writable) rig.watch.sync(pl.addr, pl.len);
        const id = rig.packed[q].addChain(buffers);
        rig.watch.sync(rig.packed[q].descTable, 16 * rig.size(q));
        rig.kick(q);
        await rig.settle(20);
        const used = rig.takeUsed(q);
        if (used.some((u) => u.id === id)) done++;
      }
      if (
        !rig.isLazy(q) && !rig.needsReset() && rig.hints.validRequest?.().queue === q && done < n
      ) {
        rig.failures.push(`only ${done} of ${n} requests completed while the ring wrapped`);
      }
    },
  },
  {
    name: "writable buffers of nearly 4 GiB",
    needsIndirect: true,
    run(rig, q) {
      hugeChain(rig, q, Math.floor(0xffff_ffff / rig.memorySize), true);
    },
  },
  {
    name: "buffers running from one memory region into the next",
    run: crossing,
  },
  {
    name: "wrong wrap counter bits",
    sameRings: false,
    run(rig, q) {
      const { ro } = junk(rig, q);
      const p = rig.packed[q];
      const pos = p.availPosition & 0x7fff;
      // AVAIL and USED both set to the driver's wrap: a used descriptor, not an available one.
      p.writeDescriptor(pos, {
        addr: ro,
        len: 8,
        id: 0,
        flags: (p.availPosition >> 15) ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0,
      });
      fire(rig, q);
    },
  },
];

// ---------------------------------------------------------------------------------------------
// MMIO register abuse

interface MmioCase {
  name: string;
  run(rig: Rig): void | Promise<void>;
}

/** Negotiate up to FEATURES_OK by hand. */
function negotiate(rig: Rig, features?: bigint): void {
  rig.w(R.Status, 0);
  rig.w(R.Status, DEVICE_ACKNOWLEDGE);
  rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
  rig.driver.writeDriverFeatures(features ?? (rig.driver.deviceFeatures() & ALL));
  rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
}

/** Set queue 0 up with given raw values and go to DRIVER_OK; the device must not serve it. */
function badQueue(rig: Rig, num: number, desc: [number, number], avail: [number, number], used: [
  number,
  number,
]): void {
  negotiate(rig);
  for (let i = 0; i < rig.queueCount; i++) {
    const good = new DriverQueue(rig.memory, {
      size: Math.min(64, rig.transport.queues[i].maxSize),
      ringBase: 0x10000 + 0x10000 * i,
    });
    rig.w(R.QueueSel, i);
    rig.w(R.QueueNum, i === 0 ? num : good.size);
    rig.w(R.QueueDescLow, i === 0 ? desc[0] : good.descTable);
    rig.w(R.QueueDescHigh, i === 0 ? desc[1] : 0);
    rig.w(R.QueueDriverLow, i === 0 ? avail[0] : good.availRing);
    rig.w(R.QueueDriverHigh, i === 0 ? avail[1] : 0);
    rig.w(R.QueueDeviceLow, i === 0 ? used[0] : good.usedRing);
    rig.w(R.QueueDeviceHigh, i === 0 ? used[1] : 0);
    rig.w(R.QueueReady, 1);
  }
  // Nothing may be written anywhere from here: the set-up is not a valid one.
  rig.arm();
  rig.watch.arm();
  rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK | DEVICE_DRIVER_OK);
  rig.instrument();
  for (let i = 0; i < rig.queueCount; i++) rig.kick(i);
  const s = rig.r(R.Status);
  if ((s & DEVICE_DRIVER_OK) !== 0 && (s & DEVICE_NEEDS_RESET) === 0 && rig.transport.isActive) {
    rig.failures.push(
      `queue 0 set up with size ${num} and rings at 0x${desc[1].toString(16)}_${
        desc[0].toString(16)
      }/0x${avail[0].toString(16)}/0x${used[0].toString(16)} was accepted: the device is live`,
    );
  }
}

const MMIO: MmioCase[] = [
  {
    name: "status: DRIVER_OK before anything else",
    run(rig) {
      rig.w(R.Status, 0);
      rig.w(R.Status, DEVICE_DRIVER_OK);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER_OK);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_DRIVER_OK);
      if (rig.transport.isActive) rig.failures.push("the device activated without FEATURES_OK");
    },
  },
  {
    name: "status: bits cleared, FAILED, NEEDS_RESET written by the driver, all ones",
    run(rig) {
      negotiate(rig);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE);
      rig.w(R.Status, DEVICE_NEEDS_RESET | DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
      rig.w(R.Status, 0xff);
      rig.w(R.Status, DEVICE_FAILED);
      rig.w(
        R.Status,
        DEVICE_FAILED | DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK |
          DEVICE_DRIVER_OK,
      );
      rig.w(R.Status, 0xffffffff);
      rig.w(R.Status, 0x100 | DEVICE_ACKNOWLEDGE);
      rig.r(R.Status);
    },
  },
  {
    name: "status: FEATURES_OK with features the device never offered",
    run(rig) {
      // virtio 1.2 §2.2.2: the device must not accept them: FEATURES_OK reads back clear.
      rig.w(R.Status, 0);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
      const offered = rig.driver.deviceFeatures();
      rig.driver.writeDriverFeatures(0xffff_ffff_ffff_ffffn);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
      if (offered !== 0xffff_ffff_ffff_ffffn && (rig.r(R.Status) & DEVICE_FEATURES_OK) !== 0) {
        rig.failures.push(
          "FEATURES_OK was accepted with every feature bit set (virtio 1.2 §2.2.2)",
        );
      }
      // Bits in pages past 1.
      negotiate(rig, featureBit(VIRTIO_F_VERSION_1));
      rig.w(R.Status, 0);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
      rig.driver.writeDriverFeatures(offered & ALL);
      rig.w(R.DriverFeaturesSel, 7);
      rig.w(R.DriverFeatures, 1);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
      if ((rig.r(R.Status) & DEVICE_FEATURES_OK) !== 0) {
        rig.failures.push("FEATURES_OK was accepted with a feature bit in page 7");
      }
      // Without VERSION_1 on a modern device.
      rig.w(R.Status, 0);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE);
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
      rig.driver.writeDriverFeatures(offered & ALL & ~featureBit(VIRTIO_F_VERSION_1));
      rig.w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
      if ((rig.r(R.Status) & DEVICE_FEATURES_OK) !== 0) {
        rig.failures.push("FEATURES_OK was accepted without VIRTIO_F_VERSION_1 on a modern device");
      }
    },
  },
  {
    name: "features written after FEATURES_OK and after DRIVER_OK",
    run(rig) {
      rig.init();
      const before = rig.transport.core.driverFeatures;
      const acked = rig.device.ackedFeatures();
      rig.driver.writeDriverFeatures(0xffff_ffff_ffff_ffffn);
      rig.w(R.DeviceFeaturesSel, 0xffffffff);
      rig.r(R.DeviceFeatures);
      if (rig.transport.core.driverFeatures !== before || rig.device.ackedFeatures() !== acked) {
        rig.failures.push("features written after DRIVER_OK were taken");
      }
    },
  },
  {
    name: "queue size 0",
    run(rig) {
      badQueue(rig, 0, [0x10000, 0], [0x11000, 0], [0x12000, 0]);
    },
  },
  {
    name: "queue size not a power of two",
    run(rig) {
      badQueue(rig, 3, [0x10000, 0], [0x11000, 0], [0x12000, 0]);
    },
  },
  {
    name: "queue size above the maximum",
    run(rig) {
      const max = rig.transport.queues[0].maxSize;
      badQueue(rig, max * 2, [0x10000, 0], [0x11000, 0], [0x12000, 0]);
      badQueue(rig, 0xffffffff, [0x10000, 0], [0x11000, 0], [0x12000, 0]);
    },
  },
  {
    name: "rings outside guest memory",
    run(rig) {
      const end = rig.memorySize;
      badQueue(rig, 16, [end, 0], [0x11000, 0], [0x12000, 0]);
      badQueue(rig, 16, [0x10000, 0], [end - 2, 0], [0x12000, 0]);
      badQueue(rig, 16, [0x10000, 0], [0x11000, 0], [end - 8, 0]);
      badQueue(rig, 16, [0x10000, 0xffffffff], [0x11000, 0], [0x12000, 0]);
      badQueue(rig, 16, [0xfffffff0, 0xffffffff], [0x11000, 0], [0x12000, 0]);
      badQueue(rig, 16, [0x10000, 0], [0x11000, 0x200000], [0x12000, 0]);
    },
  },
  {
    name: "misaligned rings",
    run(rig) {
      badQueue(rig, 16, [0x10008, 0], [0x11000, 0], [0x12000, 0]);
      badQueue(rig, 16, [0x10000, 0], [0x11001, 0], [0x12000, 0]);
      badQueue(rig, 16, [0x10000, 0], [0x11000, 0], [0x12002, 0]);
    },
  },
  {
    name: "queue registers of queues that do not exist",
    run(rig) {
      negotiate(rig);
      for (const sel of [rig.queueCount, 0xffff, 0xffffffff]) {
        rig.w(R.QueueSel, sel);
        rig.r(R.QueueNumMax);
        rig.w(R.QueueNum, 16);
        rig.w(R.QueueDescLow, 0x10000);
        rig.w(R.QueueDescHigh, 0);
        rig.w(R.QueueDriverLow, 0x11000);
        rig.w(R.QueueDeviceLow, 0x12000);
        rig.w(R.QueueReady, 1);
        rig.r(R.QueueReady);
        rig.w(R.QueueReset, 1);
      }
      if (rig.r(R.QueueNumMax) !== 0) rig.failures.push("QueueNumMax of a missing queue is not 0");
    },
  },
  {
    name: "queue set-up after DRIVER_OK",
    run(rig) {
      rig.init();
      rig.arm();
      rig.w(R.QueueSel, 0);
      rig.w(R.QueueReady, 0);
      rig.w(R.QueueNum, 2);
      rig.w(R.QueueDescLow, rig.memorySize - 16);
      rig.w(R.QueueDriverLow, 0);
      rig.w(R.QueueDeviceLow, 0);
      rig.w(R.QueueReady, 1);
      rig.kick(0);
      const q = rig.transport.queues[0];
      if (q.descTable === rig.memorySize - 16 && q.ready) {
        rig.failures.push("a live queue was moved by register writes after DRIVER_OK");
      }
    },
  },
  {
    name: "notifications of queues that do not exist",
    run(rig) {
      rig.init();
      rig.arm();
      for (const v of [rig.queueCount, 0xffff, 0x7fffffff, 0xffffffff, 0x10000]) {
        rig.meter.cut();
        rig.w(R.QueueNotify, v);
      }
    },
  },
  {
    name: "notifications before DRIVER_OK and after reset",
    run(rig) {
      negotiate(rig);
      rig.arm();
      for (let i = 0; i < rig.queueCount; i++) rig.w(R.QueueNotify, i);
      rig.w(R.Status, 0);
      for (let i = 0; i < rig.queueCount; i++) rig.w(R.QueueNotify, i);
    },
  },
  {
    name: "configuration space out of range",
    run(rig) {
      rig.init();
      for (const off of [0, 1, 3, 0x7f, 0x100, 0xefc, 0xeff, 0xf00, 0x1000, 0xffffff]) {
        for (const width of [1, 2, 4, 8, 3, 0, 16]) {
          const buf = new Uint8Array(width).fill(0xa5);
          rig.call(
            `reading ${width} config bytes at ${off}`,
            () => rig.transport.read(MMIO_CONFIG_OFFSET + off, buf),
          );
          rig.call(
            `writing ${width} config bytes at ${off}`,
            () => rig.transport.write(MMIO_CONFIG_OFFSET + off, buf),
          );
        }
      }
      for (const off of [-4, -1, MMIO_WINDOW_SIZE, 2 ** 32, Number.MAX_SAFE_INTEGER, NaN]) {
        rig.call(
          `reading at window offset ${off}`,
          () => rig.transport.read(off, new Uint8Array(4)),
        );
        rig.call(
          `writing at window offset ${off}`,
          () => rig.transport.write(off, new Uint8Array(4)),
        );
      }
    },
  },
  {
    name: "control registers: bad widths, unaligned, read-only and write-only",
    run(rig) {
      rig.init();
      for (let off = 0; off < MMIO_CONFIG_OFFSET; off += 1) {
        for (const width of [1, 2, 8]) {
          const buf = new Uint8Array(width).fill(0xff);
          rig.call(
            `a ${width}-byte read at 0x${off.toString(16)}`,
            () => rig.transport.read(off, buf),
          );
          if (off === R.Status || off === R.QueueNotify) continue;
          rig.call(
            `a ${width}-byte write at 0x${off.toString(16)}`,
            () => rig.transport.write(off, buf),
          );
        }
      }
      for (
        const off of [
          R.MagicValue,
          R.Version,
          R.DeviceId,
          R.VendorId,
          R.QueueNumMax,
          R.InterruptStatus,
          R.ConfigGeneration,
          R.DeviceFeatures,
        ]
      ) {
        rig.w(off, 0xffffffff);
      }
      for (const off of [R.DriverFeatures, R.QueueNotify, R.InterruptAck, R.QueueDescLow]) {
        rig.r(off);
      }
      rig.w(R.InterruptAck, 0xffffffff);
      rig.w(R.ShmSel, 0xffffffff);
      rig.r(R.ShmLenLow);
      rig.r(R.ShmBaseHigh);
      rig.w(R.GuestPageSize, 3);
      rig.w(R.QueueAlign, 0);
      rig.w(R.QueuePfn, 0xffffffff);
    },
  },
  {
    name: "random register storm",
    run(rig) {
      let x = 0x9e3779b9;
      const next = () => {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        return x >>> 0;
      };
      const regs = Object.values(R);
      rig.init();
      rig.arm();
      rig.watch.allow(0, rig.memorySize); // a storm may set any ring up: only crashes count
      for (let i = 0; i < 4000; i++) {
        const off = next() % 4 === 0 ? next() % 0x200 : regs[next() % regs.length];
        const v = next() % 3 === 0 ? next() : next() % 4 === 0 ? 0xffffffff : next() % 256;
        rig.meter.cut();
        if (next() % 2 === 0) rig.w(off, v);
        else rig.r(off);
      }
    },
  },
  {
    name: "legacy (version 1) layout with bad page numbers",
    run(rig) {
      // A legacy register file on the same device: PFNs past memory, bad alignment.
      const t = new MmioTransport(rig.device, rig.devMemory, { version: 1 });
      const call = (what: string, fn: () => void) => rig.call(what, fn);
      call("legacy set-up", () => {
        t.writeU32(R.Status, 0);
        t.writeU32(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
        t.writeU32(R.GuestPageSize, 4096);
        for (let i = 0; i < t.queues.length; i++) {
          t.writeU32(R.QueueSel, i);
          t.writeU32(R.QueueNum, 16);
          t.writeU32(R.QueueAlign, 4096);
          t.writeU32(R.QueuePfn, i === 0 ? 0xffffffff : 0x10 + i);
        }
        t.writeU32(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_DRIVER_OK);
        for (let i = 0; i < t.queues.length; i++) t.writeU32(R.QueueNotify, i);
        t.writeU32(R.Status, 0);
        t.writeU32(R.GuestPageSize, 0);
        t.writeU32(R.QueueAlign, 3);
      });
      if (t.isActive && (t.status & DEVICE_NEEDS_RESET) === 0) {
        rig.failures.push("a legacy queue at PFN 0xffffffff was accepted");
      }
    },
  },
];

/**
 * Every case for a device with `queues` attacked queues, in a fixed order.
 * @param attack The queues attacked.
 * @param opts What the device and driver support.
 * @returns The cases.
 */
export function allCases(
  attack: readonly number[],
  opts: { packed: boolean },
): CaseDef[] {
  const out: CaseDef[] = [];
  for (const q of attack) {
    for (const c of SPLIT) {
      out.push({
        name: `split: ${c.name} (queue ${q})`,
        kind: "split",
        features: c.features?.({ offered: 0n }),
        sameRings: c.sameRings,
        run: (rig) => {
          if (c.needsIndirect && !rig.indirect) {
            rig.notes.push("skipped: indirect descriptors not negotiated");
            return fire(rig, q);
          }
          return c.run(rig, q);
        },
      });
    }
  }
  if (opts.packed) {
    for (const q of attack) {
      for (const c of PACKED) {
        out.push({
          name: `packed: ${c.name} (queue ${q})`,
          kind: "packed",
          sameRings: c.sameRings,
          run: (rig) => {
            if (c.needsIndirect && !rig.indirect) {
              rig.notes.push("skipped: indirect descriptors not negotiated");
              return fire(rig, q);
            }
            return c.run(rig, q);
          },
        });
      }
    }
  }
  for (const c of MMIO) {
    out.push({ name: `mmio: ${c.name}`, kind: "mmio", sameRings: false, run: c.run });
  }
  return out;
}

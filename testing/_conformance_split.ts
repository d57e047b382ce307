/**
 * The split-ring cases of the conformance suite (virtio 1.2 §2.7). Private to `testing/`.
 *
 * @module
 */

import { featureBit } from "../devices/device.ts";
import {
  availRingSize,
  usedRingSize,
  VIRTIO_F_INDIRECT_DESC,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_WRITE,
} from "../queue/split.ts";
import {
  ALL,
  crossing,
  fire,
  hugeChain,
  indirectTable,
  junk,
  overlapSetup,
  type RawDesc,
  refuse,
  type SplitAttack,
  splitChain,
  U64_TOP,
} from "./_conformance_chains.ts";

/** A split-ring case. */
export interface SplitCase {
  name: string;
  features?: (rig: { offered: bigint }) => bigint;
  sameRings?: boolean;
  /** Only when the driver negotiated indirect descriptors. */
  needsIndirect?: boolean;
  run: SplitAttack;
}

/** The split-ring cases, run on every attacked queue. */
export const SPLIT: SplitCase[] = [
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
    name: "driver refills the ring with malformed chains as fast as the device takes them",
    async run(rig, q) {
      // Each malformed chain is returned empty and the next one taken: a device whose own
      // loop (not the shared serving loop) does that must still stop at its budget.
      const dq = rig.split[q];
      const head = splitChain(rig, q, [{
        addr: U64_TOP - 4096n,
        len: 64,
        flags: VIRTQ_DESC_F_WRITE,
      }]);
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
      rig.stimulate(q);
      await rig.settle();
      rig.onPop = undefined;
      // Whatever was left on the ring is the driver's own doing: start over.
      if (fed >= limit) rig.notes.push("the ring was left full of malformed chains");
    },
    sameRings: false,
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
      rig.stimulate(q);
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

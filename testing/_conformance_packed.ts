/**
 * The packed-ring cases of the conformance suite (virtio 1.2 §2.8). Private to `testing/`.
 *
 * @module
 */

import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "../queue/split.ts";
import { VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED } from "../queue/packed.ts";
import {
  crossing,
  fire,
  hugeChain,
  indirectTable,
  junk,
  packedList,
  refusePacked,
  type SplitAttack,
  U64_TOP,
} from "./_conformance_chains.ts";

/** A packed-ring case. */
export interface PackedCase {
  name: string;
  needsIndirect?: boolean;
  sameRings?: boolean;
  run: SplitAttack;
}

/** The packed-ring cases, run on every attacked queue. */
export const PACKED: PackedCase[] = [
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

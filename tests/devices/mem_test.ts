// virtio-mem (virtio 1.2 §5.15) driven through the MMIO transport by the driver harness. The
// device's region is placed the way our VMM places it (DeviceMemorySpace.attach: a window above
// 4 GiB, a memory slot, the region inserted into guest memory), so guest writes into plugged
// blocks land in the device's mapping, and unplugged blocks must read zero and leave the
// resident set. Every request type and every bad value has a case.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import {
  DEVICE_NEEDS_RESET,
  DeviceResources,
  type ResourceConstraint,
  VIRTIO_INTR_CONFIG,
  type VirtioError,
  type VirtioSharedMemoryList,
} from "../../devices/device.ts";
import {
  decodeMemResponse,
  encodeMemRequest,
  MEM_REGION_ALIGN,
  MemConfigOffset,
  MemDevice,
  type MemOptions,
  parseMemRequest,
  VIRTIO_MEM_REQ_PLUG,
  VIRTIO_MEM_REQ_STATE,
  VIRTIO_MEM_REQ_UNPLUG,
  VIRTIO_MEM_REQ_UNPLUG_ALL,
  VIRTIO_MEM_RESP_ACK,
  VIRTIO_MEM_RESP_ERROR,
  VIRTIO_MEM_RESP_NACK,
  VIRTIO_MEM_STATE_MIXED,
  VIRTIO_MEM_STATE_PLUGGED,
  VIRTIO_MEM_STATE_UNPLUGGED,
} from "../../devices/mem.ts";
import { DeviceMemorySpace } from "../../kvm/device_memory.ts";
import { MMIO_CONFIG_OFFSET, type MmioError, MmioTransport } from "../../transport/mmio.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";
import type { DriverQueue } from "../../testing/queue_driver.ts";
import { residentBytes } from "./_rss.ts";

const MiB = 1 << 20;
const BS = 2 * MiB;
const REGION = 64 * MiB;
const BASE = 0x1_0000_0000;

interface Rig {
  mem: GuestMemory;
  device: MemDevice;
  shm: VirtioSharedMemoryList;
  slots: number[][];
  transport: MmioTransport;
  driver: MmioDriver;
  queue: DriverQueue;
  errors: MmioError[];
  deviceErrors: VirtioError[];
  interrupts: { count: number };
  close(): void;
}

function rig(options: Partial<MemOptions> = {}): Rig {
  const mem = GuestMemory.create(4 * MiB);
  const deviceErrors: VirtioError[] = [];
  const device = new MemDevice({
    regionSize: REGION,
    requestedSize: 16 * MiB,
    onError: (e) => deviceErrors.push(e),
    ...options,
  });
  const slots: number[][] = [];
  const space = new DeviceMemorySpace({
    memory: mem,
    setSlot: (slot, gpa, size, _host, flags) => slots.push([slot, gpa, size, flags]),
  });
  const shm = space.attach(device, { base: 0xd000_0000, size: 0x1000, irq: 5 })!;
  const errors: MmioError[] = [];
  const interrupts = { count: 0 };
  const transport = new MmioTransport(device, mem, {
    interrupt: () => interrupts.count++,
    onError: (e) => errors.push(e),
    shmRegions: shm,
  });
  const driver = new MmioDriver(transport, mem);
  const [queue] = driver.init();
  return {
    mem,
    device,
    shm,
    slots,
    transport,
    driver,
    queue,
    errors,
    deviceErrors,
    interrupts,
    close: () => device.remove(),
  };
}

function config(r: Rig, offset: number): number {
  return Number(new DataView(r.driver.readConfig(offset, 8).buffer).getBigUint64(0, true));
}

/** Send a request with a response buffer of `room` bytes; returns the used entry. */
function send(r: Rig, req: Uint8Array, room = 10) {
  const buffers: ({ readable: Uint8Array } | { writable: number })[] = [{ readable: req }];
  if (room > 0) buffers.push({ writable: room });
  const head = r.queue.addChain(buffers);
  r.driver.kick(0, true);
  const used = r.queue.takeUsed();
  assert.ok(used !== null);
  assert.equal(used.id, head);
  return used;
}

function ask(r: Rig, type: number, addr: number | bigint = 0, blocks = 0) {
  const used = send(r, encodeMemRequest(type, addr, blocks));
  assert.equal(used.len, 10);
  return decodeMemResponse(used.written);
}

describe("virtio-mem", () => {
  it("asks its VMM for a 128 MiB-aligned window and a slot, and is inserted above 4 GiB", () => {
    const device = new MemDevice({ regionSize: REGION });
    const needs: ResourceConstraint[] = [];
    device.getResourceRequirements(needs, false);
    assert.deepEqual(needs.slice(-2), [
      { type: "MemAddress", size: REGION, align: MEM_REGION_ALIGN },
      { type: "KvmMemSlot" },
    ]);
    const r = rig();
    try {
      assert.deepEqual(r.slots, [[1, BASE, REGION, 0]]);
      assert.equal(r.shm.guestAddr, BASE);
      assert.deepEqual(r.shm.regionList, [], "no shared memory regions: the address is in config");
      assert.equal(r.device.address, BASE);
      assert.ok(r.mem.findRegion(BASE + REGION - 1) !== undefined);
      assert.equal(r.mem.findRegion(BASE + REGION), undefined);
    } finally {
      r.close();
    }
  });

  it("refuses a window that is missing, too small or not block-aligned, a missing slot, and a second placement", () => {
    const d = new MemDevice({ regionSize: REGION });
    const slot = { type: "KvmMemSlot", slot: 3 } as const;
    for (
      const res of [
        [slot],
        [{ type: "MemAddress", base: BASE, size: REGION - BS } as const, slot],
        [{ type: "MemAddress", base: BASE + 4096, size: REGION } as const, slot],
        [{ type: "MemAddress", base: BASE, size: REGION } as const],
      ]
    ) {
      assert.throws(() => d.setResource(new DeviceResources(res)), /virtio-mem needs/);
    }
    d.setResource(
      new DeviceResources([{ type: "MemAddress", base: BASE, size: REGION }, slot]),
    );
    assert.throws(
      () =>
        d.setResource(
          new DeviceResources([{ type: "MemAddress", base: BASE, size: REGION }, slot]),
        ),
      /already placed/,
    );
    d.remove();
  });

  it("refuses bad geometry at construction", () => {
    for (
      const o of [
        { regionSize: 0 },
        { regionSize: REGION + 4096 },
        { regionSize: REGION, blockSize: 3 * MiB },
        { regionSize: REGION, blockSize: 2048 },
        { regionSize: REGION, requestedSize: REGION + BS },
        { regionSize: REGION, requestedSize: BS / 2 },
        { regionSize: REGION, requestedSize: -BS },
      ]
    ) {
      assert.throws(() => new MemDevice(o), RangeError, JSON.stringify(o));
    }
  });

  it("a driver that starts it without a region gets DEVICE_NEEDS_RESET", () => {
    const mem = GuestMemory.create(4 * MiB);
    const device = new MemDevice({ regionSize: REGION });
    const transport = new MmioTransport(device, mem);
    const driver = new MmioDriver(transport, mem);
    driver.init();
    assert.ok(driver.status() & DEVICE_NEEDS_RESET);
  });

  it("exposes its geometry in read-only configuration", () => {
    const r = rig();
    try {
      assert.equal(config(r, MemConfigOffset.blockSize), BS);
      assert.equal(config(r, MemConfigOffset.addr), BASE);
      assert.equal(config(r, MemConfigOffset.regionSize), REGION);
      assert.equal(config(r, MemConfigOffset.usableRegionSize), REGION);
      assert.equal(config(r, MemConfigOffset.pluggedSize), 0);
      assert.equal(config(r, MemConfigOffset.requestedSize), 16 * MiB);
      r.transport.write(MMIO_CONFIG_OFFSET + MemConfigOffset.requestedSize, new Uint8Array(8));
      assert.equal(r.errors.length, 1);
      assert.equal(config(r, MemConfigOffset.requestedSize), 16 * MiB);
    } finally {
      r.close();
    }
  });

  it("PLUG plugs unplugged blocks up to the requested size, then NACKs; plugged memory is usable", () => {
    const r = rig();
    try {
      assert.deepEqual(ask(r, VIRTIO_MEM_REQ_PLUG, BASE, 4), {
        type: VIRTIO_MEM_RESP_ACK,
        state: 0,
      });
      assert.equal(config(r, MemConfigOffset.pluggedSize), 8 * MiB);
      assert.equal(r.device.pluggedSize, 8 * MiB);
      assert.equal(r.device.stateOf(BASE, 8 * MiB), "plugged");
      r.mem.writeU32(BASE + 8 * MiB - 4, 0xfeedf00d);
      assert.equal(
        new DataView(r.shm.mmapRegion.bytes.buffer).getUint32(8 * MiB - 4, true),
        0xfeedf00d,
      );
      assert.equal(ask(r, VIRTIO_MEM_REQ_PLUG, BASE + 16 * MiB, 4).type, VIRTIO_MEM_RESP_ACK);
      // 16 MiB plugged = requested: one more block is refused for now.
      assert.equal(ask(r, VIRTIO_MEM_REQ_PLUG, BASE + 32 * MiB, 1).type, VIRTIO_MEM_RESP_NACK);
      r.device.setRequestedSize(18 * MiB);
      assert.equal(ask(r, VIRTIO_MEM_REQ_PLUG, BASE + 32 * MiB, 2).type, VIRTIO_MEM_RESP_NACK);
      assert.equal(ask(r, VIRTIO_MEM_REQ_PLUG, BASE + 32 * MiB, 1).type, VIRTIO_MEM_RESP_ACK);
      const c = r.device.counters;
      assert.deepEqual([c.plugs, c.nacks, c.errors], [3, 2, 0]);
    } finally {
      r.close();
    }
  });

  it("PLUG and UNPLUG answer ERROR for every invalid range and wrong state, changing nothing", () => {
    const r = rig({ requestedSize: REGION });
    try {
      assert.equal(ask(r, VIRTIO_MEM_REQ_PLUG, BASE + 4 * MiB, 2).type, VIRTIO_MEM_RESP_ACK);
      const bad: [number, number | bigint, number][] = [
        [VIRTIO_MEM_REQ_PLUG, BASE + 4096, 1], // unaligned
        [VIRTIO_MEM_REQ_PLUG, BASE + BS / 2, 1],
        [VIRTIO_MEM_REQ_PLUG, BASE, 0], // no blocks
        [VIRTIO_MEM_REQ_PLUG, BASE - BS, 1], // before the region
        [VIRTIO_MEM_REQ_PLUG, BASE - BS, 2], // straddles its start
        [VIRTIO_MEM_REQ_PLUG, BASE + REGION, 1], // after it
        [VIRTIO_MEM_REQ_PLUG, BASE + REGION - BS, 2], // straddles its end
        [VIRTIO_MEM_REQ_PLUG, BASE, 0xffff], // far past it
        [VIRTIO_MEM_REQ_PLUG, 0, 1], // RAM
        [VIRTIO_MEM_REQ_PLUG, 0xffff_ffff_ffff_f000n, 1], // beyond 2^53
        [VIRTIO_MEM_REQ_PLUG, 2n ** 53n, 1],
        [VIRTIO_MEM_REQ_PLUG, BASE + 4 * MiB, 1], // already plugged
        [VIRTIO_MEM_REQ_PLUG, BASE + 2 * MiB, 2], // partly plugged
        [VIRTIO_MEM_REQ_UNPLUG, BASE, 1], // not plugged
        [VIRTIO_MEM_REQ_UNPLUG, BASE + 8 * MiB, 1],
        [VIRTIO_MEM_REQ_UNPLUG, BASE + 2 * MiB, 2], // partly plugged
        [VIRTIO_MEM_REQ_UNPLUG, BASE + 4 * MiB + 4096, 1],
        [VIRTIO_MEM_REQ_UNPLUG, BASE + 4 * MiB, 0],
        [VIRTIO_MEM_REQ_UNPLUG, BASE + REGION, 1],
        [VIRTIO_MEM_REQ_STATE, BASE + 4096, 1],
        [VIRTIO_MEM_REQ_STATE, BASE, 0],
        [VIRTIO_MEM_REQ_STATE, BASE + REGION - BS, 2],
        [4, BASE, 1], // unknown types
        [0xffff, BASE, 1],
      ];
      for (const [type, addr, blocks] of bad) {
        assert.equal(
          ask(r, type, addr, blocks).type,
          VIRTIO_MEM_RESP_ERROR,
          `type ${type} at ${addr.toString(16)} x${blocks}`,
        );
      }
      assert.equal(r.device.pluggedSize, 2 * BS);
      assert.equal(r.device.stateOf(BASE + 4 * MiB, 2 * BS), "plugged");
      assert.equal(r.device.counters.errors, bad.length);
      assert.deepEqual(r.errors, []);
    } finally {
      r.close();
    }
  });

  it("UNPLUG releases the blocks: they read zero and leave the resident set", () => {
    const r = rig();
    try {
      assert.equal(ask(r, VIRTIO_MEM_REQ_PLUG, BASE, 8).type, VIRTIO_MEM_RESP_ACK);
      r.mem.fill(BASE, 16 * MiB, 0x5a);
      const host = r.device.mapping!.address;
      assert.equal(residentBytes(host, 16 * MiB), 16 * MiB);
      assert.equal(ask(r, VIRTIO_MEM_REQ_UNPLUG, BASE + 4 * MiB, 4).type, VIRTIO_MEM_RESP_ACK);
      assert.equal(residentBytes(host + BigInt(4 * MiB), 8 * MiB), 0);
      assert.equal(residentBytes(host, 4 * MiB), 4 * MiB);
      assert.equal(r.mem.readU8(BASE + 4 * MiB), 0);
      assert.equal(r.mem.readU8(BASE + 12 * MiB - 1), 0);
      assert.equal(r.mem.readU8(BASE + 4 * MiB - 1), 0x5a);
      assert.equal(r.mem.readU8(BASE + 12 * MiB), 0x5a);
      assert.equal(r.device.pluggedSize, 8 * MiB);
      assert.equal(r.device.counters.releasedBytes, 8 * MiB);
      assert.equal(r.device.stateOf(BASE, 16 * MiB), "mixed");
    } finally {
      r.close();
    }
  });

  it("UNPLUG ALL unplugs everything and releases the region, whatever follows the type", () => {
    const r = rig();
    try {
      ask(r, VIRTIO_MEM_REQ_PLUG, BASE, 2);
      ask(r, VIRTIO_MEM_REQ_PLUG, BASE + 20 * MiB, 2);
      r.mem.fill(BASE, 4 * MiB, 1);
      r.mem.fill(BASE + 20 * MiB, 4 * MiB, 1);
      assert.equal(ask(r, VIRTIO_MEM_REQ_UNPLUG_ALL, 0xdead, 77).type, VIRTIO_MEM_RESP_ACK);
      // Only the type is needed.
      const short = send(r, new Uint8Array([VIRTIO_MEM_REQ_UNPLUG_ALL, 0]));
      assert.equal(decodeMemResponse(short.written).type, VIRTIO_MEM_RESP_ACK);
      assert.equal(r.device.pluggedSize, 0);
      assert.equal(config(r, MemConfigOffset.pluggedSize), 0);
      assert.equal(residentBytes(r.device.mapping!.address, REGION), 0);
      assert.equal(r.device.counters.unplugAlls, 2);
    } finally {
      r.close();
    }
  });

  it("STATE answers plugged, unplugged or mixed", () => {
    const r = rig();
    try {
      ask(r, VIRTIO_MEM_REQ_PLUG, BASE + BS, 2);
      assert.deepEqual(ask(r, VIRTIO_MEM_REQ_STATE, BASE + BS, 2), {
        type: VIRTIO_MEM_RESP_ACK,
        state: VIRTIO_MEM_STATE_PLUGGED,
      });
      assert.equal(ask(r, VIRTIO_MEM_REQ_STATE, BASE, 1).state, VIRTIO_MEM_STATE_UNPLUGGED);
      assert.equal(ask(r, VIRTIO_MEM_REQ_STATE, BASE, 2).state, VIRTIO_MEM_STATE_MIXED);
      assert.equal(ask(r, VIRTIO_MEM_REQ_STATE, BASE, REGION / BS).state, VIRTIO_MEM_STATE_MIXED);
      assert.equal(r.device.counters.states, 4);
    } finally {
      r.close();
    }
  });

  it("short requests get ERROR; without room for an answer a request is not acted on", () => {
    const r = rig();
    try {
      for (const len of [0, 1, 17]) {
        const req = encodeMemRequest(VIRTIO_MEM_REQ_PLUG, BASE, 1).subarray(0, len);
        const used = send(r, req);
        assert.equal(decodeMemResponse(used.written).type, VIRTIO_MEM_RESP_ERROR, `length ${len}`);
      }
      const none = send(r, encodeMemRequest(VIRTIO_MEM_REQ_PLUG, BASE, 1), 0);
      assert.equal(none.len, 0);
      const one = send(r, encodeMemRequest(VIRTIO_MEM_REQ_PLUG, BASE, 1), 1);
      assert.equal(one.len, 0);
      assert.equal(r.device.pluggedSize, 0, "unanswerable requests change nothing");
      assert.equal(r.device.counters.unanswerable, 2);
      // A 2-byte response buffer gets the type only.
      const two = send(r, encodeMemRequest(VIRTIO_MEM_REQ_PLUG, BASE, 1), 2);
      assert.equal(two.len, 2);
      assert.equal(decodeMemResponse(two.written).type, VIRTIO_MEM_RESP_ACK);
      // Padding is ignored.
      const padded = encodeMemRequest(VIRTIO_MEM_REQ_STATE, BASE, 1);
      padded.fill(0xee, 2, 8);
      padded.fill(0xee, 18, 24);
      assert.equal(decodeMemResponse(send(r, padded).written).state, VIRTIO_MEM_STATE_PLUGGED);
    } finally {
      r.close();
    }
  });

  it("a new requested size reaches the driver through a configuration change interrupt", () => {
    const r = rig();
    try {
      r.driver.ackInterrupt();
      const gen = r.transport.configGeneration;
      r.device.setRequestedSize(32 * MiB);
      assert.equal(config(r, MemConfigOffset.requestedSize), 32 * MiB);
      assert.ok(r.driver.ackInterrupt() & VIRTIO_INTR_CONFIG);
      assert.notEqual(r.transport.configGeneration, gen);
      const n = r.interrupts.count;
      r.device.setRequestedSize(32 * MiB);
      assert.equal(r.interrupts.count, n, "no change, no interrupt");
      for (const bad of [-BS, BS + 4096, REGION + BS, 1.5, NaN]) {
        assert.throws(() => r.device.setRequestedSize(bad), RangeError);
      }
    } finally {
      r.close();
    }
  });

  it("a device reset keeps the blocks plugged (virtio 1.2 §5.15.5)", () => {
    const r = rig();
    try {
      ask(r, VIRTIO_MEM_REQ_PLUG, BASE, 2);
      r.mem.writeU8(BASE, 9);
      r.transport.writeU32(0x070, 0);
      assert.equal(r.device.pluggedSize, 2 * BS);
      [r.queue] = r.driver.init();
      assert.equal(config(r, MemConfigOffset.pluggedSize), 2 * BS);
      assert.equal(r.mem.readU8(BASE), 9);
      assert.equal(ask(r, VIRTIO_MEM_REQ_UNPLUG_ALL).type, VIRTIO_MEM_RESP_ACK);
    } finally {
      r.close();
    }
  });

  it("discardUnplugged takes back memory a driver wrote in unplugged blocks", () => {
    const r = rig();
    try {
      ask(r, VIRTIO_MEM_REQ_PLUG, BASE, 1);
      r.mem.fill(BASE, REGION, 0x42); // a hostile driver writes everywhere
      r.device.discardUnplugged();
      assert.equal(residentBytes(r.device.mapping!.address + BigInt(BS), REGION - BS), 0);
      assert.equal(r.mem.readU8(BASE + BS - 1), 0x42, "plugged memory is kept");
      assert.equal(r.mem.readU8(BASE + BS), 0);
    } finally {
      r.close();
    }
  });

  it("parseMemRequest reads type, address and block count, and refuses what it cannot read", () => {
    assert.deepEqual(parseMemRequest(encodeMemRequest(VIRTIO_MEM_REQ_UNPLUG, 0x2000, 3)), {
      type: "unplug",
      addr: 0x2000,
      blocks: 3,
    });
    assert.deepEqual(parseMemRequest(new Uint8Array(1)), { refused: "short" });
    assert.deepEqual(parseMemRequest(encodeMemRequest(9)), { refused: "unknownType", code: 9 });
    assert.deepEqual(
      parseMemRequest(encodeMemRequest(VIRTIO_MEM_REQ_STATE, 1n << 60n, 1)),
      { refused: "addressTooLarge", code: VIRTIO_MEM_REQ_STATE },
    );
  });
});

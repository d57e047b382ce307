// The VMM's device memory area (kvm/device_memory.ts), without KVM: the memory slot setter only
// records. Windows are aligned and bounded by the guest's address bits, slots run out, regions
// must be over a mapping, page-aligned, inside the area and apart from other memory, and a
// device gets exactly the resources it asked for.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory, GuestRegion } from "../../memory/guest_memory.ts";
import { mmapAnonymous } from "../../sys/mod.ts";
import { RngDevice } from "../../devices/rng.ts";
import { MemDevice } from "../../devices/mem.ts";
import type { DeviceResources, VirtioSharedMemoryList } from "../../devices/device.ts";
import {
  DEFAULT_DEVICE_MEMORY_BASE,
  DeviceMemorySpace,
  physAddressLimit,
} from "../../kvm/device_memory.ts";

const MiB = 1 << 20;
const G4 = DEFAULT_DEVICE_MEMORY_BASE;

function space(options: { limit?: number; maxSlots?: number } = {}) {
  const memory = GuestMemory.create(MiB);
  const slots: [number, number, number, bigint, number][] = [];
  const s = new DeviceMemorySpace({
    memory,
    setSlot: (...a) => slots.push(a),
    ...options,
  });
  return { memory, slots, s };
}

describe("DeviceMemorySpace", () => {
  it("allocates aligned windows from 4 GiB up, within the guest's address space", () => {
    const { s } = space({ limit: G4 + 512 * MiB });
    assert.equal(s.allocate(2 * MiB, 128 * MiB), G4);
    assert.equal(s.allocate(4096, 4096), G4 + 2 * MiB);
    assert.equal(s.allocate(64 * MiB, 128 * MiB), G4 + 128 * MiB);
    assert.throws(() => s.allocate(512 * MiB, 4096), /No room/);
    for (const [size, align] of [[0, 4096], [4095, 4096], [4096, 3 * 4096], [-4096, 4096]]) {
      assert.throws(() => s.allocate(size, align), RangeError);
    }
  });

  it("hands out memory slots after RAM's until there are none", () => {
    const { s } = space({ maxSlots: 3 });
    assert.equal(s.allocateSlot(), 1);
    assert.equal(s.allocateSlot(), 2);
    assert.throws(() => s.allocateSlot(), /slots/);
  });

  it("insertRegion makes a slot and a guest memory region over the mapping", () => {
    const { s, slots, memory } = space();
    const m = mmapAnonymous(2 * MiB);
    try {
      s.insertRegion(new GuestRegion({ base: G4, buffer: m.buffer }));
      assert.deepEqual(slots, [[1, G4, 2 * MiB, m.address, 0]]);
      memory.writeU32(G4 + 8, 99);
      assert.equal(new DataView(m.buffer).getUint32(8, true), 99);
      assert.deepEqual(s.regions, [{ base: G4, size: 2 * MiB, slot: 1 }]);
      // Later windows go after it.
      assert.equal(s.allocate(4096, 4096), G4 + 2 * MiB);
    } finally {
      m.unmap();
    }
  });

  it("insertRegion refuses heap buffers, unaligned regions, regions outside the area and overlaps", () => {
    const { s, slots } = space({ limit: G4 + 64 * MiB });
    const m = mmapAnonymous(4 * MiB);
    try {
      assert.throws(
        () => s.insertRegion(new GuestRegion({ base: G4, buffer: new ArrayBuffer(4096) })),
        TypeError,
      );
      const bad = [
        { base: G4 + 1, offset: 0, size: 4096 },
        { base: G4, offset: 0, size: 100 },
        { base: G4, offset: 16, size: 4096 }, // host address not page-aligned
        { base: 0x8000_0000, offset: 0, size: 4096 }, // below the area
        { base: G4 + 64 * MiB - 4096, offset: 0, size: 8192 }, // past the address bits
      ];
      for (const b of bad) {
        assert.throws(
          () => s.insertRegion(new GuestRegion({ buffer: m.buffer, ...b })),
          RangeError,
          JSON.stringify(b),
        );
      }
      s.insertRegion(new GuestRegion({ base: G4, buffer: m.buffer, size: 2 * MiB }));
      assert.throws(
        () =>
          s.insertRegion(
            new GuestRegion({ base: G4 + MiB, buffer: m.buffer, offset: 2 * MiB, size: 2 * MiB }),
          ),
        /overlaps/,
      );
      assert.equal(slots.length, 1, "nothing refused reached KVM");
    } finally {
      m.unmap();
    }
  });

  it("attach gives a device without device memory nothing", () => {
    const { s, slots } = space();
    assert.equal(s.attach(new RngDevice(), { base: 0xd000_0000, size: 4096, irq: 5 }), undefined);
    assert.equal(slots.length, 0);
  });

  it("attach gives a device its window and slot, and inserts what it returns", () => {
    const { s, slots, memory } = space();
    const d = new MemDevice({ regionSize: 256 * MiB });
    try {
      const shm = s.attach(d, { base: 0xd000_0000, size: 4096, irq: 5 })!;
      assert.equal(shm.guestAddr, G4);
      assert.deepEqual(slots.map((x) => x.slice(0, 3)), [[1, G4, 256 * MiB]]);
      assert.ok(memory.checkRange(G4, 256 * MiB));
    } finally {
      d.remove();
    }
  });

  it("attach refuses memory that names a slot the device was not given", () => {
    const { s, slots } = space();
    const d = new MemDevice({ regionSize: 128 * MiB });
    const setResource = d.setResource.bind(d);
    d.setResource = (res: DeviceResources): VirtioSharedMemoryList => {
      const shm = setResource(res);
      shm.kvmUserspaceMemoryRegionSlot = 0; // RAM's
      return shm;
    };
    try {
      assert.throws(() => s.attach(d, { base: 0xd000_0000, size: 4096, irq: 5 }), /slot/);
      assert.equal(slots.length, 0);
    } finally {
      d.remove();
    }
  });

  it("physAddressLimit reads CPUID 0x80000008", () => {
    assert.equal(physAddressLimit([{ function: 0x80000008, eax: 0x3028 }]), 2 ** 40);
    assert.equal(physAddressLimit([]), 2 ** 36);
  });
});

// The virtio PCI transport, driven as firmware and Linux's virtio_pci drive it (testing/
// pci_driver.ts): BAR sizing and placement, the capability list, the modern common
// configuration, notifications, MSI-X (masking, pending bits, NO_VECTOR), INTx with a
// read-to-clear ISR, the transitional legacy interface, and every misuse reported, never thrown.

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory, GuestRegion } from "../../memory/guest_memory.ts";
import { RngDevice } from "../../devices/rng.ts";
import { BlockConfigOffset, BlockDevice, MemoryBackend } from "../../devices/block.ts";
import {
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_FEATURES_OK,
  DEVICE_NEEDS_RESET,
  featureBit,
  VIRTIO_F_NOTIFICATION_DATA,
  VIRTIO_F_RING_RESET,
  VIRTIO_F_VERSION_1,
  VIRTIO_INTR_CONFIG,
  VIRTIO_INTR_VRING,
  type VirtioDevice,
  VirtioSharedMemoryList,
} from "../../devices/device.ts";
import {
  PCI_LEGACY_BAR,
  PCI_MODERN_BAR,
  PCI_MSIX_BAR,
  PCI_SHM_BAR,
  PCI_VENDOR_ID_VIRTIO,
  PciCommonCfg as C,
  type PciError,
  type PciErrorCode,
  PciModernLayout,
  PciTransport,
  type PciTransportOptions,
  VIRTIO_MSI_NO_VECTOR,
  VirtioPciCapType,
} from "../../transport/pci.ts";
import { PCI_DRIVER_MSI_ADDRESS, PciDriver } from "../../testing/pci_driver.ts";

interface Rig {
  mem: GuestMemory;
  pci: PciTransport;
  driver: PciDriver;
  errors: PciError[];
  msis: { vector: number; address: bigint; data: number }[];
  intx: boolean[];
}

function rig(device: VirtioDevice = new RngDevice(), options: PciTransportOptions = {}): Rig {
  const mem = GuestMemory.create(16 << 20);
  const errors: PciError[] = [];
  const msis: Rig["msis"] = [];
  const intx: boolean[] = [];
  const pci = new PciTransport(device, mem, {
    ...options,
    interrupts: {
      msi: (vector, address, data) => msis.push({ vector, address, data }),
      intx: (level) => intx.push(level),
    },
    onError: (e) => errors.push(e),
  });
  const driver = new PciDriver(pci, mem);
  return { mem, pci, driver, errors, msis, intx };
}

function expectErrors(r: Rig, codes: PciErrorCode[], fn: () => void): void {
  r.errors.length = 0;
  fn();
  assert.deepEqual(r.errors.map((e) => e.code), codes, r.errors.map((e) => e.message).join("; "));
  r.errors.length = 0;
}

describe("PciTransport configuration space", () => {
  it("identifies a modern virtio device: ids, revision, class, subsystem, INTA", () => {
    const r = rig();
    const d = r.driver;
    assert.equal(d.cfgRead(0x00, 2), PCI_VENDOR_ID_VIRTIO);
    assert.equal(d.cfgRead(0x02, 2), 0x1044);
    assert.equal(d.cfgRead(0x08, 1), 1, "revision 1: not for legacy drivers");
    assert.ok(d.cfgRead(0x2e, 2) >= 0x40, "subsystem id at least 0x40");
    assert.equal(d.cfgRead(0x3d, 1), 1);
    assert.equal(d.cfgRead(0x06, 2) & 0x10, 0x10, "capability list");
    assert.deepEqual(r.errors, []);
  });

  it("a transitional device has the transitional id, the type as subsystem id and an I/O BAR0", () => {
    const r = rig(new BlockDevice({ backend: new MemoryBackend(1 << 20) }), { transitional: true });
    assert.equal(r.driver.cfgRead(0x02, 2), 0x1001);
    assert.equal(r.driver.cfgRead(0x2e, 2), 2);
    assert.equal(r.driver.cfgRead(0x08, 1), 0);
    assert.equal(r.pci.bars()[0].kind, "io");
    // A vsock device (type 19) has no transitional id.
    class Vsockish extends RngDevice {
      override deviceType(): number {
        return 19;
      }
    }
    assert.throws(
      () => new PciTransport(new Vsockish(), r.mem, { transitional: true }),
      RangeError,
    );
  });

  it("BARs size and move as firmware expects; a 64-bit BAR spans two registers", () => {
    const moved: number[] = [];
    const r = rig(undefined, { onBarChanged: (b) => moved.push(b.index) });
    const bars = r.driver.assignBars(0xe000_0000);
    assert.deepEqual(bars.map((b) => b.bar), [PCI_MSIX_BAR, PCI_MODERN_BAR]);
    const modern = r.pci.bars().find((b) => b.index === PCI_MODERN_BAR)!;
    assert.equal(modern.kind, "mem64");
    assert.equal(modern.address % modern.size, 0);
    assert.equal(modern.enabled, true);
    assert.equal(r.driver.cfgRead(0x10 + 4 * PCI_MODERN_BAR, 4) & 0xf, 0xc, "64-bit prefetchable");
    assert.ok(moved.includes(PCI_MODERN_BAR));
    // Above 4 GiB through the upper register.
    r.driver.cfgWrite(0x10 + 4 * (PCI_MODERN_BAR + 1), 4, 0x1);
    assert.equal(
      r.pci.bars().find((b) => b.index === PCI_MODERN_BAR)!.address,
      0x1_0000_0000 + modern.address,
    );
    assert.deepEqual(r.pci.barAt(0x1_0000_0000 + modern.address + 0x10), {
      bar: PCI_MODERN_BAR,
      offset: 0x10,
    });
    assert.deepEqual(r.errors, []);
  });

  it("sizing the upper half of a 64-bit BAR above 4 GiB gives its address back exactly", () => {
    const r = rig();
    r.pci.setBarAddress(PCI_MODERN_BAR, 0x1_0000_4000);
    const reg = 0x10 + 4 * (PCI_MODERN_BAR + 1);
    const hi = r.driver.cfgRead(reg, 4);
    r.driver.cfgWrite(reg, 4, 0xffffffff); // the address is then above 2^53
    assert.equal(r.driver.cfgRead(reg, 4), 0xffffffff);
    r.driver.cfgWrite(reg, 4, hi);
    assert.equal(r.pci.bars().find((b) => b.index === PCI_MODERN_BAR)!.address, 0x1_0000_4000);
    assert.equal(r.driver.cfgRead(reg - 4, 4), 0x4000 | 0xc);
  });

  it("lists the virtio structures, the notify multiplier and MSI-X", () => {
    const r = rig(new BlockDevice({ backend: new MemoryBackend(1 << 20) }));
    r.driver.probe();
    const s = r.driver.structures;
    assert.equal(s.get(VirtioPciCapType.COMMON_CFG)!.bar, PCI_MODERN_BAR);
    assert.equal(s.get(VirtioPciCapType.ISR_CFG)!.offset, PciModernLayout.isr);
    assert.equal(s.get(VirtioPciCapType.DEVICE_CFG)!.offset, PciModernLayout.device);
    assert.ok(s.get(VirtioPciCapType.DEVICE_CFG)!.length >= 60);
    assert.ok(s.has(VirtioPciCapType.PCI_CFG));
    assert.equal(r.driver.notifyMultiplier, 4);
    assert.equal(r.driver.msixTableSize, 2, "one queue plus configuration");
  });

  it("an rng device has no device configuration structure", () => {
    const r = rig();
    r.driver.probe();
    assert.equal(r.driver.structures.has(VirtioPciCapType.DEVICE_CFG), false);
  });

  it("misaligned and odd-width configuration accesses are refused, not thrown", () => {
    const r = rig();
    expectErrors(r, ["InvalidAccess", "InvalidAccess"], () => {
      r.pci.configRead(0x01, new Uint8Array(2));
      r.pci.configWrite(0x04, new Uint8Array(3));
    });
  });
});

describe("PciTransport modern interface", () => {
  it("negotiates, sets up the queue, serves entropy and interrupts through MSI-X", () => {
    const r = rig();
    r.driver.assignBars();
    const [q] = r.driver.init();
    assert.equal(r.pci.core.isActive, true);
    assert.notEqual(r.driver.features & featureBit(VIRTIO_F_VERSION_1), 0n);
    q.addChain([{ writable: 16 }]);
    assert.equal(r.driver.kick(0, true), true);
    assert.equal(q.takeUsed()?.len, 16);
    assert.deepEqual(r.msis.at(-1), { vector: 1, address: PCI_DRIVER_MSI_ADDRESS, data: 1 });
    assert.deepEqual(r.intx, [], "no INTx with MSI-X on");
    assert.deepEqual(r.errors, []);
  });

  it("reads back the valid driver features and the queue layout", () => {
    const r = rig();
    r.driver.assignBars();
    const [q] = r.driver.init();
    r.driver.setCommon(C.driverFeatureSelect, 4, 1);
    assert.equal(r.driver.common(C.driverFeature, 4), 1, "VERSION_1 in page 1");
    r.driver.setCommon(C.queueSelect, 2, 0);
    assert.equal(r.driver.common(C.queueDescLo, 4), q.descTable);
    assert.equal(r.driver.common(C.queueEnable, 2), 1);
    assert.equal(r.driver.common(C.numQueues, 2), 1);
    r.driver.setCommon(C.queueSelect, 2, 5);
    assert.equal(r.driver.common(C.queueSize, 2), 0, "no queue 5");
  });

  it("refuses queue set-up after DRIVER_OK and queue_enable 0", () => {
    const r = rig();
    r.driver.assignBars();
    r.driver.init();
    expectErrors(r, ["InvalidQueueAccess", "InvalidQueueAccess", "InvalidQueueAccess"], () => {
      r.driver.setCommon(C.queueSize, 2, 8);
      r.driver.setCommon(C.queueDescLo, 4, 0x1000);
      r.driver.setCommon(C.queueEnable, 2, 0);
    });
  });

  it("refuses common configuration accesses of the wrong width", () => {
    const r = rig();
    r.driver.assignBars();
    expectErrors(r, ["InvalidAccess", "InvalidAccess"], () => {
      r.driver.barWrite(PCI_MODERN_BAR, C.deviceStatus, 4, 1);
      r.driver.barRead(PCI_MODERN_BAR, C.queueSelect, 4);
    });
  });

  it("a notification with another queue's index, or of the wrong width, is refused", () => {
    const r = rig();
    r.driver.assignBars();
    r.driver.init();
    expectErrors(r, ["InvalidNotify", "InvalidAccess"], () => {
      r.driver.barWrite(PCI_MODERN_BAR, PciModernLayout.notify, 2, 3);
      r.driver.barWrite(PCI_MODERN_BAR, PciModernLayout.notify, 4, 0);
    });
  });

  it("FEATURES_OK without VERSION_1 is refused; the status reads it clear", () => {
    const r = rig();
    r.driver.assignBars();
    r.driver.probe();
    assert.throws(() => r.driver.init({ features: 0n }), /refused/);
    assert.equal(r.driver.common(C.deviceStatus, 1) & DEVICE_FEATURES_OK, 0);
    assert.equal(r.errors.at(-1)?.code, "FeaturesRejected");
  });

  it("BAR accesses with decoding disabled or past the BAR are refused", () => {
    const r = rig();
    expectErrors(r, ["InvalidBar"], () => r.driver.barRead(PCI_MODERN_BAR, 0, 4));
    r.driver.assignBars();
    expectErrors(r, ["InvalidBar", "InvalidAccess"], () => {
      r.driver.barRead(3, 0, 4);
      r.driver.barRead(PCI_MODERN_BAR, 0x4000 * 4, 4);
    });
  });

  it("a ring outside guest memory fails activation: NEEDS_RESET and the config vector fires", () => {
    const r = rig();
    r.driver.assignBars();
    r.driver.probe();
    r.driver.enableMsix();
    const d = r.driver;
    d.setCommon(C.deviceStatus, 1, DEVICE_ACKNOWLEDGE);
    d.setCommon(C.deviceStatus, 1, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
    d.setCommon(C.driverFeatureSelect, 4, 1);
    d.setCommon(C.driverFeature, 4, 1);
    d.setCommon(C.deviceStatus, 1, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK);
    d.setCommon(C.configMsixVector, 2, 0);
    d.setCommon(C.queueSelect, 2, 0);
    d.setCommon(C.queueDescLo, 4, 0xffff_f000);
    d.setCommon(C.queueEnable, 2, 1);
    d.setCommon(C.deviceStatus, 1, 0xf);
    assert.notEqual(d.common(C.deviceStatus, 1) & DEVICE_NEEDS_RESET, 0);
    assert.equal(r.msis.at(-1)?.vector, 0);
    assert.equal(r.errors.at(-1)?.code, "ActivationFailed");
  });

  it("writing 0 to the status resets device, queues and vectors", () => {
    const r = rig();
    r.driver.assignBars();
    r.driver.init();
    r.driver.setCommon(C.deviceStatus, 1, 0);
    assert.equal(r.driver.common(C.deviceStatus, 1), 0);
    assert.equal(r.pci.core.isActive, false);
    assert.equal(r.driver.common(C.configMsixVector, 2), VIRTIO_MSI_NO_VECTOR);
    r.driver.setCommon(C.queueSelect, 2, 0);
    assert.equal(r.driver.common(C.queueEnable, 2), 0);
    assert.equal(r.driver.common(C.queueMsixVector, 2), VIRTIO_MSI_NO_VECTOR);
    // And it works again.
    const [q] = r.driver.init();
    q.addChain([{ writable: 8 }]);
    r.driver.kick(0, true);
    assert.equal(q.takeUsed()?.len, 8);
  });
});

describe("PciTransport MSI-X", () => {
  it("a vector outside the table reads back NO_VECTOR; NO_VECTOR delivers nothing", () => {
    const r = rig();
    r.driver.assignBars();
    const [q] = r.driver.init();
    r.driver.setCommon(C.queueSelect, 2, 0);
    r.driver.setCommon(C.queueMsixVector, 2, 7);
    assert.equal(r.driver.common(C.queueMsixVector, 2), VIRTIO_MSI_NO_VECTOR);
    r.msis.length = 0;
    q.addChain([{ writable: 4 }]);
    r.driver.kick(0, true);
    assert.equal(q.takeUsed()?.len, 4);
    assert.deepEqual(r.msis, []);
  });

  it("a masked vector is held in the PBA and delivered when unmasked", () => {
    const r = rig();
    r.driver.assignBars();
    const [q] = r.driver.init();
    r.driver.maskVector(1, true);
    r.msis.length = 0;
    q.addChain([{ writable: 4 }]);
    r.driver.kick(0, true);
    assert.equal(r.msis.length, 0);
    assert.equal(r.driver.barRead(PCI_MSIX_BAR, 0x800, 4) & 0b10, 0b10, "pending bit");
    r.driver.maskVector(1, false);
    assert.deepEqual(r.msis.map((m) => m.vector), [1]);
    assert.equal(r.driver.barRead(PCI_MSIX_BAR, 0x800, 4) & 0b10, 0);
  });

  it("the function mask holds every vector", () => {
    const r = rig();
    r.driver.assignBars();
    const [q] = r.driver.init();
    const ctrl = r.driver.cfgRead(r.driver.msixCap + 2, 2);
    r.driver.cfgWrite(r.driver.msixCap + 2, 2, ctrl | 0x4000);
    r.msis.length = 0;
    q.addChain([{ writable: 4 }]);
    r.driver.kick(0, true);
    assert.deepEqual(r.msis, []);
    r.driver.cfgWrite(r.driver.msixCap + 2, 2, ctrl & ~0x4000);
    assert.equal(r.msis.length, 1);
  });

  it("a configuration change raises the config vector and bumps config_generation", () => {
    const disk = new MemoryBackend(1 << 20);
    const blk = new BlockDevice({ backend: disk });
    const r = rig(blk);
    r.driver.assignBars();
    r.driver.init();
    const gen = r.driver.common(C.configGeneration, 1);
    Object.defineProperty(disk, "size", { value: 2 << 20 });
    r.msis.length = 0;
    blk.updateCapacity();
    assert.deepEqual(r.msis.map((m) => m.vector), [0]);
    assert.notEqual(r.driver.common(C.configGeneration, 1), gen);
    const cap = r.driver.readConfig(BlockConfigOffset.capacity, 4);
    assert.equal(new DataView(cap.buffer).getUint32(0, true), (2 << 20) / 512);
  });
});

describe("PciTransport INTx", () => {
  it("without MSI-X: the ISR bit, the line and the status bit, cleared by reading the ISR", () => {
    const r = rig();
    r.driver.assignBars();
    const [q] = r.driver.init({ msix: false });
    q.addChain([{ writable: 4 }]);
    r.driver.kick(0, true);
    assert.deepEqual(r.intx, [true]);
    assert.equal(r.driver.cfgRead(0x06, 2) & 0x8, 0x8, "interrupt status in the PCI status");
    assert.equal(r.driver.readIsr(), VIRTIO_INTR_VRING);
    assert.deepEqual(r.intx, [true, false]);
    assert.equal(r.driver.readIsr(), 0, "read to clear");
  });

  it("INTx disable in the command register keeps the line low", () => {
    const r = rig();
    r.driver.assignBars();
    const [q] = r.driver.init({ msix: false });
    r.driver.cfgWrite(0x04, 2, r.driver.cfgRead(0x04, 2) | 0x400);
    q.addChain([{ writable: 4 }]);
    r.driver.kick(0, true);
    assert.deepEqual(r.intx, []);
    assert.equal(r.pci.isr, VIRTIO_INTR_VRING);
  });

  it("a configuration change sets ISR bit 1", () => {
    const disk = new MemoryBackend(1 << 20);
    const blk = new BlockDevice({ backend: disk });
    const r = rig(blk);
    r.driver.assignBars();
    r.driver.init({ msix: false });
    blk.updateCapacity(); // unchanged size: nothing
    assert.equal(r.pci.isr, 0);
    Object.defineProperty(disk, "size", { value: 4 << 20 });
    blk.updateCapacity();
    assert.equal(r.driver.readIsr(), VIRTIO_INTR_CONFIG);
  });
});

describe("PciTransport legacy interface", () => {
  it("a legacy driver initialises a transitional block device through BAR0 and is served", () => {
    const disk = new MemoryBackend(1 << 20);
    disk.bytes.fill(0x42, 512, 1024);
    const r = rig(new BlockDevice({ backend: disk }), { transitional: true });
    r.driver.assignBars();
    const [q] = r.driver.init({ legacy: true, msix: false });
    assert.equal(r.pci.core.modern, false);
    assert.equal(r.driver.features & featureBit(VIRTIO_F_VERSION_1), 0n);
    const header = new Uint8Array(16);
    new DataView(header.buffer).setUint32(8, 1, true); // IN, sector 1
    q.addChain([{ readable: header }, { writable: 512 }, { writable: 1 }]);
    r.driver.kick(0, true);
    const used = q.takeUsed()!;
    assert.equal(used.len, 513);
    assert.equal(used.written[0], 0x42);
    assert.equal(r.driver.readIsr(), VIRTIO_INTR_VRING);
    // Device configuration through the legacy header (no MSI-X: at offset 20).
    const cap = r.driver.readConfig(BlockConfigOffset.capacity, 4);
    assert.equal(new DataView(cap.buffer).getUint32(0, true), 2048);
    assert.deepEqual(r.errors, []);
  });

  it("with MSI-X on, the legacy header grows by the two vector registers", () => {
    const r = rig(new BlockDevice({ backend: new MemoryBackend(1 << 20) }), { transitional: true });
    r.driver.assignBars();
    const [q] = r.driver.init({ legacy: true, msix: true });
    q.addChain([{ readable: new Uint8Array(16) }, { writable: 512 }, { writable: 1 }]);
    r.driver.kick(0, true);
    assert.equal(q.takeUsed()?.len, 513);
    assert.equal(r.msis.at(-1)?.vector, 1);
    const cap = r.driver.readConfig(BlockConfigOffset.capacity, 4);
    assert.equal(new DataView(cap.buffer).getUint32(0, true), 2048);
  });

  it("a driver cannot switch interfaces half way", () => {
    const r = rig(new BlockDevice({ backend: new MemoryBackend(1 << 20) }), { transitional: true });
    r.driver.assignBars();
    r.driver.init(); // modern
    expectErrors(r, ["InvalidRegister"], () => r.driver.barWrite(PCI_LEGACY_BAR, 18, 1, 1));
  });
});

describe("PciTransport PCI configuration access window", () => {
  it("reads and writes the common configuration through configuration space", () => {
    const r = rig();
    r.driver.assignBars();
    r.driver.probe();
    const cap = r.driver.structures.get(VirtioPciCapType.PCI_CFG)!.capOffset;
    // Read num_queues (16-bit at 0x12 of BAR4).
    r.driver.cfgWrite(cap + 4, 1, PCI_MODERN_BAR);
    r.driver.cfgWrite(cap + 8, 4, C.numQueues);
    r.driver.cfgWrite(cap + 12, 4, 2);
    assert.equal(r.driver.cfgRead(cap + 16, 2), 1);
    // Write the status through it.
    r.driver.cfgWrite(cap + 8, 4, C.deviceStatus);
    r.driver.cfgWrite(cap + 12, 4, 1);
    r.driver.cfgWrite(cap + 16, 1, DEVICE_ACKNOWLEDGE);
    assert.equal(r.driver.common(C.deviceStatus, 1), DEVICE_ACKNOWLEDGE);
    // Outside every structure: refused.
    r.driver.cfgWrite(cap + 8, 4, 0x3ff0);
    r.driver.cfgWrite(cap + 12, 4, 4);
    expectErrors(r, ["InvalidAccess"], () => r.driver.cfgRead(cap + 16, 4));
  });
});

describe("PciTransport shared memory", () => {
  it("each region of the window is a shared memory capability on BAR2", () => {
    const base = 0x2_0000_0000;
    const shm = new VirtioSharedMemoryList({
      hostAddr: 0n,
      guestAddr: base,
      len: 0x4000,
      kvmUserspaceMemoryRegionSlot: 2,
      regionList: [{ offset: 0, len: 0x2000 }, { offset: 0x2000, len: 0x2000 }],
      mmapRegion: new GuestRegion({ base, buffer: new ArrayBuffer(0x4000) }),
    });
    const r = rig(undefined, { shmRegions: shm });
    r.driver.probe();
    assert.deepEqual(
      r.driver.sharedMemory.map((s) => [s.bar, s.id, s.offset, s.length]),
      [[PCI_SHM_BAR, 0, 0, 0x2000], [PCI_SHM_BAR, 1, 0x2000, 0x2000]],
    );
    assert.equal(r.pci.bars().find((b) => b.index === PCI_SHM_BAR)?.size, 0x4000);
  });
});

describe("PciTransport per-queue reset and notification data", () => {
  it("queue_reset resets one queue, which comes back with queue_enable while DRIVER_OK", () => {
    const r = rig();
    r.driver.assignBars();
    const all = (() => {
      r.driver.probe();
      return r.driver.deviceFeatures();
    })();
    const [q] = r.driver.init({ features: all & ~(1n << 34n) });
    assert.notEqual(r.driver.features & featureBit(VIRTIO_F_RING_RESET), 0n);
    q.addChain([{ writable: 4 }]);
    r.driver.kick(0, true);
    assert.equal(q.takeUsed()?.len, 4);
    r.driver.setCommon(C.queueSelect, 2, 0);
    r.driver.setCommon(C.queueReset, 2, 1);
    assert.equal(r.driver.common(C.queueReset, 2), 0, "done by the time it is read");
    assert.equal(r.driver.common(C.queueEnable, 2), 0);
    // Set up again at other addresses and enable.
    r.driver.setCommon(C.queueSize, 2, 16);
    r.driver.setCommon(C.queueDescLo, 4, 0x200000);
    r.driver.setCommon(C.queueDriverLo, 4, 0x201000);
    r.driver.setCommon(C.queueDeviceLo, 4, 0x202000);
    r.driver.setCommon(C.queueEnable, 2, 1);
    assert.equal(r.driver.common(C.queueEnable, 2), 1);
    assert.equal(r.pci.queues[0].descTable, 0x200000);
    assert.equal(r.pci.core.isActive, true);
    assert.deepEqual(r.errors, []);
  });

  it("with NOTIFICATION_DATA a notification is 32 bits and carries next_off", () => {
    const r = rig();
    r.driver.assignBars();
    r.driver.probe();
    const [q] = r.driver.init({ features: r.driver.deviceFeatures() & ~(1n << 34n) });
    assert.notEqual(r.driver.features & featureBit(VIRTIO_F_NOTIFICATION_DATA), 0n);
    q.addChain([{ writable: 4 }]);
    r.driver.kick(0, true);
    assert.equal(q.takeUsed()?.len, 4);
    assert.equal(r.pci.core.notificationData(0), 1);
    expectErrors(r, ["InvalidAccess"], () => {
      r.driver.barWrite(PCI_MODERN_BAR, PciModernLayout.notify, 2, 0);
    });
  });
});

// The VMM's virtio-pci wiring (kvm/_pci_devices.ts) against a fake KVM: slots and BAR placement,
// notify ioeventfds that follow the guest's BAR programming (moves, decoding off, sizing), MSI-X
// routes pushed when a vector is unmasked with a new message and interrupts through each
// vector's irqfd eventfd, masking, INTx on the slot's GSI with a read-to-clear ISR, the legacy
// I/O BAR, and hostile accesses reported, never thrown. Real eventfds, no /dev/kvm.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { RngDevice } from "../../devices/rng.ts";
import { BlockDevice, MemoryBackend } from "../../devices/block.ts";
import { EventFd } from "../../sys/mod.ts";
import type { GsiRoute } from "../../kvm/abi.ts";
import { defaultIrqchipRoutes } from "../../kvm/vm.ts";
import { ConfigShadow, DEFAULT_PCI_LAYOUT } from "../../kvm/pci.ts";
import { PciDevices, type PciKvmOps, PciWiringError } from "../../kvm/_pci_devices.ts";
import {
  PCI_LEGACY_BAR,
  PCI_MODERN_BAR,
  PCI_MSIX_BAR,
  PciError,
  PciLegacyCfg,
  PciModernLayout,
} from "../../transport/pci.ts";
import { PciDriver } from "../../testing/pci_driver.ts";

interface Registration {
  addr: number;
  len: number;
  fd: number;
  datamatch: bigint;
  pio: boolean;
}

/** Records what KVM would be asked, refusing what KVM refuses (EEXIST, ENOENT). */
class FakeKvm implements PciKvmOps {
  readonly ioeventfds = new Map<string, Registration>();
  readonly irqfds: { fd: number; gsi: number }[] = [];
  readonly routings: GsiRoute[][] = [];
  readonly lines: [number, boolean][] = [];

  ioeventfd(
    addr: number,
    len: number,
    fd: number,
    datamatch: bigint,
    options: { deassign?: boolean; pio?: boolean },
  ): void {
    const pio = options.pio ?? false;
    const key = `${pio ? "pio" : "mmio"}:${addr.toString(16)}:${datamatch}`;
    if (options.deassign) {
      if (!this.ioeventfds.delete(key)) throw new Error("ENOENT");
      return;
    }
    if (this.ioeventfds.has(key)) throw new Error("EEXIST");
    this.ioeventfds.set(key, { addr, len, fd, datamatch, pio });
  }
  irqfd(fd: number, gsi: number): void {
    this.irqfds.push({ fd, gsi });
  }
  setGsiRouting(routes: readonly GsiRoute[]): void {
    this.routings.push([...routes]);
  }
  irqLine(gsi: number, level: boolean): void {
    this.lines.push([gsi, level]);
  }
  notifyAddresses(): string[] {
    return [...this.ioeventfds.values()].map((r) =>
      `${r.pio ? "port" : "mem"} 0x${r.addr.toString(16)}/${r.len}=${r.datamatch}`
    ).sort();
  }
  msiRoute(gsi: number): GsiRoute | undefined {
    return this.routings.at(-1)?.find((r) => r.gsi === gsi);
  }
}

function machine(options: { transitional?: boolean } = {}) {
  const memory = GuestMemory.create(32 << 20);
  const kvm = new FakeKvm();
  const errors: Error[] = [];
  const rng = new RngDevice();
  const block = new BlockDevice({ backend: new MemoryBackend(1 << 20), numQueues: 2 });
  const devices = new PciDevices([rng, block], {
    memory,
    layout: DEFAULT_PCI_LAYOUT,
    kvm,
    baseRoutes: defaultIrqchipRoutes(),
    transitional: options.transitional,
    onError: (e) => errors.push(e),
  });
  const cfg = (slot: number, reg: number, width: 1 | 2 | 4, value?: number): number => {
    const data = new Uint8Array(width);
    const v = new DataView(data.buffer);
    if (value !== undefined) {
      if (width === 4) v.setUint32(0, value >>> 0, true);
      else if (width === 2) v.setUint16(0, value, true);
      else data[0] = value;
      devices.config((slot << 15) | reg, true, data);
      return value;
    }
    devices.config((slot << 15) | reg, false, data);
    return width === 4 ? v.getUint32(0, true) : width === 2 ? v.getUint16(0, true) : data[0];
  };
  return { memory, kvm, errors, rng, block, devices, cfg };
}

function barAddress(devices: PciDevices, device: number, bar: number): number {
  return devices.transports[device].bars().find((b) => b.index === bar)!.address;
}

async function until(cond: () => boolean, what: string): Promise<void> {
  let ok = cond();
  for (let i = 0; i < 400 && !ok; i++) {
    await new Promise((r) => setTimeout(r, 5));
    ok = cond();
  }
  assert.ok(ok, what);
}

test("each device gets a slot, its BARs in the windows with decoding on, a notify ioeventfd per queue and an irqfd and MSI route per vector", () => {
  const m = machine();
  try {
    assert.deepEqual(m.devices.slots, [
      { slot: 1, intxGsi: 17, msiGsi: 24, vectors: 2 },
      { slot: 2, intxGsi: 18, msiGsi: 26, vectors: 3 },
    ]);
    assert.equal(m.cfg(1, 0, 4), 0x1044_1af4, "00:01.0 is virtio-rng");
    assert.equal(m.cfg(2, 0, 4), 0x1042_1af4, "00:02.0 is virtio-blk");
    assert.equal(m.cfg(1, 0x04, 2) & 3, 3, "I/O and memory decoding on, as firmware leaves them");
    assert.equal(m.cfg(2, 0x3c, 1), 18, "the Interrupt Line register names the _PRT's GSI");
    assert.equal(
      barAddress(m.devices, 0, PCI_MSIX_BAR),
      0xc000_0000,
      "MSI-X BAR in the 32-bit window",
    );
    assert.equal(barAddress(m.devices, 1, PCI_MSIX_BAR), 0xc000_1000);
    const rngModern = barAddress(m.devices, 0, PCI_MODERN_BAR);
    const blkModern = barAddress(m.devices, 1, PCI_MODERN_BAR);
    assert.equal(rngModern, 0x1_0000_0000, "64-bit BAR in the 64-bit window");
    assert.equal(blkModern, 0x1_0000_4000);
    const n = PciModernLayout.notify;
    assert.deepEqual(
      m.kvm.notifyAddresses(),
      [
        `mem 0x${(rngModern + n).toString(16)}/2=0`,
        `mem 0x${(blkModern + n).toString(16)}/2=0`,
        `mem 0x${(blkModern + n + PciModernLayout.notifyMultiplier).toString(16)}/2=1`,
      ].sort(),
    );
    assert.deepEqual(m.kvm.irqfds.map((i) => i.gsi), [24, 25, 26, 27, 28]);
    assert.equal(m.kvm.routings.length, 1);
    const routes = m.kvm.routings[0];
    assert.equal(routes.length, defaultIrqchipRoutes().length + 5);
    assert.ok(routes.some((r) => r.gsi === 0 && r.kind === "irqchip"), "the PIT's GSI 0 stays");
    assert.deepEqual(m.errors, []);
  } finally {
    m.devices.close();
  }
});

test("the notify ioeventfds follow the guest: decoding off, BAR sizing, a move", () => {
  const m = machine();
  try {
    const before = m.kvm.notifyAddresses();
    const reg = 0x10 + 4 * PCI_MODERN_BAR;
    // Linux sizes BARs with decoding off: all ones into both halves, read back, restore.
    const command = m.cfg(1, 0x04, 2);
    m.cfg(1, 0x04, 2, command & ~3);
    assert.equal(m.kvm.notifyAddresses().length, 2, "device 1's notification gone with decoding");
    const lo = m.cfg(1, reg, 4);
    const hi = m.cfg(1, reg + 4, 4);
    m.cfg(1, reg, 4, 0xffffffff);
    assert.equal(m.cfg(1, reg, 4), 0xffffc00c, "16 KiB, 64-bit, prefetchable");
    m.cfg(1, reg, 4, lo);
    m.cfg(1, reg + 4, 4, 0xffffffff);
    assert.equal(m.cfg(1, reg + 4, 4), 0xffffffff);
    m.cfg(1, reg + 4, 4, hi);
    m.cfg(1, 0x04, 2, command);
    assert.deepEqual(m.kvm.notifyAddresses(), before, "same place after sizing");
    // The guest moves the BAR below 4 GiB.
    m.cfg(1, reg, 4, 0xc010_0000);
    m.cfg(1, reg + 4, 4, 0);
    assert.equal(barAddress(m.devices, 0, PCI_MODERN_BAR), 0xc010_0000);
    assert.ok(m.kvm.notifyAddresses().includes(`mem 0xc0103000/2=0`));
    assert.equal(m.kvm.notifyAddresses().length, 3, "the old registration went away");
    // An MMIO exit at the new place reaches the device: the common config's num_queues.
    const data = new Uint8Array(2);
    assert.ok(m.devices.mmio(0xc010_0000 + 0x12, false, data));
    assert.equal(data[0], 1);
    assert.equal(m.devices.mmio(0x1_0000_0000 + 0x12, false, data), false, "nothing left there");
    assert.deepEqual(m.errors, []);
  } finally {
    m.devices.close();
  }
});

test("a BAR moved onto another device's notify address: the refused registration is reported, not thrown", () => {
  const m = machine();
  try {
    const reg = 0x10 + 4 * PCI_MODERN_BAR;
    const rngModern = barAddress(m.devices, 0, PCI_MODERN_BAR);
    m.cfg(2, reg + 4, 4, Math.floor(rngModern / 2 ** 32));
    m.cfg(2, reg, 4, rngModern % 2 ** 32);
    assert.ok(m.errors.some((e) => e instanceof PciWiringError && /EEXIST/.test(e.message)));
    // Queue 1 of the block device had no twin: it is registered there.
    assert.ok(m.kvm.notifyAddresses().includes(`mem 0x${(rngModern + 0x3004).toString(16)}/2=1`));
    // Moving it away again works and leaves nothing behind.
    m.errors.length = 0;
    m.cfg(2, reg, 4, 0x0010_0000);
    assert.deepEqual(m.errors, []);
    assert.equal(m.kvm.notifyAddresses().length, 3);
  } finally {
    m.devices.close();
  }
});

test("MSI-X: a vector's route is pushed when it is unmasked with a new message; interrupts go through its irqfd; masking holds them", async () => {
  const m = machine();
  try {
    const driver = new PciDriver(m.devices.transports[0], m.memory);
    const [q] = driver.init(); // MSI-X: vector v has data v; queue 0 uses vector 1
    assert.equal(m.kvm.routings.length, 3, "one push per vector unmasked with its message");
    assert.deepEqual(m.kvm.msiRoute(25), { gsi: 25, kind: "msi", address: 0xfee00000n, data: 1 });
    const irqfd = EventFd.fromFd(m.kvm.irqfds.find((i) => i.gsi === 25)!.fd);
    q.addChain([{ writable: 16 }]);
    driver.kick(0, true);
    await until(() => m.rng.bytesServed >= 16, "entropy served");
    await until(() => irqfd.read() === 1n, "vector 1 signalled its irqfd");
    q.takeAllUsed(); // moves used_event on (EVENT_IDX)
    // Masked: the interrupt waits in the PBA; unmasking with the same message pushes nothing.
    driver.maskVector(1, true);
    q.addChain([{ writable: 16 }]);
    driver.kick(0, true);
    await until(() => m.rng.bytesServed >= 32, "entropy served again");
    assert.equal(irqfd.read(), 0n, "nothing while masked");
    assert.equal(driver.barRead(PCI_MSIX_BAR, 0x800, 4) & 0b10, 0b10, "pending bit");
    driver.maskVector(1, false);
    assert.equal(m.kvm.routings.length, 3);
    assert.equal(irqfd.read(), 1n, "the pending interrupt on unmask");
    // A new message written while masked (as Linux moves an interrupt) is pushed on unmask.
    driver.maskVector(1, true);
    const table = (v: number, field: number, value: number) =>
      driver.barWrite(PCI_MSIX_BAR, 16 * v + field, 4, value);
    table(1, 0, 0xfee01000);
    table(1, 8, 0x41);
    assert.equal(m.kvm.routings.length, 3);
    driver.maskVector(1, false);
    assert.equal(m.kvm.routings.length, 4);
    assert.deepEqual(m.kvm.msiRoute(25), {
      gsi: 25,
      kind: "msi",
      address: 0xfee01000n,
      data: 0x41,
    });
    assert.deepEqual(m.errors, []);
  } finally {
    m.devices.close();
  }
});

test("INTx without MSI-X: the slot's GSI goes high on an interrupt and low when the ISR is read", async () => {
  const m = machine();
  try {
    const driver = new PciDriver(m.devices.transports[0], m.memory);
    const [q] = driver.init({ msix: false });
    q.addChain([{ writable: 8 }]);
    driver.kick(0, true);
    await until(() => m.kvm.lines.length > 0, "the line rose");
    assert.deepEqual(m.kvm.lines, [[17, true]]);
    const isr = new Uint8Array(1);
    const base = barAddress(m.devices, 0, PCI_MODERN_BAR);
    assert.ok(m.devices.mmio(base + PciModernLayout.isr, false, isr));
    assert.equal(isr[0], 1, "queue interrupt");
    assert.deepEqual(m.kvm.lines, [[17, true], [17, false]]);
  } finally {
    m.devices.close();
  }
});

test("a write to a queue's notify eventfd (what KVM does on the guest's kick) runs the queue", async () => {
  const m = machine();
  try {
    const driver = new PciDriver(m.devices.transports[0], m.memory);
    const [q] = driver.init();
    q.addChain([{ writable: 32 }]);
    const reg = [...m.kvm.ioeventfds.values()].find((r) =>
      r.addr === barAddress(m.devices, 0, PCI_MODERN_BAR) + PciModernLayout.notify
    )!;
    EventFd.fromFd(reg.fd).write(1n);
    await until(() => m.rng.bytesServed >= 32, "served after the ioeventfd fired");
  } finally {
    m.devices.close();
  }
});

test("transitional devices: an I/O BAR in the I/O window with a port ioeventfd per queue on Queue Notify", () => {
  const m = machine({ transitional: true });
  try {
    const io = barAddress(m.devices, 1, PCI_LEGACY_BAR);
    assert.ok(io >= 0x1000 && io < 0x10000);
    const at = (io + PciLegacyCfg.queueNotify).toString(16);
    const ports = m.kvm.notifyAddresses().filter((a) => a.startsWith("port"));
    assert.deepEqual(ports.filter((a) => a.includes(at)), [`port 0x${at}/2=0`, `port 0x${at}/2=1`]);
    assert.equal(m.cfg(2, 0x02, 2), 0x1001, "transitional block device id");
    // A legacy register read through the port window: the queue size of queue 0.
    const data = new Uint8Array(2);
    m.devices.io(io + PciLegacyCfg.queueSize, false, data);
    assert.ok(data[0] | data[1]);
    m.devices.io(0xfff0, false, data);
    assert.deepEqual([...data], [0xff, 0xff], "no BAR there");
  } finally {
    m.devices.close();
  }
});

test("hostile accesses through the VMM's paths are refused with typed errors, never thrown", () => {
  const m = machine();
  try {
    const msix = barAddress(m.devices, 0, PCI_MSIX_BAR);
    const modern = barAddress(m.devices, 0, PCI_MODERN_BAR);
    // MSI-X table: 3-byte, unaligned, past the table; common config: wrong width; an 8-byte read.
    m.devices.mmio(msix + 1, true, new Uint8Array(3));
    m.devices.mmio(msix + 2, true, new Uint8Array(4));
    m.devices.mmio(msix + 0x7f0, true, new Uint8Array(4));
    m.devices.mmio(modern + 0x14, true, new Uint8Array(4));
    m.devices.mmio(modern + 0x2000, false, new Uint8Array(8));
    // queue_msix_vector beyond the table reads back NO_VECTOR.
    const driver = new PciDriver(m.devices.transports[0], m.memory);
    driver.probe();
    driver.setCommon(0x1a, 2, 0x7ff);
    assert.equal(driver.common(0x1a, 2), 0xffff);
    // Configuration space: 3 bytes, unaligned, a far offset.
    m.devices.config((1 << 15) | 1, false, new Uint8Array(2));
    m.devices.config(2 ** 40, true, new Uint8Array(4));
    m.devices.mmio(DEFAULT_PCI_LAYOUT.ecamBase + (1 << 15) + 3, false, new Uint8Array(3));
    assert.ok(m.errors.length >= 7, m.errors.map((e) => e.message).join("\n"));
    assert.ok(m.errors.every((e) => e instanceof PciError || e.name === "PciBusError"));
    // A BAR written with garbage while decoding is on maps nothing outside the address space.
    m.cfg(1, 0x10 + 4 * (PCI_MODERN_BAR + 1), 4, 0xffffffff);
    assert.equal(m.kvm.notifyAddresses().length, 2, "device 1's notification unmapped, not thrown");
  } finally {
    m.devices.close();
  }
});

test("the vCPUs' copy of configuration space answers as the functions do, and follows writes and INTx", async () => {
  const m = machine();
  try {
    const shadow = new ConfigShadow(m.devices.configShadow);
    const a = new Uint8Array(4), b = new Uint8Array(4);
    for (const slot of [0, 1, 2, 3]) {
      const pass = slot === 0 ? undefined : m.devices.transports[slot - 1]?.configPassThrough;
      for (let reg = 0; reg < 256; reg += 4) {
        const offset = (slot << 15) | reg;
        if (pass !== undefined && reg === pass.offset) {
          assert.equal(shadow.read(offset, a), false, "the PCI_CFG window goes to the function");
          continue;
        }
        assert.equal(shadow.read(offset, a), true);
        m.devices.config(offset, false, b);
        assert.deepEqual([...a], [...b], `slot ${slot} register 0x${reg.toString(16)}`);
      }
    }
    const one = new Uint8Array(1);
    assert.ok(shadow.read((1 << 15) | (3 << 12), a) && a.every((x) => x === 0xff), "function 3");
    assert.ok(shadow.read((1 << 15) | 0x0b, one) && one[0] === 0xff, "class byte of device 1");
    assert.equal(shadow.read(0x10_0000, a), false, "bus 1 is the owner's business");
    assert.equal(shadow.read((1 << 15) | 0x100, a), false, "extended space too");
    // A write reaches the copy before the writer could read it back.
    m.devices.config((1 << 15) | 0x04, true, new Uint8Array([0x07, 0x04]));
    shadow.read((1 << 15) | 0x04, a);
    assert.deepEqual([a[0], a[1]], [0x07, 0x04], "command: I/O, memory, bus master, INTx disable");
    m.devices.config((1 << 15) | 0x04, true, new Uint8Array([0x07, 0x00]));
    // An interrupt without MSI-X shows in the status register's copy.
    const driver = new PciDriver(m.devices.transports[0], m.memory);
    const [q] = driver.init({ msix: false });
    q.addChain([{ writable: 8 }]);
    driver.kick(0, true);
    await until(() => m.kvm.lines.length > 0, "the line rose");
    shadow.read((1 << 15) | 0x06, one);
    assert.equal(one[0] & 0x08, 0x08, "interrupt status");
    driver.readIsr();
    shadow.read((1 << 15) | 0x06, one);
    assert.equal(one[0] & 0x08, 0);
  } finally {
    m.devices.close();
  }
});

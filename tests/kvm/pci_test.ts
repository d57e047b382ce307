// The machine's PCI side without KVM (kvm/pci.ts): the host bridge at 00:00.0, bus 0 through
// configuration mechanism #1 and ECAM, empty slots and functions reading all ones, the 0xCF8
// latch shared between vCPUs, malformed accesses refused (typed errors, never thrown), BAR
// placement in the windows, and INTx lines shared by several devices.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  BarAllocator,
  Conf1Ports,
  DEFAULT_PCI_LAYOUT,
  intxGsi,
  IntxLines,
  PciBus,
  type PciBusError,
  type PciFunction,
} from "../../kvm/pci.ts";

const u32 = (n: number) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0, true);
  return b;
};
const le = (b: Uint8Array) => b.reduceRight((acc, x) => acc * 256 + x, 0);

/** Mechanism #1 over a bus, as a vCPU sees it. */
function conf1(bus: PciBus, ports = new Conf1Ports()) {
  const config = (offset: number, write: boolean, data: Uint8Array) =>
    write ? bus.configWrite(offset, data) : bus.configRead(offset, data);
  return {
    ports,
    read(dev: number, reg: number, width: 1 | 2 | 4, fn = 0, busNo = 0): number {
      ports.access(0xcf8, true, u32(0x8000_0000 | busNo << 16 | dev << 11 | fn << 8 | reg), config);
      const data = new Uint8Array(width);
      ports.access(0xcfc + (reg & 3), false, data, config);
      return le(data);
    },
    write(dev: number, reg: number, width: 1 | 2 | 4, value: number): void {
      ports.access(0xcf8, true, u32(0x8000_0000 | dev << 11 | reg), config);
      const data = u32(value).subarray(0, width);
      ports.access(0xcfc + (reg & 3), true, data, config);
    },
  };
}

/** A function that records writes and answers reads with its offset. */
class Probe implements PciFunction {
  writes: [number, number[]][] = [];
  configRead(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = (offset + i) & 0xff;
  }
  configWrite(offset: number, data: Uint8Array): void {
    this.writes.push([offset, [...data]]);
  }
}

test("the host bridge sits at 00:00.0 with class 06/00; empty slots, functions and buses read all ones", () => {
  const bus = new PciBus();
  const c = conf1(bus);
  assert.equal(c.read(0, 0, 2), 0x1b36);
  assert.equal(c.read(0, 2, 2), 0x0008);
  assert.equal(
    c.read(0, 0x0a, 2),
    0x0600,
    "class: host bridge (what Linux's type 1 sanity check wants)",
  );
  assert.equal(c.read(0, 0x0e, 1), 0, "header type 0, single function");
  assert.equal(c.read(0, 0x10, 4), 0, "no BARs");
  assert.equal(c.read(5, 0, 4), 0xffffffff, "empty slot");
  assert.equal(c.read(0, 0, 4, 1), 0xffffffff, "function 1");
  assert.equal(c.read(0, 0, 4, 0, 1), 0xffffffff, "bus 1 does not exist");
  // Writes to the host bridge change nothing.
  c.write(0, 0x04, 2, 0);
  assert.equal(c.read(0, 0x04, 2), 0x0006);
});

test("ECAM and mechanism #1 reach the same registers of a device", () => {
  const bus = new PciBus();
  const probe = new Probe();
  bus.attach(3, probe);
  const c = conf1(bus);
  assert.equal(c.read(3, 0x40, 4), 0x43424140);
  assert.equal(c.read(3, 0x42, 2), 0x4342, "the data port's byte selects the register byte");
  const data = new Uint8Array(4);
  bus.ecamAccess((3 << 15) | 0x40, false, data);
  assert.equal(le(data), 0x43424140);
  // Extended space (ECAM only) reaches the function too.
  bus.ecamAccess((3 << 15) | 0x104, false, data);
  assert.equal(le(data), 0x07060504);
  c.write(3, 0x44, 2, 0xbeef);
  bus.ecamAccess((3 << 15) | 0x48, true, u32(0x12345678));
  assert.deepEqual(probe.writes, [[0x44, [0xef, 0xbe]], [0x48, [0x78, 0x56, 0x34, 0x12]]]);
});

test("the 0xCF8 latch takes 32-bit accesses only, keeps its defined bits, and is shared", () => {
  const latch = new Int32Array(new SharedArrayBuffer(4));
  const a = new Conf1Ports(latch);
  const b = new Conf1Ports(latch);
  const none = () => assert.fail("no data access expected");
  a.access(0xcf8, true, u32(0xffffffff), none);
  const back = new Uint8Array(4);
  b.access(0xcf8, false, back, none);
  assert.equal(
    le(back),
    0x80fffffc,
    "reserved bits 30:24 and 1:0 read as zero; vCPU b sees vCPU a's latch",
  );
  // Linux's type 2 probe and the 0xCF9 reset register are byte accesses: not the latch.
  a.access(0xcfb, true, new Uint8Array([1]), none);
  a.access(0xcf8, true, new Uint8Array([0]), none);
  assert.equal(a.address, 0x80fffffc);
  const byte = new Uint8Array(1);
  a.access(0xcf9, false, byte, none);
  assert.equal(byte[0], 0xff);
  assert.ok(Conf1Ports.owns(0xcf8) && Conf1Ports.owns(0xcff) && !Conf1Ports.owns(0xd00));
});

test("a data access with the enable bit clear, or crossing the window, goes nowhere", () => {
  const ports = new Conf1Ports();
  const calls: number[] = [];
  const config = (offset: number) => calls.push(offset);
  ports.access(0xcf8, true, u32(0x0000_0800), config); // device 1, enable bit clear
  const d = new Uint8Array(4);
  ports.access(0xcfc, false, d, config);
  assert.equal(le(d), 0xffffffff);
  ports.access(0xcf8, true, u32(0x8000_0800), config);
  ports.access(0xcff, false, new Uint8Array(2), config); // 2 bytes at the last port
  ports.access(0xcfe, false, new Uint8Array(4), config); // 4 bytes not at 0xCFC
  ports.access(0xcfd, true, new Uint8Array(2), config); // misaligned word
  assert.deepEqual(calls, []);
  ports.access(0xcfd, false, new Uint8Array(1), config);
  assert.deepEqual(calls, [(1 << 15) | 1]);
});

test("malformed configuration accesses are refused with a PciBusError, never thrown", () => {
  const errors: PciBusError[] = [];
  const bus = new PciBus({ onError: (e) => errors.push(e) });
  bus.attach(1, new Probe());
  const d3 = new Uint8Array(3);
  bus.configRead(1 << 15, d3);
  assert.deepEqual([...d3], [0xff, 0xff, 0xff]);
  bus.configRead((1 << 15) | 2, new Uint8Array(4)); // unaligned
  bus.configWrite(-4, new Uint8Array(4));
  bus.configRead(2 ** 60, new Uint8Array(4));
  const far = new Uint8Array(8);
  bus.ecamAccess(0x10_0000, false, far.subarray(0, 4)); // bus 1: outside a one-bus window
  bus.ecamAccess(1 << 15, false, far); // 8 bytes
  assert.deepEqual(errors.map((e) => e.code), Array(6).fill("InvalidAccess"));
  assert.deepEqual([...far], Array(8).fill(0xff));
  assert.throws(() => bus.attach(0, new Probe()), RangeError);
  assert.throws(() => bus.attach(32, new Probe()), RangeError);
  assert.throws(() => bus.attach(1, new Probe()), RangeError);
});

test("BARs are placed aligned to their size, each kind in its window", () => {
  const a = new BarAllocator(DEFAULT_PCI_LAYOUT);
  assert.equal(a.allocate("mem32", 0x1000), 0xc000_0000);
  assert.equal(a.allocate("mem32", 0x4000), 0xc000_4000);
  assert.equal(a.allocate("mem64", 0x4000), 0x1_0000_0000);
  assert.equal(a.allocate("io", 0x40), 0x1000);
  assert.equal(a.allocate("io", 0x100), 0x1100);
  assert.throws(() => a.allocate("mem32", 0x3000), RangeError);
  assert.throws(() => a.allocate("mem32", 0x4000_0000), RangeError, "bigger than the window");
  const small = new BarAllocator({ ...DEFAULT_PCI_LAYOUT, io: { base: 0x1000, size: 0x80 } });
  small.allocate("io", 0x40);
  small.allocate("io", 0x40);
  assert.throws(() => small.allocate("io", 0x40), RangeError);
});

test("INTx: pins rotate over eight lines; a shared line stays high while any device holds it", () => {
  assert.equal(intxGsi(1, 0, 16), 17);
  assert.equal(intxGsi(7, 0, 16), 23);
  assert.equal(intxGsi(8, 0, 16), 16);
  assert.equal(intxGsi(7, 3, 16), 18);
  const set: [number, boolean][] = [];
  const lines = new IntxLines((gsi, level) => set.push([gsi, level]));
  lines.drive(17, 1, true);
  lines.drive(17, 9, true);
  lines.drive(17, 1, false);
  assert.equal(lines.level(17), true);
  lines.drive(17, 9, false);
  lines.drive(17, 9, false);
  assert.deepEqual(set, [[17, true], [17, false]]);
});

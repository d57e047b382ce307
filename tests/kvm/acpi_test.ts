// The ACPI tables our VMM writes, parsed back the way a guest kernel walks them: RSDP → XSDT →
// FADT (→ DSDT) and MADT, with every checksum, and the DSDT's AML for COM1, the virtio-mmio
// devices and \_S5, down to the resource descriptor bytes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import {
  ACPI_RESET_VALUE,
  acpiChecksum,
  AcpiLayout,
  AcpiPort,
  dsdtAml,
  eisaId,
  IOAPIC_ADDRESS,
  LAPIC_ADDRESS,
  writeAcpiTables,
} from "../../kvm/acpi.ts";
import { BootParamsOffset, e820Map, E820Type, loadLinux } from "../../kvm/boot.ts";
import { DEFAULT_PCI_LAYOUT } from "../../kvm/pci.ts";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const DEVICES = [{ addr: 0xd0000000, irq: 5 }, { addr: 0xd0001000, irq: 6 }];

function tables(cpus: number, pci = false) {
  const memory = GuestMemory.create(2 << 20);
  const info = writeAcpiTables(memory, {
    cpus,
    virtioMmio: pci ? [] : DEVICES,
    pci: pci ? DEFAULT_PCI_LAYOUT : undefined,
  });
  const bytes = (addr: number, len: number) => memory.slice(addr, len);
  const sig = (addr: number, len = 4) => String.fromCharCode(...bytes(addr, len));
  const table = (addr: number) => {
    const len = memory.readU32(addr + 4);
    const t = bytes(addr, len);
    assert.equal(acpiChecksum(t), 0, `${sig(addr)} checksum`);
    return { sig: sig(addr), t, v: new DataView(t.buffer, t.byteOffset, t.byteLength) };
  };
  return { memory, info, bytes, sig, table };
}

function indexOf(hay: Uint8Array, needle: number[]): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

test("writeAcpiTables() chains RSDP → XSDT → FADT/MADT and FADT → DSDT, all checksummed", () => {
  const { info, bytes, sig, table, memory } = tables(2);
  assert.equal(info.rsdp, AcpiLayout.RSDP);
  assert.equal(info.rsdp % 16, 0);
  assert.equal(sig(info.rsdp, 8), "RSD PTR ");
  const rsdp = bytes(info.rsdp, 36);
  assert.equal(acpiChecksum(rsdp.subarray(0, 20)), 0, "RSDP checksum (first 20 bytes)");
  assert.equal(acpiChecksum(rsdp), 0, "RSDP extended checksum");
  assert.equal(rsdp[15], 2, "RSDP revision 2 (XSDT)");
  const xsdtAddr = Number(memory.readU64(info.rsdp + 24));
  const xsdt = table(xsdtAddr);
  assert.equal(xsdt.sig, "XSDT");
  const entries = (xsdt.t.length - 36) / 8;
  const pointed = Array.from({ length: entries }, (_, i) => xsdt.v.getBigUint64(36 + i * 8, true));
  const sigs = pointed.map((p) => table(Number(p)).sig);
  assert.deepEqual(sigs, ["FACP", "APIC"]);
  const fadt = table(Number(pointed[0]));
  assert.equal(fadt.t.length, 276);
  assert.equal(fadt.t[8], 6, "FADT revision 6");
  const flags = fadt.v.getUint32(112, true);
  assert.ok(flags & (1 << 20), "HW_REDUCED_ACPI");
  assert.ok(flags & (1 << 10), "RESET_REG_SUP");
  const bootArch = fadt.v.getUint16(109, true);
  assert.equal(bootArch & (1 << 1), 0, "no 8042 (Linux then skips the i8042 probe)");
  assert.ok(bootArch & (1 << 5), "no CMOS RTC");
  // Reset register and sleep control/status: byte-wide system I/O registers.
  for (
    const [at, port] of [[116, AcpiPort.RESET], [244, AcpiPort.SLEEP_CONTROL], [
      256,
      AcpiPort.SLEEP_STATUS,
    ]]
  ) {
    assert.equal(fadt.t[at], 1, "system I/O space");
    assert.equal(fadt.t[at + 1], 8, "8 bits");
    assert.equal(fadt.v.getBigUint64(at + 4, true), BigInt(port));
  }
  assert.equal(fadt.t[128], ACPI_RESET_VALUE);
  const dsdtAddr = Number(fadt.v.getBigUint64(140, true));
  assert.equal(fadt.v.getUint32(40, true), dsdtAddr, "DSDT and X_DSDT agree");
  assert.equal(table(dsdtAddr).sig, "DSDT");
  for (const t of info.tables) {
    assert.ok(t.addr >= AcpiLayout.RSDP && t.addr + t.length <= AcpiLayout.END, t.signature);
  }
});

test("the MADT lists one enabled local APIC per vCPU and the I/O APIC", () => {
  for (const cpus of [1, 2, 4]) {
    const { info, table } = tables(cpus);
    const madt = table(info.tables.find((t) => t.signature === "APIC")!.addr);
    assert.equal(madt.v.getUint32(36, true), LAPIC_ADDRESS);
    const apics: number[] = [];
    const ioapics: number[] = [];
    for (let o = 44; o < madt.t.length; o += madt.t[o + 1]) {
      assert.ok(madt.t[o + 1] >= 2, "entry length");
      if (madt.t[o] === 0) {
        assert.equal(madt.v.getUint32(o + 4, true) & 1, 1, "enabled");
        apics.push(madt.t[o + 3]);
      }
      if (madt.t[o] === 1) {
        ioapics.push(madt.v.getUint32(o + 4, true));
        assert.equal(madt.v.getUint32(o + 8, true), 0, "GSI base 0");
      }
    }
    assert.deepEqual(apics, Array.from({ length: cpus }, (_, i) => i));
    assert.deepEqual(ioapics, [IOAPIC_ADDRESS]);
  }
  assert.throws(() => tables(0), RangeError);
  assert.throws(() => tables(255), RangeError);
});

test("the DSDT declares COM1, each virtio-mmio device as LNRO0005 with its window and IRQ, and \\_S5", () => {
  const aml = dsdtAml(DEVICES);
  const text = new TextDecoder("latin1").decode(aml);
  // Scope (\_SB) holding the devices.
  assert.equal(aml[0], 0x10);
  assert.ok(text.includes("\\_SB_"));
  for (const name of ["COM1", "V000", "V001"]) {
    const at = text.indexOf(name);
    assert.ok(at > 2 && aml[at - 3] === 0x5b && aml[at - 2] === 0x82, `Device (${name})`);
  }
  // COM1: _HID EisaId("PNP0501"), IO(0x3f8, 8), IRQNoFlags {4}.
  assert.equal(eisaId("PNP0501"), 0x0105d041);
  assert.ok(indexOf(aml, [0x0c, 0x41, 0xd0, 0x05, 0x01]) > 0, "PNP0501");
  assert.ok(indexOf(aml, [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]) > 0, "IO 0x3f8");
  assert.ok(indexOf(aml, [0x22, 0x10, 0x00]) > 0, "IRQ 4");
  // Each device: _HID "LNRO0005", Memory32Fixed(RW, base, 4 KiB), Interrupt(edge, high) {irq}.
  assert.equal(text.split("LNRO0005\0").length - 1, DEVICES.length);
  for (const { addr, irq } of DEVICES) {
    const mem = [0x86, 0x09, 0x00, 0x01, ...u32(addr), ...u32(0x1000)];
    assert.ok(indexOf(aml, mem) > 0, `Memory32Fixed 0x${addr.toString(16)}`);
    assert.ok(indexOf(aml, [0x89, 0x06, 0x00, 0x03, 0x01, ...u32(irq)]) > 0, `Interrupt ${irq}`);
  }
  // Name (\_S5, Package (4) { 5, 0, 0, 0 }).
  assert.ok(
    indexOf(aml, [0x08, 0x5c, ...ascii("_S5_"), 0x12, 0x07, 0x04, 0x0a, 0x05, 0, 0, 0]) > 0,
  );
  // The scope's PkgLength covers exactly the devices (the \_S5 name follows it).
  const lead = aml[1];
  const extra = lead >> 6;
  let len = lead & 0x0f;
  for (let i = 0; i < extra; i++) len |= aml[2 + i] << (4 + 8 * i);
  assert.equal(1 + len, indexOf(aml, [0x08, 0x5c, ...ascii("_S5_")]));
});

test("many devices need multi-byte AML package lengths, which still cover the scope", () => {
  for (const [count, lengthBytes] of [[1, 2], [40, 2], [100, 3]]) {
    const many = Array.from(
      { length: count },
      (_, i) => ({ addr: 0xd0000000 + i * 0x1000, irq: 5 }),
    );
    const aml = dsdtAml(many);
    const lead = aml[1];
    const extra = lead >> 6;
    assert.equal(1 + extra, lengthBytes, `${count} devices`);
    let len = lead & 0x0f;
    for (let i = 0; i < extra; i++) len |= aml[2 + i] << (4 + 8 * i);
    assert.equal(1 + len, indexOf(aml, [0x08, 0x5c, ...ascii("_S5_")]), `${count} devices`);
    assert.equal(new TextDecoder("latin1").decode(aml).split("LNRO0005").length - 1, count);
  }
});

test("the tables sit in a reserved e820 range and the zero page points at the RSDP", () => {
  const map = e820Map(64 << 20);
  const covering = map.find((e) => e.addr <= AcpiLayout.RSDP && e.addr + e.size >= AcpiLayout.END);
  assert.equal(covering?.type, E820Type.RESERVED);
  assert.ok(
    !map.some((e) =>
      e.type === E820Type.RAM && e.addr < AcpiLayout.END && e.addr + e.size > AcpiLayout.RSDP
    ),
  );
  // A synthetic bzImage is enough to see the zero page field.
  const img = new Uint8Array(5 * 512 + 4096);
  const v = new DataView(img.buffer);
  v.setUint8(0x1f1, 4);
  v.setUint16(0x1fe, 0xaa55, true);
  v.setUint8(0x201, 0x6a);
  v.setUint32(0x202, 0x53726448, true);
  v.setUint16(0x206, 0x20f, true);
  v.setUint8(0x211, 1);
  v.setUint32(0x22c, 0x7fffffff, true);
  v.setUint16(0x236, 1, true);
  v.setUint32(0x238, 2047, true);
  v.setBigUint64(0x258, 0x1000000n, true);
  const memory = GuestMemory.create(64 << 20);
  const boot = loadLinux(memory, { kernel: img, cmdline: "x", acpiRsdp: AcpiLayout.RSDP });
  assert.equal(
    memory.readU64(boot.bootParams + BootParamsOffset.acpiRsdpAddr),
    BigInt(AcpiLayout.RSDP),
  );
});

function u32(n: number): number[] {
  return [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24];
}

function ascii(s: string): number[] {
  return [...s].map((c) => c.charCodeAt(0));
}

test("with PCI: the XSDT adds an MCFG for bus 0's ECAM window, and the DSDT declares PCI0 and MBRD", () => {
  const { info, table, memory } = tables(1, true);
  const xsdt = table(Number(memory.readU64(info.rsdp + 24)));
  const pointed = [0, 1, 2].map((i) => Number(xsdt.v.getBigUint64(36 + i * 8, true)));
  assert.deepEqual(pointed.map((p) => table(p).sig), ["FACP", "APIC", "MCFG"]);
  const mcfg = table(pointed[2]);
  assert.equal(mcfg.t.length, 36 + 8 + 16);
  assert.equal(mcfg.v.getBigUint64(44, true), BigInt(DEFAULT_PCI_LAYOUT.ecamBase));
  assert.deepEqual([mcfg.v.getUint16(52, true), mcfg.t[54], mcfg.t[55]], [0, 0, 0]);
  const dsdt = dsdtAml([], DEFAULT_PCI_LAYOUT);
  const name = (s: string) => [...s].map((c) => c.charCodeAt(0));
  for (const n of ["PCI0", "MBRD", "_PRT", "_CRS", "_BBN", "_SEG"]) {
    assert.ok(indexOf(dsdt, name(n)) > 0, `${n} in the DSDT`);
  }
  const id = (s: string) => {
    const v = eisaId(s);
    return [0x0c, v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >>> 24];
  };
  assert.ok(indexOf(dsdt, id("PNP0A08")) > 0 && indexOf(dsdt, id("PNP0A03")) > 0);
  assert.ok(indexOf(dsdt, id("PNP0C02")) > 0);
  // The 32-bit window: a DWord memory descriptor from 0xC0000000, 512 MiB long.
  assert.ok(indexOf(dsdt, [0x87, 23, 0, 0, 0x0c, 0x01, 0, 0, 0, 0, 0, 0, 0, 0xc0]) > 0);
  // _PRT: slot 1 INTA (0x0001FFFF, pin 0, source 0) is GSI 17.
  assert.ok(indexOf(dsdt, [0x0c, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x0a, 17]) > 0);
});

function iasl(): boolean {
  try {
    execFileSync("iasl", ["-v"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

test("with PCI: ACPICA's disassembler reads the DSDT back as we meant it", {
  skip: iasl() ? false : "skipped: no iasl (acpica-tools)",
}, () => {
  const dir = mkdtempSync(join(tmpdir(), "vt-acpi-"));
  try {
    const { info, memory } = tables(2, true);
    const dsdt = info.tables.find((t) => t.signature === "DSDT")!;
    writeFileSync(join(dir, "dsdt.dat"), memory.slice(dsdt.addr, dsdt.length));
    execFileSync("iasl", ["-d", join(dir, "dsdt.dat")], { stdio: "ignore" });
    const asl = readFileSync(join(dir, "dsdt.dsl"), "utf8").replace(/\s+/g, " ");
    for (
      const want of [
        'Device (PCI0) { Name (_HID, EisaId ("PNP0A08")',
        'Name (_CID, EisaId ("PNP0A03")',
        "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0x0000, // Granularity 0x0000, // Range Minimum 0x0000, // Range Maximum",
        "WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0x0000, // Granularity 0x1000, // Range Minimum 0xFFFF,",
        "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, 0x00000000, // Granularity 0xC0000000, // Range Minimum 0xDFFFFFFF,",
        "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite, 0x0000000000000000, // Granularity 0x0000000100000000, // Range Minimum 0x00000001FFFFFFFF,",
        "Name (_PRT, Package (0x7C)",
        "Package (0x04) { 0x001FFFFF, 0x03, Zero, 0x12 }",
        'Device (MBRD) { Name (_HID, EisaId ("PNP0C02")',
        "Memory32Fixed (ReadWrite, 0xE0000000, // Address Base 0x00100000, // Address Length",
      ]
    ) {
      assert.ok(asl.includes(want), `missing: ${want}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

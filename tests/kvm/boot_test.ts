// The bzImage loader, zero page, e820 map, page tables and GDT, against the real Debian kernel of
// the test guest (launcher/guest/build.sh) and synthetic headers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { GuestMemory } from "../../memory/guest_memory.ts";
import {
  BOOT_GDT,
  BootError,
  BootLayout,
  BootParamsOffset as O,
  BootSelector,
  e820Map,
  E820Type,
  EFER_LMA,
  EFER_LME,
  loadLinux,
  longModeRegs,
  longModeSregs,
  parseBzImage,
  virtioMmioCmdline,
  X86_CR0_PE,
  X86_CR0_PG,
  X86_CR4_PAE,
  XLF_KERNEL_64,
} from "../../kvm/boot.ts";
import type { KvmSregs } from "../../kvm/abi.ts";

const cacheRoot = process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache");
const DEBIAN_KERNEL = process.env.VT_GUEST_CACHE
  ? join(process.env.VT_GUEST_CACHE, "vmlinuz")
  : join(cacheRoot, "virtio-ts/guest/vmlinuz");

/** A minimal synthetic bzImage: boot sector + 4 setup sectors + a small "kernel". */
function synthetic(
  opts: { protocol?: number; magic?: number; loadflags?: number; xloadflags?: number } = {},
): Uint8Array {
  const img = new Uint8Array(5 * 512 + 4096);
  const v = new DataView(img.buffer);
  v.setUint8(O.setupSects, 4);
  v.setUint16(O.bootFlag, 0xaa55, true);
  v.setUint8(O.jump, 0xeb);
  v.setUint8(O.jump + 1, 0x6a); // header ends at 0x26c
  v.setUint32(O.header, opts.magic ?? 0x53726448, true);
  v.setUint16(O.version, opts.protocol ?? 0x20f, true);
  v.setUint8(O.loadflags, opts.loadflags ?? 1);
  v.setUint32(O.initrdAddrMax, 0x7fffffff, true);
  v.setUint32(O.kernelAlignment, 0x200000, true);
  v.setUint8(O.relocatableKernel, 1);
  v.setUint16(O.xloadflags, opts.xloadflags ?? XLF_KERNEL_64, true);
  v.setUint32(O.cmdlineSize, 2047, true);
  v.setBigUint64(O.prefAddress, 0x1000000n, true);
  v.setUint32(O.initSize, 0x200000, true);
  img.fill(0xcc, 5 * 512);
  return img;
}

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof BootError) return e.code;
    throw e;
  }
  return undefined;
}

test("parseBzImage() rejects a bad magic, an old protocol, a zImage and a 32-bit-only kernel", () => {
  assert.equal(code(() => parseBzImage(synthetic({ magic: 0x12345678 }))), "BadMagic");
  assert.equal(code(() => parseBzImage(synthetic({ protocol: 0x205 }))), "ProtocolTooOld");
  assert.equal(code(() => parseBzImage(synthetic({ loadflags: 0 }))), "Unsupported");
  assert.equal(code(() => parseBzImage(synthetic({ xloadflags: 0 }))), "Unsupported");
  assert.equal(code(() => parseBzImage(new Uint8Array(100))), "Truncated");
  const err = (() => {
    try {
      parseBzImage(synthetic({ protocol: 0x204 }));
    } catch (e) {
      return e as Error;
    }
  })();
  assert.match(err!.message, /2\.04 is older than 2\.06/);
});

test("parseBzImage() reads a synthetic header", () => {
  const img = synthetic();
  const { header, kernel, setupHeader } = parseBzImage(img);
  assert.equal(header.setupSects, 4);
  assert.equal(header.protocol, 0x20f);
  assert.equal(header.headerEnd, 0x26c);
  assert.equal(setupHeader.byteLength, 0x26c - 0x1f1);
  assert.equal(kernel.byteLength, 4096);
  assert.equal(kernel[0], 0xcc);
  assert.equal(header.prefAddress, 0x1000000);
  assert.equal(header.relocatable, true);
});

test("e820Map() describes low RAM, the BIOS holes and RAM above 1 MiB", () => {
  const map = e820Map(512 << 20);
  assert.deepEqual(map[0], { addr: 0, size: 0x9fc00, type: E820Type.RAM });
  assert.deepEqual(map.at(-1), { addr: 0x100000, size: (512 << 20) - 0x100000, type: 1 });
  for (let i = 1; i < map.length; i++) {
    assert.ok(map[i].addr >= map[i - 1].addr + map[i - 1].size, "sorted, no overlap");
  }
  assert.throws(() => e820Map(1 << 20), BootError);
  assert.throws(() => e820Map(4 * 2 ** 30), BootError);
});

test("virtioMmioCmdline() formats virtio_mmio.device= arguments", () => {
  assert.equal(
    virtioMmioCmdline([{ addr: 0xd0000000, irq: 5 }, { addr: 0xd0001000, size: 512, irq: 6 }]),
    "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=512@0xd0001000:6",
  );
});

function checkLoaded(path: string, expectVersion: RegExp) {
  const file = new Uint8Array(readFileSync(path));
  const ram = 256 << 20;
  const mem = GuestMemory.create(ram);
  const initrd = new Uint8Array(3 * 4096 + 5).fill(0x5a);
  const cmdline = "console=ttyS0 " + virtioMmioCmdline([{ addr: 0xd0000000, irq: 5 }]);
  const info = loadLinux(mem, { kernel: file, initrd, cmdline });
  const h = info.image.header;
  assert.match(h.kernelVersion, expectVersion);
  assert.ok(h.protocol >= 0x20c);
  const setupSects = file[0x1f1] === 0 ? 4 : file[0x1f1];
  const kernelOffset = (setupSects + 1) * 512;

  // The protected-mode kernel is at 1 MiB, byte for byte.
  assert.equal(info.image.kernel.byteLength, file.byteLength - kernelOffset);
  assert.deepEqual(mem.slice(0x100000, 4096), file.subarray(kernelOffset, kernelOffset + 4096));
  const last = info.image.kernel.byteLength - 64;
  assert.deepEqual(mem.slice(0x100000 + last, 64), file.subarray(kernelOffset + last));
  assert.equal(info.entry, 0x100200);

  // Zero page: the image's setup header, then the loader's fields.
  const zp = BootLayout.ZERO_PAGE;
  assert.equal(mem.readU32(zp + O.header), 0x53726448);
  assert.equal(mem.readU16(zp + O.version), h.protocol);
  assert.equal(mem.readU8(zp + O.setupSects), file[0x1f1]);
  assert.equal(mem.readU8(zp + O.typeOfLoader), 0xff);
  assert.equal(mem.readU8(zp + O.loadflags) & 1, 1);
  assert.equal(mem.readU16(zp + O.vidMode), 0xffff);
  assert.equal(mem.readU32(zp + O.code32Start), 0x100000);
  assert.equal(mem.readU32(zp + O.cmdLinePtr), BootLayout.CMDLINE);
  assert.equal(mem.readU8(zp + O.sentinel), 0);
  const cl = mem.slice(BootLayout.CMDLINE, cmdline.length + 1);
  assert.equal(new TextDecoder().decode(cl.subarray(0, cmdline.length)), cmdline);
  assert.equal(cl[cmdline.length], 0);

  // Initramfs: page-aligned, as high as allowed, above what the kernel needs, intact.
  const rdAddr = mem.readU32(zp + O.ramdiskImage);
  assert.equal(rdAddr, info.initrd.addr);
  assert.equal(mem.readU32(zp + O.ramdiskSize), initrd.byteLength);
  assert.equal(rdAddr % 4096, 0);
  assert.ok(rdAddr + initrd.byteLength <= ram);
  assert.ok(ram - (rdAddr + initrd.byteLength) < 4096);
  assert.ok(rdAddr >= Math.max(0x100000, h.prefAddress) + h.initSize);
  assert.deepEqual(mem.slice(rdAddr, initrd.byteLength), initrd);

  // e820 in the zero page.
  const n = mem.readU8(zp + O.e820Entries);
  assert.equal(n, info.e820.length);
  for (let i = 0; i < n; i++) {
    const at = zp + O.e820Table + i * 20;
    assert.equal(mem.readU64Number(at), info.e820[i].addr);
    assert.equal(mem.readU64Number(at + 8), info.e820[i].size);
    assert.equal(mem.readU32(at + 16), info.e820[i].type);
  }
  const ramTotal = info.e820.filter((e) => e.type === 1).reduce((a, e) => a + e.size, 0);
  assert.equal(ramTotal, 0x9fc00 + ram - 0x100000);

  // Page tables: identity map of 1 GiB with 2 MiB pages.
  assert.equal(mem.readU64(BootLayout.PML4), BigInt(BootLayout.PDPT) | 3n);
  assert.equal(mem.readU64(BootLayout.PML4 + 8), 0n);
  assert.equal(mem.readU64(BootLayout.PDPT), BigInt(BootLayout.PD) | 3n);
  for (const i of [0, 1, 255, 511]) {
    assert.equal(mem.readU64(BootLayout.PD + i * 8), BigInt(i * 0x200000) | 0x83n);
  }
  // Walk the tables for a few addresses like the MMU would.
  for (const va of [0, 0x100200, rdAddr + 123, 0x3fffffff]) {
    const pml4e = mem.readU64(BootLayout.PML4 + (Math.floor(va / 2 ** 39) & 511) * 8);
    const pdpte = mem.readU64(Number(pml4e & ~0xfffn) + (Math.floor(va / 2 ** 30) & 511) * 8);
    const pde = mem.readU64(Number(pdpte & ~0xfffn) + ((va >>> 21) & 511) * 8);
    assert.equal(pde & 0x81n, 0x81n, "present 2 MiB page");
    assert.equal(Number(pde & ~0x1fffffn) + (va & 0x1fffff), va, "identity");
  }

  // GDT: __BOOT_CS is a flat 64-bit code segment, __BOOT_DS flat data.
  const cs = mem.readU64(BootLayout.GDT + BootSelector.CODE);
  const ds = mem.readU64(BootLayout.GDT + BootSelector.DATA);
  assert.equal(cs, BOOT_GDT[2]);
  assert.equal((cs >> 53n) & 1n, 1n, "L");
  assert.equal((cs >> 47n) & 1n, 1n, "P");
  assert.equal((cs >> 40n) & 0xfn, 0xbn, "execute/read");
  assert.equal((ds >> 40n) & 0xfn, 0x3n, "read/write");
  assert.equal((ds >> 54n) & 1n, 1n, "D/B");
  return info;
}

const skipNoGuest = existsSync(DEBIAN_KERNEL)
  ? false
  : `skipped: ${DEBIAN_KERNEL} missing (run bash launcher/guest/build.sh)`;

test("loadLinux() lays out the Debian cloud kernel", { skip: skipNoGuest }, () => {
  const info = checkLoaded(DEBIAN_KERNEL, /^6\.1\./);
  assert.ok(info.image.header.relocatable);
});

test("loadLinux() refuses a too-long command line and an initramfs that does not fit", () => {
  const mem = GuestMemory.create(32 << 20);
  const kernel = synthetic();
  assert.equal(
    code(() => loadLinux(mem, { kernel, cmdline: "x".repeat(2048) })),
    "CommandLineTooLong",
  );
  // 32 MiB RAM; the kernel needs up to 16 MiB + 2 MiB; 15 MiB of initramfs cannot fit.
  assert.equal(
    code(() => loadLinux(mem, { kernel, cmdline: "", initrd: new Uint8Array(15 << 20) })),
    "NoRoom",
  );
  const info = loadLinux(mem, { kernel, cmdline: "", initrd: new Uint8Array(8 << 20) });
  assert.equal(info.initrd.addr, 24 << 20);
});

test("longModeRegs()/longModeSregs() give the 64-bit boot protocol entry state", () => {
  const mem = GuestMemory.create(32 << 20);
  const info = loadLinux(mem, { kernel: synthetic(), cmdline: "console=ttyS0" });
  const regs = longModeRegs(info);
  assert.equal(regs.rip, 0x100200n);
  assert.equal(regs.rsi, BigInt(BootLayout.ZERO_PAGE));
  assert.equal(regs.rflags, 2n);
  const seg = {
    base: 0n,
    limit: 0xffff,
    selector: 0,
    type: 3,
    present: 1,
    dpl: 0,
    db: 0,
    s: 1,
    l: 0,
    g: 0,
    avl: 0,
    unusable: 0,
  };
  const reset: KvmSregs = {
    cs: { ...seg, selector: 0xf000, base: 0xffff0000n, type: 11 },
    ds: seg,
    es: seg,
    fs: seg,
    gs: seg,
    ss: seg,
    tr: { ...seg, type: 11, s: 0 },
    ldt: { ...seg, type: 2, s: 0 },
    gdt: { base: 0n, limit: 0xffff },
    idt: { base: 0n, limit: 0xffff },
    cr0: 0x60000010n,
    cr2: 0n,
    cr3: 0n,
    cr4: 0n,
    cr8: 0n,
    efer: 0n,
    apicBase: 0xfee00900n,
    interruptBitmap: [0n, 0n, 0n, 0n],
  };
  const s = longModeSregs(reset, info);
  assert.equal(s.cs.selector, 0x10);
  assert.equal(s.cs.l, 1);
  assert.equal(s.cs.db, 0);
  assert.equal(s.ds.selector, 0x18);
  assert.equal(s.ss.selector, 0x18);
  assert.equal(s.tr.selector, 0x20);
  assert.equal(s.tr.s, 0);
  assert.equal(s.gdt.base, BigInt(BootLayout.GDT));
  assert.equal(s.gdt.limit, 39);
  assert.equal(s.cr3, BigInt(BootLayout.PML4));
  assert.equal(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
  assert.equal(s.cr4 & X86_CR4_PAE, X86_CR4_PAE);
  assert.equal(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
  assert.equal(s.apicBase, reset.apicBase);
});

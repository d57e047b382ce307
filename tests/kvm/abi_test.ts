// The KVM ABI constants of kvm/abi.ts against the kernel's own headers: ioctl numbers, structure
// sizes and offsets are printed by a small C program (compiled here when gcc/cc and the uapi
// headers exist) and compared. The encoding itself is also checked by hand for a few numbers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  _IO,
  _IOR,
  _IOW,
  _IOWR,
  decodeCpuid2,
  decodeRegs,
  decodeSregs,
  encodeCpuid2,
  encodeGsiRouting,
  encodeIoeventfd,
  encodeIrqfd,
  encodeMemoryRegion,
  encodeRegs,
  encodeSregs,
  KVM_IOEVENTFD_FLAG_DATAMATCH,
  KVM_IOEVENTFD_FLAG_PIO,
  KVM_IRQ_ROUTING_IRQCHIP,
  KVM_IRQ_ROUTING_MSI,
  KvmCap,
  KvmExit,
  KvmIoctl,
  KvmRunOffset,
  KvmSize,
} from "../../kvm/abi.ts";

test("_IO/_IOR/_IOW/_IOWR encode direction, size, type and number", () => {
  assert.equal(_IO(0xae, 0x80), 0xae80);
  assert.equal(_IOW(0xae, 0x46, 32), 0x4020ae46);
  assert.equal(_IOR(0xae, 0x81, 144), 0x8090ae81);
  assert.equal(_IOWR(0xae, 0x05, 8), 0xc008ae05);
  assert.throws(() => _IOW(0xae, 0x46, 1 << 14), RangeError);
});

test("well-known KVM ioctl numbers", () => {
  assert.equal(KvmIoctl.GET_API_VERSION, 0xae00);
  assert.equal(KvmIoctl.CREATE_VM, 0xae01);
  assert.equal(KvmIoctl.RUN, 0xae80);
  assert.equal(KvmIoctl.SET_USER_MEMORY_REGION, 0x4020ae46);
  assert.equal(KvmIoctl.GET_SUPPORTED_CPUID, 0xc008ae05);
  assert.equal(KvmIoctl.SET_CPUID2, 0x4008ae90);
  assert.equal(KvmIoctl.GET_SREGS, 0x8138ae83);
});

test("struct encoders put fields at their offsets", () => {
  const r = new DataView(encodeMemoryRegion(1, 0x100000, 0x2000, 0x7f0000001000n).buffer);
  assert.equal(r.getUint32(0, true), 1);
  assert.equal(r.getBigUint64(8, true), 0x100000n);
  assert.equal(r.getBigUint64(16, true), 0x2000n);
  assert.equal(r.getBigUint64(24, true), 0x7f0000001000n);
  const io = new DataView(encodeIoeventfd(0xd0000050, 4, 7, 2n).buffer);
  assert.equal(io.getBigUint64(0, true), 2n);
  assert.equal(io.getBigUint64(8, true), 0xd0000050n);
  assert.equal(io.getUint32(16, true), 4);
  assert.equal(io.getInt32(20, true), 7);
  assert.equal(io.getUint32(24, true), KVM_IOEVENTFD_FLAG_DATAMATCH);
  const irq = new DataView(encodeIrqfd(9, 5).buffer);
  assert.deepEqual([irq.getUint32(0, true), irq.getUint32(4, true), irq.byteLength], [9, 5, 32]);
});

test("encodeGsiRouting lays out irqchip and MSI entries", () => {
  const b = encodeGsiRouting([
    { gsi: 4, kind: "irqchip", irqchip: 2, pin: 4 },
    { gsi: 24, kind: "msi", address: 0x1_fee0_1000n, data: 0x4041 },
  ]);
  const v = new DataView(b.buffer);
  assert.equal(b.byteLength, 8 + 2 * 48);
  assert.equal(v.getUint32(0, true), 2);
  assert.deepEqual([0, 4, 16, 20].map((o) => v.getUint32(8 + o, true)), [4, 1, 2, 4]);
  assert.deepEqual(
    [0, 4, 16, 20, 24].map((o) => v.getUint32(56 + o, true)),
    [24, 2, 0xfee01000, 1, 0x4041],
  );
  assert.throws(() => encodeGsiRouting([{ gsi: -1, kind: "irqchip", irqchip: 0, pin: 0 }]));
});

test("kvm_regs, kvm_sregs and kvm_cpuid2 round-trip", () => {
  const regs = decodeRegs(encodeRegs({ rip: 0x100200n, rsi: 0x7000n, rflags: 2n }));
  assert.equal(regs.rip, 0x100200n);
  assert.equal(regs.rsi, 0x7000n);
  assert.equal(regs.rflags, 2n);
  assert.equal(regs.rax, 0n);
  const seg = {
    base: 0n,
    limit: 0xffffffff,
    selector: 0x10,
    type: 11,
    present: 1,
    dpl: 0,
    db: 0,
    s: 1,
    l: 1,
    g: 1,
    avl: 0,
    unusable: 0,
  };
  const sregs = {
    cs: seg,
    ds: { ...seg, selector: 0x18 },
    es: seg,
    fs: seg,
    gs: seg,
    ss: seg,
    tr: { ...seg, selector: 0x20 },
    ldt: seg,
    gdt: { base: 0x500n, limit: 39 },
    idt: { base: 0x520n, limit: 7 },
    cr0: 0x80000011n,
    cr2: 0n,
    cr3: 0x9000n,
    cr4: 0x20n,
    cr8: 0n,
    efer: 0x500n,
    apicBase: 0xfee00900n,
    interruptBitmap: [0n, 1n, 0n, 0n],
  };
  const bytes = encodeSregs(sregs);
  assert.equal(bytes.byteLength, 312);
  assert.deepEqual(decodeSregs(bytes), sregs);
  const entries = [{ function: 1, index: 0, flags: 0, eax: 1, ebx: 2, ecx: 0x80000000, edx: 4 }];
  const cpuid = encodeCpuid2(entries, 4);
  assert.equal(cpuid.byteLength, 8 + 4 * 40);
  assert.equal(decodeCpuid2(cpuid).length, 4);
  assert.deepEqual(decodeCpuid2(encodeCpuid2(entries)), entries);
});

// ---- against the C headers --------------------------------------------------------------------

const C_SOURCE = String.raw`
#include <stdio.h>
#include <stddef.h>
#include <linux/kvm.h>
#define P(name, v) printf("%s %llu\n", name, (unsigned long long)(v))
#define O(t, f) P(#t "." #f, offsetof(struct t, f))
int main(void) {
  P("GET_API_VERSION", KVM_GET_API_VERSION); P("CREATE_VM", KVM_CREATE_VM);
  P("CHECK_EXTENSION", KVM_CHECK_EXTENSION); P("GET_VCPU_MMAP_SIZE", KVM_GET_VCPU_MMAP_SIZE);
  P("GET_SUPPORTED_CPUID", KVM_GET_SUPPORTED_CPUID); P("CREATE_VCPU", KVM_CREATE_VCPU);
  P("SET_USER_MEMORY_REGION", KVM_SET_USER_MEMORY_REGION); P("SET_TSS_ADDR", KVM_SET_TSS_ADDR);
  P("SET_IDENTITY_MAP_ADDR", KVM_SET_IDENTITY_MAP_ADDR); P("CREATE_IRQCHIP", KVM_CREATE_IRQCHIP);
  P("IRQ_LINE", KVM_IRQ_LINE); P("IRQFD", KVM_IRQFD); P("CREATE_PIT2", KVM_CREATE_PIT2);
  P("IOEVENTFD", KVM_IOEVENTFD); P("RUN", KVM_RUN); P("GET_REGS", KVM_GET_REGS);
  P("SET_REGS", KVM_SET_REGS); P("GET_SREGS", KVM_GET_SREGS); P("SET_SREGS", KVM_SET_SREGS);
  P("GET_LAPIC", KVM_GET_LAPIC); P("SET_LAPIC", KVM_SET_LAPIC); P("SET_CPUID2", KVM_SET_CPUID2);
  P("SET_SIGNAL_MASK", KVM_SET_SIGNAL_MASK); P("SET_GSI_ROUTING", KVM_SET_GSI_ROUTING);
  P("size.irqRouting", sizeof(struct kvm_irq_routing));
  P("size.irqRoutingEntry", sizeof(struct kvm_irq_routing_entry));
  O(kvm_irq_routing_entry, u.irqchip.irqchip); O(kvm_irq_routing_entry, u.irqchip.pin);
  O(kvm_irq_routing_entry, u.msi.address_lo); O(kvm_irq_routing_entry, u.msi.address_hi);
  O(kvm_irq_routing_entry, u.msi.data); O(kvm_irq_routing_entry, type);
  P("routing.IRQCHIP", KVM_IRQ_ROUTING_IRQCHIP); P("routing.MSI", KVM_IRQ_ROUTING_MSI);
  P("cap.IRQ_ROUTING", KVM_CAP_IRQ_ROUTING); P("ioeventfd.PIO", KVM_IOEVENTFD_FLAG_PIO);
  P("size.signalMask", sizeof(struct kvm_signal_mask));
  P("size.userspaceMemoryRegion", sizeof(struct kvm_userspace_memory_region));
  P("size.irqLevel", sizeof(struct kvm_irq_level)); P("size.irqfd", sizeof(struct kvm_irqfd));
  P("size.ioeventfd", sizeof(struct kvm_ioeventfd));
  P("size.pitConfig", sizeof(struct kvm_pit_config)); P("size.regs", sizeof(struct kvm_regs));
  P("size.segment", sizeof(struct kvm_segment)); P("size.dtable", sizeof(struct kvm_dtable));
  P("size.sregs", sizeof(struct kvm_sregs)); P("size.cpuid2", sizeof(struct kvm_cpuid2));
  P("size.cpuidEntry2", sizeof(struct kvm_cpuid_entry2));
  P("size.lapicState", sizeof(struct kvm_lapic_state));
  O(kvm_run, request_interrupt_window); O(kvm_run, immediate_exit); O(kvm_run, exit_reason);
  O(kvm_run, ready_for_interrupt_injection); O(kvm_run, if_flag); O(kvm_run, flags);
  O(kvm_run, cr8); O(kvm_run, apic_base); O(kvm_run, io.direction); O(kvm_run, io.size);
  O(kvm_run, io.port); O(kvm_run, io.count); O(kvm_run, io.data_offset);
  O(kvm_run, mmio.phys_addr); O(kvm_run, mmio.data); O(kvm_run, mmio.len);
  O(kvm_run, mmio.is_write); O(kvm_run, fail_entry.hardware_entry_failure_reason);
  O(kvm_run, fail_entry.cpu); O(kvm_run, internal.suberror); O(kvm_run, internal.ndata);
  O(kvm_run, internal.data); O(kvm_run, system_event.type); O(kvm_run, ex.exception);
  O(kvm_run, ex.error_code);
  O(kvm_ioeventfd, datamatch); O(kvm_ioeventfd, addr); O(kvm_ioeventfd, len);
  O(kvm_ioeventfd, fd); O(kvm_ioeventfd, flags); O(kvm_irqfd, fd); O(kvm_irqfd, gsi);
  O(kvm_irqfd, flags); O(kvm_sregs, gdt); O(kvm_sregs, idt); O(kvm_sregs, cr0);
  O(kvm_sregs, efer); O(kvm_sregs, apic_base); O(kvm_sregs, interrupt_bitmap);
  O(kvm_segment, selector); O(kvm_segment, type); O(kvm_segment, unusable);
  O(kvm_regs, rip); O(kvm_regs, rflags); O(kvm_regs, rsi);
  P("exit.IO", KVM_EXIT_IO); P("exit.HLT", KVM_EXIT_HLT); P("exit.MMIO", KVM_EXIT_MMIO);
  P("exit.SHUTDOWN", KVM_EXIT_SHUTDOWN); P("exit.FAIL_ENTRY", KVM_EXIT_FAIL_ENTRY);
  P("exit.INTR", KVM_EXIT_INTR); P("exit.INTERNAL_ERROR", KVM_EXIT_INTERNAL_ERROR);
  P("exit.SYSTEM_EVENT", KVM_EXIT_SYSTEM_EVENT); P("exit.EXCEPTION", KVM_EXIT_EXCEPTION);
  P("cap.IRQCHIP", KVM_CAP_IRQCHIP); P("cap.USER_MEMORY", KVM_CAP_USER_MEMORY);
  P("cap.SET_TSS_ADDR", KVM_CAP_SET_TSS_ADDR); P("cap.PIT2", KVM_CAP_PIT2);
  P("cap.IOEVENTFD", KVM_CAP_IOEVENTFD); P("cap.IRQFD", KVM_CAP_IRQFD);
  P("cap.SET_IDENTITY_MAP_ADDR", KVM_CAP_SET_IDENTITY_MAP_ADDR);
  P("cap.IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT); P("cap.EXT_CPUID", KVM_CAP_EXT_CPUID);
  P("cap.NR_MEMSLOTS", KVM_CAP_NR_MEMSLOTS);
  P("cap.TSC_DEADLINE_TIMER", KVM_CAP_TSC_DEADLINE_TIMER);
  P("ioeventfd.DATAMATCH", KVM_IOEVENTFD_FLAG_DATAMATCH);
  return 0;
}
`;

function compiler(): string | undefined {
  if (!existsSync("/usr/include/linux/kvm.h")) return undefined;
  for (const cc of ["cc", "gcc", "clang"]) {
    try {
      execFileSync(cc, ["--version"], { stdio: "ignore" });
      return cc;
    } catch {
      // next
    }
  }
  return undefined;
}

const cc = compiler();

test("kvm/abi.ts matches <linux/kvm.h> (C program)", {
  skip: cc === undefined ? "skipped: no C compiler or no /usr/include/linux/kvm.h" : false,
}, () => {
  const dir = mkdtempSync(join(tmpdir(), "vt-kvm-abi-"));
  try {
    writeFileSync(join(dir, "abi.c"), C_SOURCE);
    execFileSync(cc!, ["-o", join(dir, "abi"), join(dir, "abi.c")]);
    const out = execFileSync(join(dir, "abi"), { encoding: "utf8" });
    const c = new Map(
      out.trim().split("\n").map((l) => {
        const [k, v] = l.split(" ");
        return [k, Number(v)] as const;
      }),
    );
    for (const [name, value] of Object.entries(KvmIoctl)) {
      assert.equal(value, c.get(name), `ioctl ${name}`);
    }
    for (const [name, value] of Object.entries(KvmSize)) {
      if (name === "u64") continue;
      assert.equal(value, c.get(`size.${name}`), `sizeof ${name}`);
    }
    const runFields: Record<string, string> = {
      requestInterruptWindow: "request_interrupt_window",
      immediateExit: "immediate_exit",
      exitReason: "exit_reason",
      readyForInterruptInjection: "ready_for_interrupt_injection",
      ifFlag: "if_flag",
      flags: "flags",
      cr8: "cr8",
      apicBase: "apic_base",
      ioDirection: "io.direction",
      ioSize: "io.size",
      ioPort: "io.port",
      ioCount: "io.count",
      ioDataOffset: "io.data_offset",
      mmioPhysAddr: "mmio.phys_addr",
      mmioData: "mmio.data",
      mmioLen: "mmio.len",
      mmioIsWrite: "mmio.is_write",
      failEntryReason: "fail_entry.hardware_entry_failure_reason",
      failEntryCpu: "fail_entry.cpu",
      internalSuberror: "internal.suberror",
      internalNdata: "internal.ndata",
      internalData: "internal.data",
      systemEventType: "system_event.type",
      exException: "ex.exception",
      exErrorCode: "ex.error_code",
    };
    for (const [ts, cName] of Object.entries(runFields)) {
      const value = KvmRunOffset[ts as keyof typeof KvmRunOffset];
      assert.equal(value, c.get(`kvm_run.${cName}`), `kvm_run.${cName}`);
    }
    const fixed: Record<string, number> = {
      "kvm_ioeventfd.datamatch": 0,
      "kvm_ioeventfd.addr": 8,
      "kvm_ioeventfd.len": 16,
      "kvm_ioeventfd.fd": 20,
      "kvm_ioeventfd.flags": 24,
      "kvm_irqfd.fd": 0,
      "kvm_irqfd.gsi": 4,
      "kvm_irqfd.flags": 8,
      "kvm_sregs.gdt": 192,
      "kvm_sregs.idt": 208,
      "kvm_sregs.cr0": 224,
      "kvm_sregs.efer": 264,
      "kvm_sregs.apic_base": 272,
      "kvm_sregs.interrupt_bitmap": 280,
      "kvm_segment.selector": 12,
      "kvm_segment.type": 14,
      "kvm_segment.unusable": 22,
      "kvm_regs.rip": 128,
      "kvm_regs.rflags": 136,
      "kvm_regs.rsi": 32,
      "ioeventfd.DATAMATCH": KVM_IOEVENTFD_FLAG_DATAMATCH,
      "ioeventfd.PIO": KVM_IOEVENTFD_FLAG_PIO,
      "kvm_irq_routing_entry.type": 4,
      "kvm_irq_routing_entry.u.irqchip.irqchip": 16,
      "kvm_irq_routing_entry.u.irqchip.pin": 20,
      "kvm_irq_routing_entry.u.msi.address_lo": 16,
      "kvm_irq_routing_entry.u.msi.address_hi": 20,
      "kvm_irq_routing_entry.u.msi.data": 24,
      "routing.IRQCHIP": KVM_IRQ_ROUTING_IRQCHIP,
      "routing.MSI": KVM_IRQ_ROUTING_MSI,
    };
    for (const [name, value] of Object.entries(fixed)) assert.equal(value, c.get(name), name);
    for (const [name, value] of Object.entries(KvmExit)) {
      if (c.has(`exit.${name}`)) assert.equal(value, c.get(`exit.${name}`), `exit ${name}`);
    }
    for (const [name, value] of Object.entries(KvmCap)) {
      if (c.has(`cap.${name}`)) assert.equal(value, c.get(`cap.${name}`), `cap ${name}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

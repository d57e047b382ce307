// Exit decoding and dispatch over a fake kvm_run buffer, the legacy port I/O, the vCPU mailbox,
// and the vCPU set-up helpers that need no KVM.
import { test } from "node:test";
import assert from "node:assert/strict";
import { KvmExit, KvmRunOffset as R, KvmSystemEvent } from "../../kvm/abi.ts";
import { decodeExit, dispatchExit, LegacyIo, VcpuError } from "../../kvm/exits.ts";
import { ACPI_RESET_VALUE, AcpiPort } from "../../kvm/acpi.ts";
import { AccessKind, Mailbox, MAILBOX_SIZE } from "../../kvm/_mailbox.ts";
import {
  APIC_MODE_EXTINT,
  CPUID_1_ECX_TSC_DEADLINE,
  CPUID_1_EDX_HTT,
  guestCpuid,
  lvtWithMode,
} from "../../kvm/vm.ts";

const RUN_SIZE = 4096;

function fakeRun(reason: number, fill: (v: DataView, run: Uint8Array) => void = () => {}) {
  const run = new Uint8Array(RUN_SIZE);
  const v = new DataView(run.buffer);
  v.setUint32(R.exitReason, reason, true);
  fill(v, run);
  return run;
}

function ioRun(port: number, out: boolean, bytes: number[], size = 1) {
  return fakeRun(KvmExit.IO, (v, run) => {
    v.setUint8(R.ioDirection, out ? 1 : 0);
    v.setUint8(R.ioSize, size);
    v.setUint16(R.ioPort, port, true);
    v.setUint32(R.ioCount, bytes.length / size, true);
    v.setBigUint64(R.ioDataOffset, 0x1000n - 64n, true);
    run.set(bytes, 4096 - 64);
  });
}

function handlers() {
  const out: number[] = [];
  const irqs: [number, boolean][] = [];
  const mmio: [number, boolean, number[]][] = [];
  const io = new LegacyIo({ output: (b) => out.push(b), setIrq: (i, l) => irqs.push([i, l]) });
  return {
    out,
    irqs,
    mmio,
    h: {
      io,
      mmio: (addr: number, write: boolean, data: Uint8Array) => {
        mmio.push([addr, write, [...data]]);
        if (!write) data.set([0x76, 0x69, 0x72, 0x74].slice(0, data.length));
      },
    },
  };
}

test("decodeExit() reads KVM_EXIT_IO and the data at data_offset", () => {
  const run = ioRun(0x3f8, true, [0x41]);
  const exit = decodeExit(run);
  assert.equal(exit.kind, "io");
  if (exit.kind !== "io") return;
  assert.equal(exit.port, 0x3f8);
  assert.equal(exit.write, true);
  assert.equal(exit.size, 1);
  assert.equal(exit.count, 1);
  assert.deepEqual([...exit.data], [0x41]);
  assert.equal(exit.data.byteOffset, 4096 - 64, "aliases kvm_run");
});

test("dispatchExit() prints COM1 output, including rep outsb", () => {
  const { h, out } = handlers();
  assert.equal(dispatchExit(decodeExit(ioRun(0x3f8, true, [0x6f, 0x6b])), h), undefined);
  assert.deepEqual(out, [0x6f, 0x6b]);
});

test("dispatchExit() answers port reads in place: LSR, unknown ports", () => {
  const { h } = handlers();
  const lsr = ioRun(0x3fd, false, [0]);
  dispatchExit(decodeExit(lsr), h);
  assert.equal(lsr[4096 - 64] & 0x60, 0x60);
  const pci = ioRun(0xcf8, false, [0, 0, 0, 0], 4);
  dispatchExit(decodeExit(pci), h);
  assert.deepEqual([...pci.subarray(4096 - 64, 4096 - 60)], [0xff, 0xff, 0xff, 0xff]);
  assert.equal(dispatchExit(decodeExit(ioRun(0x80, true, [0x12])), h), undefined);
});

test("the i8042 is absent: its status and data ports read all ones, as Linux's probe expects", () => {
  // Linux's i8042_flush() gives up on a status port whose "output buffer full" bit never
  // clears ("No controller found"); a status of 0 instead makes it wait ~1.4 s for replies.
  const { h } = handlers();
  for (const port of [0x64, 0x60]) {
    const r = ioRun(port, false, [0x00]);
    dispatchExit(decodeExit(r), h);
    assert.equal(r[4096 - 64], 0xff, `port 0x${port.toString(16)}`);
  }
});

test("dispatchExit() turns i8042 0xFE into a reset", () => {
  const { h } = handlers();
  assert.equal(dispatchExit(decodeExit(ioRun(0x64, true, [0xfe])), h), "reset");
});

test("dispatchExit() turns the ACPI reset register and S5 sleep into reset and power off", () => {
  {
    const { h } = handlers();
    assert.equal(dispatchExit(decodeExit(ioRun(AcpiPort.RESET, true, [0x02])), h), undefined);
    assert.equal(
      dispatchExit(decodeExit(ioRun(AcpiPort.RESET, true, [ACPI_RESET_VALUE])), h),
      "reset",
    );
  }
  const { h } = handlers();
  // SLP_TYP without SLP_EN, and S3 with SLP_EN, do nothing here.
  assert.equal(
    dispatchExit(decodeExit(ioRun(AcpiPort.SLEEP_CONTROL, true, [5 << 2])), h),
    undefined,
  );
  assert.equal(
    dispatchExit(decodeExit(ioRun(AcpiPort.SLEEP_CONTROL, true, [0x20 | (3 << 2)])), h),
    undefined,
  );
  const status = ioRun(AcpiPort.SLEEP_STATUS, false, [0xaa]);
  dispatchExit(decodeExit(status), h);
  assert.equal(status[4096 - 64], 0);
  assert.equal(
    dispatchExit(decodeExit(ioRun(AcpiPort.SLEEP_CONTROL, true, [0x20 | (5 << 2)])), h),
    "poweroff",
  );
});

test("dispatchExit() raises COM1's IRQ 4 through setIrq", () => {
  const { h, irqs } = handlers();
  dispatchExit(decodeExit(ioRun(0x3f9, true, [0x02])), h); // IER.THRI
  assert.deepEqual(irqs, [[4, true]]);
});

test("dispatchExit() forwards MMIO reads and writes with their data", () => {
  const { h, mmio } = handlers();
  const read = fakeRun(KvmExit.MMIO, (v) => {
    v.setBigUint64(R.mmioPhysAddr, 0xd0000000n, true);
    v.setUint32(R.mmioLen, 4, true);
    v.setUint8(R.mmioIsWrite, 0);
  });
  assert.equal(dispatchExit(decodeExit(read), h), undefined);
  assert.equal(new DataView(read.buffer).getUint32(R.mmioData, true), 0x74726976);
  const write = fakeRun(KvmExit.MMIO, (v) => {
    v.setBigUint64(R.mmioPhysAddr, 0xd0000070n, true);
    v.setUint32(R.mmioLen, 4, true);
    v.setUint8(R.mmioIsWrite, 1);
    v.setUint32(R.mmioData, 0x0f, true);
  });
  dispatchExit(decodeExit(write), h);
  assert.deepEqual(mmio, [[0xd0000000, false, [0, 0, 0, 0]], [0xd0000070, true, [0x0f, 0, 0, 0]]]);
});

test("dispatchExit() maps HLT, SHUTDOWN and system events to stop reasons", () => {
  const { h } = handlers();
  assert.equal(dispatchExit(decodeExit(fakeRun(KvmExit.HLT)), h), "halt");
  assert.equal(dispatchExit(decodeExit(fakeRun(KvmExit.SHUTDOWN)), h), "reset");
  assert.equal(dispatchExit(decodeExit(fakeRun(KvmExit.INTR)), h), undefined);
  const ev = (t: number) =>
    fakeRun(KvmExit.SYSTEM_EVENT, (v) => v.setUint32(R.systemEventType, t, true));
  assert.equal(dispatchExit(decodeExit(ev(KvmSystemEvent.SHUTDOWN)), h), "poweroff");
  assert.equal(dispatchExit(decodeExit(ev(KvmSystemEvent.RESET)), h), "reset");
  assert.equal(dispatchExit(decodeExit(ev(KvmSystemEvent.CRASH)), h), "crash");
});

test("dispatchExit() throws typed errors for FAIL_ENTRY, INTERNAL_ERROR and unknown exits", () => {
  const { h } = handlers();
  const fail = fakeRun(KvmExit.FAIL_ENTRY, (v) => {
    v.setBigUint64(R.failEntryReason, 0x80000021n, true);
    v.setUint32(R.failEntryCpu, 1, true);
  });
  assert.throws(() => dispatchExit(decodeExit(fail), h), (e: unknown) => {
    assert.ok(e instanceof VcpuError);
    assert.equal(e.code, "FailEntry");
    assert.equal(e.detail, 0x80000021n);
    assert.match(e.message, /0x80000021 on CPU 1/);
    return true;
  });
  const internal = fakeRun(KvmExit.INTERNAL_ERROR, (v) => {
    v.setUint32(R.internalSuberror, 1, true);
    v.setUint32(R.internalNdata, 2, true);
    v.setBigUint64(R.internalData, 0xdeadn, true);
  });
  assert.throws(() => dispatchExit(decodeExit(internal), h), /suberror 1 \(data 0xdead 0x0\)/);
  assert.throws(() => dispatchExit(decodeExit(fakeRun(99)), h), (e: unknown) => {
    return e instanceof VcpuError && e.code === "UnhandledExit" && e.detail === 99n;
  });
});

test("decodeExit() refuses I/O data outside the mapping", () => {
  const bad = fakeRun(KvmExit.IO, (v) => {
    v.setUint8(R.ioSize, 4);
    v.setUint32(R.ioCount, 4, true);
    v.setBigUint64(R.ioDataOffset, 4090n, true);
  });
  assert.throws(() => decodeExit(bad), RangeError);
});

test("dispatchExit() offers port I/O to the pio handler first (PCI), the legacy ports otherwise", () => {
  const { h } = handlers();
  const claimed: number[] = [];
  const withPci = {
    ...h,
    pio: (port: number, _write: boolean, data: Uint8Array) => {
      if (port !== 0xcfc) return false;
      claimed.push(port);
      data.fill(0x42);
      return true;
    },
  };
  const cfc = ioRun(0xcfc, false, [0, 0, 0, 0], 4);
  dispatchExit(decodeExit(cfc), withPci);
  assert.deepEqual([...cfc.subarray(4096 - 64, 4096 - 60)], [0x42, 0x42, 0x42, 0x42]);
  const lsr = ioRun(0x3fd, false, [0]);
  dispatchExit(decodeExit(lsr), withPci);
  assert.equal(lsr[4096 - 64] & 0x60, 0x60, "COM1 still answers");
  assert.deepEqual(claimed, [0xcfc]);
});

test("Mailbox says what kind of address an access names (MMIO, port, PCI configuration)", () => {
  const sab = new SharedArrayBuffer(MAILBOX_SIZE);
  const worker = new Mailbox(sab), main = new Mailbox(sab);
  const kinds: number[] = [];
  const serve = () => main.serve((_addr, _write, _data, kind) => kinds.push(kind));
  worker.request(0xd0000000, false, new Uint8Array(4), serve);
  worker.request(0x1010, true, new Uint8Array(2), serve, AccessKind.IO);
  worker.request((1 << 15) | 4, false, new Uint8Array(2), serve, AccessKind.PCI_CONFIG);
  assert.deepEqual(kinds, [AccessKind.MMIO, AccessKind.IO, AccessKind.PCI_CONFIG]);
});

test("Mailbox carries an MMIO access and its answer between the two sides", () => {
  const sab = new SharedArrayBuffer(MAILBOX_SIZE);
  const worker = new Mailbox(sab), main = new Mailbox(sab);
  const seen: [number, boolean, number[]][] = [];
  const serve = () =>
    main.serve((addr, write, data) => {
      seen.push([addr, write, [...data]]);
      if (!write) data.set([1, 2, 3, 4]);
    });
  const read = new Uint8Array(4);
  // The doorbell serves synchronously here; across threads it is a postMessage.
  worker.request(0xd0000008, false, read, serve);
  assert.deepEqual([...read], [1, 2, 3, 4]);
  worker.request(0xd0000070, true, new Uint8Array([7, 0, 0, 0]), serve);
  assert.deepEqual(seen, [[0xd0000008, false, [0, 0, 0, 0]], [0xd0000070, true, [7, 0, 0, 0]]]);
  assert.equal(main.serve(() => assert.fail("no request")), false);
  assert.equal(worker.stopRequested, false);
  main.requestStop();
  assert.equal(worker.stopRequested, true);
});

test("guestCpuid() sets the hypervisor bit and APIC id; lvtWithMode() unmasks", () => {
  const [leaf0, leaf1] = guestCpuid([
    { function: 0, index: 0, flags: 0, eax: 0xd, ebx: 1, ecx: 2, edx: 3 },
    { function: 1, index: 0, flags: 0, eax: 0x800f12, ebx: 0xff0800, ecx: 0x1, edx: 0 },
  ], 0);
  assert.equal(leaf0.ecx, 2);
  assert.equal(leaf1.ecx >>> 31, 1);
  assert.equal(leaf1.ebx >>> 24, 0);
  assert.equal(leaf1.ebx & 0xffff, 0x0800);
  assert.equal(lvtWithMode(0x10000, APIC_MODE_EXTINT), 0x700);
});

test("guestCpuid() sets TSC-deadline only when asked (KVM's supported list leaves it out)", () => {
  const supported = [{ function: 1, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0 }];
  assert.equal(guestCpuid(supported, 0)[0].ecx & CPUID_1_ECX_TSC_DEADLINE, 0);
  const [leaf1] = guestCpuid(supported, 0, { tscDeadline: true });
  assert.equal(leaf1.ecx & CPUID_1_ECX_TSC_DEADLINE, CPUID_1_ECX_TSC_DEADLINE);
});

test("guestCpuid() describes one package of N single-thread cores, whatever the host's", () => {
  // A host with 2 threads on 2 cores (leaf 1 count 4, HTT, 0x80000008 NC = 3).
  const host = [
    { function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0, ecx: 0, edx: 0 },
    { function: 1, index: 0, flags: 0, eax: 0, ebx: 0x01040800, ecx: 0, edx: 1 << 28 },
    { function: 0xb, index: 0, flags: 1, eax: 1, ebx: 2, ecx: 0x100, edx: 7 },
    { function: 0xb, index: 1, flags: 1, eax: 2, ebx: 4, ecx: 0x201, edx: 7 },
    { function: 0x80000008, index: 0, flags: 0, eax: 0x3028, ebx: 0, ecx: 0x2003, edx: 0 },
  ];
  for (const cpus of [1, 2, 4]) {
    for (let id = 0; id < cpus; id++) {
      const leaves = guestCpuid(host, id, { cpus });
      const get = (fn: number, index = 0) =>
        leaves.find((e) => e.function === fn && e.index === index)!;
      assert.equal(get(1).ebx >>> 24, id, "initial APIC id");
      assert.equal((get(1).ebx >> 16) & 0xff, cpus, "logical processors per package");
      assert.equal((get(1).edx & CPUID_1_EDX_HTT) !== 0, cpus > 1, "HTT");
      assert.equal(get(1).ebx & 0xffff, 0x0800, "CLFLUSH size kept");
      assert.deepEqual([get(0xb, 0).ebx, get(0xb, 0).ecx, get(0xb, 0).edx], [1, 0x100, id]);
      assert.deepEqual([get(0xb, 1).ebx, get(0xb, 1).ecx & 0xff00, get(0xb, 1).edx], [
        cpus,
        0x200,
        id,
      ]);
      assert.ok(1 << get(0xb, 1).eax >= cpus, "the core level's shift covers every APIC id");
      assert.equal(get(0xb, 2).ecx & 0xff00, 0, "then the invalid level");
      assert.equal(get(0x80000008).ecx & 0xff, cpus - 1, "AMD NC");
      assert.ok(1 << ((get(0x80000008).ecx >> 12) & 0xf) >= cpus, "AMD ApicIdCoreIdSize");
      assert.equal(leaves.filter((e) => e.function === 0xb).length, 3);
    }
  }
});

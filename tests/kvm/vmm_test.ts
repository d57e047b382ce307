// MicroVm with tiny synthetic guests (a bzImage header around a few instructions), so that the
// VMM's own machinery is tested without a kernel: the timeout counts from the vCPU's first
// KVM_RUN, stop() brings out a halted vCPU and vCPUs that were never started (APs waiting for
// SIPI), and several vCPUs write to one COM1. Needs /dev/kvm (scripts/test.sh runs tests/kvm/
// inside a nested-KVM guest where the host has none).
import { test } from "node:test";
import assert from "node:assert/strict";
import { kvmUnavailableReason } from "../../sys/mod.ts";
import { MicroVm } from "../../kvm/mod.ts";
import { BootParamsOffset as O, XLF_KERNEL_64 } from "../../kvm/boot.ts";

const skip = kvmUnavailableReason() === undefined ? false : `skipped: ${kvmUnavailableReason()}`;

/** A bzImage whose 64-bit entry point (kernel + 0x200) runs `code`. */
function tinyKernel(code: number[]): Uint8Array {
  const img = new Uint8Array(5 * 512 + 4096);
  const v = new DataView(img.buffer);
  v.setUint8(O.setupSects, 4);
  v.setUint16(O.bootFlag, 0xaa55, true);
  v.setUint8(O.jump + 1, 0x6a);
  v.setUint32(O.header, 0x53726448, true);
  v.setUint16(O.version, 0x20f, true);
  v.setUint8(O.loadflags, 1);
  v.setUint32(O.initrdAddrMax, 0x7fffffff, true);
  v.setUint16(O.xloadflags, XLF_KERNEL_64, true);
  v.setUint32(O.cmdlineSize, 2047, true);
  v.setBigUint64(O.prefAddress, 0x100000n, true);
  img.set(code, 5 * 512 + 0x200);
  return img;
}

// mov dx, 0x3f8; mov al, 'K'; out dx, al; then hlt forever (interrupts are off at entry).
const SAY_K_THEN_HALT = [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x4b, 0xee, 0xf4, 0xeb, 0xfd];

test("MicroVm.run()'s timeout counts from the vCPU's first KVM_RUN, not from the call", {
  skip,
  timeout: 120_000,
}, async () => {
  let out = "";
  const vm = MicroVm.create({
    kernel: tinyKernel(SAY_K_THEN_HALT),
    memorySize: 16 << 20,
    console: (t) => (out += t),
  });
  try {
    const timeoutMs = 300;
    const r = await vm.run({ timeoutMs });
    assert.equal(r.reason, "stopped");
    assert.equal(out, "K", "the guest ran");
    // The worker's start-up (loading and compiling its modules) is not the guest's time.
    assert.ok(r.startupMs > 0);
    assert.ok(r.elapsedMs >= timeoutMs, `guest time ${r.elapsedMs} ms < timeout ${timeoutMs} ms`);
  } finally {
    vm.close();
  }
});

test("MicroVm.stop() brings out a halted vCPU 0 and three vCPUs that never got a SIPI", {
  skip,
  timeout: 120_000,
}, async () => {
  let out = "";
  const vm = MicroVm.create({
    kernel: tinyKernel(SAY_K_THEN_HALT),
    memorySize: 16 << 20,
    cpus: 4,
    console: (t) => (out += t),
  });
  try {
    assert.equal(vm.cpus, 4);
    const running = vm.run();
    await new Promise((r) => setTimeout(r, 200));
    while (!out.includes("K")) await new Promise((r) => setTimeout(r, 50));
    vm.stop();
    const r = await running;
    assert.equal(r.reason, "stopped");
  } finally {
    vm.close();
  }
});

test("a guest's ACPI power off and reset end the run with their reasons", {
  skip,
  timeout: 120_000,
}, async () => {
  // mov dx, 0x600; mov al, SLP_EN | S5 << 2; out dx, al; hlt
  const poweroff = [0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4];
  // mov dx, 0x602; mov al, 1; out dx, al; hlt
  const reset = [0x66, 0xba, 0x02, 0x06, 0xb0, 0x01, 0xee, 0xf4];
  for (const [code, reason] of [[poweroff, "poweroff"], [reset, "reset"]] as const) {
    const vm = MicroVm.create({ kernel: tinyKernel(code), memorySize: 16 << 20, cpus: 2 });
    try {
      const r = await vm.run({ timeoutMs: 60_000 });
      assert.equal(r.reason, reason);
    } finally {
      vm.close();
    }
  }
});

test("a triple fault stops the guest as a reset, with the vCPU's registers in the detail", {
  skip,
  timeout: 120_000,
}, async () => {
  // ud2 with an empty IDT (the boot state has none): #UD, then #GP, #DF, shutdown.
  const vm = MicroVm.create({ kernel: tinyKernel([0x0f, 0x0b]), memorySize: 16 << 20 });
  try {
    const r = await vm.run({ timeoutMs: 60_000 });
    assert.equal(r.reason, "reset");
    // Intel keeps the faulting state; AMD's KVM reinitializes the vCPU (rip 0xfff0).
    assert.match(r.detail ?? "", /^triple fault on vCPU 0; registers now: rip 0x(100200|fff0) /);
  } finally {
    vm.close();
  }
});

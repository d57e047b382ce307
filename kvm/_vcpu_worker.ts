// The vCPU thread: a Worker that loops on KVM_RUN (which blocks) and handles the exits that need
// no device state of the main thread itself: port I/O (COM1, i8042 reset, inert legacy ports)
// and the stop conditions. MMIO exits belong to the MmioTransports on the main thread: the worker
// writes the access into a SharedArrayBuffer, rings the main thread with postMessage and sleeps
// in Atomics.wait until the main thread has served it (see MmioMailbox in vmm.ts). Queue
// notifications and device interrupts never come here: they travel through ioeventfd/irqfd.
//
// Protocol (main → worker): one "start" message. (worker → main): "console" chunks, "mmio"
// doorbells, then exactly one "exit" or "error".

import { ioctl, mmapFd } from "../sys/mod.ts";
import { encodeIrqLevel, KvmIoctl, KvmRunOffset } from "./abi.ts";
import { decodeExit, dispatchExit, LegacyIo, type StopReason, VcpuError } from "./exits.ts";
import { kvmRun } from "./vm.ts";
import { Mailbox } from "./_mailbox.ts";

/** The start message. */
export interface VcpuStart {
  type: "start";
  vcpuFd: number;
  vmFd: number;
  runSize: number;
  mailbox: SharedArrayBuffer;
}

/** Messages the worker posts. */
export type VcpuMessage =
  | { type: "console"; bytes: Uint8Array }
  | { type: "mmio" }
  | { type: "exit"; reason: StopReason | "stopped"; exits: number }
  | { type: "error"; code: string; message: string };

// deno-lint-ignore no-explicit-any
const scope = globalThis as any;

function post(msg: VcpuMessage): void {
  scope.postMessage(msg);
}

function runVcpu(start: VcpuStart): void {
  const run = new Uint8Array(mmapFd(start.vcpuFd, start.runSize).buffer);
  const mailbox = new Mailbox(start.mailbox);
  let out: number[] = [];
  const flush = () => {
    if (out.length === 0) return;
    post({ type: "console", bytes: Uint8Array.from(out) });
    out = [];
  };
  const io = new LegacyIo({
    output: (b) => {
      out.push(b);
      if (b === 0x0a || out.length >= 4096) flush();
    },
    setIrq: (irq, level) => {
      ioctl(start.vmFd, KvmIoctl.IRQ_LINE, encodeIrqLevel(irq, level ? 1 : 0));
    },
  });
  const handlers = {
    io,
    mmio: (addr: number, write: boolean, data: Uint8Array) => {
      flush();
      mailbox.request(addr, write, data, () => post({ type: "mmio" }));
    },
  };
  let exits = 0;
  for (;;) {
    if (mailbox.stopRequested) {
      flush();
      post({ type: "exit", reason: "stopped", exits });
      return;
    }
    const r = kvmRun(start.vcpuFd);
    if (r !== 0) {
      run[KvmRunOffset.immediateExit] = 0;
      continue;
    }
    exits++;
    const reason = dispatchExit(decodeExit(run), handlers);
    if (reason !== undefined) {
      flush();
      post({ type: "exit", reason, exits });
      return;
    }
  }
}

scope.onmessage = (e: MessageEvent<VcpuStart>) => {
  if (e.data?.type !== "start") return;
  try {
    runVcpu(e.data);
  } catch (err) {
    const code = err instanceof VcpuError ? err.code : "RunFailed";
    post({ type: "error", code, message: err instanceof Error ? err.message : String(err) });
  }
};

// A vCPU thread: a Worker that loops on KVM_RUN (which blocks) and handles the exits that need no
// device state of the main thread: port I/O (COM1, the ACPI sleep and reset registers, i8042 reset,
// inert legacy ports) and the stop conditions. Every vCPU of a VM has its own worker; they share
// COM1 through a ConsoleChannel (its lock serializes their UART accesses, its ring keeps the output
// in order). MMIO exits belong to the transports on the main thread: the worker writes the access
// into its Mailbox, rings the main thread with postMessage and sleeps in Atomics.wait until the
// main thread has served it. With PCI, the configuration address latch (0xCF8) is kept here, in
// memory shared by every vCPU, and so is a copy of the configuration space that reads are answered
// from (the main thread refreshes it after each write, before the writer resumes); writes, reads
// the copy cannot answer, and ports in the PCI I/O window travel to the main thread, the same way.
// Queue notifications and device interrupts never come here: they travel through ioeventfd/irqfd.
//
// Stopping: SIGWINCH is blocked in this thread except while KVM_RUN runs (KVM_SET_SIGNAL_MASK), so
// the main thread's tgkill makes a running or halted vCPU leave KVM_RUN with EINTR, after which the
// loop sees the stop flag. The signal is never delivered to a handler.
//
// Protocol (main → worker): one "start" message. (worker → main): "running" (with the thread id)
// right before the first KVM_RUN, "console" and "mmio" doorbells, then exactly one "exit" or
// "error".

import { blockSignalInThread, ioctl, mmapFd, SIGWINCH, threadId } from "../sys/mod.ts";
import { encodeIrqLevel, encodeSignalMask, KvmIoctl, KvmRunOffset } from "./abi.ts";
import { decodeExit, dispatchExit, LegacyIo, type StopReason, VcpuError } from "./exits.ts";
import { kvmRun } from "./vm.ts";
import { ConsoleChannel } from "./_console.ts";
import { AccessKind, Mailbox } from "./_mailbox.ts";
import { Conf1Ports, ConfigShadow } from "./pci.ts";

/** The start message. */
export interface VcpuStart {
  type: "start";
  /** The vCPU's index (and APIC id). */
  index: number;
  vcpuFd: number;
  vmFd: number;
  runSize: number;
  /** This vCPU's {@link Mailbox}. */
  mailbox: SharedArrayBuffer;
  /** The VM's {@link ConsoleChannel}. */
  console: SharedArrayBuffer;
  /**
   * With PCI: the shared configuration address latch (4 bytes), the copy of the configuration
   * space reads are answered from (`ConfigShadow`), and the I/O window.
   */
  pci?: { conf1: SharedArrayBuffer; shadow: SharedArrayBuffer; ioBase: number; ioSize: number };
}

/** Messages the worker posts. */
export type VcpuMessage =
  | {
    type: "running";
    index: number;
    /** Kernel thread id, for the stop signal. */
    tid: number;
    /** `performance.timeOrigin + performance.now()` right before the first KVM_RUN. */
    at: number;
  }
  | { type: "console"; index: number }
  | { type: "mmio"; index: number }
  | { type: "exit"; index: number; reason: StopReason | "stopped"; exits: number }
  | { type: "error"; index: number; code: string; message: string };

// deno-lint-ignore no-explicit-any
const scope = globalThis as any;

function post(msg: VcpuMessage): void {
  scope.postMessage(msg);
}

function runVcpu(start: VcpuStart): void {
  const { index } = start;
  const run = new Uint8Array(mmapFd(start.vcpuFd, start.runSize).buffer);
  const mailbox = new Mailbox(start.mailbox);
  const channel = new ConsoleChannel(start.console);
  const doorbell = () => post({ type: "console", index });
  const stopped = () => mailbox.stopRequested;
  let sinceDoorbell = 0;
  const io = new LegacyIo({
    output: (b) => {
      channel.push(b, doorbell, stopped);
      if (b === 0x0a || ++sinceDoorbell >= 4096) {
        sinceDoorbell = 0;
        doorbell();
      }
    },
    setIrq: (irq, level) => {
      ioctl(start.vmFd, KvmIoctl.IRQ_LINE, encodeIrqLevel(irq, level ? 1 : 0));
    },
    uartState: channel.uartState,
    lock: channel,
  });
  const ring = () => post({ type: "mmio", index });
  const pci = start.pci;
  const conf1 = pci === undefined ? undefined : new Conf1Ports(new Int32Array(pci.conf1, 0, 1));
  const shadow = pci === undefined ? undefined : new ConfigShadow(pci.shadow);
  const config = (offset: number, write: boolean, data: Uint8Array) => {
    if (!write && shadow?.read(offset, data)) return;
    mailbox.request(offset, write, data, ring, AccessKind.PCI_CONFIG);
  };
  const handlers = {
    io,
    mmio: (addr: number, write: boolean, data: Uint8Array) => {
      mailbox.request(addr, write, data, ring);
    },
    pio: (port: number, write: boolean, data: Uint8Array): boolean => {
      if (pci === undefined || conf1 === undefined) return false;
      if (Conf1Ports.owns(port)) {
        conf1.access(port, write, data, config);
        return true;
      }
      if (port >= pci.ioBase && port < pci.ioBase + pci.ioSize) {
        mailbox.request(port, write, data, ring, AccessKind.IO);
        return true;
      }
      return false;
    },
  };
  const blocked = blockSignalInThread(SIGWINCH);
  ioctl(
    start.vcpuFd,
    KvmIoctl.SET_SIGNAL_MASK,
    encodeSignalMask(blocked & ~(1n << BigInt(SIGWINCH - 1))),
  );
  post({ type: "running", index, tid: threadId(), at: performance.timeOrigin + performance.now() });
  let exits = 0;
  const finish = (reason: StopReason | "stopped") => {
    if (sinceDoorbell > 0 || channel.pending > 0) doorbell();
    post({ type: "exit", index, reason, exits });
  };
  for (;;) {
    if (mailbox.stopRequested) return finish("stopped");
    const r = kvmRun(start.vcpuFd);
    if (r !== 0) {
      run[KvmRunOffset.immediateExit] = 0;
      continue;
    }
    exits++;
    const reason = dispatchExit(decodeExit(run), handlers);
    if (reason !== undefined) return finish(reason);
  }
}

scope.onmessage = (e: MessageEvent<VcpuStart>) => {
  if (e.data?.type !== "start") return;
  try {
    runVcpu(e.data);
  } catch (err) {
    const code = err instanceof VcpuError ? err.code : "RunFailed";
    const message = err instanceof Error ? err.message : String(err);
    post({ type: "error", index: e.data.index, code, message });
  }
};

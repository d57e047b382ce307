/**
 * vCPU exits: decoding `struct kvm_run` after `KVM_RUN` returns, the legacy PC port I/O a Linux
 * guest touches (COM1, the i8042 reset line, POST port 0x80, CMOS, PCI probing), and the
 * dispatch of one exit to port I/O or MMIO handlers. Pure: it works on any buffer laid out as
 * `kvm_run`, so it is tested with a fake one.
 *
 * @module
 */

import { KVM_EXIT_IO_OUT, KvmExit, KvmRunOffset as R, KvmSystemEvent } from "./abi.ts";
import {
  ACPI_RESET_VALUE,
  ACPI_S5_SLP_TYP,
  ACPI_SLP_EN,
  ACPI_SLP_TYP_SHIFT,
  AcpiPort,
} from "./acpi.ts";
import { COM1_PORT, Serial8250 } from "./serial.ts";

/** A decoded vCPU exit. Data views alias the `kvm_run` mapping: handlers fill them in place. */
export type VcpuExit =
  | {
    /** Port I/O (`in`/`out`, possibly `rep ins`/`outs`). */
    kind: "io";
    /** The port. */
    port: number;
    /** Access width in bytes (1, 2 or 4). */
    size: number;
    /** True for `out`. */
    write: boolean;
    /** Repetitions (string I/O). */
    count: number;
    /** `size * count` bytes inside `kvm_run`. */
    data: Uint8Array;
  }
  | {
    /** An access to guest-physical memory no slot covers. */
    kind: "mmio";
    /** Guest-physical address. */
    addr: number;
    /** True for a write. */
    write: boolean;
    /** `len` bytes inside `kvm_run` (`mmio.data`). */
    data: Uint8Array;
  }
  | { /** HLT without an in-kernel irqchip. */ kind: "hlt" }
  | { /** Triple fault: the guest reset itself. */ kind: "shutdown" }
  | { /** A signal or `immediate_exit` interrupted KVM_RUN. */ kind: "intr" }
  | {
    /** VM entry failed. */
    kind: "fail-entry";
    /** `hardware_entry_failure_reason`. */
    reason: bigint;
    /** The physical CPU. */
    cpu: number;
  }
  | {
    /** KVM could not emulate something. */
    kind: "internal-error";
    /** `KVM_INTERNAL_ERROR_*`. */
    suberror: number;
    /** Extra data words. */
    data: bigint[];
  }
  | {
    /** A system event (shutdown, reset, crash). */
    kind: "system-event";
    /** `KVM_SYSTEM_EVENT_*`. */
    type: number;
  }
  | {
    /** A guest exception reported to user space. */
    kind: "exception";
    /** The vector. */
    exception: number;
    /** The error code. */
    errorCode: number;
  }
  | {
    /** Any other exit reason. */
    kind: "other";
    /** The raw `exit_reason`. */
    reason: number;
  };

/**
 * Decodes the exit in a `kvm_run` buffer.
 *
 * @param run The `kvm_run` mapping (at least the vCPU mmap size).
 * @returns The exit.
 * @throws {RangeError} If the I/O data lies outside `run`.
 */
export function decodeExit(run: Uint8Array): VcpuExit {
  const v = new DataView(run.buffer, run.byteOffset, run.byteLength);
  const reason = v.getUint32(R.exitReason, true);
  switch (reason) {
    case KvmExit.IO: {
      const size = v.getUint8(R.ioSize);
      const count = v.getUint32(R.ioCount, true);
      const offset = Number(v.getBigUint64(R.ioDataOffset, true));
      const len = size * count;
      if (offset + len > run.byteLength || offset < 0) {
        throw new RangeError(`kvm_run I/O data at ${offset}+${len} is outside the mapping`);
      }
      return {
        kind: "io",
        port: v.getUint16(R.ioPort, true),
        size,
        write: v.getUint8(R.ioDirection) === KVM_EXIT_IO_OUT,
        count,
        data: run.subarray(offset, offset + len),
      };
    }
    case KvmExit.MMIO: {
      const len = Math.min(v.getUint32(R.mmioLen, true), 8);
      return {
        kind: "mmio",
        addr: Number(v.getBigUint64(R.mmioPhysAddr, true)),
        write: v.getUint8(R.mmioIsWrite) !== 0,
        data: run.subarray(R.mmioData, R.mmioData + len),
      };
    }
    case KvmExit.HLT:
      return { kind: "hlt" };
    case KvmExit.SHUTDOWN:
      return { kind: "shutdown" };
    case KvmExit.INTR:
      return { kind: "intr" };
    case KvmExit.FAIL_ENTRY:
      return {
        kind: "fail-entry",
        reason: v.getBigUint64(R.failEntryReason, true),
        cpu: v.getUint32(R.failEntryCpu, true),
      };
    case KvmExit.INTERNAL_ERROR: {
      const n = Math.min(v.getUint32(R.internalNdata, true), 16);
      const data: bigint[] = [];
      for (let i = 0; i < n; i++) data.push(v.getBigUint64(R.internalData + i * 8, true));
      return { kind: "internal-error", suberror: v.getUint32(R.internalSuberror, true), data };
    }
    case KvmExit.SYSTEM_EVENT:
      return { kind: "system-event", type: v.getUint32(R.systemEventType, true) };
    case KvmExit.EXCEPTION:
      return {
        kind: "exception",
        exception: v.getUint32(R.exException, true),
        errorCode: v.getUint32(R.exErrorCode, true),
      };
    default:
      return { kind: "other", reason };
  }
}

/** What a vCPU failure was. */
export type VcpuErrorCode =
  /** KVM_EXIT_FAIL_ENTRY: the hardware refused the guest state. */
  | "FailEntry"
  /** KVM_EXIT_INTERNAL_ERROR: KVM could not emulate an instruction. */
  | "InternalError"
  /** A guest exception or an exit reason this VMM does not handle. */
  | "UnhandledExit"
  /** KVM_RUN itself failed. */
  | "RunFailed";

/** A vCPU stopped on an error. */
export class VcpuError extends Error {
  /** What happened. */
  readonly code: VcpuErrorCode;
  /** Extra detail: the failure reason, suberror or exit reason. */
  readonly detail: bigint;

  /**
   * Creates the error.
   *
   * @param code What happened.
   * @param message Details.
   * @param detail The failure reason, suberror or exit reason.
   */
  constructor(code: VcpuErrorCode, message: string, detail: bigint = 0n) {
    super(message);
    this.name = "VcpuError";
    this.code = code;
    this.detail = detail;
  }
}

/** Why a guest stopped without an error. */
export type StopReason =
  /** The guest asked for a reset (i8042 0xFE, triple fault, system event reset). */
  | "reset"
  /** The guest powered off (system event shutdown). */
  | "poweroff"
  /** HLT without an in-kernel irqchip. */
  | "halt"
  /** The guest kernel crashed (system event crash). */
  | "crash";

/** Ports of the i8042 keyboard controller. */
export const I8042_DATA_PORT = 0x60;
/** i8042 command/status port; writing 0xFE pulses the CPU reset line. */
export const I8042_COMMAND_PORT = 0x64;
/** i8042 command: pulse the reset line. */
export const I8042_CMD_RESET = 0xfe;

/** Options of {@link LegacyIo}. */
export interface LegacyIoOptions {
  /** Receives each byte the guest writes to COM1. */
  output: (byte: number) => void;
  /** Sets the level of an ISA interrupt line (COM1 uses 4). */
  setIrq?: (irq: number, level: boolean) => void;
  /**
   * COM1's register state, when several vCPU threads share one UART (see `Serial8250`); their
   * accesses must then be serialized with `lock`.
   */
  uartState?: Int32Array;
  /** Held around each COM1 access (default: none). */
  lock?: { acquire(): void; release(): void };
}

/**
 * The legacy PC ports a Linux guest uses when the PIC and PIT are emulated in the kernel:
 * COM1 (0x3f8–0x3ff, IRQ 4); the hardware-reduced ACPI sleep control and reset registers
 * ({@link AcpiPort}); the i8042's reset command (0x64 ← 0xFE); and inert answers for everything
 * else (the POST port 0x80, CMOS 0x70/0x71, PCI config 0xcf8/0xcfc, other UARTs): unknown ports
 * read as all ones, like an empty ISA bus. That includes the i8042's data and status ports: a
 * controller that answers 0 looks present and idle, and Linux then waits for it for over a
 * second; all ones is how Linux tells that there is none (as on QEMU's microvm machine).
 */
export class LegacyIo {
  /** The COM1 UART. */
  readonly com1: Serial8250;
  readonly #lock: { acquire(): void; release(): void } | undefined;
  #stop: StopReason | undefined;

  /**
   * Creates the ports, with COM1 idle (or attached to `options.uartState`).
   *
   * @param options Console output, interrupt line, shared UART state.
   */
  constructor(options: LegacyIoOptions) {
    const setIrq = options.setIrq ?? (() => {});
    this.com1 = new Serial8250({
      output: options.output,
      irq: (level) => setIrq(4, level),
      state: options.uartState,
    });
    this.#lock = options.lock;
  }

  /** Whether the guest asked for a reset (i8042 0xFE or the ACPI reset register). */
  get resetRequested(): boolean {
    return this.#stop === "reset";
  }

  /** The stop the guest asked for through a port (reset or ACPI power off), if any. */
  get stopRequested(): StopReason | undefined {
    return this.#stop;
  }

  /**
   * Serves one port access of `data.length` bytes (1, 2 or 4).
   *
   * @param port The port.
   * @param write True for `out`.
   * @param data The value (for `out`) or where to put it (for `in`), little-endian.
   */
  access(port: number, write: boolean, data: Uint8Array): void {
    if (port >= COM1_PORT && port < COM1_PORT + 8) {
      this.#lock?.acquire();
      try {
        // 8250 registers are byte-wide; wider accesses touch consecutive registers.
        for (let i = 0; i < data.length && port + i < COM1_PORT + 8; i++) {
          if (write) this.com1.write(port + i - COM1_PORT, data[i]);
          else data[i] = this.com1.read(port + i - COM1_PORT);
        }
      } finally {
        this.#lock?.release();
      }
      return;
    }
    if (write) {
      if (port === I8042_COMMAND_PORT && data[0] === I8042_CMD_RESET) this.#stop = "reset";
      if (port === AcpiPort.RESET && data[0] === ACPI_RESET_VALUE) this.#stop = "reset";
      // ACPI 6.5 §4.8.3.7: SLP_EN with SLP_TYP = S5 powers off; other sleep states are ignored.
      if (
        port === AcpiPort.SLEEP_CONTROL && (data[0] & ACPI_SLP_EN) &&
        ((data[0] >> ACPI_SLP_TYP_SHIFT) & 7) === ACPI_S5_SLP_TYP
      ) {
        this.#stop = "poweroff";
      }
      return;
    }
    switch (port) {
      case AcpiPort.SLEEP_STATUS:
      case 0x61: // system control port B
      case 0x70: // CMOS index
      case 0x71: // CMOS data (no RTC; kvmclock gives the time)
        data.fill(0);
        return;
      default:
        data.fill(0xff);
    }
  }
}

/** Handlers {@link dispatchExit} routes to. */
export interface ExitHandlers {
  /** Legacy port I/O. */
  io: LegacyIo;
  /** An MMIO access: fill `data` for a read. */
  mmio: (addr: number, write: boolean, data: Uint8Array) => void;
  /**
   * Port I/O that is not legacy PC hardware (PCI configuration ports, I/O BARs), tried first:
   * returns true when it served the access.
   */
  pio?: (port: number, write: boolean, data: Uint8Array) => boolean;
}

/**
 * Handles one exit: port I/O and MMIO go to their handlers (each repetition of string I/O in
 * turn); exits that end the guest return a {@link StopReason}; an interrupted run returns
 * `undefined` like a handled exit; failures throw.
 *
 * @param exit The decoded exit.
 * @param handlers Port I/O and MMIO handlers.
 * @returns Why the guest stopped, or `undefined` to keep running.
 * @throws {VcpuError} On FAIL_ENTRY, INTERNAL_ERROR, an exception or an unknown exit.
 */
export function dispatchExit(exit: VcpuExit, handlers: ExitHandlers): StopReason | undefined {
  switch (exit.kind) {
    case "io": {
      for (let i = 0; i < exit.count; i++) {
        const data = exit.data.subarray(i * exit.size, (i + 1) * exit.size);
        if (handlers.pio?.(exit.port, exit.write, data)) continue;
        handlers.io.access(exit.port, exit.write, data);
      }
      return handlers.io.stopRequested;
    }
    case "mmio":
      handlers.mmio(exit.addr, exit.write, exit.data);
      return undefined;
    case "intr":
      return undefined;
    case "hlt":
      return "halt";
    case "shutdown":
      return "reset";
    case "system-event":
      if (exit.type === KvmSystemEvent.SHUTDOWN) return "poweroff";
      if (exit.type === KvmSystemEvent.CRASH) return "crash";
      return "reset";
    case "fail-entry":
      throw new VcpuError(
        "FailEntry",
        `VM entry failed: hardware reason 0x${exit.reason.toString(16)} on CPU ${exit.cpu}`,
        exit.reason,
      );
    case "internal-error":
      throw new VcpuError(
        "InternalError",
        `KVM internal error: suberror ${exit.suberror}` +
          (exit.data.length
            ? ` (data ${exit.data.map((d) => "0x" + d.toString(16)).join(" ")})`
            : ""),
        BigInt(exit.suberror),
      );
    case "exception":
      throw new VcpuError(
        "UnhandledExit",
        `Guest exception ${exit.exception} (error code ${exit.errorCode})`,
        BigInt(exit.exception),
      );
    default:
      throw new VcpuError(
        "UnhandledExit",
        `Unhandled exit reason ${exit.reason}`,
        BigInt(exit.reason),
      );
  }
}

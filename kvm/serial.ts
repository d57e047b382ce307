/**
 * A 16550A-compatible UART (the PC's "8250" serial port), enough for Linux's 8250 driver and
 * serial console: transmit/receive holding registers, IER, IIR/FCR with FIFO bits, LCR with the
 * divisor latch, MCR with loopback, LSR, MSR and the scratch register. Transmission is
 * instantaneous (THR is always empty), so the only interrupt sources are "THR empty", "data
 * ready" and modem status; the interrupt line is reported through a callback whenever its level
 * changes (the VMM turns that into `KVM_IRQ_LINE`).
 *
 * @module
 */

/** Standard I/O base of COM1 (ttyS0). */
export const COM1_PORT = 0x3f8;
/** ISA interrupt line of COM1. */
export const COM1_IRQ = 4;

/** Register offsets from the base port. */
export const UartRegister = {
  /** RBR (read) / THR (write); DLL when LCR.DLAB. */
  DATA: 0,
  /** IER; DLM when LCR.DLAB. */
  IER: 1,
  /** IIR (read) / FCR (write). */
  IIR_FCR: 2,
  LCR: 3,
  MCR: 4,
  LSR: 5,
  MSR: 6,
  SCR: 7,
} as const;

const IER_RDI = 0x01;
const IER_THRI = 0x02;
const IER_RLSI = 0x04;
const IER_MSI = 0x08;
const IIR_NO_INT = 0x01;
const IIR_MSI = 0x00;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_RLSI = 0x06;
const IIR_FIFO_ENABLED = 0xc0;
const FCR_ENABLE_FIFO = 0x01;
const FCR_CLEAR_RCVR = 0x02;
const LCR_DLAB = 0x80;
const MCR_LOOP = 0x10;
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_BRK_ERROR_BITS = 0x1e;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MSR_DCTS = 0x01;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
const MSR_DELTA_MASK = 0x0f;
const RX_FIFO_SIZE = 16;

/** Options of {@link Serial8250}. */
export interface Serial8250Options {
  /** Receives each transmitted byte. */
  output: (byte: number) => void;
  /** Called with the new level of the interrupt line whenever it changes. */
  irq?: (level: boolean) => void;
}

/**
 * The UART register file. `read`/`write` take the offset from the base port (0–7).
 *
 * @example Linux-style probe and a transmitted byte
 * ```ts
 * import assert from "node:assert/strict";
 * import { Serial8250 } from "./serial.ts";
 * const out: number[] = [];
 * const uart = new Serial8250({ output: (b) => out.push(b) });
 * uart.write(7, 0xa5);
 * if (uart.read(7) !== 0xa5) throw new Error("scratch register");
 * uart.write(0, 0x41);
 * assert.equal(out[0], 0x41);
 * assert.equal(uart.read(5) & 0x60, 0x60);
 * ```
 */
export class Serial8250 {
  readonly #output: (byte: number) => void;
  readonly #irq: (level: boolean) => void;
  #ier = 0;
  #lcr = 0;
  #mcr = 0;
  #lsr = LSR_THRE | LSR_TEMT;
  #msr = MSR_DCD | MSR_DSR | MSR_CTS;
  #scr = 0;
  #dll = 0x0c; // 9600 baud
  #dlm = 0;
  #fcr = 0;
  #thrPending = false;
  #level = false;
  readonly #rx: number[] = [];

  /**
   * Creates an idle UART at 9600 baud with an empty FIFO.
   *
   * @param options Output sink and interrupt line.
   */
  constructor(options: Serial8250Options) {
    this.#output = options.output;
    this.#irq = options.irq ?? (() => {});
  }

  /** The current level of the interrupt line. */
  get irqLevel(): boolean {
    return this.#level;
  }

  /** Bytes waiting in the receive FIFO. */
  get rxPending(): number {
    return this.#rx.length;
  }

  /**
   * Queues bytes for the guest to read (host keyboard input). Bytes beyond the 16-byte FIFO set
   * the overrun flag and are dropped.
   *
   * @param bytes The bytes.
   */
  input(bytes: Uint8Array): void {
    for (const b of bytes) {
      if (this.#rx.length >= RX_FIFO_SIZE) {
        this.#lsr |= LSR_OE;
        break;
      }
      this.#rx.push(b);
    }
    if (this.#rx.length > 0) this.#lsr |= LSR_DR;
    this.#update();
  }

  /**
   * A guest `in` from `base + offset`.
   *
   * @param offset Register offset, 0–7.
   * @returns The byte read.
   */
  read(offset: number): number {
    switch (offset & 7) {
      case UartRegister.DATA: {
        if (this.#lcr & LCR_DLAB) return this.#dll;
        const b = this.#rx.shift() ?? 0;
        if (this.#rx.length === 0) this.#lsr &= ~LSR_DR;
        this.#update();
        return b;
      }
      case UartRegister.IER:
        return this.#lcr & LCR_DLAB ? this.#dlm : this.#ier;
      case UartRegister.IIR_FCR: {
        const iir = this.#iir();
        // Reading IIR while it reports "THR empty" acknowledges that interrupt.
        if ((iir & 0x0f) === IIR_THRI) {
          this.#thrPending = false;
          this.#update();
        }
        return iir | (this.#fcr & FCR_ENABLE_FIFO ? IIR_FIFO_ENABLED : 0);
      }
      case UartRegister.LCR:
        return this.#lcr;
      case UartRegister.MCR:
        return this.#mcr;
      case UartRegister.LSR: {
        const lsr = this.#lsr;
        // Error bits clear on read.
        this.#lsr &= ~(LSR_OE | LSR_BRK_ERROR_BITS);
        if (lsr & (LSR_OE | LSR_BRK_ERROR_BITS)) this.#update();
        return lsr;
      }
      case UartRegister.MSR: {
        if (this.#mcr & MCR_LOOP) {
          // Loopback: RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD.
          const m = this.#mcr;
          return ((m & 0x02) ? MSR_CTS : 0) | ((m & 0x01) ? MSR_DSR : 0) |
            ((m & 0x04) ? MSR_RI : 0) | ((m & 0x08) ? MSR_DCD : 0);
        }
        const msr = this.#msr;
        this.#msr &= ~MSR_DELTA_MASK;
        if (msr & MSR_DELTA_MASK) this.#update();
        return msr;
      }
      default:
        return this.#scr;
    }
  }

  /**
   * A guest `out` to `base + offset`.
   *
   * @param offset Register offset, 0–7.
   * @param value The byte written.
   */
  write(offset: number, value: number): void {
    value &= 0xff;
    switch (offset & 7) {
      case UartRegister.DATA:
        if (this.#lcr & LCR_DLAB) {
          this.#dll = value;
          return;
        }
        if (this.#mcr & MCR_LOOP) {
          if (this.#rx.length < RX_FIFO_SIZE) this.#rx.push(value);
          else this.#lsr |= LSR_OE;
          this.#lsr |= LSR_DR;
        } else {
          this.#output(value);
        }
        // Sent at once: THR is empty again and "THR empty" is pending anew.
        this.#thrPending = true;
        this.#lsr |= LSR_THRE | LSR_TEMT;
        this.#update();
        return;
      case UartRegister.IER: {
        if (this.#lcr & LCR_DLAB) {
          this.#dlm = value;
          return;
        }
        const was = this.#ier;
        this.#ier = value & 0x0f;
        // Enabling the THRE interrupt with THR empty raises it (as a real 16550 does).
        if (!(was & IER_THRI) && (this.#ier & IER_THRI) && (this.#lsr & LSR_THRE)) {
          this.#thrPending = true;
        }
        this.#update();
        return;
      }
      case UartRegister.IIR_FCR:
        this.#fcr = value & 0xc9;
        if (value & FCR_CLEAR_RCVR) {
          this.#rx.length = 0;
          this.#lsr &= ~LSR_DR;
        }
        this.#update();
        return;
      case UartRegister.LCR:
        this.#lcr = value;
        return;
      case UartRegister.MCR: {
        const was = this.#mcr;
        this.#mcr = value & 0x1f;
        if ((was ^ this.#mcr) & MCR_LOOP) this.#msr |= MSR_DCTS;
        this.#update();
        return;
      }
      case UartRegister.LSR:
      case UartRegister.MSR:
        return; // read-only
      default:
        this.#scr = value;
    }
  }

  #iir(): number {
    if ((this.#ier & IER_RLSI) && (this.#lsr & (LSR_OE | LSR_BRK_ERROR_BITS))) return IIR_RLSI;
    if ((this.#ier & IER_RDI) && (this.#lsr & LSR_DR)) return IIR_RDI;
    if ((this.#ier & IER_THRI) && this.#thrPending) return IIR_THRI;
    if ((this.#ier & IER_MSI) && (this.#msr & MSR_DELTA_MASK) && !(this.#mcr & MCR_LOOP)) {
      return IIR_MSI;
    }
    return IIR_NO_INT;
  }

  #update(): void {
    const level = (this.#iir() & IIR_NO_INT) === 0;
    if (level !== this.#level) {
      this.#level = level;
      this.#irq(level);
    }
  }
}

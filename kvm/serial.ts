/**
 * A 16550A-compatible UART (the PC's "8250" serial port), enough for Linux's 8250 driver and
 * serial console: transmit/receive holding registers, IER, IIR/FCR with FIFO bits, LCR with the
 * divisor latch, MCR with loopback, LSR, MSR and the scratch register. Transmission is
 * instantaneous (THR is always empty), so the only interrupt sources are "THR empty", "data
 * ready" and modem status; the interrupt line is reported through a callback whenever its level
 * changes (the VMM turns that into `KVM_IRQ_LINE`).
 *
 * The register state lives in an `Int32Array` the caller may supply ({@link SERIAL_STATE_WORDS}
 * words, e.g. over a `SharedArrayBuffer`), so that the vCPU threads of one VM can drive the same
 * UART; they must then serialize their accesses (the VMM holds a lock around each).
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

// Word indices of the state array.
const S_IER = 0;
const S_LCR = 1;
const S_MCR = 2;
const S_LSR = 3;
const S_MSR = 4;
const S_SCR = 5;
const S_DLL = 6;
const S_DLM = 7;
const S_FCR = 8;
const S_THR_PENDING = 9;
const S_LEVEL = 10;
const S_RX_HEAD = 11;
const S_RX_COUNT = 12;
const S_INITIALIZED = 13;
const S_RX = 14;

/** Words of `Int32Array` state a {@link Serial8250} keeps (see its `state` option). */
export const SERIAL_STATE_WORDS: number = S_RX + RX_FIFO_SIZE;

/** Options of {@link Serial8250}. */
export interface Serial8250Options {
  /** Receives each transmitted byte. */
  output: (byte: number) => void;
  /** Called with the new level of the interrupt line whenever it changes. */
  irq?: (level: boolean) => void;
  /**
   * Where the registers live: {@link SERIAL_STATE_WORDS} words, all zero for a UART not yet
   * reset (the first instance over it resets it), or the state another instance already uses.
   * Default: a private array.
   */
  state?: Int32Array;
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
  readonly #s: Int32Array;

  /**
   * Creates an idle UART at 9600 baud with an empty FIFO, or attaches to `options.state`.
   *
   * @param options Output sink, interrupt line and state.
   * @throws {RangeError} When `options.state` is shorter than {@link SERIAL_STATE_WORDS}.
   */
  constructor(options: Serial8250Options) {
    this.#output = options.output;
    this.#irq = options.irq ?? (() => {});
    const s = options.state ?? new Int32Array(SERIAL_STATE_WORDS);
    if (s.length < SERIAL_STATE_WORDS) {
      throw new RangeError(`UART state needs ${SERIAL_STATE_WORDS} words, got ${s.length}`);
    }
    this.#s = s;
    if (s[S_INITIALIZED] === 0) {
      s.fill(0, 0, SERIAL_STATE_WORDS);
      s[S_LSR] = LSR_THRE | LSR_TEMT;
      s[S_MSR] = MSR_DCD | MSR_DSR | MSR_CTS;
      s[S_DLL] = 0x0c; // 9600 baud
      s[S_INITIALIZED] = 1;
    }
  }

  /** The current level of the interrupt line. */
  get irqLevel(): boolean {
    return this.#s[S_LEVEL] !== 0;
  }

  /** Bytes waiting in the receive FIFO. */
  get rxPending(): number {
    return this.#s[S_RX_COUNT];
  }

  #rxPush(b: number): boolean {
    const s = this.#s;
    if (s[S_RX_COUNT] >= RX_FIFO_SIZE) return false;
    s[S_RX + ((s[S_RX_HEAD] + s[S_RX_COUNT]) % RX_FIFO_SIZE)] = b;
    s[S_RX_COUNT]++;
    return true;
  }

  #rxShift(): number {
    const s = this.#s;
    if (s[S_RX_COUNT] === 0) return 0;
    const b = s[S_RX + s[S_RX_HEAD]];
    s[S_RX_HEAD] = (s[S_RX_HEAD] + 1) % RX_FIFO_SIZE;
    s[S_RX_COUNT]--;
    return b;
  }

  /**
   * Queues bytes for the guest to read (host keyboard input). Bytes beyond the 16-byte FIFO set
   * the overrun flag and are dropped.
   *
   * @param bytes The bytes.
   */
  input(bytes: Uint8Array): void {
    const s = this.#s;
    for (const b of bytes) {
      if (!this.#rxPush(b)) {
        s[S_LSR] |= LSR_OE;
        break;
      }
    }
    if (s[S_RX_COUNT] > 0) s[S_LSR] |= LSR_DR;
    this.#update();
  }

  /**
   * A guest `in` from `base + offset`.
   *
   * @param offset Register offset, 0–7.
   * @returns The byte read.
   */
  read(offset: number): number {
    const s = this.#s;
    switch (offset & 7) {
      case UartRegister.DATA: {
        if (s[S_LCR] & LCR_DLAB) return s[S_DLL];
        const b = this.#rxShift();
        if (s[S_RX_COUNT] === 0) s[S_LSR] &= ~LSR_DR;
        this.#update();
        return b;
      }
      case UartRegister.IER:
        return s[S_LCR] & LCR_DLAB ? s[S_DLM] : s[S_IER];
      case UartRegister.IIR_FCR: {
        const iir = this.#iir();
        // Reading IIR while it reports "THR empty" acknowledges that interrupt.
        if ((iir & 0x0f) === IIR_THRI) {
          s[S_THR_PENDING] = 0;
          this.#update();
        }
        return iir | (s[S_FCR] & FCR_ENABLE_FIFO ? IIR_FIFO_ENABLED : 0);
      }
      case UartRegister.LCR:
        return s[S_LCR];
      case UartRegister.MCR:
        return s[S_MCR];
      case UartRegister.LSR: {
        const lsr = s[S_LSR];
        // Error bits clear on read.
        s[S_LSR] &= ~(LSR_OE | LSR_BRK_ERROR_BITS);
        if (lsr & (LSR_OE | LSR_BRK_ERROR_BITS)) this.#update();
        return lsr;
      }
      case UartRegister.MSR: {
        if (s[S_MCR] & MCR_LOOP) {
          // Loopback: RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD.
          const m = s[S_MCR];
          return ((m & 0x02) ? MSR_CTS : 0) | ((m & 0x01) ? MSR_DSR : 0) |
            ((m & 0x04) ? MSR_RI : 0) | ((m & 0x08) ? MSR_DCD : 0);
        }
        const msr = s[S_MSR];
        s[S_MSR] &= ~MSR_DELTA_MASK;
        if (msr & MSR_DELTA_MASK) this.#update();
        return msr;
      }
      default:
        return s[S_SCR];
    }
  }

  /**
   * A guest `out` to `base + offset`.
   *
   * @param offset Register offset, 0–7.
   * @param value The byte written.
   */
  write(offset: number, value: number): void {
    const s = this.#s;
    value &= 0xff;
    switch (offset & 7) {
      case UartRegister.DATA:
        if (s[S_LCR] & LCR_DLAB) {
          s[S_DLL] = value;
          return;
        }
        if (s[S_MCR] & MCR_LOOP) {
          if (!this.#rxPush(value)) s[S_LSR] |= LSR_OE;
          s[S_LSR] |= LSR_DR;
        } else {
          this.#output(value);
        }
        // Sent at once: THR is empty again and "THR empty" is pending anew.
        s[S_THR_PENDING] = 1;
        s[S_LSR] |= LSR_THRE | LSR_TEMT;
        this.#update();
        return;
      case UartRegister.IER: {
        if (s[S_LCR] & LCR_DLAB) {
          s[S_DLM] = value;
          return;
        }
        const was = s[S_IER];
        s[S_IER] = value & 0x0f;
        // Enabling the THRE interrupt with THR empty raises it (as a real 16550 does).
        if (!(was & IER_THRI) && (s[S_IER] & IER_THRI) && (s[S_LSR] & LSR_THRE)) {
          s[S_THR_PENDING] = 1;
        }
        this.#update();
        return;
      }
      case UartRegister.IIR_FCR:
        s[S_FCR] = value & 0xc9;
        if (value & FCR_CLEAR_RCVR) {
          s[S_RX_COUNT] = 0;
          s[S_LSR] &= ~LSR_DR;
        }
        this.#update();
        return;
      case UartRegister.LCR:
        s[S_LCR] = value;
        return;
      case UartRegister.MCR: {
        const was = s[S_MCR];
        s[S_MCR] = value & 0x1f;
        if ((was ^ s[S_MCR]) & MCR_LOOP) s[S_MSR] |= MSR_DCTS;
        this.#update();
        return;
      }
      case UartRegister.LSR:
      case UartRegister.MSR:
        return; // read-only
      default:
        s[S_SCR] = value;
    }
  }

  #iir(): number {
    const s = this.#s;
    const ier = s[S_IER];
    const lsr = s[S_LSR];
    if ((ier & IER_RLSI) && (lsr & (LSR_OE | LSR_BRK_ERROR_BITS))) return IIR_RLSI;
    if ((ier & IER_RDI) && (lsr & LSR_DR)) return IIR_RDI;
    if ((ier & IER_THRI) && s[S_THR_PENDING]) return IIR_THRI;
    if ((ier & IER_MSI) && (s[S_MSR] & MSR_DELTA_MASK) && !(s[S_MCR] & MCR_LOOP)) {
      return IIR_MSI;
    }
    return IIR_NO_INT;
  }

  #update(): void {
    const level = (this.#iir() & IIR_NO_INT) === 0;
    if (level !== (this.#s[S_LEVEL] !== 0)) {
      this.#s[S_LEVEL] = level ? 1 : 0;
      this.#irq(level);
    }
  }
}

// A one-slot mailbox in a SharedArrayBuffer between the vCPU worker and the main thread: the
// worker posts one access (MMIO, a port, or a PCI configuration register) and sleeps in
// Atomics.wait; the main thread serves it and wakes the worker. Also carries the stop flag.
// Layout (little-endian, 64 bytes):
//   0 i32 state (0 idle, 1 request posted, 2 response ready)   4 i32 stop flag
//   8 i32 is-write   12 i32 length   16 f64 address   24 u8[8] data   32 i32 kind (AccessKind)

const STATE = 0;
const STOP = 1;
const WRITE = 2;
const LEN = 3;
const KIND = 8;
const IDLE = 0;
const REQUEST = 1;
const RESPONSE = 2;

/** Bytes of shared memory a {@link Mailbox} needs. */
export const MAILBOX_SIZE = 64;

/** What the address of a posted access names. */
export const AccessKind = {
  /** A guest-physical address (an MMIO exit). */
  MMIO: 0,
  /** An I/O port. */
  IO: 1,
  /** A PCI configuration register, as an ECAM-style offset (configuration mechanism #1). */
  PCI_CONFIG: 2,
} as const;

/** Serves one access: fill `data` on a read. `kind` says what `addr` is ({@link AccessKind}). */
export type MmioHandler = (addr: number, write: boolean, data: Uint8Array, kind: number) => void;

/** The shared MMIO mailbox (both sides). */
export class Mailbox {
  readonly #i32: Int32Array;
  readonly #f64: Float64Array;
  readonly #data: Uint8Array;

  /**
   * @param sab {@link MAILBOX_SIZE} bytes shared by both threads.
   */
  constructor(sab: SharedArrayBuffer) {
    this.#i32 = new Int32Array(sab, 0, 9);
    this.#f64 = new Float64Array(sab, 16, 1);
    this.#data = new Uint8Array(sab, 24, 8);
  }

  /** Whether the main thread asked the vCPU to stop. */
  get stopRequested(): boolean {
    return Atomics.load(this.#i32, STOP) !== 0;
  }

  /** Asks the vCPU to stop at its next exit. */
  requestStop(): void {
    Atomics.store(this.#i32, STOP, 1);
  }

  /**
   * Worker side: posts an access, rings `doorbell`, waits for the answer and copies read data
   * back into `data`.
   *
   * @param addr Guest-physical address.
   * @param write True for a write.
   * @param data 1 to 8 bytes: the value written, or where the value read goes.
   * @param doorbell Tells the main thread a request is waiting.
   * @param kind What `addr` is ({@link AccessKind}; default MMIO).
   */
  request(
    addr: number,
    write: boolean,
    data: Uint8Array,
    doorbell: () => void,
    kind: number = AccessKind.MMIO,
  ): void {
    const len = Math.min(data.byteLength, 8);
    this.#f64[0] = addr;
    Atomics.store(this.#i32, KIND, kind);
    Atomics.store(this.#i32, WRITE, write ? 1 : 0);
    Atomics.store(this.#i32, LEN, len);
    this.#data.fill(0);
    if (write) this.#data.set(data.subarray(0, len));
    Atomics.store(this.#i32, STATE, REQUEST);
    doorbell();
    while (Atomics.load(this.#i32, STATE) === REQUEST) {
      Atomics.wait(this.#i32, STATE, REQUEST, 1000);
      if (this.stopRequested && Atomics.load(this.#i32, STATE) === REQUEST) break;
    }
    if (!write) data.set(this.#data.subarray(0, len));
    Atomics.store(this.#i32, STATE, IDLE);
  }

  /**
   * Main side: serves the waiting request, if any, and wakes the worker.
   *
   * @param handler Performs the access.
   * @returns Whether a request was served.
   */
  serve(handler: MmioHandler): boolean {
    if (Atomics.load(this.#i32, STATE) !== REQUEST) return false;
    const len = Atomics.load(this.#i32, LEN);
    const write = Atomics.load(this.#i32, WRITE) !== 0;
    const data = new Uint8Array(len);
    if (write) data.set(this.#data.subarray(0, len));
    try {
      handler(this.#f64[0], write, data, Atomics.load(this.#i32, KIND));
    } finally {
      if (!write) this.#data.set(data);
      Atomics.store(this.#i32, STATE, RESPONSE);
      Atomics.notify(this.#i32, STATE);
    }
    return true;
  }
}

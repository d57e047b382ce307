// The console shared by the vCPU threads of one VM, in one SharedArrayBuffer: a lock, COM1's
// register state (so that every vCPU drives the same UART), and a byte ring the vCPUs append the
// transmitted bytes to, in the order the guest wrote them, for the main thread to drain.
// Layout (Int32 words, then bytes):
//   0 lock   1 ring write count   2 ring read count   3 unused
//   4 .. 4 + SERIAL_STATE_WORDS   the UART state
//   then RING_SIZE bytes of ring data
// The counts wrap as 32-bit integers; `write - read` is the number of bytes waiting.

import { SERIAL_STATE_WORDS } from "./serial.ts";

const LOCK = 0;
const WRITE = 1;
const READ = 2;
const UART = 4;
const RING_SIZE = 1 << 16;
const RING_OFFSET = (UART + SERIAL_STATE_WORDS) * 4;

/** Bytes of shared memory a {@link ConsoleChannel} needs. */
export const CONSOLE_CHANNEL_SIZE: number = RING_OFFSET + RING_SIZE;

/** The shared console (every side builds one over the same buffer). */
export class ConsoleChannel {
  readonly #i32: Int32Array;
  readonly #ring: Uint8Array;
  /** COM1's register state. */
  readonly uartState: Int32Array;

  /**
   * @param sab {@link CONSOLE_CHANNEL_SIZE} bytes shared by the main thread and every vCPU.
   */
  constructor(sab: SharedArrayBuffer) {
    this.#i32 = new Int32Array(sab, 0, UART);
    this.uartState = new Int32Array(sab, UART * 4, SERIAL_STATE_WORDS);
    this.#ring = new Uint8Array(sab, RING_OFFSET, RING_SIZE);
  }

  /** Takes the lock (vCPU threads; contention lasts one port access). */
  acquire(): void {
    while (Atomics.compareExchange(this.#i32, LOCK, 0, 1) !== 0) {
      Atomics.wait(this.#i32, LOCK, 1, 1);
    }
  }

  /** Releases the lock. */
  release(): void {
    Atomics.store(this.#i32, LOCK, 0);
    Atomics.notify(this.#i32, LOCK, 1);
  }

  /** Bytes in the ring not yet drained. */
  get pending(): number {
    return (Atomics.load(this.#i32, WRITE) - Atomics.load(this.#i32, READ)) | 0;
  }

  /**
   * vCPU side, under the lock: appends a byte. While the ring is full it rings `doorbell` and
   * waits for the main thread to drain it.
   *
   * @param byte The byte.
   * @param doorbell Tells the main thread there is output.
   * @param stopped Whether to give up waiting (the VM is stopping): the byte is dropped.
   */
  push(byte: number, doorbell: () => void, stopped: () => boolean): void {
    for (;;) {
      const read = Atomics.load(this.#i32, READ);
      const write = Atomics.load(this.#i32, WRITE);
      if (((write - read) | 0) < RING_SIZE) {
        this.#ring[write & (RING_SIZE - 1)] = byte;
        Atomics.store(this.#i32, WRITE, (write + 1) | 0);
        return;
      }
      if (stopped()) return;
      doorbell();
      Atomics.wait(this.#i32, READ, read, 100);
    }
  }

  /**
   * Main side: takes every byte written so far.
   *
   * @returns The bytes, in the order they were written (empty when none).
   */
  drain(): Uint8Array {
    const read = Atomics.load(this.#i32, READ);
    const write = Atomics.load(this.#i32, WRITE);
    const n = (write - read) | 0;
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.#ring[(read + i) & (RING_SIZE - 1)];
    Atomics.store(this.#i32, READ, write);
    Atomics.notify(this.#i32, READ);
    return out;
  }
}

/**
 * The bounded receive backlog of a queue pair: frames the backend delivered while the driver
 * had no receive buffers. A ring of bytes holding `[le32 length][frame]` records, allocated on
 * first use; a frame that does not fit is refused (the device drops and counts it), so a
 * driver that never posts buffers costs at most `capacity` bytes.
 *
 * @module
 */

const RECORD_HEADER = 4;

/**
 * A FIFO of frames in a fixed number of bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { FrameBacklog } from "./_net_backlog.ts";
 * const b = new FrameBacklog(64);
 * assert.ok(b.push(new Uint8Array([1, 2, 3]), 3));
 * assert.ok(!b.push(new Uint8Array(100), 100)); // does not fit: refused
 * assert.deepEqual([...b.peek()!], [1, 2, 3]);
 * b.shift();
 * assert.equal(b.length, 0);
 * ```
 */
export class FrameBacklog {
  /** Bytes of frames (and 4-byte record headers) it holds at most. */
  readonly capacity: number;
  #buf: Uint8Array | undefined;
  #view: DataView | undefined;
  #head = 0; // offset of the oldest record
  #tail = 0; // offset where the next record goes
  #wrap = -1; // where the records before the start end, when they wrapped
  #count = 0;
  #bytes = 0;

  /**
   * Create it; nothing is allocated until the first `push`.
   * @param capacity Bytes it may use (at least 5).
   * @throws {RangeError} For a capacity that cannot hold a record.
   */
  constructor(capacity: number) {
    if (!Number.isSafeInteger(capacity) || capacity <= RECORD_HEADER) {
      throw new RangeError(`Backlog capacity must be more than ${RECORD_HEADER} bytes`);
    }
    this.capacity = capacity;
  }

  /** Frames held. */
  get length(): number {
    return this.#count;
  }

  /** Bytes of frame data held. */
  get bytes(): number {
    return this.#bytes;
  }

  /**
   * Append the first `len` bytes of `src`.
   * @param src The frame.
   * @param len Its length.
   * @returns `false` when it does not fit (nothing is stored).
   */
  push(src: Uint8Array, len: number): boolean {
    const need = RECORD_HEADER + len;
    let at: number;
    if (this.#count === 0) {
      this.#head = this.#tail = 0;
      this.#wrap = -1;
      if (need > this.capacity) return false;
      at = 0;
    } else if (this.#wrap < 0 && this.#tail >= this.#head) {
      // One run [head, tail): room at the end, or at the start before head.
      if (this.#tail + need <= this.capacity) at = this.#tail;
      else if (need < this.#head) {
        this.#wrap = this.#tail;
        at = 0;
      } else return false;
    } else {
      // Wrapped: [head, wrap) then [0, tail); room only between tail and head.
      if (this.#tail + need < this.#head) at = this.#tail;
      else return false;
    }
    const buf = this.#buf ??= new Uint8Array(this.capacity);
    const view = this.#view ??= new DataView(buf.buffer);
    view.setUint32(at, len, true);
    buf.set(src.subarray(0, len), at + RECORD_HEADER);
    this.#tail = at + need;
    this.#count++;
    this.#bytes += len;
    return true;
  }

  /**
   * The oldest frame, as a view into the backlog (valid until the next `push` or `shift`).
   * @returns The frame, or `undefined` when empty.
   */
  peek(): Uint8Array | undefined {
    if (this.#count === 0) return undefined;
    if (this.#head === this.#wrap) {
      this.#head = 0;
      this.#wrap = -1;
    }
    const len = this.#view!.getUint32(this.#head, true);
    return this.#buf!.subarray(this.#head + RECORD_HEADER, this.#head + RECORD_HEADER + len);
  }

  /** Drop the oldest frame. */
  shift(): void {
    if (this.#count === 0) return;
    if (this.#head === this.#wrap) {
      this.#head = 0;
      this.#wrap = -1;
    }
    const len = this.#view!.getUint32(this.#head, true);
    this.#head += RECORD_HEADER + len;
    this.#count--;
    this.#bytes -= len;
    if (this.#head === this.#wrap) {
      this.#head = 0;
      this.#wrap = -1;
    }
  }

  /**
   * Drop every frame.
   * @returns How many were dropped.
   */
  clear(): number {
    const n = this.#count;
    this.#count = 0;
    this.#bytes = 0;
    this.#head = this.#tail = 0;
    this.#wrap = -1;
    return n;
  }
}

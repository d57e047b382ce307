/**
 * The driver side of virtio-vsock for tests without a VM: puts packets on the tx queue,
 * receive buffers on the rx queue (laid out as Linux 6.1 does, header and payload in two
 * descriptors, or in one), event buffers on the event queue, and decodes what the device
 * returns. It works on any {@linkcode RingDriver}: a {@linkcode DriverQueue} in the same
 * process as the device, or a ring of the {@linkcode VhostUserFrontend}.
 *
 * @module
 */

import {
  decodeVsockHeader,
  emptyVsockHeader,
  VIRTIO_VSOCK_TYPE_STREAM,
  VSOCK_EVENT_SIZE,
  VSOCK_HEADER_SIZE,
  VSOCK_HOST_CID,
  type VsockHeader,
  vsockHeader,
} from "../devices/_vsock_packet.ts";
import type { DriverBuffer } from "./queue_driver.ts";
import type { RingDriver } from "./vhost_user_frontend.ts";

/** One packet the device put in an rx buffer. */
export interface VsockRxPacket {
  /** The decoded header. */
  header: VsockHeader;
  /** The payload (`header.len` bytes, cut to what the used length covers). */
  payload: Uint8Array;
  /** The used length the device reported. */
  usedLen: number;
}

/** Options of {@linkcode VsockDriver}. */
export interface VsockDriverOptions {
  /** The rx ring (queue 0). */
  rx: RingDriver;
  /** The tx ring (queue 1). */
  tx: RingDriver;
  /** The event ring (queue 2), if set up. */
  event?: RingDriver;
  /** Notify the device of queue `index` (e.g. `processQueue`, or the frontend's `kick`). */
  kick: (index: number) => void;
  /** The guest's CID: the default source of packets. */
  guestCid: number;
}

/**
 * A vsock driver for tests: raw packets in, decoded packets out.
 *
 * @example
 * ```ts ignore
 * const guest = new VsockDriver({ rx, tx, event, kick: (i) => dev.processQueue(i), guestCid: 3 });
 * guest.postRx(8);
 * guest.send({ srcPort: 5000, dstPort: 1234, op: VIRTIO_VSOCK_OP_REQUEST, bufAlloc: 65536 });
 * const [reply] = guest.receive(); // the RESPONSE, or an RST
 * ```
 */
export class VsockDriver {
  readonly #rx: RingDriver;
  readonly #tx: RingDriver;
  readonly #event: RingDriver | undefined;
  readonly #kick: (index: number) => void;
  #rxOutstanding = 0;
  /** The CID put in `src_cid` unless a packet says otherwise. */
  guestCid: number;

  /**
   * Create it.
   * @param options The rings, the kick and the guest CID.
   */
  constructor(options: VsockDriverOptions) {
    this.#rx = options.rx;
    this.#tx = options.tx;
    this.#event = options.event;
    this.#kick = options.kick;
    this.guestCid = options.guestCid;
  }

  /**
   * Post rx buffers and kick the rx queue.
   * @param count How many.
   * @param payload Payload room of each (default 4096).
   * @param layout `"split"`: a 44-byte header descriptor then the payload (Linux 6.1, default);
   *   `"single"`: one descriptor for both.
   */
  postRx(count: number, payload = 4096, layout: "split" | "single" = "split"): void {
    for (let i = 0; i < count; i++) {
      const chain: DriverBuffer[] = layout === "split"
        ? [{ writable: VSOCK_HEADER_SIZE }, { writable: payload }]
        : [{ writable: VSOCK_HEADER_SIZE + payload }];
      this.#rx.addChain(chain);
      this.#rxOutstanding++;
    }
    this.#kick(0);
  }

  /** rx chains posted and not yet taken back by `receive`. */
  get rxOutstanding(): number {
    return this.#rxOutstanding;
  }

  /**
   * Post rx buffers until `count` are outstanding.
   * @param count The target.
   * @param payload Payload room of each new one.
   * @param layout As in {@linkcode VsockDriver.postRx}.
   */
  topUpRx(count: number, payload = 4096, layout: "split" | "single" = "split"): void {
    const n = count - this.#rxOutstanding;
    if (n > 0) this.postRx(n, payload, layout);
  }

  /**
   * Post any rx chain (for hostile tests) and kick.
   * @param buffers The chain.
   */
  postRxRaw(buffers: DriverBuffer[]): void {
    this.#rx.addChain(buffers);
    this.#rxOutstanding++;
    this.#kick(0);
  }

  /**
   * Send one packet: a header (fields not given: `src_cid` the guest's, `dst_cid` 2, type
   * stream, `len` the payload's length, the rest 0) and its payload, then kick tx.
   * @param fields Header fields.
   * @param payload The payload.
   */
  send(fields: Partial<VsockHeader>, payload: Uint8Array = new Uint8Array(0)): void {
    const header = vsockHeader({
      srcCid: this.guestCid,
      dstCid: VSOCK_HOST_CID,
      type: VIRTIO_VSOCK_TYPE_STREAM,
      len: payload.length,
      ...fields,
    });
    const chain: DriverBuffer[] = [{ readable: header }];
    if (payload.length > 0) chain.push({ readable: payload });
    this.sendRaw(chain);
  }

  /**
   * Send any tx chain (for hostile tests) and kick.
   * @param buffers The chain.
   */
  sendRaw(buffers: DriverBuffer[]): void {
    this.reclaimTx();
    this.#tx.addChain(buffers);
    this.#kick(1);
  }

  /**
   * Take the tx chains the device finished with (freeing their descriptors).
   * @returns Their used lengths.
   */
  reclaimTx(): number[] {
    return this.#tx.takeAllUsed().map((u) => u.len);
  }

  /**
   * Take every packet the device put in rx buffers.
   * @returns The packets, oldest first (buffers returned with used length 0 are skipped).
   */
  receive(): VsockRxPacket[] {
    const out: VsockRxPacket[] = [];
    for (const u of this.#rx.takeAllUsed()) {
      this.#rxOutstanding--;
      if (u.len < VSOCK_HEADER_SIZE) continue;
      const header = decodeVsockHeader(
        new DataView(u.written.buffer, u.written.byteOffset, VSOCK_HEADER_SIZE),
        emptyVsockHeader(),
      );
      const end = Math.min(u.len, VSOCK_HEADER_SIZE + header.len);
      out.push({ header, payload: u.written.slice(VSOCK_HEADER_SIZE, end), usedLen: u.len });
    }
    return out;
  }

  /** rx buffers the device returned but `receive` has not taken. */
  get pendingRx(): number {
    return this.#rx.pendingUsed();
  }

  /**
   * Post event buffers and kick the event queue.
   * @param count How many.
   * @param size Bytes of each (default 4).
   */
  postEvents(count: number, size = VSOCK_EVENT_SIZE): void {
    if (this.#event === undefined) throw new RangeError("No event ring");
    for (let i = 0; i < count; i++) this.#event.addChain([{ writable: size }]);
    this.#kick(2);
  }

  /**
   * Take the events the device delivered.
   * @returns Their ids (`-1` for a buffer returned empty).
   */
  events(): number[] {
    if (this.#event === undefined) throw new RangeError("No event ring");
    return this.#event.takeAllUsed().map((u) =>
      u.len >= VSOCK_EVENT_SIZE
        ? new DataView(u.written.buffer, u.written.byteOffset).getUint32(0, true)
        : -1
    );
  }
}

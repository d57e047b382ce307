/**
 * The socket device (virtio 1.2 §5.10): virtio-vsock with the host side in this process.
 * Guest connections to the host (CID 2) reach listeners of the TypeScript API
 * ({@linkcode VsockDevice.listen}) or, in the hybrid Unix-socket model of Firecracker and
 * Cloud Hypervisor, a Unix socket listening at `<udsPath>_<port>`; host programs reach guest
 * listeners through {@linkcode VsockDevice.connect} or by writing `CONNECT <port>\n` to the
 * device's own Unix socket at `udsPath`.
 *
 * Queues and the chains each takes (for drivers and generic harnesses):
 *
 * | index | name  | chain                                                            | used length        |
 * | ----- | ----- | ---------------------------------------------------------------- | ------------------ |
 * | 0     | rx    | device-writable, at least 44 bytes: header, then payload room    | 44 + payload bytes |
 * | 1     | tx    | device-readable: 44-byte header, then `len` payload bytes         | 0                  |
 * | 2     | event | device-writable, at least 4 bytes (`struct virtio_vsock_event`)  | 4                  |
 *
 * Readable parts of rx and event chains and writable parts of tx chains are ignored; an rx or
 * event chain too short for what it must hold is returned with used length 0 and counted.
 * Only rx and tx must be set up: QEMU's vhost-user-vsock keeps the event queue to itself.
 *
 * @example A guest connection to a TypeScript listener, through the driver harness
 * ```ts
 * import assert from "node:assert/strict";
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { MmioTransport } from "../transport/mmio.ts";
 * import { MmioDriver, VsockDriver } from "../testing/mod.ts";
 * import { VIRTIO_VSOCK_OP_REQUEST, VIRTIO_VSOCK_OP_RESPONSE, VIRTIO_VSOCK_OP_RW, VsockDevice } from "./vsock.ts";
 * const vsock = new VsockDevice({ guestCid: 3 });
 * // The host side: a TypeScript listener on port 1234 that answers "pong".
 * vsock.listen(1234, async ({ writable }) => {
 *   const w = writable.getWriter();
 *   await w.write(new TextEncoder().encode("pong"));
 * });
 * // The guest side: the driver harness through the MMIO transport.
 * const mem = GuestMemory.create(4 << 20);
 * const mmio = new MmioDriver(new MmioTransport(vsock, mem), mem);
 * const [rx, tx, event] = mmio.init();
 * const guest = new VsockDriver({ rx, tx, event, kick: (i) => mmio.kick(i, true), guestCid: 3 });
 * guest.postRx(8);
 * guest.send({ srcPort: 5000, dstPort: 1234, op: VIRTIO_VSOCK_OP_REQUEST, bufAlloc: 65536 });
 * assert.equal(guest.receive()[0].header.op, VIRTIO_VSOCK_OP_RESPONSE);
 * await new Promise((r) => setTimeout(r, 0)); // the handler runs, its write reaches the guest
 * const [data] = guest.receive();
 * assert.equal(data.header.op, VIRTIO_VSOCK_OP_RW);
 * assert.equal(new TextDecoder().decode(data.payload), "pong");
 * vsock.remove();
 * ```
 *
 * @module
 */

import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "../queue/split.ts";
import type { ChainWriter, DescriptorChain } from "../queue/chain.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import { QueueError } from "../queue/error.ts";
import {
  DEFAULT_SERVE_BUDGET,
  featureBit,
  serveQueue,
  TYPE_VSOCK,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  type VirtioDeviceConfig,
  VirtioDeviceInfo,
  VirtioError,
  type VirtioQueueConfig,
} from "./device.ts";
import {
  checkVsockPacket,
  decodeVsockHeader,
  emptyVsockHeader,
  encodeVsockHeader,
  VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
  VIRTIO_VSOCK_F_SEQPACKET,
  VIRTIO_VSOCK_F_STREAM,
  VIRTIO_VSOCK_OP_CREDIT_REQUEST,
  VIRTIO_VSOCK_OP_CREDIT_UPDATE,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW,
  VIRTIO_VSOCK_OP_SHUTDOWN,
  VIRTIO_VSOCK_SHUTDOWN_BOTH,
  VIRTIO_VSOCK_SHUTDOWN_RCV,
  VIRTIO_VSOCK_SHUTDOWN_SEND,
  VIRTIO_VSOCK_TYPE_SEQPACKET,
  VIRTIO_VSOCK_TYPE_STREAM,
  VSOCK_EVENT_SIZE,
  VSOCK_HEADER_SIZE,
  VSOCK_HOST_CID,
  vsockFwdCntValid,
  type VsockHeader,
  type VsockPacketLimits,
  vsockTypesAllowed,
  vsockWithinCredit,
} from "./_vsock_packet.ts";
import {
  PENDING_CREDIT_REQUEST,
  PENDING_CREDIT_UPDATE,
  PENDING_REQUEST,
  PENDING_RESPONSE,
  PENDING_RST,
  PENDING_SHUTDOWN,
  VsockConn,
} from "./_vsock_conn.ts";
import {
  READ_AGAIN,
  READ_TOO_BIG,
  StreamsEndpoint,
  type VsockConnection,
  VsockConnectionError,
  type VsockEndpoint,
  type VsockSocketType,
} from "./_vsock_endpoint.ts";
import { UnixMuxer } from "./_vsock_unix.ts";

export { parseConnectLine } from "./_vsock_unix.ts";

export * from "./_vsock_packet.ts";
export {
  type VsockConnection,
  VsockConnectionError,
  type VsockEndpoint,
  type VsockEndpointEvents,
  type VsockSocketType,
} from "./_vsock_endpoint.ts";

/** Queue index of rx (device to driver). */
export const VSOCK_RX_QUEUE = 0;
/** Queue index of tx (driver to device). */
export const VSOCK_TX_QUEUE = 1;
/** Queue index of the event queue. */
export const VSOCK_EVENT_QUEUE = 2;
/** Default size of each queue. */
export const VSOCK_QUEUE_SIZE = 256;
/** Default receive buffer per connection (`buf_alloc`): 256 KiB, Linux's default too. */
export const VSOCK_BUFFER_SIZE = 256 << 10;
/** Default and largest payload of one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). */
export const VSOCK_MAX_PACKET = 64 << 10;
/** Default connection cap (established, connecting and closing ones together). */
export const VSOCK_MAX_CONNECTIONS = 1024;
/** Most rx buffers one read of a host socket fills. */
const RX_BATCH = 64;
/** Default capacity of the queue of RSTs owed for packets without a connection. */
export const VSOCK_REPLY_QUEUE = 256;
/** Byte offset of `guest_cid` (le64) in the configuration space (virtio 1.2 §5.10.4). */
export const VSOCK_CONFIG_GUEST_CID = 0;
/** Size of the configuration space. */
export const VSOCK_CONFIG_SIZE = 8;

/** Why the device sent an RST (each has a counter in {@linkcode VsockStats.resets}). */
export type VsockResetReason =
  /** A packet of an unknown type (virtio 1.2 §5.10.6.3). */
  | "unknownType"
  /** A packet with an unknown op. */
  | "unknownOp"
  /** `len` larger than the chain's payload. */
  | "lengthExceedsBuffer"
  /** `len` larger than the device accepts. */
  | "lengthTooLarge"
  /** A connection request to a CID other than the host. */
  | "badDestination"
  /** A packet for a connection that does not exist. */
  | "noConnection"
  /** A connection request to a port nobody listens on. */
  | "noListener"
  /** A connection request beyond the connection cap. */
  | "tooManyConnections"
  /** An op that makes no sense in the connection's state (data before RESPONSE, …). */
  | "protocol"
  /** Data beyond the credit the device granted. */
  | "creditViolation"
  /** A `fwd_cnt` that went backwards or past what was sent. */
  | "badCredit"
  /** A packet whose type differs from its connection's. */
  | "typeMismatch"
  /** The host side failed (socket error, write to a closed socket). */
  | "hostError"
  /** The host program reset the connection. */
  | "hostReset"
  /** A host message larger than the guest's whole receive buffer (seqpacket). */
  | "messageTooLarge"
  /** The guest did not answer a connection request in time. */
  | "connectTimeout"
  /** The guest did not finish closing in time. */
  | "closeTimeout"
  /** The normal end of a connection: both sides shut down. */
  | "closed";

/** Why the device dropped a packet or a buffer without an answer. */
export type VsockDropReason =
  /** A tx chain shorter than a header. */
  | "shortHeader"
  /** A source CID that is not the guest's. */
  | "badSourceCid"
  /** Reserved CID bits set. */
  | "reservedCidBits"
  /** A non-request packet to a CID other than the host. */
  | "badDestination"
  /** An RST for a connection that does not exist. */
  | "strayRst"
  /** A packet for a connection that is closing. */
  | "closing"
  /** An rx chain with less than a header of writable room. */
  | "badRxBuffer"
  /** An event chain with less than 4 writable bytes. */
  | "badEventBuffer";

/** Counters of a {@linkcode VsockDevice}, since creation. */
export interface VsockStats {
  /** Connections the guest opened (accepted by a host listener). */
  guestConnections: number;
  /** Connections the host opened (accepted by the guest). */
  hostConnections: number;
  /** Host connection attempts the guest refused or did not answer. */
  hostConnectionsRefused: number;
  /** Connections that ended (any way). */
  connectionsClosed: number;
  /** Payload bytes put in rx buffers. */
  bytesToGuest: number;
  /** Payload bytes taken from tx buffers. */
  bytesFromGuest: number;
  /** Packets put in rx buffers. */
  packetsToGuest: number;
  /** Packets taken from tx buffers. */
  packetsFromGuest: number;
  /** RSTs sent, by reason. */
  resets: Record<VsockResetReason, number>;
  /** Packets and buffers dropped, by reason. */
  dropped: Record<VsockDropReason, number>;
  /** TRANSPORT_RESET events delivered. */
  transportResets: number;
}

/** Options of {@linkcode VsockDevice}. */
export interface VsockOptions {
  /** The guest's CID: 3 to 0xfffffffe (0, 1, 2 and 0xffffffff are reserved). */
  guestCid: number;
  /**
   * The hybrid Unix-socket host side: host programs connect to this socket and write
   * `CONNECT <port>\n`; guest connections to port P reach a listener at `<udsPath>_P`. The
   * socket is created here (an existing socket file is replaced) and removed by `remove()`.
   */
  udsPath?: string;
  /** Maximum size of each queue (default 256). */
  queueSize?: number;
  /** Our `buf_alloc` per connection (default 256 KiB): the most guest bytes held un-consumed. */
  bufferSize?: number;
  /** Largest payload of one packet either way (default 64 KiB). */
  maxPacketSize?: number;
  /** Connection cap (default 1024). */
  maxConnections?: number;
  /** Offer VIRTIO_VSOCK_F_SEQPACKET (default true). */
  seqpacket?: boolean;
  /** How long a host connection waits for the guest's answer, in ms (default 5000). */
  connectTimeoutMs?: number;
  /** How long a closing connection waits for the guest's RST, in ms (default 2000). */
  closeTimeoutMs?: number;
  /** Called for each error while serving (default: ignore). */
  onError?: (err: VirtioError) => void;
}

/** Options of {@linkcode VsockDevice.connect}. */
export interface VsockConnectOptions {
  /** The socket type (default `"stream"`). */
  type?: VsockSocketType;
}

/** Options of {@linkcode VsockDevice.listen}. */
export interface VsockListenOptions {
  /** The socket type accepted (default `"stream"`); requests of the other type are refused. */
  type?: VsockSocketType;
}

/** A TypeScript listener on a host port. */
export interface VsockListener {
  /** The host port. */
  readonly port: number;
  /** The socket type it accepts. */
  readonly type: VsockSocketType;
  /** Stop listening; established connections stay. */
  close(): void;
}

interface ListenerEntry {
  type: number;
  handler: (conn: VsockConnection) => void;
}

// Wire type ↔ API type.
const wireType = (t: VsockSocketType | undefined) =>
  t === "seqpacket" ? VIRTIO_VSOCK_TYPE_SEQPACKET : VIRTIO_VSOCK_TYPE_STREAM;
const apiType = (t: number): VsockSocketType =>
  t === VIRTIO_VSOCK_TYPE_SEQPACKET ? "seqpacket" : "stream";

// Host ports handed to host-initiated connections: [2^30, 2^31), as Firecracker does.
const LOCAL_PORT_FIRST = 0x4000_0000;
const LOCAL_PORT_SPAN = 0x4000_0000;

function positive(name: string, value: number | undefined, fallback: number, max: number) {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < 1 || v > max) {
    throw new RangeError(`${name} must be an integer from 1 to ${max}, got ${v}`);
  }
  return v;
}

function newResets(): Record<VsockResetReason, number> {
  return {
    unknownType: 0,
    unknownOp: 0,
    lengthExceedsBuffer: 0,
    lengthTooLarge: 0,
    badDestination: 0,
    noConnection: 0,
    noListener: 0,
    tooManyConnections: 0,
    protocol: 0,
    creditViolation: 0,
    badCredit: 0,
    typeMismatch: 0,
    hostError: 0,
    hostReset: 0,
    messageTooLarge: 0,
    connectTimeout: 0,
    closeTimeout: 0,
    closed: 0,
  };
}

function newDrops(): Record<VsockDropReason, number> {
  return {
    shortHeader: 0,
    badSourceCid: 0,
    reservedCidBits: 0,
    badDestination: 0,
    strayRst: 0,
    closing: 0,
    badRxBuffer: 0,
    badEventBuffer: 0,
  };
}

/**
 * The virtio socket device.
 *
 * - Connections are keyed by (guest port, host port); the guest's CID is fixed and the host
 *   is CID 2. Every packet from the driver is checked ({@linkcode checkVsockPacket}) and then
 *   against its connection's state: anything wrong is answered with an RST or dropped, and
 *   counted in {@linkcode VsockDevice.stats}; nothing the guest sends throws.
 * - Credit both ways (virtio 1.2 §5.10.6.3): the guest may send at most `bufferSize` bytes
 *   the host side has not consumed (more resets the connection); the device sends the guest
 *   at most what its `buf_alloc`/`fwd_cnt` allow, and stops reading the host side while the
 *   guest's credit is spent: a guest that never reads makes the host's writes block, it does
 *   not make the device buffer.
 * - Everything owed to the guest is bounded: control packets are flags on their connection,
 *   RSTs for packets without a connection sit in a queue of {@linkcode VSOCK_REPLY_QUEUE}
 *   entries, and when that queue is full the tx queue waits (virtio 1.2 §5.10.6.1) until the
 *   driver posts rx buffers. Connections are capped at `maxConnections`.
 * - A device reset drops every connection and sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on
 *   the next activation; so does an activation on rings that were in use before (a frontend
 *   that reconnected, a restarted backend), and {@linkcode VsockDevice.transportReset}
 *   (after a restore).
 */
export class VsockDevice extends VirtioDeviceBase {
  /** Counters since creation. */
  readonly stats: VsockStats = {
    guestConnections: 0,
    hostConnections: 0,
    hostConnectionsRefused: 0,
    connectionsClosed: 0,
    bytesToGuest: 0,
    bytesFromGuest: 0,
    packetsToGuest: 0,
    packetsFromGuest: 0,
    resets: newResets(),
    dropped: newDrops(),
    transportResets: 0,
  };
  #guestCid: number;
  readonly #config: DataView;
  readonly #onError: ((err: VirtioError) => void) | undefined;
  readonly #bufferSize: number;
  readonly #maxPacket: number;
  readonly #maxConnections: number;
  readonly #connectTimeoutMs: number;
  readonly #closeTimeoutMs: number;
  readonly #creditThreshold: number;
  readonly #limits: VsockPacketLimits;
  // Connections by host port, then guest port (no key strings on the hot path).
  readonly #conns = new Map<number, Map<number, VsockConn>>();
  #connCount = 0;
  // Endpoints finishing on their own after their connection left the table.
  readonly #lingering = new Set<VsockEndpoint>();
  // Connections with something for the guest, in round-robin order.
  readonly #ready = new Set<VsockConn>();
  // RSTs owed for packets without a connection: src CID, src port, dst port, type.
  readonly #replies = new Uint32Array(VSOCK_REPLY_QUEUE * 4);
  #replyHead = 0;
  #replyLen = 0;
  readonly #listeners = new Map<number, ListenerEntry>();
  #nextLocalPort = 0;
  #unix: UnixMuxer | undefined;
  // Scratch, reused for every packet.
  readonly #txHeader = emptyVsockHeader();
  readonly #txBytes = new Uint8Array(VSOCK_HEADER_SIZE);
  readonly #txView = new DataView(this.#txBytes.buffer);
  readonly #rxHeader = emptyVsockHeader();
  readonly #rxBytes = new Uint8Array(VSOCK_HEADER_SIZE);
  readonly #rxView = new DataView(this.#rxBytes.buffer);
  readonly #eventBytes = new Uint8Array(VSOCK_EVENT_SIZE);
  readonly #views: Uint8Array[] = [];
  // Endpoints holding views of the running tx pass, and the chains those views are in.
  readonly #touched: VsockEndpoint[] = [];
  readonly #deferred: number[] = [];
  // The chains of one batched read, their payload room, where their header views end.
  readonly #batchChains: DescriptorChain[] = [];
  readonly #batchRooms = new Int32Array(RX_BATCH);
  readonly #batchHeaderEnd = new Int32Array(RX_BATCH);
  // Ring position after each chain of a batch was taken, to give back the ones not filled.
  readonly #batchAfter = new Int32Array(RX_BATCH);
  readonly #headerViews: Uint8Array[] = [];
  // Scheduling.
  #rxScheduled = false;
  #rxTimer: ReturnType<typeof setTimeout> | undefined;
  #txTimer: ReturnType<typeof setTimeout> | undefined;
  #eventTimer: ReturnType<typeof setTimeout> | undefined;
  #txBlocked = false;
  #everActive = false;
  #transportResetPending = false;
  #removed = false;

  /**
   * Create the device; with `udsPath`, bind its Unix socket.
   * @param options The guest CID, the host side and the limits.
   * @throws {RangeError} When the CID is reserved or a limit is out of range.
   * @throws {Error} When `udsPath` cannot be bound.
   */
  constructor(options: VsockOptions) {
    const cid = options.guestCid;
    // virtio 1.2 §5.10.4: 0, 1, 2 and 0xffffffff are reserved; the upper 32 bits are zero.
    if (!Number.isSafeInteger(cid) || cid < 3 || cid >= 0xffffffff) {
      throw new RangeError(`Guest CID must be from 3 to 0xfffffffe, got ${cid}`);
    }
    const queueSize = options.queueSize ?? VSOCK_QUEUE_SIZE;
    if (
      !Number.isInteger(queueSize) || queueSize < 2 || queueSize > 32768 ||
      (queueSize & (queueSize - 1)) !== 0
    ) {
      throw new RangeError(`Queue size must be a power of two from 2 to 32768, got ${queueSize}`);
    }
    const bufferSize = positive("bufferSize", options.bufferSize, VSOCK_BUFFER_SIZE, 0xffffffff);
    const maxPacket = positive("maxPacketSize", options.maxPacketSize, VSOCK_MAX_PACKET, 1 << 24);
    const maxConnections = positive(
      "maxConnections",
      options.maxConnections,
      VSOCK_MAX_CONNECTIONS,
      1 << 20,
    );
    const connectTimeoutMs = positive(
      "connectTimeoutMs",
      options.connectTimeoutMs,
      5000,
      0x7fffffff,
    );
    const closeTimeoutMs = positive("closeTimeoutMs", options.closeTimeoutMs, 2000, 0x7fffffff);
    let features = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC) |
      featureBit(VIRTIO_F_EVENT_IDX) | featureBit(VIRTIO_VSOCK_F_STREAM);
    if (options.seqpacket ?? true) features |= featureBit(VIRTIO_VSOCK_F_SEQPACKET);
    const space = new Uint8Array(VSOCK_CONFIG_SIZE);
    super(
      TYPE_VSOCK,
      new VirtioDeviceInfo("virtio-vsock", features, [queueSize, queueSize, queueSize], space),
    );
    this.#config = new DataView(space.buffer);
    this.#guestCid = cid;
    this.#config.setUint32(VSOCK_CONFIG_GUEST_CID, cid, true);
    this.#onError = options.onError;
    this.#bufferSize = bufferSize;
    this.#maxPacket = maxPacket;
    this.#maxConnections = maxConnections;
    this.#connectTimeoutMs = connectTimeoutMs;
    this.#closeTimeoutMs = closeTimeoutMs;
    // Tell the guest about returned credit once half its window is free again: it never
    // runs dry while the host keeps up, and an update costs one rx buffer per half window.
    this.#creditThreshold = Math.max(1, Math.floor(bufferSize / 2));
    this.#limits = {
      guestCid: cid,
      stream: true,
      seqpacket: false,
      maxPayload: Math.min(maxPacket, bufferSize),
    };
    this.#nextLocalPort = 0;
    if (options.udsPath !== undefined) {
      this.#unix = new UnixMuxer(options.udsPath, {
        sendBuffer: bufferSize,
        openFromHost: (port, endpoint) =>
          this.#openFromHost(port, VIRTIO_VSOCK_TYPE_STREAM, () => endpoint),
        onError: (err) => this.#error(VirtioError.from(err)),
      });
    }
  }

  /** The guest's CID. */
  get guestCid(): number {
    return this.#guestCid;
  }

  /** The Unix socket host programs connect to, if any. */
  get udsPath(): string | undefined {
    return this.#unix?.path;
  }

  /** Connections in the table now (connecting, established or closing). */
  get connectionCount(): number {
    return this.#connCount;
  }

  /** Whether a TRANSPORT_RESET event waits for an event buffer. */
  get transportResetPending(): boolean {
    return this.#transportResetPending;
  }

  /** Only rx and tx must be set up; the event queue is optional. */
  protected override requiredQueues(): number {
    return 2;
  }

  // -------------------------------------------------------------------------------------------
  // Life cycle

  /**
   * Take the negotiated socket types; queue a TRANSPORT_RESET when the device served a driver
   * before, or the rings show one used them (a reconnected frontend, a restarted backend).
   * @param config The activation config.
   */
  protected override onActivate(config: VirtioDeviceConfig): void {
    const types = vsockTypesAllowed(config.ackedFeatures);
    this.#limits.stream = types.stream;
    this.#limits.seqpacket = types.seqpacket;
    let used = false;
    for (const qc of config.queues) if (qc.queue.inUse()) used = true;
    if (this.#everActive || used) this.#transportResetPending = true;
    this.#everActive = true;
    queueMicrotask(() => {
      this.#serveEvents();
      this.#serveRx();
    });
  }

  /**
   * The queue set or memory changed without a reset (a ring stop/start around a VM pause):
   * connections stay; serving resumes on whatever queues are there.
   * @param _config The new config.
   */
  protected override onReconfigure(_config: VirtioDeviceConfig): void {
    this.#cancelTimers();
    queueMicrotask(() => {
      this.#serveEvents();
      this.#serveRx();
      if (this.#txBlocked) this.#serveTx();
    });
  }

  /**
   * Drop every connection (the host sides see a reset) and owe the next driver a
   * TRANSPORT_RESET. Listeners stay.
   * @param wasActive The config the device was active with, if any.
   */
  protected override onReset(wasActive: VirtioDeviceConfig | undefined): void {
    this.#dropAll("transport reset");
    this.#cancelTimers();
    this.#txBlocked = false;
    if (wasActive !== undefined || this.#everActive) this.#transportResetPending = true;
  }

  /**
   * Drop every connection now and send VIRTIO_VSOCK_EVENT_TRANSPORT_RESET as soon as the
   * driver has an event buffer (virtio 1.2 §5.10.6.6): after a snapshot restore or when the
   * guest moved. With `guestCid`, the configuration space gets the new CID first (the driver
   * re-reads it on the event).
   * @param guestCid A new CID for the guest (default: keep).
   * @throws {RangeError} When `guestCid` is reserved.
   */
  transportReset(guestCid?: number): void {
    if (guestCid !== undefined) {
      if (!Number.isSafeInteger(guestCid) || guestCid < 3 || guestCid >= 0xffffffff) {
        throw new RangeError(`Guest CID must be from 3 to 0xfffffffe, got ${guestCid}`);
      }
      this.#guestCid = guestCid;
      this.#limits.guestCid = guestCid;
      this.#config.setUint32(VSOCK_CONFIG_GUEST_CID, guestCid, true);
    }
    this.#dropAll("transport reset");
    this.#transportResetPending = true;
    this.#serveEvents();
  }

  /** Close the Unix socket, every connection and timer; the device stays usable in-process. */
  remove(): void {
    this.#removed = true;
    this.#dropAll("device removed");
    this.#cancelTimers();
    for (const e of [...this.#lingering]) e.close("device removed");
    this.#lingering.clear();
    this.#unix?.close();
    this.#unix = undefined;
  }

  #cancelTimers(): void {
    if (this.#rxTimer !== undefined) clearTimeout(this.#rxTimer);
    if (this.#txTimer !== undefined) clearTimeout(this.#txTimer);
    if (this.#eventTimer !== undefined) clearTimeout(this.#eventTimer);
    this.#rxTimer = undefined;
    this.#txTimer = undefined;
    this.#eventTimer = undefined;
  }

  #dropAll(why: string): void {
    for (const byGuest of this.#conns.values()) {
      for (const conn of byGuest.values()) {
        if (conn.timer !== undefined) clearTimeout(conn.timer);
        conn.timer = undefined;
        conn.state = "closing";
        if (!conn.endpointDetached) {
          conn.endpointDetached = true;
          conn.endpoint.close(why);
        }
        if (conn.hostInitiated && conn.pending & PENDING_REQUEST) {
          this.stats.hostConnectionsRefused++;
        }
        this.stats.connectionsClosed++;
      }
    }
    this.#conns.clear();
    this.#connCount = 0;
    this.#ready.clear();
    this.#replyHead = 0;
    this.#replyLen = 0;
  }

  // -------------------------------------------------------------------------------------------
  // The TypeScript API

  /**
   * Accept guest connections to host port `port` (CID 2) in this process. The handler gets
   * each connection once the device has accepted it; it must read `readable` (or cancel it)
   * for the guest to be able to go on sending.
   * @param port The host port: an integer from 0 to 2^32 - 1.
   * @param handler Called with each new connection.
   * @param options The socket type accepted.
   * @returns The listener; `close()` stops it.
   * @throws {RangeError} When the port is out of range or already listened on.
   *
   * @example An echo server for the guest
   * ```ts ignore
   * vsock.listen(5000, async ({ readable, writable }) => {
   *   await readable.pipeTo(writable);
   * });
   * ```
   */
  listen(
    port: number,
    handler: (conn: VsockConnection) => void,
    options: VsockListenOptions = {},
  ): VsockListener {
    if (!Number.isInteger(port) || port < 0 || port > 0xffffffff) {
      throw new RangeError(`Port must be a 32-bit unsigned integer, got ${port}`);
    }
    if (this.#listeners.has(port)) throw new RangeError(`Port ${port} is already listened on`);
    const entry: ListenerEntry = { type: wireType(options.type), handler };
    this.#listeners.set(port, entry);
    const listeners = this.#listeners;
    return {
      port,
      type: options.type ?? "stream",
      close() {
        if (listeners.get(port) === entry) listeners.delete(port);
      },
    };
  }

  /**
   * Connect to a guest listener on `port`, from a host port the device picks.
   * @param port The guest port.
   * @param options The socket type.
   * @returns The connection, once the guest accepted it.
   * @throws {VsockConnectionError} `ECONNREFUSED` when the guest refused, did not answer in
   *   time, the device is not active, or the connection cap is reached.
   * @throws {RangeError} When the port is out of range.
   *
   * @example Talk to a guest agent
   * ```ts ignore
   * const conn = await vsock.connect(1024);
   * const writer = conn.writable.getWriter();
   * await writer.write(new TextEncoder().encode("ping\n"));
   * const { value } = await conn.readable.getReader().read();
   * ```
   */
  connect(port: number, options: VsockConnectOptions = {}): Promise<VsockConnection> {
    if (!Number.isInteger(port) || port < 0 || port > 0xffffffff) {
      return Promise.reject(new RangeError(`Port must be a 32-bit unsigned integer, got ${port}`));
    }
    const type = wireType(options.type);
    let endpoint: StreamsEndpoint | undefined;
    const result = this.#openFromHost(port, type, (hostPort) => {
      endpoint = new StreamsEndpoint(apiType(type), {
        guestCid: this.#guestCid,
        guestPort: port,
        hostPort,
      });
      return endpoint;
    });
    if (typeof result === "string") {
      return Promise.reject(new VsockConnectionError("ECONNREFUSED", result));
    }
    return endpoint!.whenConnected();
  }

  // A host program opens a connection to guest port `port`: allocate a host port and queue
  // the REQUEST. Returns the connection, or why not.
  #openFromHost(
    port: number,
    type: number,
    make: (hostPort: number) => VsockEndpoint,
  ): VsockConn | string {
    if (this.#removed) return "the device was removed";
    if (this.active === undefined || this.queue(VSOCK_RX_QUEUE) === undefined) {
      return "the device is not active";
    }
    if (type === VIRTIO_VSOCK_TYPE_SEQPACKET ? !this.#limits.seqpacket : !this.#limits.stream) {
      return "the driver did not negotiate this socket type";
    }
    if (this.#connCount + this.#lingering.size >= this.#maxConnections) {
      return "too many connections";
    }
    let hostPort = -1;
    for (let i = 0; i < LOCAL_PORT_SPAN && hostPort < 0; i++) {
      const candidate = LOCAL_PORT_FIRST + ((this.#nextLocalPort + i) % LOCAL_PORT_SPAN);
      if (this.#lookup(port, candidate) === undefined) {
        hostPort = candidate;
        this.#nextLocalPort = (this.#nextLocalPort + i + 1) % LOCAL_PORT_SPAN;
      }
    }
    const conn = new VsockConn(port, hostPort, type, make(hostPort), {
      hostInitiated: true,
      bufAlloc: this.#bufferSize,
    });
    this.#insert(conn);
    conn.pending = PENDING_REQUEST;
    this.#wire(conn);
    this.#wantRx(conn);
    return conn;
  }

  // Route the endpoint's events to its connection.
  #wire(conn: VsockConn): void {
    conn.endpoint.events = {
      readable: () => {
        if (conn.state === "closing") return;
        conn.hostReadable = true;
        this.#wantRx(conn);
      },
      forwarded: (n) => this.#forwarded(conn, n),
      failed: (why) => {
        if (conn.state !== "closing") {
          this.#resetConn(conn, why === "reset" ? "hostReset" : "hostError");
        }
      },
      finished: () => {
        this.#lingering.delete(conn.endpoint);
      },
    };
  }

  // -------------------------------------------------------------------------------------------
  // Configuration space

  /**
   * Read configuration space: `guest_cid` (le64).
   * @param offset Byte offset.
   * @param data Filled with the bytes.
   */
  override readConfig(offset: number, data: Uint8Array): void {
    this.info.readConfig(offset, data);
  }

  // -------------------------------------------------------------------------------------------
  // Queues

  /**
   * Serve queue `index`: rx (new receive buffers: send what is owed), tx (packets from the
   * driver) or event (deliver a pending TRANSPORT_RESET). Each pass is bounded; the device
   * continues a pass that stopped at its budget on a later turn of the event loop itself.
   * @param index Queue index.
   * @returns Always `false`: continuations are the device's own.
   */
  processQueue(index: number): boolean {
    if (this.active === undefined) return false;
    switch (index) {
      case VSOCK_RX_QUEUE:
        this.#serveRx();
        break;
      case VSOCK_TX_QUEUE:
        this.#serveTx();
        break;
      case VSOCK_EVENT_QUEUE:
        this.#serveEvents();
        break;
      default:
        this.#error(new VirtioError("InvalidInput", `virtio-vsock has no queue ${index}`));
    }
    return false;
  }

  #error(err: VirtioError): void {
    this.#onError?.(err);
    this.reportError(err);
  }

  // ----- tx ----------------------------------------------------------------------------------

  #serveTx(): void {
    const config = this.active;
    const qc = this.queue(VSOCK_TX_QUEUE);
    if (config === undefined || qc === undefined) return;
    // Each packet owes at most one queued RST: serve no more packets than there is room for
    // (virtio 1.2 §5.10.6.1: tx waits once the device's extra resources are exhausted).
    const room = VSOCK_REPLY_QUEUE - this.#replyLen;
    if (room === 0) {
      this.#txBlocked = true;
      return;
    }
    this.#txBlocked = false;
    let pass;
    try {
      pass = serveQueue(config.memory, qc, this.#handleTx, (e) => this.#error(e), {
        chains: Math.min(DEFAULT_SERVE_BUDGET.chains, room),
        bytes: DEFAULT_SERVE_BUDGET.bytes,
      });
    } finally {
      this.#completeDeferred(config, qc);
    }
    // Replies go out at once, before the driver sends more.
    this.#serveRx();
    if (pass.more) {
      if (this.#replyLen === VSOCK_REPLY_QUEUE) {
        this.#txBlocked = true;
      } else if (this.#txTimer === undefined) {
        this.#txTimer = setTimeout(() => {
          this.#txTimer = undefined;
          this.#serveTx();
        }, 0);
      }
    }
  }

  // The endpoints that kept views of this pass move their bytes, then the chains holding them
  // go back to the driver (virtio 1.2 §2.7.8: the buffers are the device's until then).
  #completeDeferred(config: VirtioDeviceConfig, qc: VirtioQueueConfig): void {
    const touched = this.#touched;
    for (let i = 0; i < touched.length; i++) touched[i].flush?.();
    touched.length = 0;
    const heads = this.#deferred;
    if (heads.length === 0) return;
    const q = qc.queue;
    try {
      for (let i = 0; i < heads.length; i++) q.addUsed(config.memory, heads[i], 0);
      if (q.needsNotification(config.memory)) qc.notifier.notify();
    } catch (err) {
      this.#error(VirtioError.from(err));
    }
    heads.length = 0;
  }

  #handleTx = (chain: DescriptorChain): number | undefined => {
    this.stats.packetsFromGuest++;
    const h = this.#txHeader;
    if (chain.readableBytes >= VSOCK_HEADER_SIZE) {
      chain.reader.readExact(this.#txBytes);
      decodeVsockHeader(this.#txView, h);
    }
    const refused = checkVsockPacket(h, chain.readableBytes, this.#limits);
    if (refused !== null) {
      if (refused.action === "rst") {
        this.stats.resets[refused.reason as VsockResetReason]++;
        this.#queueReply(h);
      } else {
        this.stats.dropped[refused.reason as VsockDropReason]++;
      }
      return 0;
    }
    const conn = this.#lookup(h.srcPort, h.dstPort);
    if (conn === undefined) {
      if (h.op === VIRTIO_VSOCK_OP_REQUEST) this.#accept(h);
      else if (h.op === VIRTIO_VSOCK_OP_RST) this.stats.dropped.strayRst++;
      else {
        this.stats.resets.noConnection++;
        this.#queueReply(h);
      }
      return 0;
    }
    if (conn.state === "closing") {
      // An RST is on its way; the guest's packets crossed it.
      this.stats.dropped.closing++;
      return 0;
    }
    if (h.type !== conn.type) {
      this.#resetConn(conn, "typeMismatch");
      return 0;
    }
    if (h.op === VIRTIO_VSOCK_OP_RST) {
      this.#guestReset(conn);
      return 0;
    }
    // Every packet of a connection carries the guest's credit (virtio 1.2 §5.10.6.3).
    if (conn.state === "established" || h.op === VIRTIO_VSOCK_OP_RESPONSE) {
      if (!this.#takeCredit(conn, h)) return 0;
    }
    switch (h.op) {
      case VIRTIO_VSOCK_OP_REQUEST:
        // A second request on a live tuple: the guest lost track of it.
        this.#resetConn(conn, "protocol");
        break;
      case VIRTIO_VSOCK_OP_RESPONSE:
        if (conn.state !== "connecting") {
          this.#resetConn(conn, "protocol");
          break;
        }
        this.#established(conn);
        break;
      case VIRTIO_VSOCK_OP_SHUTDOWN:
        if (conn.state !== "established") {
          this.#resetConn(conn, "protocol");
          break;
        }
        this.#guestShutdown(conn, h.flags & VIRTIO_VSOCK_SHUTDOWN_BOTH);
        break;
      case VIRTIO_VSOCK_OP_RW:
        if (this.#guestData(conn, h, chain)) {
          // The endpoint keeps views of this chain until the end of the pass.
          this.#deferred.push(chain.head);
          return undefined;
        }
        break;
      case VIRTIO_VSOCK_OP_CREDIT_UPDATE:
        break;
      case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
        if (conn.state !== "established") {
          this.#resetConn(conn, "protocol");
          break;
        }
        conn.pending |= PENDING_CREDIT_UPDATE;
        this.#wantRx(conn);
        break;
    }
    return 0;
  };

  // The guest's buf_alloc and fwd_cnt: a fwd_cnt that moves backwards or past what was sent
  // resets the connection. Returns whether the packet may be acted on.
  #takeCredit(conn: VsockConn, h: VsockHeader): boolean {
    if (!vsockFwdCntValid(conn.peerFwdCnt, h.fwdCnt, conn.txCnt)) {
      this.#resetConn(conn, "badCredit");
      return false;
    }
    const before = conn.peerFree;
    conn.peerBufAlloc = h.bufAlloc;
    conn.peerFwdCnt = h.fwdCnt;
    if (conn.peerFree > before) {
      conn.creditRequested = false;
      if (conn.hostReadable && conn.mayCarryData) this.#wantRx(conn);
    }
    return true;
  }

  // A REQUEST for a tuple without a connection: a TS listener, else the Unix muxer.
  #accept(h: VsockHeader): void {
    if (this.#connCount + this.#lingering.size >= this.#maxConnections) {
      this.stats.resets.tooManyConnections++;
      this.#queueReply(h);
      return;
    }
    let endpoint: VsockEndpoint | undefined;
    let streams: StreamsEndpoint | undefined;
    let listener: ListenerEntry | undefined;
    const l = this.#listeners.get(h.dstPort);
    if (l !== undefined && l.type === h.type) {
      listener = l;
      streams = new StreamsEndpoint(apiType(h.type), {
        guestCid: this.#guestCid,
        guestPort: h.srcPort,
        hostPort: h.dstPort,
      });
      endpoint = streams;
      this.#newGuestConn(h, endpoint);
    } else if (l === undefined && this.#unix !== undefined) {
      const e = this.#unix.connectPort(h.dstPort, apiType(h.type));
      if (e !== undefined) {
        endpoint = e;
        this.#newGuestConn(h, endpoint);
      }
    }
    if (endpoint === undefined) {
      this.stats.resets.noListener++;
      this.#queueReply(h);
      return;
    }
    this.stats.guestConnections++;
    if (listener !== undefined && streams !== undefined) {
      const conn = streams.connection;
      const handler = listener.handler;
      // The handler runs after this packet is done: it may read or write right away.
      queueMicrotask(() => {
        try {
          handler(conn);
        } catch (err) {
          this.#error(VirtioError.from(err));
        }
      });
    }
  }

  #newGuestConn(h: VsockHeader, endpoint: VsockEndpoint): VsockConn {
    const conn = new VsockConn(h.srcPort, h.dstPort, h.type, endpoint, {
      hostInitiated: false,
      bufAlloc: this.#bufferSize,
    });
    conn.peerBufAlloc = h.bufAlloc;
    conn.peerFwdCnt = h.fwdCnt;
    // Counters are free-running: whatever the guest's fwd_cnt starts at, nothing is in flight.
    conn.txCnt = h.fwdCnt;
    conn.pending = PENDING_RESPONSE;
    this.#insert(conn);
    this.#wire(conn);
    this.#wantRx(conn);
    return conn;
  }

  #established(conn: VsockConn): void {
    if (conn.timer !== undefined) clearTimeout(conn.timer);
    conn.timer = undefined;
    conn.state = "established";
    conn.txCnt = conn.peerFwdCnt;
    this.stats.hostConnections++;
    conn.endpoint.connected(conn.hostPort);
    conn.hostReadable = true;
    this.#wantRx(conn);
  }

  #guestShutdown(conn: VsockConn, flags: number): void {
    const added = flags & ~conn.peerShutdown;
    conn.peerShutdown |= flags;
    if (added & VIRTIO_VSOCK_SHUTDOWN_SEND) conn.endpoint.endWrite();
    if (added & VIRTIO_VSOCK_SHUTDOWN_RCV) conn.endpoint.endRead();
    this.#maybeClose(conn);
  }

  // Returns whether the endpoint kept views of the chain (its completion waits for the flush).
  #guestData(conn: VsockConn, h: VsockHeader, chain: DescriptorChain): boolean {
    if (conn.state !== "established" || conn.peerShutdown & VIRTIO_VSOCK_SHUTDOWN_SEND) {
      this.#resetConn(conn, "protocol");
      return false;
    }
    const len = h.len;
    if (!vsockWithinCredit(conn.bufAlloc, conn.rxCnt, conn.fwdCnt, len)) {
      this.#resetConn(conn, "creditViolation");
      return false;
    }
    conn.rxCnt = (conn.rxCnt + len) >>> 0;
    this.stats.bytesFromGuest += len;
    const views = this.#views;
    views.length = 0;
    if (len > 0) chain.reader.views(len, views);
    const flags = conn.type === VIRTIO_VSOCK_TYPE_SEQPACKET ? h.flags : 0;
    const endpoint = conn.endpoint;
    const ok = endpoint.write(views, len, flags);
    views.length = 0;
    if (!ok) {
      // The endpoint may have reset the connection itself meanwhile (its events run inside).
      if ((conn.state as string) !== "closing") this.#resetConn(conn, "hostError");
      return false;
    }
    if (endpoint.flush === undefined || len === 0) return false;
    if (!this.#touched.includes(endpoint)) this.#touched.push(endpoint);
    return true;
  }

  #forwarded(conn: VsockConn, n: number): void {
    conn.fwdCnt = (conn.fwdCnt + n) >>> 0;
    if (conn.state !== "established") return;
    if (conn.unadvertised >= this.#creditThreshold && !(conn.pending & PENDING_CREDIT_UPDATE)) {
      conn.pending |= PENDING_CREDIT_UPDATE;
      this.#wantRx(conn);
    }
  }

  #guestReset(conn: VsockConn): void {
    // Linux ends a clean close with an RST too: after the guest's SHUTDOWN(SEND), what it
    // sent is still delivered; otherwise it is an abort.
    const graceful = (conn.peerShutdown & VIRTIO_VSOCK_SHUTDOWN_SEND) !== 0;
    if (conn.state === "connecting") this.stats.hostConnectionsRefused++;
    this.#remove(
      conn,
      graceful
        ? undefined
        : (conn.state === "connecting" ? "refused by the guest" : "reset by the guest"),
    );
  }

  // virtio 1.2 §5.10.6.4, as Linux does it: a guest that shut down both ways is answered with
  // an RST at once (held guest data still reaches the host side). When both sides have only
  // stopped sending, the device shuts down both ways too and waits for the guest's RST (or its
  // close timer).
  #maybeClose(conn: VsockConn): void {
    if (conn.state !== "established") return;
    if (conn.peerShutdown === VIRTIO_VSOCK_SHUTDOWN_BOTH) {
      this.stats.resets.closed++;
      conn.state = "closing";
      conn.pending = PENDING_RST;
      conn.resetReason = "closed";
      this.#detachGracefully(conn);
      this.#wantRx(conn);
      return;
    }
    const guestDone = (conn.peerShutdown & VIRTIO_VSOCK_SHUTDOWN_SEND) !== 0;
    const hostDone = (conn.shutdownSent & VIRTIO_VSOCK_SHUTDOWN_SEND) !== 0;
    if (guestDone && hostDone && conn.shutdownSent !== VIRTIO_VSOCK_SHUTDOWN_BOTH) {
      conn.shutdownToSend = VIRTIO_VSOCK_SHUTDOWN_BOTH;
      conn.pending |= PENDING_SHUTDOWN;
      this.#wantRx(conn);
    }
  }

  #detachGracefully(conn: VsockConn): void {
    if (conn.endpointDetached) return;
    conn.endpointDetached = true;
    this.#lingering.add(conn.endpoint);
    conn.endpoint.finish();
  }

  /**
   * Reset a connection: the host side is released now, an RST goes to the guest.
   * @param conn The connection.
   * @param reason Why.
   */
  #resetConn(conn: VsockConn, reason: VsockResetReason): void {
    if (conn.state === "closing") return;
    if (conn.state === "connecting" && conn.pending & PENDING_REQUEST) {
      // The guest never heard of it: no RST needed.
      this.stats.hostConnectionsRefused++;
      this.#remove(conn, reason);
      return;
    }
    this.stats.resets[reason]++;
    if (conn.timer !== undefined) clearTimeout(conn.timer);
    conn.timer = undefined;
    if (conn.state === "connecting") this.stats.hostConnectionsRefused++;
    conn.state = "closing";
    conn.pending = PENDING_RST;
    conn.resetReason = reason;
    if (!conn.endpointDetached) {
      conn.endpointDetached = true;
      conn.endpoint.close(reason === "hostReset" ? "reset by the host" : `reset (${reason})`);
    }
    this.#wantRx(conn);
  }

  // Forget a connection; `why` closes its endpoint (an abort), else it finishes on its own.
  #remove(conn: VsockConn, why: string | undefined): void {
    if (conn.timer !== undefined) clearTimeout(conn.timer);
    conn.timer = undefined;
    conn.state = "closing";
    this.#ready.delete(conn);
    const byGuest = this.#conns.get(conn.hostPort);
    if (byGuest?.get(conn.guestPort) === conn) {
      byGuest.delete(conn.guestPort);
      if (byGuest.size === 0) this.#conns.delete(conn.hostPort);
      this.#connCount--;
      this.stats.connectionsClosed++;
    }
    if (!conn.endpointDetached) {
      if (why === undefined) {
        this.#detachGracefully(conn);
      } else {
        conn.endpointDetached = true;
        conn.endpoint.close(why);
      }
    }
  }

  #lookup(guestPort: number, hostPort: number): VsockConn | undefined {
    return this.#conns.get(hostPort)?.get(guestPort);
  }

  #insert(conn: VsockConn): void {
    let byGuest = this.#conns.get(conn.hostPort);
    if (byGuest === undefined) {
      byGuest = new Map();
      this.#conns.set(conn.hostPort, byGuest);
    }
    byGuest.set(conn.guestPort, conn);
    this.#connCount++;
  }

  // An RST for a packet without a connection: from its destination back to its source.
  #queueReply(h: VsockHeader): void {
    if (this.#replyLen === VSOCK_REPLY_QUEUE) return; // unreachable: tx waits before this
    const at = ((this.#replyHead + this.#replyLen) % VSOCK_REPLY_QUEUE) * 4;
    const r = this.#replies;
    r[at] = h.dstCid;
    r[at + 1] = h.dstPort;
    r[at + 2] = h.srcPort;
    r[at + 3] = h.type;
    this.#replyLen++;
  }

  // ----- event -------------------------------------------------------------------------------

  // virtio 1.2 §5.10.6.6: deliver a pending TRANSPORT_RESET in the next event buffer.
  #serveEvents(): void {
    if (!this.#transportResetPending) return;
    const config = this.active;
    const qc = this.queue(VSOCK_EVENT_QUEUE);
    if (config === undefined || qc === undefined) return;
    const memory = config.memory;
    const q = qc.queue;
    let used = 0;
    let more = false;
    try {
      while (this.#transportResetPending) {
        // Malformed chains are returned and the next one taken: a driver that keeps the queue
        // full of them gets a budget's worth per pass, the rest on a later turn.
        if (used >= DEFAULT_SERVE_BUDGET.chains) {
          more = true;
          break;
        }
        let chain: DescriptorChain | null;
        try {
          chain = q.pop(memory);
        } catch (err) {
          if (err instanceof QueueError && !err.fatal && err.head !== undefined) {
            q.addUsed(memory, err.head, 0);
            used++;
            this.#error(VirtioError.from(err));
            continue;
          }
          throw err;
        }
        if (chain === null) break;
        used++;
        if (chain.writableBytes < VSOCK_EVENT_SIZE) {
          this.stats.dropped.badEventBuffer++;
          q.addUsed(memory, chain.head, 0);
          continue;
        }
        new DataView(this.#eventBytes.buffer).setUint32(
          0,
          VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
          true,
        );
        chain.writer.writeExact(this.#eventBytes);
        q.addUsed(memory, chain.head, VSOCK_EVENT_SIZE);
        this.#transportResetPending = false;
        this.stats.transportResets++;
      }
      if (used > 0 && q.needsNotification(memory)) qc.notifier.notify();
    } catch (err) {
      const e = VirtioError.from(err);
      this.#error(
        e.needsReset ? e : new VirtioError(e.kind, e.message, { needsReset: true, cause: err }),
      );
      return;
    }
    if (more && this.#eventTimer === undefined) {
      this.#eventTimer = setTimeout(() => {
        this.#eventTimer = undefined;
        this.#serveEvents();
      }, 0);
    }
  }

  // ----- rx ----------------------------------------------------------------------------------

  #wantRx(conn: VsockConn): void {
    this.#ready.add(conn);
    if (this.#rxScheduled) return;
    this.#rxScheduled = true;
    queueMicrotask(() => {
      this.#rxScheduled = false;
      this.#serveRx();
    });
  }

  #serveRx(): void {
    const config = this.active;
    const qc = this.queue(VSOCK_RX_QUEUE);
    if (config === undefined || qc === undefined) return;
    if (this.#replyLen === 0 && this.#ready.size === 0) return;
    const memory = config.memory;
    const q = qc.queue;
    let used = 0;
    let bytes = 0;
    let more = false;
    let single = false;
    // Where the ring stood before the chain in hand was taken (a batch that fills none of
    // its chains gives them all back by going back there).
    let mark = 0;
    try {
      for (;;) {
        if (this.#replyLen === 0 && this.#ready.size === 0) break;
        if (used >= DEFAULT_SERVE_BUDGET.chains || bytes >= DEFAULT_SERVE_BUDGET.bytes) {
          more = true;
          break;
        }
        let chain: DescriptorChain | null;
        try {
          mark = q.nextAvail;
          chain = q.pop(memory);
        } catch (err) {
          if (err instanceof QueueError && !err.fatal && err.head !== undefined) {
            q.addUsed(memory, err.head, 0);
            used++;
            this.#error(VirtioError.from(err));
            continue;
          }
          throw err;
        }
        if (chain === null) break; // no buffers: the driver's next rx kick resumes
        if (chain.writableBytes < VSOCK_HEADER_SIZE) {
          this.stats.dropped.badRxBuffer++;
          q.addUsed(memory, chain.head, 0);
          used++;
          continue;
        }
        let len: number;
        if (this.#replyLen > 0) {
          len = this.#writeReply(chain);
        } else {
          const conn = this.#ready.values().next().value as VsockConn;
          if (!single && this.#batchable(conn)) {
            const room = Math.min(RX_BATCH, DEFAULT_SERVE_BUDGET.chains - used);
            const got = this.#produceBatch(conn, chain, mark, memory, q, room);
            if (got.chains === 0) {
              single = true; // nothing read: this chain goes the one-packet way
              continue;
            }
            this.#ready.delete(conn);
            if (this.#hasWork(conn)) this.#ready.add(conn);
            used += got.chains;
            bytes += got.bytes;
            this.stats.packetsToGuest += got.chains;
            if (q.eventIdx && q.needsNotification(memory)) qc.notifier.notify();
            continue;
          }
          single = false;
          len = this.#produce(conn, chain);
          this.#ready.delete(conn);
          if (len === 0) {
            q.undoPop();
            continue;
          }
          if (this.#hasWork(conn)) this.#ready.add(conn); // to the back: round robin
        }
        q.addUsed(memory, chain.head, len);
        used++;
        bytes += len;
        this.stats.packetsToGuest++;
        if (q.eventIdx && q.needsNotification(memory)) qc.notifier.notify();
      }
      if (used > 0 && q.needsNotification(memory)) qc.notifier.notify();
    } catch (err) {
      const e = VirtioError.from(err);
      this.#error(
        e.needsReset ? e : new VirtioError(e.kind, e.message, { needsReset: true, cause: err }),
      );
      return;
    }
    if (more && this.#rxTimer === undefined) {
      this.#rxTimer = setTimeout(() => {
        this.#rxTimer = undefined;
        this.#serveRx();
      }, 0);
    }
    if (this.#txBlocked && this.#replyLen < VSOCK_REPLY_QUEUE) {
      queueMicrotask(() => this.#serveTx());
    }
  }

  // Data for a stream connection with nothing else owed (a CREDIT_UPDATE rides along): it may
  // fill several rx buffers with one read.
  #batchable(conn: VsockConn): boolean {
    return conn.type === VIRTIO_VSOCK_TYPE_STREAM &&
      (conn.pending & ~PENDING_CREDIT_UPDATE) === 0 && conn.hostReadable && conn.mayCarryData &&
      conn.peerFree > 0;
  }

  // Fill `first` and up to `limit - 1` more rx chains with one read of the host side: header
  // room and payload room of each, one `read` into all the payload views, then a header for
  // each chain that got bytes; the chains that got none go back to the ring (they are the last
  // taken: the ring goes back to where it stood after the last chain filled, or to `mark`,
  // where it stood before `first`). A packed ring undoes one pop only, so the position is
  // set rather than each pop undone. Returns the chains used and their bytes; none when the
  // read gave nothing (every chain went back).
  #produceBatch(
    conn: VsockConn,
    first: DescriptorChain,
    mark: number,
    memory: GuestMemory,
    q: Virtqueue,
    limit: number,
  ): { chains: number; bytes: number } {
    const chains = this.#batchChains;
    const rooms = this.#batchRooms;
    const hv = this.#headerViews;
    const pv = this.#views;
    const hvEnd = this.#batchHeaderEnd;
    const after = this.#batchAfter;
    chains.length = 0;
    hv.length = 0;
    pv.length = 0;
    const credit = Math.min(conn.peerFree, 0x7fffffff);
    let want = 0;
    let chain: DescriptorChain | null = first;
    for (;;) {
      const w = chain.writer;
      w.views(VSOCK_HEADER_SIZE, hv);
      hvEnd[chains.length] = hv.length;
      const room = Math.min(w.remaining, this.#maxPacket, credit - want);
      if (room > 0) w.views(room, pv);
      rooms[chains.length] = room;
      after[chains.length] = q.nextAvail;
      chains.push(chain);
      want += room;
      if (chains.length >= limit || want >= credit) break;
      try {
        chain = q.pop(memory);
      } catch (err) {
        // A bad chain goes back, to be handled (and reported) by the one-packet path after
        // this batch; a broken ring is reported when that path finds it broken too.
        if (!(err instanceof QueueError && err.fatal)) q.undoPop();
        break;
      }
      if (chain === null) break;
      if (chain.writableBytes < VSOCK_HEADER_SIZE) {
        q.undoPop();
        break;
      }
    }
    const n = want > 0 ? conn.endpoint.read(pv, want, conn.peerBufAlloc) : 0;
    pv.length = 0;
    let used = 0;
    let moved = 0;
    if (n > 0) {
      let left = n;
      let hvStart = 0;
      for (; used < chains.length && left > 0; used++) {
        const len = Math.min(rooms[used], left);
        left -= len;
        this.#fillHeader(conn, VIRTIO_VSOCK_OP_RW, len, 0);
        let off = 0;
        for (let i = hvStart; i < hvEnd[used]; i++) {
          hv[i].set(this.#rxBytes.subarray(off, off + hv[i].length));
          off += hv[i].length;
        }
        hvStart = hvEnd[used];
        q.addUsed(memory, chains[used].head, VSOCK_HEADER_SIZE + len);
        conn.txCnt = (conn.txCnt + len) >>> 0;
        moved += VSOCK_HEADER_SIZE + len;
      }
      this.stats.bytesToGuest += n;
      conn.advertisedFwdCnt = conn.fwdCnt;
      conn.pending &= ~PENDING_CREDIT_UPDATE;
    }
    if (used < chains.length) q.nextAvail = used === 0 ? mark : after[used - 1];
    hv.length = 0;
    chains.length = 0;
    return { chains: used, bytes: moved };
  }

  // The header of a packet of `conn` in #rxBytes.
  #fillHeader(conn: VsockConn, op: number, len: number, flags: number): void {
    const h = this.#rxHeader;
    h.srcCid = VSOCK_HOST_CID;
    h.srcCidHigh = 0;
    h.dstCid = this.#guestCid;
    h.dstCidHigh = 0;
    h.srcPort = conn.hostPort;
    h.dstPort = conn.guestPort;
    h.len = len;
    h.type = conn.type;
    h.op = op;
    h.flags = flags;
    h.bufAlloc = conn.bufAlloc;
    h.fwdCnt = conn.fwdCnt;
    encodeVsockHeader(this.#rxView, h);
  }

  #hasWork(conn: VsockConn): boolean {
    if (conn.pending !== 0) return true;
    // With credit: more data; without: a CREDIT_REQUEST, once.
    return conn.hostReadable && conn.mayCarryData && (conn.peerFree > 0 || !conn.creditRequested);
  }

  #writeReply(chain: DescriptorChain): number {
    const at = this.#replyHead * 4;
    const r = this.#replies;
    const h = this.#rxHeader;
    h.srcCid = r[at];
    h.srcCidHigh = 0;
    h.dstCid = this.#guestCid;
    h.dstCidHigh = 0;
    h.srcPort = r[at + 1];
    h.dstPort = r[at + 2];
    h.type = r[at + 3];
    h.op = VIRTIO_VSOCK_OP_RST;
    h.len = 0;
    h.flags = 0;
    h.bufAlloc = 0;
    h.fwdCnt = 0;
    this.#replyHead = (this.#replyHead + 1) % VSOCK_REPLY_QUEUE;
    this.#replyLen--;
    encodeVsockHeader(this.#rxView, h);
    chain.writer.writeExact(this.#rxBytes);
    return VSOCK_HEADER_SIZE;
  }

  // Put the next thing `conn` owes the guest in `chain`. Returns the used length, or 0 when
  // there was nothing after all (the chain is given back to the ring).
  #produce(conn: VsockConn, chain: DescriptorChain): number {
    const w = chain.writer;
    const hv = this.#headerViews;
    hv.length = 0;
    w.views(VSOCK_HEADER_SIZE, hv);
    let len = -1;
    let flags = 0;
    if ((conn.pending & (PENDING_RST | PENDING_REQUEST | PENDING_RESPONSE)) === 0) {
      len = this.#readHost(conn, w);
      flags = len > 0 ? conn.endpoint.readFlags : 0;
    }
    let op: number;
    const p = conn.pending;
    if (p & PENDING_RST) {
      op = VIRTIO_VSOCK_OP_RST;
      len = 0;
    } else if (p & PENDING_REQUEST) {
      op = VIRTIO_VSOCK_OP_REQUEST;
    } else if (p & PENDING_RESPONSE) {
      op = VIRTIO_VSOCK_OP_RESPONSE;
    } else if (len > 0) {
      op = VIRTIO_VSOCK_OP_RW;
    } else if (p & PENDING_SHUTDOWN) {
      op = VIRTIO_VSOCK_OP_SHUTDOWN;
      flags = conn.shutdownToSend;
    } else if (p & PENDING_CREDIT_UPDATE) {
      op = VIRTIO_VSOCK_OP_CREDIT_UPDATE;
    } else if (p & PENDING_CREDIT_REQUEST) {
      op = VIRTIO_VSOCK_OP_CREDIT_REQUEST;
    } else {
      hv.length = 0;
      return 0;
    }
    if (op !== VIRTIO_VSOCK_OP_RW) len = 0;
    this.#fillHeader(conn, op, len, flags);
    let off = 0;
    for (const v of hv) {
      v.set(this.#rxBytes.subarray(off, off + v.length));
      off += v.length;
    }
    hv.length = 0;
    // Every packet tells the guest our credit.
    conn.advertisedFwdCnt = conn.fwdCnt;
    conn.pending &= ~PENDING_CREDIT_UPDATE;
    switch (op) {
      case VIRTIO_VSOCK_OP_RST:
        conn.pending = 0;
        this.#remove(conn, undefined);
        break;
      case VIRTIO_VSOCK_OP_REQUEST:
        conn.pending &= ~PENDING_REQUEST;
        conn.timer = setTimeout(() => {
          conn.timer = undefined;
          if (conn.state === "connecting") this.#resetConn(conn, "connectTimeout");
        }, this.#connectTimeoutMs);
        break;
      case VIRTIO_VSOCK_OP_RESPONSE:
        conn.pending &= ~PENDING_RESPONSE;
        break;
      case VIRTIO_VSOCK_OP_RW:
        conn.txCnt = (conn.txCnt + len) >>> 0;
        this.stats.bytesToGuest += len;
        break;
      case VIRTIO_VSOCK_OP_SHUTDOWN:
        conn.pending &= ~PENDING_SHUTDOWN;
        conn.shutdownSent |= flags;
        if (conn.shutdownSent === VIRTIO_VSOCK_SHUTDOWN_BOTH && conn.timer === undefined) {
          // The device is done both ways: the guest answers with an RST, or is reset.
          conn.timer = setTimeout(() => {
            conn.timer = undefined;
            this.#resetConn(conn, "closeTimeout");
          }, this.#closeTimeoutMs);
        }
        this.#maybeClose(conn);
        break;
      case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
        conn.pending &= ~PENDING_CREDIT_REQUEST;
        break;
    }
    return VSOCK_HEADER_SIZE + len;
  }

  // Read host data into the payload room after the header: up to the room, the packet
  // limit and the guest's credit. Returns the bytes read, or -1 for none (end of stream,
  // nothing yet, no credit, or a failure, each recorded on the connection).
  #readHost(conn: VsockConn, w: ChainWriter): number {
    if (!conn.hostReadable || !conn.mayCarryData) return -1;
    const credit = conn.peerFree;
    if (credit === 0) {
      // virtio 1.2 §5.10.6.3: ask once; the guest's CREDIT_UPDATE brings the reads back.
      if (!conn.creditRequested) {
        conn.creditRequested = true;
        conn.pending |= PENDING_CREDIT_REQUEST;
      }
      return -1;
    }
    const max = Math.min(w.remaining, credit, this.#maxPacket);
    if (max <= 0) return -1;
    const pv = this.#views;
    pv.length = 0;
    w.views(max, pv);
    const n = conn.endpoint.read(pv, max, conn.peerBufAlloc);
    pv.length = 0;
    if (n > 0) return n;
    conn.hostReadable = false;
    if (n === 0) {
      conn.hostEof = true;
      // End of the host's stream: the guest reads end of stream. A host that went away for
      // good will not receive either.
      // When the guest stopped sending too, or the host went away, this is the close.
      const closing = conn.endpoint.hungUp ||
        (conn.peerShutdown & VIRTIO_VSOCK_SHUTDOWN_SEND) !== 0;
      conn.shutdownToSend |= VIRTIO_VSOCK_SHUTDOWN_SEND |
        (closing ? VIRTIO_VSOCK_SHUTDOWN_RCV : 0);
      conn.pending |= PENDING_SHUTDOWN;
    } else if (n === READ_AGAIN) {
      conn.endpoint.armRead();
    } else if (n === READ_TOO_BIG) {
      this.#resetConn(conn, "messageTooLarge");
    } else {
      this.#resetConn(conn, "hostError");
    }
    return -1;
  }
}

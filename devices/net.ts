/**
 * The network device (virtio 1.2 §5.1): receive/transmit queue pairs, multiqueue with
 * automatic receive steering, the control queue, checksum and segmentation offloads passed
 * through to a {@linkcode NetBackend}, link status, MTU, speed and duplex.
 *
 * Queues (what a generic harness may put on each):
 *
 * | index | queue | chain shape |
 * |---|---|---|
 * | 2p | receiveq p+1 | device-writable only; with MRG_RXBUF each chain at least 12 bytes |
 * | 2p+1 | transmitq p+1 | device-readable only: `virtio_net_hdr` (12 bytes) then the frame |
 * | 2N if MQ, else 2 | controlq (CTRL_VQ) | readable `class, command, data`, then ≥ 1 writable byte (`ack`) |
 *
 * N is the `queuePairs` option; without VIRTIO_F_VERSION_1 and MRG_RXBUF the header is 10
 * bytes. Writable parts of transmit chains and readable parts of receive chains are ignored.
 *
 * @example Send a frame from the driver side and find it at the backend
 * ```ts
 * import assert from "node:assert/strict";
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { MmioTransport } from "../transport/mmio.ts";
 * import { MmioDriver } from "../testing/mmio_driver.ts";
 * import { MemoryNetBackend, NetDevice } from "./net.ts";
 * const backend = new MemoryNetBackend();
 * const mem = GuestMemory.create(4 << 20);
 * const driver = new MmioDriver(new MmioTransport(new NetDevice({ backend }), mem), mem);
 * const queues = driver.init({ queues: 3 });
 * const frame = new Uint8Array(12 + 60); // virtio_net_hdr (all zero), then the frame
 * frame.fill(0xff, 12, 18); // broadcast
 * queues[1].addChain([{ readable: frame }]);
 * driver.kick(1);
 * assert.equal(backend.takeSent()[0].bytes.length, 72);
 * ```
 *
 * @module
 */

import { clearImmediate, setImmediate } from "node:timers";
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "../queue/split.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import type { DescriptorChain } from "../queue/chain.ts";
import { QueueError } from "../queue/error.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import {
  DEFAULT_SERVE_BUDGET,
  featureBit,
  serveQueue,
  TYPE_NET,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  type VirtioDeviceConfig,
  VirtioDeviceInfo,
  VirtioError,
  type VirtioQueueConfig,
} from "./device.ts";
import {
  completeChecksum,
  ETH_HLEN,
  flowHash,
  NET_DROP_REASONS,
  NET_HDR_SIZE,
  NET_MAX_GSO_FRAME,
  type NetDropReason,
  type NetHeaderRules,
  newNetHeader,
  parseNetHeader,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_GSO_UDP,
  VLAN_HLEN,
  writeNetHeader,
} from "./_net_header.ts";
import {
  NET_CTRL_MAX_DATA,
  type NetCtrlCommand,
  type NetCtrlLimits,
  parseCtrlCommand,
  VIRTIO_NET_ERR,
  VIRTIO_NET_OK,
} from "./_net_ctrl.ts";
import {
  NET_MAX_BACKEND_FRAME,
  type NetBackend,
  type NetBackendEvents,
  type NetOffloads,
  NO_OFFLOADS,
} from "./_net_backend.ts";
import { FrameBacklog } from "./_net_backlog.ts";
import { NetRxFilter } from "./_net_filter.ts";
import {
  effectiveGuestOffloads,
  formatMac,
  GUEST_OFFLOAD_BITS,
  NET_CONFIG_SIZE,
  NET_DEFAULT_MTU,
  NET_DEFAULT_SPEED,
  NET_MAC_TABLE_ENTRIES,
  NET_MAX_QUEUE_PAIRS,
  NET_QUEUE_SIZE,
  NET_RX_BACKLOG_BYTES,
  NET_RX_BUDGET,
  NetConfigOffset,
  parseMac,
  randomMac,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
  VIRTIO_NET_F_CTRL_MAC_ADDR,
  VIRTIO_NET_F_CTRL_RX,
  VIRTIO_NET_F_CTRL_RX_EXTRA,
  VIRTIO_NET_F_CTRL_VLAN,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_GUEST_ANNOUNCE,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_UFO,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_UFO,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_SPEED_DUPLEX,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_S_ANNOUNCE,
  VIRTIO_NET_S_LINK_UP,
} from "./_net_features.ts";

export * from "./_net_features.ts";
export * from "./_net_header.ts";
export * from "./_net_ctrl.ts";
export * from "./_net_backend.ts";
export { FrameBacklog } from "./_net_backlog.ts";
export { NetRxFilter } from "./_net_filter.ts";
export { SocketNetBackend, type SocketNetBackendOptions } from "./_net_socket.ts";
export * from "./_net_tap.ts";

/** Options of {@linkcode NetDevice}. */
export interface NetOptions {
  /** Where frames go and come from; the device closes it in `remove()`. */
  backend: NetBackend;
  /** MAC address, as `"52:54:00:12:34:56"` or 6 bytes (default: a random local address). */
  mac?: string | Uint8Array;
  /** Queue pairs offered (default 1); above 1 the device offers MQ. */
  queuePairs?: number;
  /** Maximum size of each queue: a power of two (default 256). */
  queueSize?: number;
  /** MTU offered with VIRTIO_NET_F_MTU, 68..65535 (default 1500). */
  mtu?: number;
  /** Speed in Mbit/s for SPEED_DUPLEX (default 10000; `undefined` in `"unknown"`). */
  speed?: number;
  /** Duplex for SPEED_DUPLEX (default full). */
  duplex?: "full" | "half" | "unknown";
  /** Link state at creation (default up). */
  linkUp?: boolean;
  /** Offer the control queue and its features (default true). */
  ctrlQueue?: boolean;
  /** Offloads to offer, within what the backend carries (default: all it carries). */
  offloads?: Partial<NetOffloads>;
  /** Receive backlog per queue pair, in bytes (default 1 MiB). */
  rxBacklogBytes?: number;
  /** Addresses kept per MAC filter table; more switch to all-unicast/all-multicast (default 64). */
  macTableEntries?: number;
  /** Called for errors while serving (not for dropped frames: those are counted). */
  onError?: (err: VirtioError) => void;
}

/** Counters of one queue pair. */
export interface NetQueueStats {
  /** Frames put in the receive queue. */
  rxFrames: number;
  /** Bytes of those frames (headers excluded). */
  rxBytes: number;
  /** Frames taken from the transmit queue and sent. */
  txFrames: number;
  /** Bytes of those frames. */
  txBytes: number;
}

/** Counters of a {@linkcode NetDevice}, since creation. */
export interface NetStats {
  /** Frames delivered to the driver. */
  rxFrames: number;
  /** Bytes delivered (frames, without `virtio_net_hdr`). */
  rxBytes: number;
  /** Frames sent to the backend. */
  txFrames: number;
  /** Bytes sent. */
  txBytes: number;
  /** Received frames dropped, by reason. */
  rxDrops: Record<NetDropReason, number>;
  /** Transmitted frames dropped, by reason. */
  txDrops: Record<NetDropReason, number>;
  /** Sent frames with segmentation offload. */
  txGso: number;
  /** Sent frames with a partial checksum (NEEDS_CSUM). */
  txCsumOffload: number;
  /** Delivered frames with segmentation offload. */
  rxGso: number;
  /** Received partial checksums the device completed for a driver without GUEST_CSUM. */
  rxCsumCompleted: number;
  /** Control commands answered OK. */
  ctrlOk: number;
  /** Control commands answered ERR, or unanswerable. */
  ctrlErr: number;
  /** Times transmission stopped because the backend was full. */
  txStalls: number;
  /** Backend failures (send or receive threw). */
  backendErrors: number;
  /** Per queue pair. */
  queues: NetQueueStats[];
}

function dropCounters(): Record<NetDropReason, number> {
  const r = {} as Record<NetDropReason, number>;
  for (const k of NET_DROP_REASONS) r[k] = 0;
  return r;
}

// What #popRx returns for a malformed chain it already gave back.
const BAD_CHAIN: unique symbol = Symbol("bad chain");

/**
 * The virtio network device.
 *
 * - Transmit: each chain's header is checked ({@linkcode parseNetHeader}) against what was
 *   negotiated; a bad one drops the frame, counts it by reason and completes the chain.
 *   The checked copy of the header (and of the frame's first bytes) is what the backend
 *   gets, so the driver cannot change it after the check. When the backend is full the
 *   device stops taking chains from that queue (leaving the driver's notifications off) and
 *   resumes when the backend reports it writable.
 * - Receive: frames from the backend are checked the same way, filtered (RX modes, MAC table,
 *   VLAN table), steered to a queue pair, and copied into the driver's buffers (several with
 *   MRG_RXBUF, published together). Partial checksums are completed for a driver without
 *   GUEST_CSUM; segmented frames it did not accept are dropped. Without buffers, frames wait
 *   in a bounded backlog; when that is full they are dropped and counted (`noBuffer`), so a
 *   driver that never posts buffers can neither stall the backend nor make it buffer without
 *   bound.
 * - Multiqueue: with CTRL_VQ the pairs in use are set by VQ_PAIRS_SET (one after reset);
 *   with MQ but no control queue (vhost-user, where QEMU keeps the control queue and enables
 *   rings itself) every started pair is in use. Receive steering follows the backend's queue
 *   when it has several, else a symmetric flow hash, preferring the pair the flow last sent on.
 * - Link state ({@linkcode NetDevice.setLinkUp}) and announce requests raise a configuration
 *   change interrupt through the transport. While the link is down frames are dropped both ways.
 */
export class NetDevice extends VirtioDeviceBase {
  /** The backend. */
  readonly backend: NetBackend;
  /** Queue pairs offered (`max_virtqueue_pairs`). */
  readonly maxQueuePairs: number;
  /** The MTU offered. */
  readonly mtu: number;
  /** Counters since creation. */
  readonly stats: NetStats;
  readonly #config: DataView;
  readonly #defaultMac: Uint8Array;
  readonly #mac: Uint8Array;
  readonly #onError: ((err: VirtioError) => void) | undefined;
  readonly #macTableEntries: number;
  #linkUp: boolean;
  #announcing = false;
  // Negotiated state (set on activation).
  #hdrSize = NET_HDR_SIZE;
  #mrg = false;
  #ctrlIndex = -1;
  #mq = false;
  #ctrlVq = false;
  #dataPairs = 1;
  #statusNegotiated = false;
  #announceNegotiated = false;
  #txRules: NetHeaderRules = {
    csum: false,
    tso4: false,
    tso6: false,
    ecn: false,
    ufo: false,
    maxFrame: 0,
  };
  readonly #rxRules: NetHeaderRules = {
    csum: true,
    tso4: true,
    tso6: true,
    ecn: true,
    ufo: true,
    maxFrame: NET_MAX_GSO_FRAME,
  };
  #guestNegotiated = 0n;
  #guest: NetOffloads = { ...NO_OFFLOADS };
  #rxMaxFrame = NET_MAX_GSO_FRAME;
  #limits: NetCtrlLimits | undefined;
  readonly #filter: NetRxFilter;
  // Queue pairs.
  #vqPairs = 1;
  #rxPairs: number[] = [];
  readonly #rxPairIndex: Int32Array;
  readonly #flows = new Uint16Array(256);
  readonly #backlogs: FrameBacklog[];
  readonly #txBlocked: Uint8Array;
  readonly #rxDirty: Uint8Array;
  readonly #txTimers: (ReturnType<typeof setImmediate> | undefined)[];
  readonly #rxTimers: (ReturnType<typeof setImmediate> | undefined)[];
  // Continuations of a pair's backlog after a frame met a ring's worth of unusable buffers.
  readonly #rxPairTimers: (ReturnType<typeof setImmediate> | undefined)[];
  #backendStarted = false;
  // Scratch, allocated once.
  readonly #staging = new Uint8Array(NET_MAX_BACKEND_FRAME);
  readonly #txHead = new Uint8Array(NET_HDR_SIZE + 64);
  readonly #prefixes: Uint8Array[] = [];
  readonly #sendHdr = new Uint8Array(NET_HDR_SIZE);
  // One header per direction: a backend may deliver a frame while a transmit is under way.
  readonly #txHdr = newNetHeader();
  readonly #rxHdr = newNetHeader();
  readonly #parts: Uint8Array[] = [];
  readonly #rxChains: DescriptorChain[] = [];
  readonly #rxHeads: number[] = [];
  readonly #rxLens: number[] = [];
  readonly #ctrlData = new Uint8Array(NET_CTRL_MAX_DATA);
  readonly #events: NetBackendEvents = {
    readable: (q) => this.#onReadable(q),
    writable: (q) => this.#onWritable(q),
  };

  /**
   * Create the device and lay out its configuration space.
   * @param options The backend and what to offer the driver.
   * @throws {RangeError} When a count, size, MTU, speed or MAC address is out of range.
   */
  constructor(options: NetOptions) {
    const backend = options.backend;
    const pairs = options.queuePairs ?? 1;
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > NET_MAX_QUEUE_PAIRS) {
      throw new RangeError(`Queue pairs must be 1..${NET_MAX_QUEUE_PAIRS}, got ${pairs}`);
    }
    const queueSize = options.queueSize ?? NET_QUEUE_SIZE;
    if (
      !Number.isInteger(queueSize) || queueSize < 2 || queueSize > 32768 ||
      (queueSize & (queueSize - 1)) !== 0
    ) {
      throw new RangeError(`Queue size must be a power of two from 2 to 32768, got ${queueSize}`);
    }
    const mtu = options.mtu ?? NET_DEFAULT_MTU;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) {
      throw new RangeError(`MTU must be 68..65535, got ${mtu}`);
    }
    const duplex = options.duplex ?? "full";
    const speed = duplex === "unknown" ? undefined : options.speed ?? NET_DEFAULT_SPEED;
    if (speed !== undefined && (!Number.isInteger(speed) || speed < 0 || speed > 0x7fffffff)) {
      throw new RangeError(`Speed must be 0..${0x7fffffff} Mbit/s, got ${speed}`);
    }
    const backlogBytes = options.rxBacklogBytes ?? NET_RX_BACKLOG_BYTES;
    if (!Number.isSafeInteger(backlogBytes) || backlogBytes < 0) {
      throw new RangeError(`rxBacklogBytes must be a non-negative integer, got ${backlogBytes}`);
    }
    const tableEntries = options.macTableEntries ?? NET_MAC_TABLE_ENTRIES;
    if (!Number.isInteger(tableEntries) || tableEntries < 0 || tableEntries > 4096) {
      throw new RangeError(`macTableEntries must be 0..4096, got ${tableEntries}`);
    }
    const mac = options.mac === undefined ? randomMac() : parseMac(options.mac);
    const ctrl = options.ctrlQueue ?? true;
    const can = backend.offloads;
    const want = { csum: true, tso4: true, tso6: true, ecn: true, ufo: true, ...options.offloads };
    const csum = can.csum && want.csum;
    const tso4 = csum && can.tso4 && want.tso4;
    const tso6 = csum && can.tso6 && want.tso6;
    const ecn = (tso4 || tso6) && can.ecn && want.ecn;
    const ufo = csum && can.ufo && want.ufo;

    const bit = featureBit;
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_INDIRECT_DESC) |
      bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) |
      bit(VIRTIO_NET_F_MTU) | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_NET_F_SPEED_DUPLEX);
    // virtio 1.2 §5.1.3.1: an offload is offered only with what it requires, and only when
    // the backend carries it both ways (the HOST_* and GUEST_* pairs go together).
    if (csum) features |= bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM);
    if (tso4) features |= bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO4);
    if (tso6) features |= bit(VIRTIO_NET_F_HOST_TSO6) | bit(VIRTIO_NET_F_GUEST_TSO6);
    if (ecn) features |= bit(VIRTIO_NET_F_HOST_ECN) | bit(VIRTIO_NET_F_GUEST_ECN);
    if (ufo) features |= bit(VIRTIO_NET_F_HOST_UFO) | bit(VIRTIO_NET_F_GUEST_UFO);
    if (ctrl) {
      features |= bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_CTRL_RX) |
        bit(VIRTIO_NET_F_CTRL_RX_EXTRA) | bit(VIRTIO_NET_F_CTRL_VLAN) |
        bit(VIRTIO_NET_F_GUEST_ANNOUNCE) | bit(VIRTIO_NET_F_CTRL_MAC_ADDR);
      if (csum) features |= bit(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS);
      if (pairs > 1) features |= bit(VIRTIO_NET_F_MQ);
    }
    // Receive and transmit queue per pair, then the control queue (virtio 1.2 §5.1.2).
    const queues = new Array<number>(2 * pairs + (ctrl ? 1 : 0)).fill(queueSize);
    const space = new Uint8Array(NET_CONFIG_SIZE);
    super(TYPE_NET, new VirtioDeviceInfo("virtio-net", features, queues, space));
    this.backend = backend;
    this.maxQueuePairs = pairs;
    this.mtu = mtu;
    this.#onError = options.onError;
    this.#macTableEntries = tableEntries;
    this.#defaultMac = mac;
    this.#mac = space.subarray(NetConfigOffset.mac, NetConfigOffset.mac + 6);
    this.#mac.set(mac);
    this.#filter = new NetRxFilter(this.#mac);
    this.#linkUp = options.linkUp ?? true;
    const c = new DataView(space.buffer);
    this.#config = c;
    this.#writeStatus();
    c.setUint16(NetConfigOffset.maxVirtqueuePairs, pairs, true);
    c.setUint16(NetConfigOffset.mtu, mtu, true);
    c.setUint32(NetConfigOffset.speed, speed ?? 0xffffffff, true);
    c.setUint8(NetConfigOffset.duplex, duplex === "full" ? 1 : duplex === "half" ? 0 : 0xff);
    this.#rxPairIndex = new Int32Array(pairs).fill(-1);
    this.#backlogs = Array.from({ length: pairs }, () => new FrameBacklog(backlogBytes + 5));
    this.#txBlocked = new Uint8Array(pairs);
    this.#rxDirty = new Uint8Array(pairs);
    this.#txTimers = new Array(pairs).fill(undefined);
    this.#rxTimers = new Array(backend.queuePairs).fill(undefined);
    this.#rxPairTimers = new Array(pairs).fill(undefined);
    for (let n = 0; n <= 64; n++) {
      this.#prefixes.push(this.#txHead.subarray(NET_HDR_SIZE, NET_HDR_SIZE + n));
    }
    this.stats = {
      rxFrames: 0,
      rxBytes: 0,
      txFrames: 0,
      txBytes: 0,
      rxDrops: dropCounters(),
      txDrops: dropCounters(),
      txGso: 0,
      txCsumOffload: 0,
      rxGso: 0,
      rxCsumCompleted: 0,
      ctrlOk: 0,
      ctrlErr: 0,
      txStalls: 0,
      backendErrors: 0,
      queues: Array.from({ length: pairs }, () => ({
        rxFrames: 0,
        rxBytes: 0,
        txFrames: 0,
        txBytes: 0,
      })),
    };
  }

  // -------------------------------------------------------------------------------------------
  // Host-side controls

  /** The MAC address in use (the configured one, or the driver's MAC_ADDR_SET). */
  get mac(): string {
    return formatMac(this.#mac);
  }

  /** Whether the link is up. */
  get linkUp(): boolean {
    return this.#linkUp;
  }

  /**
   * Plug or unplug the cable. The `status` field changes and, when the driver negotiated
   * VIRTIO_NET_F_STATUS, a configuration change interrupt tells it (virtio 1.2 §5.1.4).
   * While the link is down every frame is dropped (`linkDown`).
   * @param up The new state.
   */
  setLinkUp(up: boolean): void {
    if (this.#linkUp === up) return;
    this.#linkUp = up;
    this.#writeStatus();
    if (this.active !== undefined && this.#statusNegotiated) this.active.notifyDeviceChanges();
  }

  /**
   * Ask the driver to announce itself with gratuitous packets (after a migration): sets
   * VIRTIO_NET_S_ANNOUNCE and raises a configuration change; the driver's ANNOUNCE_ACK
   * clears it (virtio 1.2 §5.1.6.5.4).
   * @returns Whether the request went out (the driver negotiated GUEST_ANNOUNCE and STATUS).
   */
  announce(): boolean {
    if (this.active === undefined || !this.#announceNegotiated || !this.#statusNegotiated) {
      return false;
    }
    this.#announcing = true;
    this.#writeStatus();
    this.active.notifyDeviceChanges();
    return true;
  }

  /** Queue pairs in use for receiving right now (indices). */
  get activeQueuePairs(): readonly number[] {
    return this.#rxPairs;
  }

  /** Frames waiting in the receive backlogs. */
  get backlogFrames(): number {
    let n = 0;
    for (const b of this.#backlogs) n += b.length;
    return n;
  }

  #writeStatus(): void {
    const s = (this.#linkUp ? VIRTIO_NET_S_LINK_UP : 0) |
      (this.#announcing ? VIRTIO_NET_S_ANNOUNCE : 0);
    this.#config.setUint16(NetConfigOffset.status, s, true);
  }

  // -------------------------------------------------------------------------------------------
  // Transport hooks

  /**
   * Write configuration space: only a legacy driver (no VIRTIO_F_VERSION_1) may write `mac`
   * (virtio 1.2 §5.1.4.3); everything else is read-only.
   * @param offset Byte offset.
   * @param data The bytes.
   * @throws {VirtioError} `InvalidInput` for any other write.
   */
  override writeConfig(offset: number, data: Uint8Array): void {
    if (
      !this.info.hasFeature(VIRTIO_F_VERSION_1) && Number.isInteger(offset) && offset >= 0 &&
      offset + data.length <= 6
    ) {
      this.#mac.set(data, offset);
      return;
    }
    super.writeConfig(offset, data);
  }

  /** Receive and transmit queue 0 must be ready; the rest are optional. */
  protected override requiredQueues(): number {
    return 2;
  }

  /**
   * Start serving: take the negotiated features, then start the backend.
   * @param config The activation config.
   * @throws {ActivateError} As {@linkcode VirtioDeviceBase.activate}.
   */
  override activate(config: VirtioDeviceConfig): void {
    super.activate(config);
    this.#updatePairs();
    if (!this.#backendStarted) {
      this.#backendStarted = true;
      this.backend.start(this.#events);
    }
    this.backend.setGuestOffloads(this.#guest);
  }

  /**
   * Serve on a new queue set or memory, keeping the negotiation (not a reset); frames waiting
   * for a queue that came back are delivered.
   * @param config The new memory and queues.
   * @throws {ActivateError} As {@linkcode VirtioDeviceBase.reconfigure}.
   */
  override reconfigure(config: VirtioDeviceConfig): void {
    const wasActive = this.active !== undefined;
    super.reconfigure(config);
    if (!wasActive) return;
    this.#updatePairs();
    for (const p of this.#rxPairs) {
      if (this.#backlogs[p].length > 0) this.#serveRx(p);
    }
    for (let p = 0; p < this.maxQueuePairs; p++) {
      if (this.#txBlocked[p] === 0 && this.queue(2 * p + 1) !== undefined) this.#continueTx(p);
    }
  }

  /**
   * Take the negotiated features (virtio 1.2 §5.1.3, §5.1.6.2).
   * @param config The activation config.
   */
  protected override onActivate(config: VirtioDeviceConfig): void {
    const acked = config.ackedFeatures;
    const has = (b: number) => (acked & featureBit(b)) !== 0n;
    this.#mrg = has(VIRTIO_NET_F_MRG_RXBUF);
    this.#hdrSize = has(VIRTIO_F_VERSION_1) || this.#mrg ? NET_HDR_SIZE : 10;
    this.#ctrlVq = has(VIRTIO_NET_F_CTRL_VQ);
    this.#mq = has(VIRTIO_NET_F_MQ);
    // virtio 1.2 §5.1.2: the control queue follows the pairs in use: 2N with MQ, else 2.
    this.#ctrlIndex = this.#ctrlVq ? (this.#mq ? 2 * this.maxQueuePairs : 2) : -1;
    this.#dataPairs = this.#mq ? this.maxQueuePairs : 1;
    this.#statusNegotiated = has(VIRTIO_NET_F_STATUS);
    this.#announceNegotiated = this.#ctrlVq && has(VIRTIO_NET_F_GUEST_ANNOUNCE);
    // A feature accepted without the one it requires (§5.1.3.1) is treated as not accepted.
    const csum = has(VIRTIO_NET_F_CSUM);
    const tso4 = csum && has(VIRTIO_NET_F_HOST_TSO4);
    const tso6 = csum && has(VIRTIO_NET_F_HOST_TSO6);
    this.#txRules = {
      csum,
      tso4,
      tso6,
      ecn: (tso4 || tso6) && has(VIRTIO_NET_F_HOST_ECN),
      ufo: csum && has(VIRTIO_NET_F_HOST_UFO),
      // §5.1.4.1: up to mtu plus the Ethernet header (and a VLAN tag) without segmentation.
      maxFrame: (has(VIRTIO_NET_F_MTU) ? this.mtu : 65535) + ETH_HLEN + VLAN_HLEN,
    };
    this.#rxMaxFrame = has(VIRTIO_NET_F_MTU) ? this.mtu + ETH_HLEN + VLAN_HLEN : NET_MAX_GSO_FRAME;
    this.#guestNegotiated = acked & GUEST_OFFLOAD_BITS;
    this.#guest = effectiveGuestOffloads(this.#guestNegotiated);
    this.#filter.vlanFilter = this.#ctrlVq && has(VIRTIO_NET_F_CTRL_VLAN);
    this.#limits = {
      ctrlRx: this.#ctrlVq && has(VIRTIO_NET_F_CTRL_RX),
      ctrlRxExtra: this.#ctrlVq && has(VIRTIO_NET_F_CTRL_RX_EXTRA),
      ctrlVlan: this.#filter.vlanFilter,
      announce: this.#announceNegotiated,
      mq: this.#ctrlVq && this.#mq,
      maxPairs: this.maxQueuePairs,
      macAddr: this.#ctrlVq && has(VIRTIO_NET_F_CTRL_MAC_ADDR),
      guestOffloads: this.#ctrlVq && has(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS),
      guestOffloadMask: this.#guestNegotiated,
      macTableEntries: this.#macTableEntries,
    };
  }

  /**
   * Back to the state after creation: the backend stops reporting, backlogs are dropped, the
   * receive filter, MAC address and queue pairs return to their defaults. The link state is
   * the host's and stays.
   * @param _wasActive The config the device was active with, if any.
   */
  protected override onReset(_wasActive: VirtioDeviceConfig | undefined): void {
    if (this.#backendStarted) {
      this.#backendStarted = false;
      this.backend.stop();
    }
    for (const b of this.#backlogs) b.clear();
    for (let p = 0; p < this.maxQueuePairs; p++) {
      if (this.#txTimers[p] !== undefined) clearImmediate(this.#txTimers[p]);
      this.#txTimers[p] = undefined;
      if (this.#rxPairTimers[p] !== undefined) clearImmediate(this.#rxPairTimers[p]);
      this.#rxPairTimers[p] = undefined;
    }
    for (let q = 0; q < this.#rxTimers.length; q++) {
      if (this.#rxTimers[q] !== undefined) clearImmediate(this.#rxTimers[q]);
      this.#rxTimers[q] = undefined;
    }
    this.#txBlocked.fill(0);
    this.#rxDirty.fill(0);
    this.#flows.fill(0);
    this.#mac.set(this.#defaultMac);
    this.#announcing = false;
    this.#writeStatus();
    this.#filter.reset();
    this.#vqPairs = 1;
    this.#rxPairs = [];
    this.#rxPairIndex.fill(-1);
    this.#ctrlIndex = -1;
    this.#guestNegotiated = 0n;
    this.#guest = { ...NO_OFFLOADS };
    this.#limits = undefined;
    this.backend.setGuestOffloads(this.#guest);
  }

  /** Release the backend for good. */
  remove(): void {
    this.reset();
    this.backend.close();
  }

  /**
   * Serve queue `index`: the control queue, or a pair's transmit queue (send what it holds)
   * or receive queue (the driver added buffers: deliver the backlog).
   * @param index Queue index.
   * @returns `true` when work is left for another pass.
   */
  processQueue(index: number): boolean {
    const config = this.active;
    if (config === undefined) return false;
    if (index === this.#ctrlIndex) {
      const qc = this.queue(index);
      if (qc === undefined) return false;
      return serveQueue(config.memory, qc, this.#ctrl, (e) => this.#error(e)).more;
    }
    const pair = index >> 1;
    if (!Number.isInteger(index) || index < 0 || pair >= this.#dataPairs) {
      this.#error(new VirtioError("InvalidInput", `virtio-net has no queue ${index} in use`));
      return false;
    }
    return (index & 1) === 1 ? this.#serveTx(pair) : this.#serveRx(pair);
  }

  #error(err: VirtioError): void {
    this.#onError?.(err);
    this.reportError(err);
  }

  // Backend failures are counted; the log hears of the 1st, 2nd, 4th, 8th, ... only, so a
  // failing backend cannot flood it.
  #backendError(err: unknown): void {
    const n = ++this.stats.backendErrors;
    if ((n & (n - 1)) === 0) {
      const msg = err instanceof Error ? err.message : String(err);
      this.#error(new VirtioError("IOError", `virtio-net backend (${n} failures): ${msg}`));
    }
  }

  // -------------------------------------------------------------------------------------------
  // Queue pairs and steering

  #updatePairs(): void {
    const n = this.#ctrlVq && this.#mq ? this.#vqPairs : this.#mq ? this.maxQueuePairs : 1;
    const pairs: number[] = [];
    this.#rxPairIndex.fill(-1);
    for (let p = 0; p < n; p++) {
      if (this.queue(2 * p) === undefined) continue;
      this.#rxPairIndex[p] = pairs.length;
      pairs.push(p);
    }
    this.#rxPairs = pairs;
    // Frames waiting for a pair no longer in use have nowhere to go.
    for (let p = 0; p < this.maxQueuePairs; p++) {
      if (p >= n) this.stats.rxDrops.noBuffer += this.#backlogs[p].clear();
    }
  }

  // virtio 1.2 §5.1.6.5.6.1: a reply goes to the pair its flow last sent on; otherwise the
  // backend's own queue (a multi-queue tap steers), or the flow hash.
  #steer(bq: number, buf: Uint8Array, at: number, len: number): number {
    const pairs = this.#rxPairs;
    if (pairs.length <= 1) return pairs.length === 1 ? pairs[0] : 0;
    if (this.backend.queuePairs > 1 && bq < this.maxQueuePairs && this.#rxPairIndex[bq] >= 0) {
      return bq;
    }
    const h = flowHash(buf, at, len);
    const learned = this.#flows[h & 0xff] - 1;
    if (learned >= 0 && this.#rxPairIndex[learned] >= 0) return learned;
    return pairs[h % pairs.length];
  }

  // -------------------------------------------------------------------------------------------
  // Transmit

  #serveTx(pair: number): boolean {
    const config = this.active;
    const qc = this.queue(2 * pair + 1);
    if (config === undefined || qc === undefined) return false;
    if (this.#txBlocked[pair] !== 0) return false; // resumed by the backend's writable
    const mem = config.memory;
    const q = qc.queue;
    const budget = DEFAULT_SERVE_BUDGET;
    let taken = 0;
    let bytes = 0;
    let used = 0;
    let more = false;
    try {
      outer: do {
        q.disableNotification(mem);
        for (;;) {
          if (taken >= budget.chains || bytes >= budget.bytes) {
            more = q.hasPending(mem);
            if (more) break outer;
          }
          let chain: DescriptorChain | null;
          try {
            chain = q.pop(mem);
          } catch (err) {
            if (err instanceof QueueError && !err.fatal && err.head !== undefined) {
              q.addUsed(mem, err.head, 0);
              used++;
              taken++;
              this.#error(VirtioError.from(err));
              continue;
            }
            throw err;
          }
          if (chain === null) break;
          taken++;
          bytes += chain.readableBytes;
          if (!this.#txOne(pair, chain)) {
            // The backend is full: the chain goes back, notifications stay off, and the
            // backend's writable event resumes this queue.
            q.undoPop();
            this.#txBlocked[pair] = 1;
            this.stats.txStalls++;
            break outer;
          }
          q.addUsed(mem, chain.head, 0);
          used++;
          if (q.eventIdx && q.needsNotification(mem)) qc.notifier.notify();
        }
      } while (q.enableNotification(mem));
    } catch (err) {
      more = false;
      const e = VirtioError.from(err);
      this.#error(
        e.needsReset ? e : new VirtioError(e.kind, e.message, { needsReset: true, cause: err }),
      );
    }
    try {
      if (used > 0 && q.broken === undefined && q.needsNotification(mem)) qc.notifier.notify();
    } catch (err) {
      this.#error(VirtioError.from(err));
    }
    return more;
  }

  // One transmit chain. Returns false when the backend is full (nothing consumed).
  #txOne(pair: number, chain: DescriptorChain): boolean {
    const hdrSize = this.#hdrSize;
    const total = chain.readableBytes;
    const txd = this.stats.txDrops;
    if (total < hdrSize) {
      txd.shortChain++;
      return true;
    }
    const frameLen = total - hdrSize;
    const r = chain.reader;
    // Copy the header and the frame's first bytes: they are checked, and the copy is sent.
    const prefix = Math.min(frameLen, 64);
    const head = this.#txHead;
    head.fill(0, 0, NET_HDR_SIZE);
    r.readExact(head.subarray(0, hdrSize + prefix));
    if (hdrSize !== NET_HDR_SIZE) head.copyWithin(NET_HDR_SIZE, hdrSize, hdrSize + prefix);
    const hdr = this.#txHdr;
    const reason = parseNetHeader(head, NET_HDR_SIZE, frameLen, this.#txRules, hdr);
    if (reason !== undefined) {
      txd[reason]++;
      return true;
    }
    if (!this.#linkUp) {
      txd.linkDown++;
      return true;
    }
    // Only NEEDS_CSUM means anything on transmit; DATA_VALID is the device's to set.
    hdr.flags &= VIRTIO_NET_HDR_F_NEEDS_CSUM;
    writeNetHeader(hdr, this.#sendHdr, 0, 0);
    const parts = this.#parts;
    parts.length = 0;
    parts.push(this.#sendHdr, this.#prefix(prefix));
    if (frameLen > prefix) r.views(frameLen - prefix, parts);
    if (this.#rxPairs.length > 1) {
      // Remember where this flow leaves, so its replies come back to the same pair.
      this.#flows[flowHash(head, NET_HDR_SIZE, prefix) & 0xff] = pair + 1;
    }
    let result;
    try {
      result = this.backend.send(pair % this.backend.queuePairs, parts);
    } catch (err) {
      this.#backendError(err);
      result = "dropped";
    }
    parts.length = 0;
    if (result === "full") return false;
    if (result === "dropped") {
      txd.backend++;
      return true;
    }
    const s = this.stats;
    s.txFrames++;
    s.txBytes += frameLen;
    if (hdr.gsoType !== VIRTIO_NET_HDR_GSO_NONE) s.txGso++;
    if (hdr.flags !== 0) s.txCsumOffload++;
    const qs = s.queues[pair];
    qs.txFrames++;
    qs.txBytes += frameLen;
    return true;
  }

  // A cached view of the first n bytes of the frame prefix in #txHead.
  #prefix(n: number): Uint8Array {
    return this.#prefixes[n];
  }

  #onWritable(bq: number): void {
    const n = this.backend.queuePairs;
    for (let p = 0; p < this.maxQueuePairs; p++) {
      if (p % n !== bq || this.#txBlocked[p] === 0) continue;
      this.#txBlocked[p] = 0;
      this.#continueTx(p);
    }
  }

  // Serve a transmit queue outside a driver notification (the backend became writable, or
  // the queue restarted: the driver may have kicked while nobody listened), and keep going on
  // later turns while the pass stops at its budget. A reset cancels the timer; a queue that
  // stopped meanwhile is simply not there when it fires.
  #continueTx(pair: number): void {
    if (this.#txTimers[pair] !== undefined || this.active === undefined) return;
    this.#txTimers[pair] = setImmediate(() => {
      this.#txTimers[pair] = undefined;
      if (this.#serveTx(pair)) this.#continueTx(pair);
    });
  }

  // -------------------------------------------------------------------------------------------
  // Receive

  // Serve the backlog of `pair` again on a later turn (after a pass stopped early).
  #continueRx(pair: number): void {
    if (this.#rxPairTimers[pair] !== undefined || this.active === undefined) return;
    this.#rxPairTimers[pair] = setImmediate(() => {
      this.#rxPairTimers[pair] = undefined;
      if (this.#serveRx(pair)) this.#continueRx(pair);
    });
  }

  #onReadable(bq: number): void {
    if (this.active === undefined) return;
    const staging = this.#staging;
    let n = 0;
    for (; n < NET_RX_BUDGET; n++) {
      let len: number;
      try {
        len = this.backend.receive(bq, staging);
      } catch (err) {
        this.#backendError(err);
        this.stats.rxDrops.backend++;
        break;
      }
      if (len < 0) break;
      this.#rxFrame(bq, len);
    }
    this.#flushRx();
    if (n === NET_RX_BUDGET && this.#rxTimers[bq] === undefined) {
      // More may be waiting: come back after the event loop had its turn.
      this.#rxTimers[bq] = setImmediate(() => {
        this.#rxTimers[bq] = undefined;
        this.#onReadable(bq);
      });
    }
  }

  #rxFrame(bq: number, len: number): void {
    const rxd = this.stats.rxDrops;
    const buf = this.#staging;
    if (len > buf.length) {
      rxd.truncated++;
      return;
    }
    const frameLen = len - NET_HDR_SIZE;
    const hdr = this.#rxHdr;
    const reason = frameLen < ETH_HLEN
      ? "runt"
      : parseNetHeader(buf, NET_HDR_SIZE, frameLen, this.#rxRules, hdr);
    if (reason !== undefined) {
      rxd[reason]++;
      return;
    }
    if (!this.#linkUp) {
      rxd.linkDown++;
      return;
    }
    const guest = this.#guest;
    if (hdr.gsoType !== VIRTIO_NET_HDR_GSO_NONE) {
      // virtio 1.2 §5.1.6.4.2: never a segmentation type the driver did not accept.
      const ok = hdr.gsoType === VIRTIO_NET_HDR_GSO_TCPV4
        ? guest.tso4
        : hdr.gsoType === VIRTIO_NET_HDR_GSO_TCPV6
        ? guest.tso6
        : hdr.gsoType === VIRTIO_NET_HDR_GSO_UDP && guest.ufo;
      if (!ok || (hdr.ecn && !guest.ecn)) {
        rxd.gsoRefused++;
        return;
      }
    } else if (frameLen > this.#rxMaxFrame) {
      rxd.oversize++;
      return;
    }
    if (!guest.csum) {
      // §5.1.6.4.2: without GUEST_CSUM the flags are zero and the checksum complete.
      if ((hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) {
        completeChecksum(buf.subarray(NET_HDR_SIZE, len), hdr.csumStart, hdr.csumOffset);
        this.stats.rxCsumCompleted++;
      }
      hdr.flags = 0;
    }
    writeNetHeader(hdr, buf, 0, 1);
    if (!this.#filter.accepts(buf, NET_HDR_SIZE, frameLen)) {
      rxd.filtered++;
      return;
    }
    const pair = this.#steer(bq, buf, NET_HDR_SIZE, frameLen);
    const backlog = this.#backlogs[pair];
    if (backlog.length > 0 || !this.#deliver(pair, buf, len)) {
      if (!backlog.push(buf, len)) rxd.noBuffer++;
    }
  }

  // The driver added receive buffers: deliver what waits for this pair.
  #serveRx(pair: number): boolean {
    const backlog = this.#backlogs[pair];
    let n = 0;
    for (; n < NET_RX_BUDGET; n++) {
      const frame = backlog.peek();
      if (frame === undefined || !this.#deliver(pair, frame, frame.length)) break;
      backlog.shift();
    }
    this.#flushRx();
    return n === NET_RX_BUDGET && backlog.length > 0;
  }

  // Take the next receive chain; when there is none, ask the driver for a notification
  // (virtio 1.2 §2.7.10) and look once more, so a buffer added meanwhile is not missed. A
  // malformed chain is returned to the driver empty and reported as BAD_CHAIN.
  #popRx(q: Virtqueue, mem: GuestMemory): DescriptorChain | null | typeof BAD_CHAIN {
    try {
      const c = q.pop(mem);
      if (c !== null || !q.enableNotification(mem)) return c;
      return q.pop(mem);
    } catch (err) {
      if (err instanceof QueueError && !err.fatal && err.head !== undefined) {
        q.addUsed(mem, err.head, 0);
        this.#error(VirtioError.from(err));
        return BAD_CHAIN;
      }
      throw err;
    }
  }

  // Copy a frame (12-byte header, then the frame: `len` bytes of `src`) into the receive
  // queue of `pair`. Returns false when there are not enough buffers (nothing consumed),
  // true when it was delivered or dropped for good.
  #deliver(pair: number, src: Uint8Array, len: number): boolean {
    const config = this.active;
    const qc = this.queue(2 * pair);
    if (config === undefined || qc === undefined) return false;
    const mem = config.memory;
    const q = qc.queue;
    const rxd = this.stats.rxDrops;
    const hdrSize = this.#hdrSize;
    const frameLen = len - NET_HDR_SIZE;
    const need = hdrSize + frameLen;
    // The guest's header is the first hdrSize bytes of the 12 (legacy: no num_buffers).
    const start = NET_HDR_SIZE - hdrSize;
    if (start > 0) src.copyWithin(start, 0, hdrSize);
    const chains = this.#rxChains;
    let k = 0;
    // Where the packet's first buffer is: popped buffers go back by rewinding to it (a packed
    // ring undoes one pop only).
    let mark = q.nextAvail;
    let skipped = 0;
    try {
      let room = 0;
      while (room < need) {
        const c = this.#popRx(q, mem);
        if (c === null) {
          q.nextAvail = mark;
          this.#restoreHeader(src, start, hdrSize);
          return false;
        }
        if (c === BAD_CHAIN || c.writableBytes < hdrSize) {
          // §5.1.6.3.1: every receive buffer holds at least a header. This one cannot (or was
          // malformed, and already went back empty).
          if (c !== BAD_CHAIN) {
            this.#error(
              new VirtioError("InvalidInput", `virtio-net rx chain ${c.head} has no room`),
            );
          }
          if (k === 0) {
            if (c !== BAD_CHAIN) q.addUsed(mem, c.head, 0);
            mark = q.nextAvail;
            this.#rxDirty[pair] = 1; // the driver hears of the buffers it got back
            if (++skipped >= q.size) {
              // A ring's worth of unusable buffers for one frame: the frame waits and the
              // rest is looked at on a later turn, so a driver that keeps the queue full of
              // them (refilling it from another CPU) cannot hold the device here.
              this.#restoreHeader(src, start, hdrSize);
              this.#continueRx(pair);
              return false;
            }
            continue;
          }
          // Mid-packet: give everything taken back empty and drop the frame.
          if (c !== BAD_CHAIN) chains[k++] = c;
          this.#complete(q, mem, k, 0);
          rxd.rxBuffer++;
          return true;
        }
        if (!this.#mrg && c.writableBytes < need) {
          // §5.1.6.3.2: one buffer per packet without MRG_RXBUF; this one is too small.
          q.undoPop();
          rxd.tooBig++;
          return true;
        }
        chains[k++] = c;
        room += c.writableBytes;
        if (room < need && k >= q.size) {
          q.nextAvail = mark;
          rxd.tooBig++;
          return true;
        }
      }
      // num_buffers (virtio 1.2 §5.1.6.4): how many buffers the packet spans.
      if (hdrSize === NET_HDR_SIZE) {
        src[10] = k & 0xff;
        src[11] = k >>> 8;
      }
      const heads = this.#rxHeads;
      const lens = this.#rxLens;
      let off = start;
      const end = NET_HDR_SIZE + frameLen;
      for (let i = 0; i < k; i++) {
        const w = chains[i].writer;
        const n = Math.min(w.remaining, end - off);
        w.write(src.subarray(off, off + n));
        off += n;
        heads[i] = chains[i].head;
        lens[i] = n;
      }
      q.addUsedMany(mem, heads, lens, k);
    } catch (err) {
      const e = VirtioError.from(err);
      this.#error(
        e.needsReset
          ? e
          : new VirtioError(e.kind, e.message, { needsReset: e.kind === "QueueError", cause: err }),
      );
      rxd.backend++;
      return true;
    } finally {
      for (let i = 0; i < k; i++) chains[i] = undefined as unknown as DescriptorChain;
    }
    const s = this.stats;
    s.rxFrames++;
    s.rxBytes += frameLen;
    if (src[start + 1] !== VIRTIO_NET_HDR_GSO_NONE) s.rxGso++;
    const qs = s.queues[pair];
    qs.rxFrames++;
    qs.rxBytes += frameLen;
    this.#rxDirty[pair] = 1;
    return true;
  }

  #restoreHeader(src: Uint8Array, start: number, hdrSize: number): void {
    if (start > 0) src.copyWithin(0, start, start + hdrSize);
  }

  #complete(q: Virtqueue, mem: GuestMemory, k: number, len: number): void {
    const heads = this.#rxHeads;
    const lens = this.#rxLens;
    for (let i = 0; i < k; i++) {
      heads[i] = this.#rxChains[i].head;
      lens[i] = len;
    }
    q.addUsedMany(mem, heads, lens, k);
  }

  // Signal the driver once per burst for every receive queue that got frames.
  #flushRx(): void {
    const config = this.active;
    if (config === undefined) return;
    const dirty = this.#rxDirty;
    for (let p = 0; p < dirty.length; p++) {
      if (dirty[p] === 0) continue;
      dirty[p] = 0;
      const qc: VirtioQueueConfig | undefined = this.queue(2 * p);
      if (qc === undefined) continue;
      try {
        if (qc.queue.needsNotification(config.memory)) qc.notifier.notify();
      } catch (err) {
        this.#error(VirtioError.from(err));
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Control queue

  #ctrl = (chain: DescriptorChain): number => {
    const s = this.stats;
    const r = chain.reader;
    if (chain.writableBytes < 1) {
      // No room for the ack: nothing can be answered (virtio 1.2 §5.1.6.5).
      s.ctrlErr++;
      this.#error(
        new VirtioError("InvalidInput", `virtio-net ctrl chain ${chain.head} has no ack byte`),
      );
      return 0;
    }
    let ack = VIRTIO_NET_ERR;
    if (chain.readableBytes >= 2 && this.#limits !== undefined) {
      const cls = r.readU8();
      const cmd = r.readU8();
      const dataLen = chain.readableBytes - 2;
      if (dataLen <= NET_CTRL_MAX_DATA) {
        const data = this.#ctrlData.subarray(0, dataLen);
        r.readExact(data);
        const parsed = parseCtrlCommand(cls, cmd, data, this.#limits);
        if (parsed.ok) ack = this.#apply(parsed.command);
      }
    }
    if (ack === VIRTIO_NET_OK) s.ctrlOk++;
    else s.ctrlErr++;
    chain.writer.writeU8(ack);
    return 1;
  };

  #apply(c: NetCtrlCommand): number {
    switch (c.kind) {
      case "rxMode":
        this.#filter.setMode(c.mode, c.on);
        return VIRTIO_NET_OK;
      case "macTable":
        this.#filter.setTable(c.table);
        return VIRTIO_NET_OK;
      case "macAddr":
        // §5.1.6.5.2.1: config space shows the new address before the command completes.
        this.#mac.set(c.mac);
        return VIRTIO_NET_OK;
      case "vlan":
        this.#filter.setVlan(c.vid, c.add);
        return VIRTIO_NET_OK;
      case "announceAck":
        this.#announcing = false;
        this.#writeStatus();
        return VIRTIO_NET_OK;
      case "vqPairs":
        // §5.1.6.5.6.1: no frame goes to a pair beyond the new count once this completes.
        this.#vqPairs = c.pairs;
        this.#updatePairs();
        return VIRTIO_NET_OK;
      case "guestOffloads":
        this.#guest = effectiveGuestOffloads(c.offloads);
        try {
          this.backend.setGuestOffloads(this.#guest);
        } catch (err) {
          this.#backendError(err);
          return VIRTIO_NET_ERR;
        }
        return VIRTIO_NET_OK;
    }
  }
}

/**
 * A vhost-user frontend: the VMM's side of the protocol (what QEMU does),
 * for tests, benchmarks and programs that drive a vhost-user backend without
 * a VM. It owns the guest memory (a memfd mapped here), passes it to the
 * backend with SET_MEM_TABLE under a fake frontend virtual address, lays out
 * split virtqueues in it with {@linkcode DriverQueue}, and passes kick and
 * call eventfds.
 *
 * Every operation is asynchronous and never blocks the event loop, so the
 * backend may run in the same process.
 *
 * @module
 */

import { GuestMemory } from "../memory/guest_memory.ts";
import {
  DRIVER_OPT_IN_FEATURES,
  type DriverBuffer,
  DriverQueue,
  type RawDescriptor,
  type UsedEntry,
} from "./queue_driver.ts";
import {
  availRingSize,
  DESCRIPTOR_SIZE,
  usedRingSize,
  VIRTIO_F_EVENT_IDX,
} from "../queue/split.ts";
import { featureBit, VIRTIO_F_RING_PACKED } from "../devices/device.ts";
import {
  addSeals,
  AF_UNIX,
  close as closeFd,
  connect as connectFd,
  Errno,
  EventFd,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  ftruncate,
  type Mapping,
  memfdCreate,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  mmapFd,
  MSG_CMSG_CLOEXEC,
  MSG_DONTWAIT,
  POLLIN,
  recvmsg,
  sendAll,
  setNonBlocking,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  socket,
  socketpair,
  SysError,
  waitReady,
} from "../sys/mod.ts";
import {
  encode,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  MAX_MEM_REGIONS,
  type MemoryRegionDesc,
  type Message,
  MessageReader,
  Payload,
  ProtocolFeature,
  Request,
  requestName,
  u64Payload,
  VERSION,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserError,
  VRING_NOFD_MASK,
  type VringAddr,
  vringStatePayload,
} from "../vhost_user/protocol.ts";

export type { MemoryRegionDesc, Message, VringAddr } from "../vhost_user/protocol.ts";
export type {
  GuestBuffer,
  GuestMemory,
  GuestRegion,
  GuestRegionOptions,
} from "../memory/guest_memory.ts";
export type { DriverBuffer, RawDescriptor, UsedEntry } from "./queue_driver.ts";
export type { EventFd, EventFdOptions, EventFdWaitOptions } from "../sys/mod.ts";

/**
 * Where the frontend pretends guest memory is mapped in its address space:
 * guest address `g` is frontend virtual address `FRONTEND_VA_BASE + g`. The
 * backend must translate vring addresses through the memory table.
 */
export const FRONTEND_VA_BASE = 0x7f00_0000_0000n;

/** Default size of the guest memory (bytes). */
export const DEFAULT_MEMORY_SIZE: number = 4 << 20;

/** Default buffer area of each ring (bytes). */
export const DEFAULT_BUFFER_SIZE: number = 256 << 10;

/** Default time to wait for a reply (milliseconds). */
export const DEFAULT_TIMEOUT_MS = 10000;

/** Protocol features {@linkcode VhostUserFrontend.start} asks for by default. */
export const FRONTEND_PROTOCOL_FEATURES: bigint = featureBit(ProtocolFeature.MQ) |
  featureBit(ProtocolFeature.REPLY_ACK) | featureBit(ProtocolFeature.CONFIG) |
  featureBit(ProtocolFeature.BACKEND_REQ);

/** Requests whose reply is part of the protocol (not a REPLY_ACK). */
const HAS_REPLY: ReadonlySet<number> = new Set([
  Request.GET_FEATURES,
  Request.GET_PROTOCOL_FEATURES,
  Request.GET_QUEUE_NUM,
  Request.GET_VRING_BASE,
  Request.GET_CONFIG,
  Request.GET_INFLIGHT_FD,
  Request.GET_MAX_MEM_SLOTS,
  Request.GET_STATUS,
]);

const PAGE = 4096;
// Leave the first pages unused so that no ring sits at guest address 0.
const FIRST_RING = 0x10000;

/**
 * Encode a SET_VRING_ADDR payload.
 * @param addr Ring index, flags and frontend addresses.
 * @returns 40 bytes.
 */
export function vringAddrPayload(addr: VringAddr): Uint8Array {
  const out = new Uint8Array(40);
  const v = new DataView(out.buffer);
  v.setUint32(0, addr.index, true);
  v.setUint32(4, addr.flags, true);
  v.setBigUint64(8, BigInt.asUintN(64, addr.desc), true);
  v.setBigUint64(16, BigInt.asUintN(64, addr.used), true);
  v.setBigUint64(24, BigInt.asUintN(64, addr.avail), true);
  v.setBigUint64(32, BigInt.asUintN(64, addr.log), true);
  return out;
}

/**
 * Encode a SET_MEM_TABLE payload (the descriptors go separately, one per region).
 * @param regions The regions, at most {@linkcode MAX_MEM_REGIONS} (not checked, so tests can lie).
 * @returns `8 + 32 * regions.length` bytes.
 */
export function memTablePayload(regions: readonly MemoryRegionDesc[]): Uint8Array {
  const out = new Uint8Array(8 + 32 * regions.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, regions.length, true);
  regions.forEach((r, i) => {
    const o = 8 + 32 * i;
    v.setBigUint64(o, BigInt(r.guestAddr), true);
    v.setBigUint64(o + 8, BigInt(r.size), true);
    v.setBigUint64(o + 16, BigInt.asUintN(64, r.userAddr), true);
    v.setBigUint64(o + 24, BigInt(r.mmapOffset), true);
  });
  return out;
}

/**
 * Encode a GET_CONFIG / SET_CONFIG payload.
 * @param offset Offset in the config space.
 * @param data The bytes (for GET_CONFIG, zeros of the size wanted).
 * @param flags `VHOST_SET_CONFIG_TYPE_*` flags (default 0).
 * @returns `12 + data.length` bytes.
 */
export function configPayload(offset: number, data: Uint8Array, flags = 0): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, offset, true);
  v.setUint32(4, data.length, true);
  v.setUint32(8, flags, true);
  out.set(data, 12);
  return out;
}

/** Options of {@linkcode VhostUserFrontend.connect}. */
export interface VhostUserFrontendOptions {
  /** Size of the guest memory in bytes, a multiple of 4096 (default 4 MiB). */
  memorySize?: number;
  /** How long to wait for each reply, in milliseconds (default 10000). */
  timeoutMs?: number;
  /**
   * Seal the guest memory's memfd against growing and shrinking, as QEMU's
   * `memory-backend-memfd` does (default true). `false` leaves it unsealed, as
   * `memory-backend-file` and other VMMs may; a backend then warns, or refuses it.
   */
  sealMemory?: boolean;
  /**
   * Once REPLY_ACK is negotiated, ask for an acknowledgement of every request
   * sent by the high-level methods, so each returns after the backend handled
   * it (default true).
   */
  replyAck?: boolean;
}

/** Options of {@linkcode VhostUserFrontend.request}. */
export interface RequestOptions {
  /** Descriptors to pass with the message (they stay open here). */
  fds?: readonly number[];
  /** Set the NEED_REPLY flag. */
  needReply?: boolean;
  /** Raw flags, replacing the computed ones (version and NEED_REPLY); for hostile tests. */
  flags?: number;
  /**
   * Whether to wait for a reply. Default: when the request has one, or when
   * `needReply` is set and REPLY_ACK was negotiated.
   */
  expectReply?: boolean;
  /** How long to wait for the reply (default: the frontend's). */
  timeoutMs?: number;
}

/** Options of {@linkcode VhostUserFrontend.setupRing}. */
export interface SetupRingOptions {
  /** Queue size, a power of two (default 256). */
  size?: number;
  /** Whether the driver uses VIRTIO_F_EVENT_IDX (default: whether it was acked). */
  eventIdx?: boolean;
  /** Bytes of buffer area for this ring (default 256 KiB). */
  bufferSize?: number;
  /** Send SET_VRING_ENABLE 1 (default: when protocol features were acked). */
  enable?: boolean;
}

/** Options of {@linkcode VhostUserFrontend.start}. */
export interface StartOptions {
  /** Virtio features wanted (default: all offered); only offered ones are acked. */
  features?: bigint;
  /** Protocol features wanted (default MQ, REPLY_ACK, CONFIG); only offered ones are acked. */
  protocolFeatures?: bigint;
  /** Number of rings to set up (default: the backend's queue count, or 1 without MQ). */
  queues?: number;
  /** Size of each ring (default 256). */
  queueSize?: number;
  /** Guest memory size; replaces the memory when it differs (default: keep). */
  memorySize?: number;
  /**
   * The memory table to send instead of the true one (see
   * {@linkcode VhostUserFrontend.setMemTable}); for hostile tests.
   */
  memoryRegions?: readonly MemoryRegionDesc[];
  /**
   * Program the rings already set up again where their driver left off (`resumeRing`)
   * instead of laying out fresh ones: after {@linkcode VhostUserFrontend.reconnect} (default
   * false).
   */
  resume?: boolean;
}

/** What {@linkcode VhostUserFrontend.start} negotiated. */
export interface StartResult {
  /** Virtio features the backend offered. */
  offeredFeatures: bigint;
  /** Virtio features acknowledged (SET_FEATURES). */
  features: bigint;
  /** Protocol features acknowledged (0 when the backend offers none). */
  protocolFeatures: bigint;
  /** Queue count from GET_QUEUE_NUM, or `undefined` without MQ. */
  queueNum: number | undefined;
  /** Indices of the rings set up. */
  rings: number[];
}

/**
 * The driver side of a ring: the part of {@linkcode DriverQueue} (from
 * `queue/testing.ts`) a frontend uses, laid out in the frontend's guest memory.
 */
export interface RingDriver {
  /** Queue size. */
  readonly size: number;
  /** Guest address of the descriptor table. */
  readonly descTable: number;
  /** Guest address of the available ring. */
  readonly availRing: number;
  /** Guest address of the used ring. */
  readonly usedRing: number;
  /** Whether the driver uses EVENT_IDX. */
  eventIdx: boolean;
  /** With EVENT_IDX, move `used_event` to the consumed position in `takeUsed`. */
  autoUsedEvent: boolean;
  /** Number of free descriptors. */
  readonly freeDescriptors: number;
  /** The driver's `avail.idx`. */
  readonly availIdx: number;
  /**
   * Reserve buffer space in the ring's buffer area.
   * @param len Bytes.
   * @param align Alignment.
   * @returns Guest address.
   */
  alloc(len: number, align?: number): number;
  /**
   * Write one raw descriptor.
   * @param index Descriptor index.
   * @param desc The descriptor.
   * @param table Guest address of the table (default: the ring's).
   */
  writeDescriptor(index: number, desc: RawDescriptor, table?: number): void;
  /**
   * Add a chain of buffers and (by default) make it available.
   * @param buffers Readable then writable buffers.
   * @param options `indirect` table, `publish: false` to only build it.
   * @returns The head index.
   */
  addChain(buffers: DriverBuffer[], options?: { indirect?: boolean; publish?: boolean }): number;
  /**
   * Put a head in the available ring and move `avail.idx`.
   * @param head Descriptor index.
   */
  publish(head: number): void;
  /**
   * Force `avail.idx`.
   * @param idx The new index.
   */
  setAvailIdx(idx: number): void;
  /**
   * Set where the driver has consumed the used ring up to.
   * @param idx The used index.
   */
  setLastUsed(idx: number): void;
  /**
   * Whether a notification is due (records the kick).
   * @returns `true` when the device wants one.
   */
  kickNeeded(): boolean;
  /**
   * Suppress used-buffer notifications, or re-enable them.
   * @param suppress `true` to suppress.
   */
  suppressInterrupts(suppress: boolean): void;
  /**
   * With EVENT_IDX, set `used_event`.
   * @param idx The value.
   */
  setUsedEvent(idx: number): void;
  /**
   * The device's `used.idx`.
   * @returns The index.
   */
  usedIdx(): number;
  /**
   * Used entries not yet taken.
   * @returns The count.
   */
  pendingUsed(): number;
  /**
   * Take the next used entry.
   * @returns The entry, or `null`.
   */
  takeUsed(): UsedEntry | null;
  /**
   * Take every pending used entry.
   * @returns The entries, oldest first.
   */
  takeAllUsed(): UsedEntry[];
}

/** One ring as the frontend drives it. */
export interface FrontendRing {
  /** Ring index. */
  readonly index: number;
  /** The driver side of the ring, in the frontend's guest memory. */
  readonly driver: RingDriver;
  /** The kick eventfd passed to the backend. */
  readonly kick: EventFd;
  /** The call eventfd passed to the backend. */
  readonly call: EventFd;
}

interface RingSlot {
  start: number;
  end: number;
}

/**
 * A vhost-user frontend connected to a backend's socket.
 *
 * @example Read entropy from an rng backend
 * ```ts ignore
 * const frontend = await VhostUserFrontend.connect("/tmp/rng.sock");
 * await frontend.start();
 * const ring = frontend.ring(0);
 * ring.driver.addChain([{ writable: 64 }]);
 * frontend.kick(0);
 * if (!(await frontend.waitCall(0, 5000))) throw new Error("no interrupt");
 * const used = ring.driver.takeUsed()!;
 * if (used.len !== 64) throw new Error("short read");
 * await frontend.close();
 * ```
 */
export class VhostUserFrontend {
  #fd: number;
  #memfd = -1;
  #mapping: Mapping | undefined;
  #memory!: GuestMemory;
  readonly #timeoutMs: number;
  readonly #replyAck: boolean;
  readonly #sealMemory: boolean;
  #closing = new AbortController();
  #closed = false;
  #peerClosed = false;
  #lock: Promise<unknown> = Promise.resolve();
  #features = 0n;
  #protocolFeatures = 0n;
  #rings = new Map<number, FrontendRing>();
  #backendReq = -1;
  #backendReader = new MessageReader();
  #slots = new Map<number, RingSlot>();
  #nextSlot = FIRST_RING;

  private constructor(fd: number, options: VhostUserFrontendOptions) {
    this.#fd = fd;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#replyAck = options.replyAck ?? true;
    this.#sealMemory = options.sealMemory ?? true;
  }

  /**
   * Connect to a backend listening on a Unix socket and create the guest memory.
   * @param path The socket path.
   * @param options Memory size, reply timeout and REPLY_ACK use.
   * @returns The connected frontend.
   * @throws {SysError} When the socket cannot be connected or the memory not created.
   * @throws {RangeError} When the memory size is not a positive multiple of 4096.
   */
  static async connect(
    path: string,
    options: VhostUserFrontendOptions = {},
  ): Promise<VhostUserFrontend> {
    const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
    let frontend: VhostUserFrontend;
    try {
      // Non-blocking, so that a full listen backlog (the backend may be in this very event
      // loop) gives EAGAIN to retry rather than blocking the loop.
      setNonBlocking(fd);
      const deadline = performance.now() + (options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
      for (;;) {
        try {
          connectFd(fd, path);
          break;
        } catch (err) {
          if (!(err instanceof SysError && err.errno === Errno.EAGAIN)) throw err;
          if (performance.now() > deadline) throw err;
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      }
      frontend = new VhostUserFrontend(fd, options);
    } catch (err) {
      closeFd(fd);
      throw err;
    }
    try {
      frontend.#allocateMemory(options.memorySize ?? DEFAULT_MEMORY_SIZE);
    } catch (err) {
      frontend.#release();
      throw err;
    }
    return frontend;
  }

  /** The guest memory (guest address 0 up to its size), shared with the backend. */
  get memory(): GuestMemory {
    return this.#memory;
  }

  /**
   * The memfd holding the guest memory, as passed with SET_MEM_TABLE (owned by the frontend:
   * do not close it). Tests may resize or seal it.
   */
  get memoryFd(): number {
    return this.#memfd;
  }

  /** Virtio features sent with the last SET_FEATURES. */
  get features(): bigint {
    return this.#features;
  }

  /** Protocol features sent with the last SET_PROTOCOL_FEATURES. */
  get protocolFeatures(): bigint {
    return this.#protocolFeatures;
  }

  /** Whether `close()` was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether the backend closed the connection (seen while reading). */
  get peerClosed(): boolean {
    return this.#peerClosed;
  }

  /**
   * Translate a guest address to the frontend virtual address given to the backend.
   * @param guestAddr Guest-physical address.
   * @returns The frontend virtual address.
   */
  userAddr(guestAddr: number): bigint {
    return FRONTEND_VA_BASE + BigInt(guestAddr);
  }

  /**
   * A ring set up with {@linkcode VhostUserFrontend.setupRing}.
   * @param index Ring index.
   * @returns The ring.
   * @throws {RangeError} When the ring was not set up.
   */
  ring(index: number): FrontendRing {
    const ring = this.#rings.get(index);
    if (ring === undefined) throw new RangeError(`Vring ${index} is not set up`);
    return ring;
  }

  #allocateMemory(size: number): void {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE !== 0) {
      throw new RangeError(`Memory size must be a positive multiple of ${PAGE}, got ${size}`);
    }
    const memfd = memfdCreate("virtio-ts-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    let mapping: Mapping;
    try {
      ftruncate(memfd, size);
      if (this.#sealMemory) addSeals(memfd, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
      mapping = mmapFd(memfd, size);
    } catch (err) {
      closeFd(memfd);
      throw err;
    }
    this.#freeMemory();
    this.#memfd = memfd;
    this.#mapping = mapping;
    this.#memory = new GuestMemory([{ base: 0, buffer: mapping.buffer }]);
    this.#slots.clear();
    this.#nextSlot = FIRST_RING;
  }

  #freeMemory(): void {
    this.#mapping?.unmap();
    this.#mapping = undefined;
    if (this.#memfd >= 0) closeFd(this.#memfd);
    this.#memfd = -1;
  }

  // Requests are serialised: a reply always belongs to the request waiting for it.
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn, fn);
    this.#lock = run.catch(() => {});
    return run;
  }

  #checkOpen(request?: number): void {
    if (this.#closed) throw new VhostUserError("Io", "frontend is closed", request);
  }

  /**
   * Send one request and, when it has one, wait for its reply.
   * @param request Request code (`Request.*`, or anything for hostile tests).
   * @param payload Payload bytes (default none).
   * @param options Descriptors, flags and reply handling.
   * @returns The reply, or `undefined` when none is expected.
   * @throws {VhostUserError} `Io` when the backend closes the connection or does not answer in
   *   time; `Malformed` for a reply that does not match the request.
   */
  request(
    request: number,
    payload: Uint8Array = new Uint8Array(0),
    options: RequestOptions = {},
  ): Promise<Message | undefined> {
    return this.#exclusive(async () => {
      this.#checkOpen(request);
      if (this.#peerClosed) {
        throw new VhostUserError("Io", "backend closed the connection", request);
      }
      const needReply = options.needReply ?? false;
      const flags = options.flags ?? (VERSION | (needReply ? FLAG_NEED_REPLY : 0));
      const expect = options.expectReply ??
        (HAS_REPLY.has(request) || (needReply && this.#has(ProtocolFeature.REPLY_ACK)));
      try {
        sendAll(this.#fd, encode(request, flags, payload), options.fds ?? []);
      } catch (err) {
        if (
          err instanceof SysError && (err.errno === Errno.EPIPE || err.errno === Errno.ECONNRESET)
        ) {
          this.#peerClosed = true;
          throw new VhostUserError("Io", "backend closed the connection", request, { cause: err });
        }
        throw err;
      }
      if (!expect) return undefined;
      const timeoutMs = options.timeoutMs ?? this.#timeoutMs;
      const reply = await this.#receive(request, timeoutMs);
      if (reply === null) {
        throw new VhostUserError("Io", `no reply within ${timeoutMs} ms`, request);
      }
      if (reply.request !== request) {
        this.#closeFds(reply.fds);
        throw new VhostUserError(
          "Malformed",
          `reply to ${requestName(reply.request)} while waiting for this one`,
          request,
        );
      }
      if ((reply.flags & FLAG_REPLY) === 0) {
        this.#closeFds(reply.fds);
        throw new VhostUserError("Malformed", "answer without the reply flag", request);
      }
      return reply;
    });
  }

  // The next message from the backend, or null on timeout.
  async #receive(request: number, timeoutMs: number): Promise<Message | null> {
    const reader = new MessageReader();
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const space = reader.space();
      let got;
      try {
        got = recvmsg(this.#fd, space, MAX_MEM_REGIONS, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
      } catch (err) {
        if (err instanceof SysError && err.errno === Errno.EAGAIN) {
          const left = deadline - performance.now();
          if (!(await this.#waitReadable(left))) {
            this.#closeFds(reader.takeStrayFds());
            return null;
          }
          continue;
        }
        if (err instanceof SysError && err.errno === Errno.ECONNRESET) {
          this.#peerClosed = true;
          throw new VhostUserError("Io", "backend closed the connection", request, { cause: err });
        }
        throw err;
      }
      if (got.bytes === 0) {
        this.#closeFds(got.fds);
        this.#closeFds(reader.takeStrayFds());
        this.#peerClosed = true;
        throw new VhostUserError("Io", "backend closed the connection", request);
      }
      reader.commit(got.bytes, got.fds);
      const msg = reader.next();
      if (msg !== null) return msg;
    }
  }

  // Wait until the socket is readable; false on timeout. Rejects when the frontend closes.
  async #waitReadable(timeoutMs: number): Promise<boolean> {
    if (timeoutMs <= 0) return false;
    return await withTimeout(
      timeoutMs,
      (signal) => waitReady(this.#fd, POLLIN, { signal }).then(() => {}),
      {
        signal: this.#closing.signal,
        reason: () => new VhostUserError("Io", "frontend is closed"),
      },
    );
  }

  #closeFds(fds: number[]): void {
    for (const f of fds.splice(0)) {
      try {
        closeFd(f);
      } catch { /* already closed */ }
    }
  }

  #has(bit: number): boolean {
    return (this.#protocolFeatures & featureBit(bit)) !== 0n;
  }

  // A request without a reply of its own: ask for an ack when REPLY_ACK allows, and check it.
  async #command(request: number, payload: Uint8Array, fds: readonly number[] = []): Promise<void> {
    const needReply = this.#replyAck && this.#has(ProtocolFeature.REPLY_ACK);
    const reply = await this.request(request, payload, { fds, needReply });
    if (reply === undefined) return;
    const status = Payload.u64(reply);
    if (status !== 0n) {
      throw new VhostUserError("Io", `backend acknowledged with status ${status}`, request);
    }
  }

  async #query(request: number, payload: Uint8Array): Promise<Message> {
    const reply = await this.request(request, payload);
    return reply!;
  }

  /**
   * Wait for the backend to close the connection (after a protocol error, say).
   * @param timeoutMs How long to wait.
   * @returns `true` when the connection was closed, `false` on timeout.
   * @throws {VhostUserError} `Malformed` when the backend sends something instead.
   */
  waitDisconnect(timeoutMs: number): Promise<boolean> {
    return this.#exclusive(async () => {
      if (this.#peerClosed) return true;
      this.#checkOpen();
      let msg: Message | null;
      try {
        msg = await this.#receive(0, timeoutMs);
      } catch (err) {
        if (this.#peerClosed) return true;
        throw err;
      }
      if (msg === null) return false;
      this.#closeFds(msg.fds);
      throw new VhostUserError(
        "Malformed",
        `unexpected ${requestName(msg.request)} while waiting for the backend to close`,
      );
    });
  }

  /**
   * GET_FEATURES.
   * @returns The virtio features the backend offers (with bit 30 when it speaks protocol
   *   features).
   */
  async getFeatures(): Promise<bigint> {
    return Payload.u64(await this.#query(Request.GET_FEATURES, new Uint8Array(0)));
  }

  /**
   * SET_FEATURES.
   * @param features The features to acknowledge.
   */
  async setFeatures(features: bigint): Promise<void> {
    await this.#command(Request.SET_FEATURES, u64Payload(features));
    this.#features = features;
  }

  /**
   * GET_PROTOCOL_FEATURES.
   * @returns The protocol features the backend offers.
   */
  async getProtocolFeatures(): Promise<bigint> {
    return Payload.u64(await this.#query(Request.GET_PROTOCOL_FEATURES, new Uint8Array(0)));
  }

  /**
   * SET_PROTOCOL_FEATURES. From then on, REPLY_ACK (when included) is used.
   * @param features The protocol features to acknowledge.
   */
  async setProtocolFeatures(features: bigint): Promise<void> {
    // Sent without NEED_REPLY: REPLY_ACK only applies once negotiated.
    await this.request(Request.SET_PROTOCOL_FEATURES, u64Payload(features));
    this.#protocolFeatures = features;
  }

  /** SET_OWNER. */
  async setOwner(): Promise<void> {
    await this.#command(Request.SET_OWNER, new Uint8Array(0));
  }

  /**
   * GET_QUEUE_NUM (needs the MQ protocol feature).
   * @returns The number of queues the backend supports.
   */
  async getQueueNum(): Promise<number> {
    return Number(Payload.u64(await this.#query(Request.GET_QUEUE_NUM, new Uint8Array(0))));
  }

  /**
   * SET_MEM_TABLE: pass the guest memory as one region at guest address 0, mapped in the
   * frontend at {@linkcode FRONTEND_VA_BASE}.
   * @param regions A table to send instead, with the guest memory's memfd passed once per
   *   region; nothing checks it, so a test can lie (a region larger than the memfd, an offset
   *   past its end, overlaps, ...).
   */
  async setMemTable(regions?: readonly MemoryRegionDesc[]): Promise<void> {
    this.#checkOpen(Request.SET_MEM_TABLE);
    const table = regions ?? [{
      guestAddr: 0,
      size: this.#memory.totalSize,
      userAddr: this.userAddr(0),
      mmapOffset: 0,
    }];
    const fds = table.map(() => this.#memfd);
    await this.#command(Request.SET_MEM_TABLE, memTablePayload(table), fds);
  }

  /**
   * GET_CONFIG.
   * @param offset Offset in the device's config space.
   * @param size Bytes to read.
   * @returns The bytes.
   * @throws {VhostUserError} `Malformed` when the reply does not match the request.
   */
  async getConfig(offset: number, size: number): Promise<Uint8Array> {
    const reply = await this.#query(
      Request.GET_CONFIG,
      configPayload(offset, new Uint8Array(size)),
    );
    const c = Payload.config(reply);
    if (c.offset !== offset || c.size !== size) {
      throw new VhostUserError(
        "Malformed",
        `config reply for ${c.size} bytes at ${c.offset}`,
        Request.GET_CONFIG,
      );
    }
    return c.data.slice();
  }

  /**
   * SET_CONFIG.
   * @param offset Offset in the device's config space.
   * @param data The bytes to write.
   */
  async setConfig(offset: number, data: Uint8Array): Promise<void> {
    await this.#command(Request.SET_CONFIG, configPayload(offset, data));
  }

  #slot(index: number, bytes: number): RingSlot {
    const old = this.#slots.get(index);
    if (old !== undefined && old.end - old.start >= bytes) return old;
    const start = Math.ceil(this.#nextSlot / PAGE) * PAGE;
    const end = start + bytes;
    if (end > this.#memory.totalSize) {
      throw new RangeError(`Guest memory too small for vring ${index} (${bytes} bytes)`);
    }
    // A page between slots, so rings of different indices are never adjacent.
    this.#nextSlot = end + PAGE;
    const slot = { start, end };
    this.#slots.set(index, slot);
    return slot;
  }

  /**
   * Lay out a fresh ring in guest memory and program it in the backend: SET_VRING_NUM,
   * SET_VRING_BASE 0, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL (new eventfds) and,
   * with protocol features, SET_VRING_ENABLE 1.
   * @param index Ring index.
   * @param options Size, EVENT_IDX, buffer area and enabling.
   * @returns The ring.
   * @throws {RangeError} When the ring does not fit in guest memory.
   */
  async setupRing(index: number, options: SetupRingOptions = {}): Promise<FrontendRing> {
    this.#checkOpen(Request.SET_VRING_NUM);
    const size = options.size ?? 256;
    const bufferSize = options.bufferSize ?? DEFAULT_BUFFER_SIZE;
    const ringBytes = Math.ceil(
      (DESCRIPTOR_SIZE * size + availRingSize(size) + 4 + usedRingSize(size)) / 64,
    ) * 64;
    const slot = this.#slot(index, ringBytes + bufferSize);
    const driver: RingDriver = new DriverQueue(this.#memory, {
      size,
      ringBase: slot.start,
      bufferBase: slot.start + ringBytes,
      bufferEnd: slot.end,
      eventIdx: options.eventIdx ?? (this.#features & featureBit(VIRTIO_F_EVENT_IDX)) !== 0n,
    });
    const old = this.#rings.get(index);
    const ring: FrontendRing = {
      index,
      driver,
      kick: old?.kick ?? new EventFd(),
      call: old?.call ?? new EventFd(),
    };
    this.#rings.set(index, ring);
    ring.call.read();
    await this.#program(ring, 0, options.enable);
    return ring;
  }

  /**
   * Program an existing ring again, as after {@linkcode VhostUserFrontend.getVringBase}
   * (or a backend reconnection): same rings, same eventfds, the given base.
   * @param index Ring index.
   * @param base The next available index for the backend (default: what the driver's
   *   used index says has been consumed, i.e. the in-flight requests are served again).
   * @param options `enable` as in {@linkcode VhostUserFrontend.setupRing}.
   * @returns The ring.
   * @throws {RangeError} When the ring was not set up.
   */
  async resumeRing(
    index: number,
    base?: number,
    options: { enable?: boolean } = {},
  ): Promise<FrontendRing> {
    const ring = this.ring(index);
    await this.#program(ring, base ?? ring.driver.usedIdx(), options.enable);
    return ring;
  }

  async #program(ring: FrontendRing, base: number, enable: boolean | undefined): Promise<void> {
    const { index, driver } = ring;
    await this.#command(Request.SET_VRING_NUM, vringStatePayload(index, driver.size));
    await this.#command(Request.SET_VRING_BASE, vringStatePayload(index, base));
    await this.#command(
      Request.SET_VRING_ADDR,
      vringAddrPayload({
        index,
        flags: 0,
        desc: this.userAddr(driver.descTable),
        used: this.userAddr(driver.usedRing),
        avail: this.userAddr(driver.availRing),
        log: 0n,
      }),
    );
    await this.#command(Request.SET_VRING_KICK, u64Payload(BigInt(index)), [ring.kick.fd]);
    await this.#command(Request.SET_VRING_CALL, u64Payload(BigInt(index)), [ring.call.fd]);
    const protocol = (this.#features & featureBit(VHOST_USER_F_PROTOCOL_FEATURES)) !== 0n;
    if (enable ?? protocol) await this.setVringEnable(index, true);
  }

  /**
   * SET_BACKEND_REQ_FD: give the backend one end of a new socket pair for the messages it
   * sends on its own (configuration changes); read them with
   * {@linkcode VhostUserFrontend.nextBackendMessage}.
   */
  async setBackendReqFd(): Promise<void> {
    const [mine, theirs] = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
    try {
      setNonBlocking(mine);
      await this.#command(Request.SET_BACKEND_REQ_FD, new Uint8Array(0), [theirs]);
    } catch (err) {
      closeFd(mine);
      throw err;
    } finally {
      closeFd(theirs);
    }
    if (this.#backendReq >= 0) closeFd(this.#backendReq);
    this.#backendReq = mine;
    this.#backendReader = new MessageReader();
  }

  /**
   * The next message the backend sent on the backend request channel.
   * @param timeoutMs How long to wait.
   * @returns The message, or `null` on timeout.
   * @throws {RangeError} When no channel was set up.
   */
  async nextBackendMessage(timeoutMs: number): Promise<Message | null> {
    const fd = this.#backendReq;
    if (fd < 0) throw new RangeError("No backend request channel (SET_BACKEND_REQ_FD)");
    const reader = this.#backendReader;
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const msg = reader.next();
      if (msg !== null) return msg;
      let got;
      try {
        got = recvmsg(fd, reader.space(), 4, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
      } catch (err) {
        if (!(err instanceof SysError && err.errno === Errno.EAGAIN)) throw err;
        const left = deadline - performance.now();
        if (left <= 0) return null;
        const ready = await withTimeout(
          left,
          (signal) => waitReady(fd, POLLIN, { signal }).then(() => {}),
          { signal: this.#closing.signal, reason: () => new VhostUserError("Io", "closed") },
        );
        if (!ready) return null;
        continue;
      }
      if (got.bytes === 0) return null;
      reader.commit(got.bytes, got.fds);
    }
  }

  /**
   * SET_VRING_ENABLE.
   * @param index Ring index.
   * @param enable Enable or disable.
   */
  async setVringEnable(index: number, enable: boolean): Promise<void> {
    await this.#command(Request.SET_VRING_ENABLE, vringStatePayload(index, enable ? 1 : 0));
  }

  /**
   * SET_VRING_CALL without a descriptor (`VRING_NOFD_MASK`): the backend stops signalling.
   * @param index Ring index.
   */
  async clearVringCall(index: number): Promise<void> {
    await this.#command(Request.SET_VRING_CALL, u64Payload(BigInt(index | VRING_NOFD_MASK)));
  }

  /**
   * GET_VRING_BASE: stop the ring in the backend.
   * @param index Ring index.
   * @returns The backend's next available index.
   * @throws {VhostUserError} `Malformed` when the reply is for another ring.
   */
  async getVringBase(index: number): Promise<number> {
    const reply = await this.#query(Request.GET_VRING_BASE, vringStatePayload(index, 0));
    const state = Payload.vringState(reply);
    if (state.index !== index) {
      throw new VhostUserError(
        "Malformed",
        `vring base reply for ring ${state.index}`,
        Request.GET_VRING_BASE,
      );
    }
    return state.num;
  }

  /**
   * Notify the backend that ring `index` has new buffers, unless the backend suppressed
   * notifications (VIRTQ_USED_F_NO_NOTIFY or, with EVENT_IDX, `avail_event`).
   * @param index Ring index.
   * @param options `force` to write the kick eventfd regardless.
   * @returns Whether the kick eventfd was written.
   * @throws {RangeError} When the ring was not set up.
   */
  kick(index: number, options: { force?: boolean } = {}): boolean {
    const ring = this.ring(index);
    const needed = ring.driver.kickNeeded();
    if (!needed && !options.force) return false;
    ring.kick.write(1n);
    return true;
  }

  /**
   * Wait for the backend to signal ring `index`'s call eventfd, and consume the signal.
   * @param index Ring index.
   * @param timeoutMs How long to wait.
   * @returns `true` when signalled, `false` on timeout.
   * @throws {RangeError} When the ring was not set up.
   */
  async waitCall(index: number, timeoutMs: number): Promise<boolean> {
    const call = this.ring(index).call;
    if (call.read() !== 0n) return true;
    return await withTimeout(timeoutMs, async (signal) => {
      await call.wait({ signal });
    });
  }

  /**
   * The QEMU-like initialisation: SET_OWNER, GET_FEATURES, GET_PROTOCOL_FEATURES and
   * SET_PROTOCOL_FEATURES (offered ∩ wanted), GET_QUEUE_NUM (with MQ), SET_FEATURES
   * (offered ∩ wanted, plus bit 30 when offered), SET_MEM_TABLE, then each ring.
   * @param options Features, queues, queue size and memory size.
   * @returns What was negotiated.
   * @throws {RangeError} When more queues are asked for than the backend has.
   */
  async start(options: StartOptions = {}): Promise<StartResult> {
    this.#checkOpen(Request.SET_OWNER);
    if (options.memorySize !== undefined && options.memorySize !== this.#memory.totalSize) {
      if (this.#rings.size > 0) throw new RangeError("Cannot resize memory with rings set up");
      this.#allocateMemory(options.memorySize);
    }
    await this.setOwner();
    const offered = await this.getFeatures();
    const protocol = featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
    let protocolFeatures = 0n;
    if ((offered & protocol) !== 0n) {
      const offeredProtocol = await this.getProtocolFeatures();
      protocolFeatures = offeredProtocol &
        (options.protocolFeatures ?? FRONTEND_PROTOCOL_FEATURES);
      await this.setProtocolFeatures(protocolFeatures);
      // As QEMU does: the backend request channel right after the protocol features.
      if (this.#has(ProtocolFeature.BACKEND_REQ)) await this.setBackendReqFd();
    }
    let queueNum: number | undefined;
    if (this.#has(ProtocolFeature.MQ)) queueNum = await this.getQueueNum();
    const queues = options.queues ?? queueNum ?? 1;
    if (queueNum !== undefined && queues > queueNum) {
      throw new RangeError(`Backend has ${queueNum} queues, ${queues} asked for`);
    }
    // The rings this frontend lays out are split rings: never accept the packed layout.
    const split = ~(featureBit(VIRTIO_F_RING_PACKED) | DRIVER_OPT_IN_FEATURES);
    const features = (offered & (options.features ?? offered) & split) | (offered & protocol);
    await this.setFeatures(features);
    await this.setMemTable(options.memoryRegions);
    const rings: number[] = [];
    for (let i = 0; i < queues; i++) {
      if (options.resume && this.#rings.has(i)) await this.resumeRing(i);
      else await this.setupRing(i, { size: options.queueSize });
      rings.push(i);
    }
    return { offeredFeatures: offered, features, protocolFeatures, queueNum, rings };
  }

  /**
   * Connect to a backend again (a restarted one) on `path`, keeping the guest memory, the
   * rings and their eventfds, as a VMM does when its backend comes back: continue with
   * `start({ resume: true })`, which programs the rings where their driver left off.
   * @param path The backend's socket.
   * @throws {SysError} When the socket cannot be connected.
   */
  async reconnect(path: string): Promise<void> {
    await this.#exclusive(async () => {
      this.#checkOpen();
      const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
      try {
        setNonBlocking(fd);
        const deadline = performance.now() + this.#timeoutMs;
        for (;;) {
          try {
            connectFd(fd, path);
            break;
          } catch (err) {
            if (!(err instanceof SysError && err.errno === Errno.EAGAIN)) throw err;
            if (performance.now() > deadline) throw err;
            await new Promise((resolve) => setTimeout(resolve, 5));
          }
        }
      } catch (err) {
        closeFd(fd);
        throw err;
      }
      if (this.#fd >= 0) closeFd(this.#fd);
      this.#fd = fd;
      this.#peerClosed = false;
      if (this.#backendReq >= 0) closeFd(this.#backendReq);
      this.#backendReq = -1;
      this.#features = 0n;
      this.#protocolFeatures = 0n;
    });
  }

  /**
   * Close the connection and release the eventfds and the guest memory. Pending waits
   * reject. Calling it again does nothing.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing.abort(new VhostUserError("Io", "frontend is closed"));
    // Let pending requests observe the abort before the descriptors go away.
    await this.#lock.catch(() => {});
    this.#release();
  }

  #release(): void {
    this.#closed = true;
    for (const ring of this.#rings.values()) {
      ring.kick.close();
      ring.call.close();
    }
    this.#rings.clear();
    if (this.#backendReq >= 0) closeFd(this.#backendReq);
    this.#backendReq = -1;
    if (this.#fd >= 0) closeFd(this.#fd);
    this.#fd = -1;
    this.#freeMemory();
  }
}

/**
 * Run `wait` with a signal that aborts after `timeoutMs`, or when `cancel.signal` aborts (with
 * `cancel.reason()`).
 * @returns `true` when `wait` finished, `false` when it was cut short by the timeout.
 */
async function withTimeout(
  timeoutMs: number,
  wait: (signal: AbortSignal) => Promise<void>,
  cancel?: { signal: AbortSignal; reason: () => unknown },
): Promise<boolean> {
  const ac = new AbortController();
  const timedOut = new Error("timeout");
  const timer = setTimeout(() => ac.abort(timedOut), timeoutMs);
  const onCancel = () => ac.abort(cancel?.reason());
  cancel?.signal.addEventListener("abort", onCancel, { once: true });
  try {
    await wait(ac.signal);
    return true;
  } catch (err) {
    if (err === timedOut) return false;
    throw err;
  } finally {
    clearTimeout(timer);
    cancel?.signal.removeEventListener("abort", onCancel);
  }
}

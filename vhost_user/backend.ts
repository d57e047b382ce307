/**
 * A vhost-user backend: QEMU (or another VMM) is the frontend and connects
 * over a Unix socket; it passes the guest memory table, the vring addresses
 * and the kick/call eventfds, and the backend serves any {@linkcode VirtioDevice}
 * of this library on them. One frontend at a time; when it goes away the
 * backend resets and accepts the next one.
 *
 * @module
 */

import { GuestMemory, type GuestRegion } from "../memory/guest_memory.ts";
import {
  createDeviceNotifier,
  createQueueNotifier,
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FEATURES_OK,
  featureBit,
  VIRTIO_F_RING_PACKED,
  type VirtioDevice,
  VirtioError,
} from "../devices/device.ts";
import { TransportCore } from "../transport/core.ts";
import { describeRing, QueueThread, type QueueThreadRegion } from "../transport/queue_thread.ts";
import {
  accept,
  AF_UNIX,
  bind,
  close,
  Errno,
  EventFd,
  eventFdSemaphore,
  fdKind,
  FdWatcher,
  listen,
  type Mapping,
  mmapFd,
  MSG_CMSG_CLOEXEC,
  MSG_DONTWAIT,
  recvmsg,
  sendAll,
  setNonBlocking,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  socket,
  SysError,
  type Watch,
  watchEventFd,
} from "../sys/mod.ts";
import { existsSync, lstatSync, renameSync, unlinkSync } from "node:fs";
import process from "node:process";
import { clearImmediate, setImmediate } from "node:timers";
import {
  BackendRequest,
  encode,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
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
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  vringStatePayload,
} from "./protocol.ts";
import {
  checkMemTable,
  checkRegionFile,
  type RegionFile,
  regionName,
  UnsealedMemoryWarning,
} from "./_memory_table.ts";

export { UnsealedMemoryWarning } from "./_memory_table.ts";

/**
 * Protocol features this backend offers. CONFIG and BACKEND_REQ (the channel that carries
 * configuration-change notifications) only for devices with a config space.
 */
export const BACKEND_PROTOCOL_FEATURES: bigint = featureBit(ProtocolFeature.MQ) |
  featureBit(ProtocolFeature.REPLY_ACK) | featureBit(ProtocolFeature.CONFIG) |
  featureBit(ProtocolFeature.BACKEND_REQ) | featureBit(ProtocolFeature.RESET_DEVICE);

/** Options of {@linkcode VhostUserBackend}. */
export interface VhostUserBackendOptions {
  /** Path of the Unix socket to listen on (an existing socket file is replaced). */
  socketPath: string;
  /**
   * Called with each dropped connection's error, other errors, and the one-time
   * {@link UnsealedMemoryWarning} (default: printed with `console.error`).
   */
  onError?: (err: Error) => void;
  /** Called with progress messages (connections, rings started). */
  log?: (message: string) => void;
  /**
   * Poll mode: after serving a kick, keep checking the rings for this many microseconds
   * (restarted by each find) before waiting on the kick eventfds again (default 0: never).
   * It trades CPU for latency: a driver that submits again within the window is served
   * without a wake-up, which costs two thread switches in a Deno process. Up to
   * {@link MAX_POLL_US}; a stream of requests holds the event loop for at most
   * {@link BUSY_POLL_BUDGET_MS} at a time.
   */
  pollUs?: number;
  /**
   * Offer VHOST_USER_PROTOCOL_F_CONFIG and the backend request channel (GET_CONFIG,
   * SET_CONFIG, configuration change messages). Default: when the device has a configuration
   * space. QEMU keeps a net device's configuration itself and warns when a net backend offers
   * it: pass `false` there.
   */
  configSpace?: boolean;
  /**
   * Refuse guest memory that is not sealed against shrinking (F_SEAL_SHRINK), instead of
   * serving it with a one-time {@link UnsealedMemoryWarning} (default false). A frontend that
   * truncates unsealed memory after SET_MEM_TABLE makes the backend process die of SIGBUS;
   * sealed memory (QEMU's `memory-backend-memfd`, which seals by default) cannot shrink.
   */
  requireSealedMemory?: boolean;
  /**
   * The {@link FdWatcher} that waits on this backend's descriptors (its listening socket, its
   * connection and its kick eventfds). Default: one of its own, stopped by `close()`. A
   * watcher passed here is shared (as {@link VhostUserBackendSet} shares one between all its
   * backends): one poll(2) covers every device of the process, the backend only closes its
   * own watches, and errors of its callbacks still go to its own `onError`.
   */
  watcher?: FdWatcher;
  /**
   * Serve each ring on a thread of its own (default false): a Worker per ring maps guest
   * memory itself, blocks on the ring's kick eventfd, serves the ring and signals its call
   * eventfd, while the event loop keeps the control messages. One wake-up per kick instead of
   * two (the event loop waits on descriptors through a second thread), and rings of a
   * multi-queue device are served in parallel; each thread costs a JavaScript runtime's worth
   * of memory and, with `pollUs`, a core while it polls. Rings whose device has no thread
   * handler ({@linkcode VirtioDevice.queueThread}: the block device on an image file has one)
   * are served on the event loop. With `pollUs`, the threads poll their own ring.
   */
  queueThreads?: boolean;
}

// sockaddr_un.sun_path holds 108 bytes, the terminating NUL included.
const SUN_PATH_MAX = 108;

/** The longest a busy poll holds the event loop before yielding, in milliseconds. */
export const BUSY_POLL_BUDGET_MS = 5;
/** How long the backend stops accepting after `accept` failed for want of resources (ms). */
const ACCEPT_RETRY_MS = 100;

/** The largest poll-mode window, in microseconds (`pollUs`). */
export const MAX_POLL_US = 1000;

interface Ring {
  num: number;
  addr: { desc: bigint; used: bigint; avail: bigint } | undefined;
  base: number;
  kick: EventFd | undefined;
  call: EventFd | undefined;
  err: EventFd | undefined;
  enabled: boolean;
  started: boolean;
  /** Stopped by GET_VRING_BASE: stays stopped until the frontend programs it again. */
  parked: boolean;
  watch: Watch | undefined;
  /** The ring's serving thread (queue-thread mode), once it was first served. */
  thread: QueueThread | undefined;
}

interface MappedRegion {
  guestAddr: number;
  size: number;
  userAddr: bigint;
  mmapOffset: number;
  mapping: Mapping;
  region: GuestRegion;
  /** The region's fd, kept open for the queue threads to map (-1 without them). */
  fd: number;
}

/**
 * Serves one device to vhost-user frontends on a Unix socket.
 *
 * @example
 * ```ts ignore
 * const backend = new VhostUserBackend(new RngDevice(), { socketPath: "/tmp/rng.sock" });
 * backend.listen();
 * // qemu-system-x86_64 ... -chardev socket,id=c,path=/tmp/rng.sock -device vhost-user-rng-pci,chardev=c
 * await backend.closed;
 * ```
 */
export class VhostUserBackend {
  /** The device served. */
  readonly device: VirtioDevice;
  /** Status, negotiation, queues and serving, shared with the other transports. */
  readonly core: TransportCore;
  readonly #path: string;
  readonly #onError: (err: Error) => void;
  readonly #log: (message: string) => void;
  readonly #watcher: FdWatcher;
  readonly #ownWatcher: boolean;
  readonly #offeredProtocol: bigint;
  #listenFd = -1;
  #listenWatch: Watch | undefined;
  #acceptRetry: ReturnType<typeof setTimeout> | undefined;
  #conn = -1;
  #connWatch: Watch | undefined;
  #reader = new MessageReader();
  #owner = false;
  #backendReq = -1;
  #features = 0n;
  #protocolFeatures = 0n;
  // SET_PROTOCOL_FEATURES was received: the frontend speaks protocol features even before
  // SET_FEATURES acks bit 30 (QEMU's net sends SET_VRING_ENABLE that early).
  #protocolNegotiated = false;
  #regions: MappedRegion[] = [];
  #memory: GuestMemory | undefined;
  #rings: Ring[];
  readonly #pollMs: number;
  #pollResume: ReturnType<typeof setImmediate> | undefined;
  readonly #requireSealedMemory: boolean;
  readonly #queueThreads: boolean;
  readonly #pollUs: number;
  #warnedUnsealed = false;
  #closedResolve!: () => void;
  /** Connections accepted so far. */
  connections = 0;
  /** Resolves when `close()` has finished. */
  readonly closed: Promise<void>;

  /**
   * Create the backend; nothing is opened until {@linkcode VhostUserBackend.listen}.
   * @param device The device to serve.
   * @param options Socket path, hooks and poll mode.
   * @throws {RangeError} When `pollUs` is out of range.
   */
  constructor(device: VirtioDevice, options: VhostUserBackendOptions) {
    this.device = device;
    this.#path = options.socketPath;
    this.#onError = options.onError ?? ((e) => console.error(`vhost-user: ${e.message}`));
    this.#log = options.log ?? (() => {});
    this.#ownWatcher = options.watcher === undefined;
    this.#watcher = options.watcher ?? new FdWatcher({ onError: (e) => this.#onError(asError(e)) });
    const pollUs = options.pollUs ?? 0;
    if (!Number.isFinite(pollUs) || pollUs < 0 || pollUs > MAX_POLL_US) {
      throw new RangeError(`pollUs must be 0 to ${MAX_POLL_US}, got ${pollUs}`);
    }
    this.#pollMs = pollUs / 1000;
    this.#pollUs = pollUs;
    this.#requireSealedMemory = options.requireSealedMemory ?? false;
    this.#queueThreads = options.queueThreads ?? false;
    this.core = new TransportCore(device, {
      queueNotifier: (i) => createQueueNotifier(() => this.#rings[i].call?.write(1n)),
      // Configuration changes reach the frontend on the backend request channel, if it set one.
      configNotifier: createDeviceNotifier(() => this.#configChanged()),
      // Rings start one at a time: the device activates once those it needs are there.
      deferIncompleteActivation: true,
      onError: (err) => this.#onError(err),
      // No status channel to the driver: signal the error fds; the core stops serving, and so
      // do the queue threads.
      onNeedsReset: () => {
        for (let i = 0; i < this.#rings.length; i++) this.#recall(i);
        for (const r of this.#rings) r.err?.write(1n);
      },
    });
    this.#rings = this.core.queues.map((q) => newRing(q.maxSize));
    // Offer CONFIG only to devices that have a configuration space (QEMU warns otherwise).
    let hasConfig = options.configSpace ?? true;
    try {
      device.readConfig(0, new Uint8Array(1));
    } catch {
      hasConfig = false;
    }
    this.#offeredProtocol = hasConfig ? BACKEND_PROTOCOL_FEATURES : BACKEND_PROTOCOL_FEATURES &
      ~(featureBit(ProtocolFeature.CONFIG) | featureBit(ProtocolFeature.BACKEND_REQ));
    this.closed = new Promise((resolve) => (this.#closedResolve = resolve));
  }

  /** The path of the Unix socket it listens on. */
  get socketPath(): string {
    return this.#path;
  }

  /** Whether a frontend is connected. */
  get connected(): boolean {
    return this.#conn >= 0;
  }

  /** Whether the device is currently activated on the frontend's rings. */
  get active(): boolean {
    return this.core.isActive;
  }

  /** Features the frontend acknowledged. */
  get ackedFeatures(): bigint {
    return this.#features;
  }

  /**
   * Indices of the rings a queue thread serves right now (`queueThreads`).
   * @returns The ring indices.
   */
  threadedRings(): number[] {
    const out: number[] = [];
    this.#rings.forEach((r, i) => {
      if (r.thread?.serving === true) out.push(i);
    });
    return out;
  }

  /**
   * Start listening. Returns at once; connections are served on the event loop.
   * @throws {SysError} When the socket cannot be created or bound.
   */
  listen(): void {
    if (existsSync(this.#path) && lstatSync(this.#path).isSocket()) unlinkSync(this.#path);
    const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
    // Bound and listening under a temporary name first, then renamed into place: whoever
    // sees the socket file can connect to it (no window between bind and listen).
    // (A path too long for the extra suffix is bound directly.)
    let tmp = `${this.#path}.${process.pid}.tmp`;
    if (new TextEncoder().encode(tmp).length >= SUN_PATH_MAX) tmp = this.#path;
    try {
      if (tmp !== this.#path && existsSync(tmp)) unlinkSync(tmp);
      bind(fd, tmp);
      listen(fd, 4);
      setNonBlocking(fd);
      if (tmp !== this.#path) renameSync(tmp, this.#path);
    } catch (err) {
      close(fd);
      try {
        if (tmp !== this.#path && existsSync(tmp)) unlinkSync(tmp);
      } catch { /* best effort */ }
      throw err;
    }
    this.#listenFd = fd;
    this.#listenWatch = this.#watch(fd, () => this.#accept());
    this.#log(`listening on ${this.#path}`);
  }

  /** Stop listening, drop the connection and release everything. */
  async close(): Promise<void> {
    if (this.#pollResume !== undefined) clearImmediate(this.#pollResume);
    this.#pollResume = undefined;
    this.#disconnect("backend closing");
    this.#listenWatch?.close();
    this.#listenWatch = undefined;
    if (this.#acceptRetry !== undefined) clearTimeout(this.#acceptRetry);
    this.#acceptRetry = undefined;
    if (this.#listenFd >= 0) close(this.#listenFd);
    this.#listenFd = -1;
    // A shared watcher goes on serving the other backends: only this one's watches are closed.
    if (this.#ownWatcher) await this.#watcher.stop();
    try {
      if (existsSync(this.#path)) unlinkSync(this.#path);
    } catch { /* already gone */ }
    this.#closedResolve();
  }

  #accept(): void {
    let fd: number;
    try {
      fd = accept(this.#listenFd, SOCK_CLOEXEC);
    } catch (err) {
      if (err instanceof SysError && err.errno === Errno.EAGAIN) return;
      this.#onError(asError(err));
      // The connection stays queued (out of descriptors or memory): the socket stays readable,
      // so stop watching it for a while instead of failing in a loop.
      this.#listenWatch?.close();
      this.#listenWatch = undefined;
      this.#acceptRetry ??= setTimeout(() => {
        this.#acceptRetry = undefined;
        if (this.#listenFd >= 0) {
          this.#listenWatch = this.#watch(this.#listenFd, () => this.#accept());
        }
      }, ACCEPT_RETRY_MS);
      return;
    }
    // A frontend that reconnects may be accepted before its old connection's hang-up is seen:
    // drain the old one first (it disconnects at end of file).
    if (this.#conn >= 0) this.#readable();
    if (this.#conn >= 0) {
      // vhost-user has one frontend per socket; refuse a second one.
      close(fd);
      this.#onError(new VhostUserError("OutOfOrder", "a frontend is already connected"));
      return;
    }
    setNonBlocking(fd);
    this.#conn = fd;
    this.connections++;
    this.#reader = new MessageReader();
    this.#connWatch = this.#watch(fd, () => this.#readable());
    this.#log(`frontend connected (connection ${this.connections})`);
  }

  // Watch `fd` on the (maybe shared) watcher; whatever the callback throws is this backend's
  // error, never the watcher's (whose other watches belong to other devices).
  #watch(fd: number, callback: () => void): Watch {
    return this.#watcher.watch(fd, () => {
      try {
        callback();
      } catch (err) {
        this.#onError(asError(err));
      }
    });
  }

  #readable(): void {
    const fd = this.#conn;
    if (fd < 0) return;
    try {
      for (;;) {
        const space = this.#reader.space();
        let got;
        try {
          got = recvmsg(fd, space, 16, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        } catch (err) {
          if (err instanceof SysError && err.errno === Errno.EAGAIN) break;
          throw err;
        }
        if (got.fdsTruncated) {
          for (const f of got.fds) close(f);
          throw new VhostUserError("Malformed", "too many file descriptors in one message");
        }
        if (got.bytes === 0) {
          for (const f of got.fds) close(f);
          this.#disconnect("frontend closed the connection");
          return;
        }
        this.#reader.commit(got.bytes, got.fds);
        let msg: Message | null;
        while ((msg = this.#reader.next()) !== null) this.#dispatch(msg);
        if (this.#conn !== fd) return;
      }
    } catch (err) {
      this.#onError(asError(err));
      this.#disconnect("protocol error");
    }
  }

  // A handler either returns a reply payload or nothing; a throw drops the connection.
  #dispatch(msg: Message): void {
    let reply: Uint8Array | undefined;
    try {
      reply = this.#handle(msg);
    } catch (err) {
      if (err instanceof VhostUserError) throw err;
      throw new VhostUserError("Io", asError(err).message, msg.request, { cause: err });
    } finally {
      // Descriptors a handler did not adopt are closed.
      this.#closeFds(msg.fds);
    }
    if (reply !== undefined) {
      this.#send(msg.request, reply);
    } else if (
      (msg.flags & FLAG_NEED_REPLY) !== 0 && this.#hasProtocol(ProtocolFeature.REPLY_ACK)
    ) {
      this.#send(msg.request, u64Payload(0n));
    }
  }

  #closeFds(fds: number[]): void {
    for (const f of fds.splice(0)) {
      try {
        close(f);
      } catch { /* already closed */ }
    }
  }

  #send(request: number, payload: Uint8Array): void {
    sendAll(this.#conn, encode(request, VERSION | FLAG_REPLY, payload));
  }

  #hasProtocol(bit: number): boolean {
    return (this.#protocolFeatures & featureBit(bit)) !== 0n;
  }

  #offeredFeatures(): bigint {
    return this.core.offeredFeatures() | featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
  }

  #ring(index: number, request: number): Ring {
    const ring = this.#rings[index];
    if (!Number.isInteger(index) || ring === undefined) {
      throw new VhostUserError("InvalidValue", `no vring ${index}`, request);
    }
    return ring;
  }

  #requireOwner(request: number): void {
    if (!this.#owner) throw new VhostUserError("OutOfOrder", "SET_OWNER not received", request);
  }

  #handle(msg: Message): Uint8Array | undefined {
    const R = Request;
    const rq = msg.request;
    switch (rq) {
      case R.GET_FEATURES:
        return u64Payload(this.#offeredFeatures());
      case R.SET_FEATURES: {
        const f = Payload.u64(msg);
        const extra = f & ~this.#offeredFeatures();
        if (extra !== 0n) {
          throw new VhostUserError(
            "InvalidValue",
            `unoffered features 0x${extra.toString(16)}`,
            rq,
          );
        }
        this.#setFeatures(f, rq);
        return undefined;
      }
      case R.SET_OWNER:
        this.#owner = true;
        return undefined;
      case R.RESET_OWNER:
      case R.RESET_DEVICE:
        this.#resetState();
        return undefined;
      case R.GET_PROTOCOL_FEATURES:
        return u64Payload(this.#offeredProtocol);
      case R.SET_PROTOCOL_FEATURES: {
        const f = Payload.u64(msg);
        const extra = f & ~this.#offeredProtocol;
        if (extra !== 0n) {
          throw new VhostUserError(
            "InvalidValue",
            `unoffered protocol features 0x${extra.toString(16)}`,
            rq,
          );
        }
        this.#protocolFeatures = f;
        this.#protocolNegotiated = true;
        return undefined;
      }
      case R.GET_QUEUE_NUM:
        return u64Payload(BigInt(this.#rings.length));
      case R.SET_MEM_TABLE:
        this.#requireOwner(rq);
        this.#setMemTable(msg);
        return undefined;
      case R.SET_VRING_NUM: {
        this.#requireOwner(rq);
        const { index, num } = Payload.vringState(msg);
        const ring = this.#ring(index, rq);
        // A split ring's size is a power of two; a packed ring's need not be (virtio 1.2 §2.8).
        const packed = (this.#features & featureBit(VIRTIO_F_RING_PACKED)) !== 0n;
        const pow2 = (num & (num - 1)) === 0;
        if (num === 0 || (!packed && !pow2) || num > this.core.queues[index].maxSize) {
          throw new VhostUserError("InvalidValue", `vring ${index} size ${num}`, rq);
        }
        if (ring.started) throw new VhostUserError("OutOfOrder", `vring ${index} is running`, rq);
        ring.num = num;
        ring.parked = false;
        return undefined;
      }
      case R.SET_VRING_ADDR: {
        this.#requireOwner(rq);
        const a = Payload.vringAddr(msg);
        const ring = this.#ring(a.index, rq);
        if (ring.started) throw new VhostUserError("OutOfOrder", `vring ${a.index} is running`, rq);
        if (this.#memory === undefined) {
          throw new VhostUserError("OutOfOrder", "vring address before SET_MEM_TABLE", rq);
        }
        // Fail now rather than at start: every address must translate.
        for (const ua of [a.desc, a.used, a.avail]) this.#translate(ua, rq);
        ring.addr = { desc: a.desc, used: a.used, avail: a.avail };
        ring.parked = false;
        this.#maybeStart(a.index);
        return undefined;
      }
      case R.SET_VRING_BASE: {
        this.#requireOwner(rq);
        const { index, num } = Payload.vringState(msg);
        const ring = this.#ring(index, rq);
        if (ring.started) throw new VhostUserError("OutOfOrder", `vring ${index} is running`, rq);
        // Split: the next available index. Packed: avail index and wrap in bits 0–15, used
        // index and wrap in bits 16–31 (as QEMU encodes them).
        const packed = (this.#features & featureBit(VIRTIO_F_RING_PACKED)) !== 0n;
        if (!packed && num > 0xffff) {
          throw new VhostUserError("InvalidValue", `vring base ${num}`, rq);
        }
        ring.base = num;
        ring.parked = false;
        return undefined;
      }
      case R.GET_VRING_BASE: {
        this.#requireOwner(rq);
        const { index } = Payload.vringState(msg);
        const ring = this.#ring(index, rq);
        // A ring a thread serves is taken back first: the thread publishes where it stands.
        if (ring.started) this.#recall(index);
        const base = ring.started ? this.core.queues[index].vringBase() : ring.base;
        this.#stopRing(index);
        ring.base = base;
        ring.parked = true;
        return vringStatePayload(index, base);
      }
      case R.SET_VRING_KICK:
      case R.SET_VRING_CALL:
      case R.SET_VRING_ERR: {
        this.#requireOwner(rq);
        const v = Payload.u64(msg);
        const index = Number(v & BigInt(VRING_IDX_MASK));
        const ring = this.#ring(index, rq);
        const noFd = (v & BigInt(VRING_NOFD_MASK)) !== 0n;
        if ((v & ~BigInt(VRING_IDX_MASK | VRING_NOFD_MASK)) !== 0n) {
          throw new VhostUserError("InvalidValue", `vring file payload 0x${v.toString(16)}`, rq);
        }
        if (!noFd && msg.fds.length !== 1) {
          throw new VhostUserError("Malformed", `expected 1 fd, got ${msg.fds.length}`, rq);
        }
        const efd = noFd ? undefined : this.#adoptEventFd(msg, index);
        if (rq === R.SET_VRING_KICK) {
          if (efd === undefined) {
            throw new VhostUserError("Unsupported", "polling mode (no kick fd)", rq);
          }
          this.#stopRing(index);
          ring.kick?.close();
          ring.kick = efd;
          ring.parked = false;
          // Without protocol features a ring is enabled once it has a kick fd.
          if ((this.#features & featureBit(VHOST_USER_F_PROTOCOL_FEATURES)) === 0n) {
            ring.enabled = true;
          }
          this.#maybeStart(index);
        } else if (rq === R.SET_VRING_CALL) {
          // A thread signals the call fd it was given: take the ring back before that fd goes.
          const threaded = this.#recall(index);
          ring.call?.close();
          ring.call = efd;
          // A running ring may have used buffers while it had no call fd (QEMU sends
          // SET_VRING_CALL after SET_VRING_KICK): signal once so none is lost.
          if (ring.started) efd?.write(1n);
          if (threaded) this.#serveRing(index);
        } else {
          ring.err?.close();
          ring.err = efd;
        }
        return undefined;
      }
      case R.SET_VRING_ENABLE: {
        this.#requireOwner(rq);
        const { index, num } = Payload.vringState(msg);
        const ring = this.#ring(index, rq);
        if (
          (this.#features & featureBit(VHOST_USER_F_PROTOCOL_FEATURES)) === 0n &&
          !this.#protocolNegotiated
        ) {
          throw new VhostUserError("OutOfOrder", "SET_VRING_ENABLE without protocol features", rq);
        }
        if (num > 1) throw new VhostUserError("InvalidValue", `enable ${num}`, rq);
        ring.enabled = num === 1;
        // Enabling is not starting: a ring stopped by GET_VRING_BASE stays stopped until the
        // frontend programs it again (QEMU's net enables its rings before it reprograms them).
        if (ring.enabled) this.#maybeStart(index);
        else this.#stopRing(index);
        return undefined;
      }
      case R.SET_BACKEND_REQ_FD: {
        // QEMU sends it right after the protocol features, before SET_OWNER.
        if (!this.#hasProtocol(ProtocolFeature.BACKEND_REQ)) {
          throw new VhostUserError("OutOfOrder", "BACKEND_REQ was not negotiated", rq);
        }
        if (msg.fds.length !== 1) {
          throw new VhostUserError("Malformed", `expected 1 fd, got ${msg.fds.length}`, rq);
        }
        this.#closeBackendReq();
        const fd = msg.fds.shift()!;
        setNonBlocking(fd);
        this.#backendReq = fd;
        return undefined;
      }
      case R.GET_CONFIG: {
        const c = Payload.config(msg);
        const data = new Uint8Array(c.size);
        this.#configAccess(() => this.device.readConfig(c.offset, data), rq);
        const out = new Uint8Array(12 + c.size);
        out.set(msg.payload.subarray(0, 12));
        out.set(data, 12);
        return out;
      }
      case R.SET_CONFIG: {
        const c = Payload.config(msg);
        this.#configAccess(() => this.device.writeConfig(c.offset, c.data), rq);
        return undefined;
      }
      default:
        throw new VhostUserError("Unsupported", `request ${requestName(rq)}`, rq);
    }
  }

  // vhost-user has no status register: SET_FEATURES is the driver's whole negotiation
  // (ACKNOWLEDGE, DRIVER, features, FEATURES_OK), and the frontend sends it right before it
  // starts the rings, so DRIVER_OK follows; the device activates once its rings are there.
  // QEMU sends SET_FEATURES again each time it restarts the rings (VM resume): the same
  // features are no renegotiation, and the device keeps its driver-written state.
  #setFeatures(features: bigint, request: number): void {
    const f = features & ~featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
    this.#features = features;
    const core = this.core;
    if ((core.status & DEVICE_DRIVER_OK) !== 0 && core.driverFeatures === f) return;
    if (core.status !== 0) {
      // Other features mean another driver: reset, keeping the rings the frontend set up
      // (they restart below, where they stopped).
      for (let i = 0; i < this.#rings.length; i++) this.#stopRing(i);
      // Threads built for the old negotiation (and their late reports) go with it.
      this.#closeThreads();
      core.reset();
    }
    const base = DEVICE_ACKNOWLEDGE | DEVICE_DRIVER;
    core.setStatus(base);
    core.setDriverFeatures(f);
    if (!core.setStatus(base | DEVICE_FEATURES_OK)) {
      throw new VhostUserError("InvalidValue", `features 0x${f.toString(16)} refused`, request);
    }
    core.setStatus(base | DEVICE_FEATURES_OK | DEVICE_DRIVER_OK);
    for (let i = 0; i < this.#rings.length; i++) this.#maybeStart(i);
  }

  // virtio 1.2 §2.5.1 over vhost-user: CONFIG_CHANGE_MSG tells the frontend to read the
  // configuration space again (GET_CONFIG) and interrupt the driver. No reply is asked for:
  // the frontend answers by sending GET_CONFIG on the main channel, which this event loop
  // serves. A frontend that does not read the channel loses the message once the socket
  // buffer is full: each message asks for a full re-read, so the latest one is what counts.
  #configChanged(): void {
    const fd = this.#backendReq;
    if (fd < 0 || !this.#hasProtocol(ProtocolFeature.CONFIG)) return;
    try {
      sendAll(fd, encode(BackendRequest.CONFIG_CHANGE_MSG, VERSION, new Uint8Array(0)));
    } catch (err) {
      this.#onError(
        new VhostUserError("Io", `config change not sent: ${asError(err).message}`, 0, {
          cause: err,
        }),
      );
    }
  }

  #closeBackendReq(): void {
    if (this.#backendReq < 0) return;
    try {
      close(this.#backendReq);
    } catch { /* already closed */ }
    this.#backendReq = -1;
  }

  #configAccess(fn: () => void, request: number): void {
    try {
      fn();
    } catch (err) {
      throw new VhostUserError("InvalidValue", asError(err).message, request, { cause: err });
    }
  }

  // Every region is checked before anything is mapped (see _memory_table.ts): the table as a
  // whole, then each file against its size and seals, so no mapping can reach past its file.
  #setMemTable(msg: Message): void {
    const descs = Payload.memTable(msg);
    if (msg.fds.length !== descs.length) {
      throw new VhostUserError(
        "Malformed",
        `${descs.length} regions but ${msg.fds.length} fds`,
        msg.request,
      );
    }
    checkMemTable(descs, msg.request);
    const files = descs.map((d, i) =>
      checkRegionFile(msg.fds[i], d, i, {
        requireSealed: this.#requireSealedMemory,
        request: msg.request,
      })
    );
    // The threads serve with the old table until here: take every ring back first.
    const threaded: number[] = [];
    for (let i = 0; i < this.#rings.length; i++) if (this.#recall(i)) threaded.push(i);
    const mapped: MappedRegion[] = [];
    try {
      descs.forEach((d, i) => {
        const mapping = mmapFd(msg.fds[i], d.mmapOffset + d.size, 0);
        const region = new GuestMemory([{
          base: d.guestAddr,
          buffer: mapping.buffer,
          offset: d.mmapOffset,
          size: d.size,
        }]).regions[0];
        mapped.push({
          guestAddr: d.guestAddr,
          size: d.size,
          userAddr: d.userAddr,
          mmapOffset: d.mmapOffset,
          mapping,
          region,
          fd: -1,
        });
      });
      // Queue threads map the same files themselves: keep their descriptors open.
      if (this.#queueThreads) msg.fds.splice(0).forEach((fd, i) => mapped[i].fd = fd);
      const memory = new GuestMemory(mapped.map((m) => m.region));
      // Rings keep their guest-physical addresses; the core checks them against the new
      // table and the device carries on with it (no reset).
      const old = this.#regions;
      this.#regions = mapped;
      this.#memory = memory;
      this.core.setMemory(memory);
      releaseRegions(old);
      for (let i = 0; i < this.#rings.length; i++) {
        if (this.#rings[i].started && !this.core.queues[i].ready) this.#stopRing(i);
        else this.#maybeStart(i);
      }
      // The rings taken back carry on, on the new table.
      for (const i of threaded) {
        if (this.#rings[i].started && this.core.queues[i].ready) this.#serveRing(i);
      }
    } catch (err) {
      releaseRegions(mapped);
      if (err instanceof VhostUserError) throw err;
      throw new VhostUserError("InvalidValue", asError(err).message, msg.request, { cause: err });
    }
    this.#warnIfUnsealed(descs, files);
  }

  // Unsealed memory is served, with the risk said once per backend.
  #warnIfUnsealed(descs: MemoryRegionDesc[], files: RegionFile[]): void {
    const i = files.findIndex((f) => !f.sealed);
    if (i < 0 || this.#warnedUnsealed) return;
    this.#warnedUnsealed = true;
    this.#onError(new UnsealedMemoryWarning(i, regionName(i, descs[i])));
  }

  // Frontend virtual address -> guest-physical address, through the memory table.
  #translate(userAddr: bigint, request: number): number {
    for (const r of this.#regions) {
      if (userAddr >= r.userAddr && userAddr < r.userAddr + BigInt(r.size)) {
        return r.guestAddr + Number(userAddr - r.userAddr);
      }
    }
    throw new VhostUserError(
      "InvalidValue",
      `address 0x${userAddr.toString(16)} is in no memory region`,
      request,
    );
  }

  // A vring's kick, call or err fd must be an eventfd. Anything else (a socket, a pipe, a file)
  // would be read or written as if it were one, and a kick fd that stays readable (a socket
  // whose peer closed, a file) had the ring served tens of thousands of times a second. A
  // semaphore-mode kick eventfd stays readable for as many reads as one write says.
  #adoptEventFd(msg: Message, index: number): EventFd {
    const rq = msg.request;
    const what = VRING_FD_NAMES.get(rq) ?? "";
    const fd = msg.fds[0];
    let kind: string;
    try {
      kind = fdKind(fd);
    } catch (err) {
      const message = `vring ${index} ${what} fd: ${asError(err).message}`;
      throw new VhostUserError("InvalidValue", message, rq, { cause: err });
    }
    if (kind !== "eventfd") {
      const article = /^[aeiou]/.test(kind) ? "an" : "a";
      throw new VhostUserError(
        "InvalidValue",
        `vring ${index} ${what} fd is ${article} ${kind}, not an eventfd`,
        rq,
      );
    }
    if (rq === Request.SET_VRING_KICK && eventFdSemaphore(fd) === true) {
      throw new VhostUserError(
        "InvalidValue",
        `vring ${index} kick fd is an eventfd in semaphore mode (EFD_SEMAPHORE)`,
        rq,
      );
    }
    return EventFd.fromFd(msg.fds.shift()!);
  }

  // Serve the ring on each kick. A kick fd that hangs up, fails to read or never drains stops
  // being watched and is reported once, instead of having the ring served in a loop; a new
  // SET_VRING_KICK brings the ring back.
  #watchKick(index: number, kick: EventFd): Watch {
    return watchEventFd(kick, {
      watcher: this.#watcher,
      onSignal: () => {
        try {
          this.core.notify(index);
          if (this.#pollMs > 0) this.#busyPoll();
        } catch (err) {
          this.#onError(asError(err));
        }
      },
      onBroken: (reason) =>
        this.#onError(
          new VhostUserError(
            "Io",
            `vring ${index} kick fd: ${reason}; the ring is no longer watched`,
            Request.SET_VRING_KICK,
          ),
        ),
    });
  }

  #maybeStart(index: number): void {
    const ring = this.#rings[index];
    if (ring.started || ring.parked || !ring.enabled) return;
    if (ring.kick === undefined || ring.addr === undefined) return;
    // The ring starts once the driver's features are known (the queue needs EVENT_IDX etc.).
    if (this.#memory === undefined || (this.core.status & DEVICE_DRIVER_OK) === 0) return;
    const q = this.core.queues[index];
    q.reset();
    q.size = ring.num;
    q.descTable = this.#translate(ring.addr.desc, Request.SET_VRING_ADDR);
    q.availRing = this.#translate(ring.addr.avail, Request.SET_VRING_ADDR);
    q.usedRing = this.#translate(ring.addr.used, Request.SET_VRING_ADDR);
    try {
      // Resume where the frontend says (a used index behind it means requests were in flight
      // when the previous backend went away: serve them again) before the device sees the
      // queue: it may use it at once (a net device delivers the frames that waited while the
      // ring was stopped).
      q.ready = true;
      q.resume(this.#memory, ring.base);
      this.core.startQueue(index);
    } catch (err) {
      q.ready = false;
      throw new VhostUserError("InvalidValue", `vring ${index}: ${asError(err).message}`, 0, {
        cause: err,
      });
    }
    ring.started = true;
    this.#log(`vring ${index} started (size ${ring.num}, base ${ring.base})`);
    if (!this.#queueThreads) {
      ring.watch = this.#watchKick(index, ring.kick);
      if (this.core.tryActivate()) {
        // Serve every started ring, this one included: buffers may be waiting already.
        for (let i = 0; i < this.#rings.length; i++) {
          if (this.#rings[i].started) this.core.notify(i);
        }
      }
    } else if (this.core.tryActivate()) {
      // A ring is handed to its thread once the device is active (the thread's handler is
      // built from what was negotiated); the rings that waited for activation go now too.
      for (let i = 0; i < this.#rings.length; i++) {
        const r = this.#rings[i];
        if (r.started && r.watch === undefined && r.thread?.serving !== true) this.#serveRing(i);
      }
    }
  }

  /**
   * Serve started ring `index`: on its thread when queue threads are on and the device has a
   * thread handler for it, else on the event loop (kick watched, first pass now).
   */
  #serveRing(index: number): void {
    const ring = this.#rings[index];
    if (ring.kick === undefined) return;
    if (this.#queueThreads && this.#startThread(index, ring.kick)) return;
    ring.watch ??= this.#watchKick(index, ring.kick);
    this.core.notify(index);
  }

  // Hand ring `index` to its thread; false when it stays on the event loop (no thread handler,
  // a thread that failed, or one that cannot be started: reported).
  #startThread(index: number, kick: EventFd): boolean {
    const ring = this.#rings[index];
    try {
      const spec = this.device.queueThread?.(index);
      if (spec === undefined) return false;
      const thread = ring.thread ??= this.#newThread(index);
      if (thread.failure !== undefined) return false;
      const regions: QueueThreadRegion[] = this.#regions.map((m) => ({
        guestAddr: m.guestAddr,
        size: m.size,
        fd: m.fd,
        offset: m.mmapOffset,
      }));
      thread.start(
        describeRing(this.core.queues[index], this.device.ackedFeatures(), regions, {
          kickFd: kick.fd,
          callFd: ring.call?.fd ?? -1,
          pollUs: this.#pollUs,
        }),
        spec,
      );
      return true;
    } catch (err) {
      this.#onError(
        new VhostUserError(
          "Io",
          `vring ${index}: no queue thread (${asError(err).message}); served on the event loop`,
          0,
          { cause: err },
        ),
      );
      return false;
    }
  }

  #newThread(index: number): QueueThread {
    return new QueueThread(index, {
      // The spec's hook (the device's own) has seen it; the core reports it and, when the
      // ring broke, sets NEEDS_RESET (which takes every ring back from its thread).
      onError: (err) => this.core.deviceError(err),
      onKickBroken: (reason) =>
        this.#onError(
          new VhostUserError(
            "Io",
            `vring ${index} kick fd: ${reason}; the ring is no longer watched`,
            Request.SET_VRING_KICK,
          ),
        ),
      onCrash: (err) =>
        this.core.deviceError(
          new VirtioError("InternalError", err.message, { needsReset: true, cause: err }),
        ),
    });
  }

  /**
   * Take ring `index` back from its thread, if one serves it: the thread finishes its pass and
   * the ring's indices return to the core's queue.
   * @returns Whether a thread served the ring.
   */
  #recall(index: number): boolean {
    const thread = this.#rings[index].thread;
    if (thread === undefined || !thread.serving) return false;
    const at = thread.stop();
    const q = this.core.queues[index];
    q.nextAvail = at.nextAvail;
    q.nextUsed = at.nextUsed;
    return true;
  }

  /** End every ring's thread (after taking the rings back). */
  #closeThreads(): void {
    for (let i = 0; i < this.#rings.length; i++) {
      this.#recall(i);
      this.#rings[i].thread?.close();
      this.#rings[i].thread = undefined;
    }
  }

  /**
   * Keep serving every started ring that has new buffers until the poll window passes with
   * none used (each ring the device used restarts the window), or the budget is spent: the event loop, and with
   * it the frontend's messages, is never held for longer than {@link BUSY_POLL_BUDGET_MS}.
   * Stopping early loses nothing: serving re-enables notifications, so the driver kicks for
   * whatever it adds next, and a pass that stopped at its own budget is continued by the core.
   */
  #busyPoll(): void {
    const window = this.#pollMs;
    let now = performance.now();
    const budgetEnd = now + BUSY_POLL_BUDGET_MS;
    let deadline = now + window;
    while (now < deadline && now < budgetEnd) {
      const memory = this.#memory;
      if (!this.core.isActive || memory === undefined) break;
      for (let i = 0; i < this.#rings.length; i++) {
        const q = this.core.queues[i];
        // A broken ring was reported when it broke; only a reset brings it back.
        if (!this.#rings[i].started || q.broken !== undefined) continue;
        if (this.#rings[i].thread?.serving === true) continue; // its thread polls it
        // A pass waiting for its turn will serve these buffers: let it run (it is queued
        // behind this loop), then poll on.
        if (this.core.hasContinuation(i)) {
          this.#resumePoll();
          return;
        }
        let pending: boolean;
        try {
          pending = q.hasPending(memory);
        } catch {
          continue; // rings outside memory were refused when they started
        }
        if (!pending) continue;
        // Buffers waiting are not always work (a net device's receive buffers wait for
        // frames): only a ring the device used keeps the poll window open.
        const used = q.nextUsed;
        this.core.notify(i);
        if (q.nextUsed !== used) deadline = performance.now() + window;
      }
      now = performance.now();
    }
  }

  #resumePoll(): void {
    if (this.#pollResume !== undefined) return;
    this.#pollResume = setImmediate(() => {
      this.#pollResume = undefined;
      if (this.#conn >= 0) this.#busyPoll();
    });
  }

  #stopRing(index: number): void {
    const ring = this.#rings[index];
    if (!ring.started) return;
    this.#recall(index);
    ring.watch?.close();
    ring.watch = undefined;
    ring.base = this.core.queues[index].vringBase();
    ring.started = false;
    // Not a reset: the device keeps its features and configuration and serves the others.
    this.core.stopQueue(index);
    this.#log(`vring ${index} stopped at ${ring.base}`);
  }

  #resetState(): void {
    // Threads first: they signal the fds closed below.
    this.#closeThreads();
    this.core.reset();
    for (let i = 0; i < this.#rings.length; i++) {
      const ring = this.#rings[i];
      ring.watch?.close();
      ring.kick?.close();
      ring.call?.close();
      ring.err?.close();
      this.#rings[i] = newRing(this.core.queues[i].maxSize);
    }
    this.#features = 0n;
    this.#protocolFeatures = 0n;
    this.#protocolNegotiated = false;
    this.#closeBackendReq();
  }

  #disconnect(reason: string): void {
    if (this.#conn < 0) return;
    this.#resetState();
    this.#owner = false;
    this.core.clearMemory();
    releaseRegions(this.#regions);
    this.#regions = [];
    this.#memory = undefined;
    this.#connWatch?.close();
    this.#connWatch = undefined;
    this.#closeFds(this.#reader.takeStrayFds());
    close(this.#conn);
    this.#conn = -1;
    this.#log(`frontend disconnected: ${reason}`);
  }
}

const VRING_FD_NAMES: ReadonlyMap<number, string> = new Map([
  [Request.SET_VRING_KICK, "kick"],
  [Request.SET_VRING_CALL, "call"],
  [Request.SET_VRING_ERR, "err"],
]);

// Unmap the regions and close the descriptors kept for the queue threads.
function releaseRegions(regions: MappedRegion[]): void {
  for (const m of regions) {
    m.mapping.unmap();
    if (m.fd >= 0) {
      try {
        close(m.fd);
      } catch { /* already closed */ }
      m.fd = -1;
    }
  }
}

function newRing(maxSize: number): Ring {
  return {
    num: maxSize,
    addr: undefined,
    base: 0,
    kick: undefined,
    call: undefined,
    err: undefined,
    enabled: false,
    parked: false,
    started: false,
    watch: undefined,
    thread: undefined,
  };
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

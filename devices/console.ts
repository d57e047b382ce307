/**
 * The console device (virtio 1.2 §5.3): a guest console (`hvc0` in Linux, usable as the kernel
 * console with `console=hvc0`), its size (F_SIZE), emergency writes (F_EMERG_WRITE), and with
 * MULTIPORT any number of named ports — `/dev/vportNpM` in the guest, each a Web Streams
 * duplex in TypeScript with open/close events, so a VMM can talk to a guest agent without
 * networking.
 *
 * @example A console and a named port for a guest agent, on the MMIO transport
 * ```ts
 * import { ConsoleDevice } from "./console.ts";
 * import { GuestMemory } from "../memory/guest_memory.ts";
 * import { MmioTransport } from "../transport/mmio.ts";
 *
 * const consoleDevice = new ConsoleDevice({
 *   ports: [{ console: true, cols: 80, rows: 25 }, { name: "org.example.agent" }],
 * });
 * const transport = new MmioTransport(consoleDevice, GuestMemory.create(1 << 20));
 * const agent = consoleDevice.port(1)!;
 * agent.addEventListener("open", () => console.log("the guest opened", agent.name));
 * consoleDevice.resize(132, 43); // port 0: the guest's `stty size` follows
 * ```
 *
 * @module
 */

import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "../queue/split.ts";
import type { DescriptorChain } from "../queue/chain.ts";
import { QueueError } from "../queue/error.ts";
import {
  DEFAULT_SERVE_BUDGET,
  featureBit,
  TYPE_CONSOLE,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  type VirtioDeviceConfig,
  VirtioDeviceInfo,
  VirtioError,
  type VirtioQueueConfig,
} from "./device.ts";
import {
  CONSOLE_CONFIG_COLS,
  CONSOLE_CONFIG_EMERG_WR,
  CONSOLE_CONFIG_MAX_NR_PORTS,
  CONSOLE_CONFIG_ROWS,
  CONSOLE_CONFIG_SIZE,
  CONSOLE_CONTROL_RX_QUEUE,
  CONSOLE_CONTROL_TX_QUEUE,
  CONSOLE_RESIZE_SIZE,
  consoleControl,
  type ConsoleControlMessage,
  type ConsoleControlRefusal,
  consoleQueueRole,
  consoleRxQueue,
  consoleTxQueue,
  parseConsoleControl,
  VIRTIO_CONSOLE_CONSOLE_PORT,
  VIRTIO_CONSOLE_DEVICE_READY,
  VIRTIO_CONSOLE_F_EMERG_WRITE,
  VIRTIO_CONSOLE_F_MULTIPORT,
  VIRTIO_CONSOLE_F_SIZE,
  VIRTIO_CONSOLE_PORT_ADD,
  VIRTIO_CONSOLE_PORT_NAME,
  VIRTIO_CONSOLE_PORT_OPEN,
  VIRTIO_CONSOLE_PORT_READY,
  VIRTIO_CONSOLE_PORT_REMOVE,
  VIRTIO_CONSOLE_RESIZE,
} from "./_console_control.ts";
import {
  type ConsolePort,
  type ConsolePortOptions,
  PortChannel,
  type PortLink,
} from "./_console_port.ts";

export {
  CONSOLE_CONFIG_COLS,
  CONSOLE_CONFIG_EMERG_WR,
  CONSOLE_CONFIG_MAX_NR_PORTS,
  CONSOLE_CONFIG_ROWS,
  CONSOLE_CONFIG_SIZE,
  CONSOLE_CONTROL_RX_QUEUE,
  CONSOLE_CONTROL_SIZE,
  CONSOLE_CONTROL_TX_QUEUE,
  CONSOLE_MAX_NAME_BYTES,
  CONSOLE_RESIZE_SIZE,
  consoleControl,
  type ConsoleControlMessage,
  type ConsoleControlParse,
  type ConsoleControlRefusal,
  type ConsoleDeviceMessage,
  type ConsoleDriverMessage,
  consoleQueueRole,
  consoleResize,
  consoleRxQueue,
  consoleTxQueue,
  decodeConsoleControl,
  parseConsoleControl,
  VIRTIO_CONSOLE_BAD_ID,
  VIRTIO_CONSOLE_CONSOLE_PORT,
  VIRTIO_CONSOLE_DEVICE_READY,
  VIRTIO_CONSOLE_F_EMERG_WRITE,
  VIRTIO_CONSOLE_F_MULTIPORT,
  VIRTIO_CONSOLE_F_SIZE,
  VIRTIO_CONSOLE_PORT_ADD,
  VIRTIO_CONSOLE_PORT_NAME,
  VIRTIO_CONSOLE_PORT_OPEN,
  VIRTIO_CONSOLE_PORT_READY,
  VIRTIO_CONSOLE_PORT_REMOVE,
  VIRTIO_CONSOLE_RESIZE,
} from "./_console_control.ts";
export {
  CONSOLE_BUFFER_BYTES,
  ConsoleError,
  type ConsoleErrorCode,
  type ConsoleOverflow,
  type ConsolePort,
  type ConsolePortOptions,
  type ConsolePortStats,
} from "./_console_port.ts";

/** Default size of each queue. */
export const CONSOLE_QUEUE_SIZE = 128;
/** Most ports a device takes (`maxPorts`): 2 × (64 + 1) queues. */
export const CONSOLE_MAX_PORTS = 64;
/**
 * Most bytes taken from one transmit chain; the rest is dropped and counted (Linux sends at
 * most 32 KiB per `write()`, a page per console write, a pipe's worth per `splice`).
 */
export const CONSOLE_MAX_CHAIN_BYTES = 1 << 20;

/** Why the device dropped something the driver sent or gave (counted in `stats.dropped`). */
export type ConsoleDropReason =
  | ConsoleControlRefusal
  /** A control message for a port the device does not have. */
  | "unknownPort"
  /**
   * A receive chain with device-readable buffers (virtio 1.2 §5.3.6.1; returned empty); for
   * the parser, a control transmit chain with device-writable ones.
   */
  | "badChain"
  /** A control receive buffer too small for the next message (returned empty, kept). */
  | "smallBuffer"
  /** Bytes sent on the transmitq of a port that does not exist (dropped). */
  | "noPort"
  /** A transmit chain longer than {@linkcode CONSOLE_MAX_CHAIN_BYTES} (the tail dropped). */
  | "oversized"
  /** A config-space write other than an emergency write. */
  | "badConfigWrite";

/** Counters of a {@linkcode ConsoleDevice}. */
export interface ConsoleStats {
  /** Control messages put in the control receiveq. */
  controlSent: number;
  /** Control messages taken from the control transmitq and accepted. */
  controlReceived: number;
  /** Bytes written to `emerg_wr`. */
  emergencyWrites: number;
  /** DEVICE_READY or PORT_READY with value 0: the driver could not set something up. */
  driverFailures: number;
  /** What was refused, by reason. */
  dropped: Record<ConsoleDropReason, number>;
}

/** Options of {@linkcode ConsoleDevice}. */
export interface ConsoleDeviceOptions {
  /**
   * The ports, by number; a hole (`undefined`) has none (`addPort` can fill it later). Port 0
   * always exists: `{ console: true }` unless given. Default: one console.
   */
  ports?: readonly (ConsolePortOptions | undefined)[];
  /**
   * `max_nr_ports`: port numbers run from 0 to this minus one (default: the length of
   * `ports`, at least 1; at most {@linkcode CONSOLE_MAX_PORTS}). Room for hot-plugged ports.
   */
  maxPorts?: number;
  /**
   * Offer VIRTIO_CONSOLE_F_MULTIPORT (default: when `maxPorts` > 1, or port 0 has a name or
   * is not a console). Without it the driver only sees port 0, as a console.
   */
  multiport?: boolean;
  /** Offer VIRTIO_CONSOLE_F_EMERG_WRITE (default true): bytes go to port 0's readable. */
  emergencyWrite?: boolean;
  /** Size of each queue (default {@linkcode CONSOLE_QUEUE_SIZE}). */
  queueSize?: number;
  /** Called for each error while serving: what the driver did wrong (default: ignore). */
  onError?: (err: VirtioError) => void;
}

interface ControlEntry {
  id: number;
  event: number;
  bytes: Uint8Array;
}

// virtio 1.2 §5.3.6.2: RESIZE carries le16 cols, le16 rows after the header.
function resizeMessage(id: number, size: { cols: number; rows: number }): ConsoleControlMessage {
  const data = new Uint8Array(CONSOLE_RESIZE_SIZE);
  const v = new DataView(data.buffer);
  v.setUint16(0, size.cols, true);
  v.setUint16(2, size.rows, true);
  return { id, event: VIRTIO_CONSOLE_RESIZE, data };
}

function emptyDrops(): Record<ConsoleDropReason, number> {
  return {
    badChain: 0,
    short: 0,
    badEvent: 0,
    badValue: 0,
    badPort: 0,
    unknownPort: 0,
    smallBuffer: 0,
    noPort: 0,
    oversized: 0,
    badConfigWrite: 0,
  };
}

/**
 * The virtio console device.
 *
 * Queues (virtio 1.2 §5.3.2): port 0's receiveq and transmitq are 0 and 1; with MULTIPORT
 * the control receiveq and transmitq are 2 and 3, and port `n` ≥ 1 has `2n + 2` and `2n + 3`.
 * Receive chains take device-writable buffers (used length: bytes written), transmit chains
 * device-readable ones (used length 0), control messages are 8 bytes (`le32 id, le16 event,
 * le16 value`) plus a RESIZE's size or a PORT_NAME's name.
 *
 * Without MULTIPORT, port 0 is a console the guest has open from activation. With it, the
 * driver's DEVICE_READY gets a PORT_ADD per port; each PORT_READY gets CONSOLE_PORT (for a
 * console), PORT_NAME (when named), RESIZE (a console with a size) and PORT_OPEN (when the
 * host is connected); the driver's PORT_OPEN is the port's open/close. Ports can be added and
 * removed while the guest runs (`addPort`, `removePort`).
 *
 * Hostile drivers: a control message that is short, has an event the driver never sends, a
 * value other than 0/1, a port at or past `max_nr_ports` or one the device does not have, a
 * transmit chain with writable buffers, a receive chain with readable ones — each is dropped
 * (the chain returned with used length 0), counted in `stats.dropped` and reported through
 * `onError` as a `VirtioError`; nothing is thrown, and the device goes on. Work per pass is
 * bounded by {@linkcode DEFAULT_SERVE_BUDGET}; pending control messages are bounded (one
 * PORT_OPEN and one RESIZE per port, replaced by newer ones).
 *
 * A device reset closes every port on the guest's side (`"close"`) and forgets what the
 * driver knew; the host's streams, their buffered data and a pending write stay, and flow
 * again once the driver sets the ports up anew.
 */
export class ConsoleDevice extends VirtioDeviceBase {
  /** Counters. */
  readonly stats: ConsoleStats = {
    controlSent: 0,
    controlReceived: 0,
    emergencyWrites: 0,
    driverFailures: 0,
    dropped: emptyDrops(),
  };
  readonly #maxPorts: number;
  readonly #emergency: boolean;
  readonly #onError: ((err: VirtioError) => void) | undefined;
  readonly #ports: (PortChannel | undefined)[];
  readonly #link: PortLink;
  #multiport = false;
  #driverReady = false;
  #control: ControlEntry[] = [];
  readonly #soon = new Set<number>();
  readonly #later = new Set<number>();
  #scheduled = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #removed = false;

  /**
   * Create it.
   * @param options Ports, `maxPorts`, features, queue size and error hook.
   * @throws {RangeError} For a `maxPorts` outside 1–{@linkcode CONSOLE_MAX_PORTS}, more ports
   *   than `maxPorts`, several ports without MULTIPORT, or a bad port option.
   * @throws {TypeError} For a bad port name or overflow policy.
   */
  constructor(options: ConsoleDeviceOptions = {}) {
    const given = options.ports ?? [];
    const maxPorts = options.maxPorts ?? Math.max(1, given.length);
    if (!Number.isInteger(maxPorts) || maxPorts < 1 || maxPorts > CONSOLE_MAX_PORTS) {
      throw new RangeError(`maxPorts must be from 1 to ${CONSOLE_MAX_PORTS}, got ${maxPorts}`);
    }
    if (given.length > maxPorts) {
      throw new RangeError(`${given.length} ports do not fit in maxPorts ${maxPorts}`);
    }
    const port0: ConsolePortOptions = given[0] ?? { console: true };
    const multiport = options.multiport ??
      (maxPorts > 1 || port0.name !== undefined || port0.console !== true);
    if (!multiport && maxPorts > 1) {
      throw new RangeError(`maxPorts ${maxPorts} needs MULTIPORT`);
    }
    const queueSize = options.queueSize ?? CONSOLE_QUEUE_SIZE;
    if (!Number.isInteger(queueSize) || queueSize < 1 || queueSize > 32768) {
      throw new RangeError(`queueSize must be from 1 to 32768, got ${queueSize}`);
    }
    const emergency = options.emergencyWrite ?? true;
    let features = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC) |
      featureBit(VIRTIO_F_EVENT_IDX) | featureBit(VIRTIO_CONSOLE_F_SIZE);
    if (multiport) features |= featureBit(VIRTIO_CONSOLE_F_MULTIPORT);
    if (emergency) features |= featureBit(VIRTIO_CONSOLE_F_EMERG_WRITE);
    const queues = multiport ? 2 * (maxPorts + 1) : 2;
    super(
      TYPE_CONSOLE,
      new VirtioDeviceInfo(
        "virtio-console",
        features,
        new Array<number>(queues).fill(queueSize),
        new Uint8Array(CONSOLE_CONFIG_SIZE),
      ),
    );
    this.#maxPorts = maxPorts;
    this.#emergency = emergency;
    this.#onError = options.onError;
    this.#link = {
      hostData: (ch) => this.#portWants(ch, consoleRxQueue(ch.id)),
      guestSpace: (ch) => this.#portWants(ch, consoleTxQueue(ch.id)),
      hostConnection: (ch) => this.#hostConnection(ch),
      resized: (ch) => this.#resized(ch),
    };
    this.#ports = new Array<PortChannel | undefined>(maxPorts).fill(undefined);
    for (let id = 0; id < maxPorts; id++) {
      const o = id === 0 ? port0 : given[id];
      if (o !== undefined) this.#ports[id] = new PortChannel(id, o, this.#link);
    }
    const cfg = this.#config();
    cfg.setUint32(CONSOLE_CONFIG_MAX_NR_PORTS, maxPorts, true);
    this.#writeSize(this.#ports[0]!);
  }

  /** `max_nr_ports`. */
  get maxPorts(): number {
    return this.#maxPorts;
  }

  /** Whether the driver negotiated MULTIPORT (meaningful while active). */
  get multiport(): boolean {
    return this.#multiport;
  }

  /**
   * A port by number.
   * @param id Port number.
   * @returns The port, or `undefined` when there is none.
   */
  port(id: number): ConsolePort | undefined {
    return Number.isInteger(id) ? this.#ports[id] : undefined;
  }

  /** The ports, by number. */
  get ports(): ConsolePort[] {
    return this.#ports.filter((p): p is PortChannel => p !== undefined);
  }

  /**
   * Resize port 0's console (see {@linkcode ConsolePort.resize}).
   * @param cols Columns (0 to 65535).
   * @param rows Rows (0 to 65535).
   * @throws {RangeError} For a size outside 0–65535.
   */
  resize(cols: number, rows: number): void {
    this.#ports[0]!.resize(cols, rows);
  }

  /**
   * Add a port while the device runs (hot-plug): with MULTIPORT and a ready driver the guest
   * gets PORT_ADD at once, else when its driver says DEVICE_READY.
   * @param options The port's options, and `id` (default: the lowest free number from 1).
   * @returns The port.
   * @throws {RangeError} When `id` is taken or not below `maxPorts`, or no number is free.
   * @throws {TypeError} For a bad name or overflow policy.
   */
  addPort(options: ConsolePortOptions & { id?: number } = {}): ConsolePort {
    if (this.#removed) throw new RangeError("the device was removed");
    let id = options.id;
    if (id === undefined) {
      id = this.#ports.findIndex((p, i) => i > 0 && p === undefined);
      if (id < 0) throw new RangeError(`all ${this.#maxPorts} port numbers are taken`);
    }
    if (!Number.isInteger(id) || id < 0 || id >= this.#maxPorts) {
      throw new RangeError(`port ${id} is not below maxPorts ${this.#maxPorts}`);
    }
    if (this.#ports[id] !== undefined) throw new RangeError(`port ${id} exists`);
    const ch = new PortChannel(id, options, this.#link);
    this.#ports[id] = ch;
    if (this.#multiportActive && this.#driverReady) this.#announce(ch);
    return ch;
  }

  /**
   * Remove a port (hot-unplug): the guest gets PORT_REMOVE, the port's writes fail with a
   * `ConsoleError` (`PortRemoved`), its readable closes once what it holds was read.
   * @param id Port number (not 0: port 0's queues always exist).
   * @throws {RangeError} When there is no such port, or for port 0.
   */
  removePort(id: number): void {
    if (!Number.isInteger(id) || id <= 0 || id >= this.#maxPorts) {
      throw new RangeError(`port ${id} cannot be removed (1 to ${this.#maxPorts - 1})`);
    }
    const ch = this.#ports[id];
    if (ch === undefined) throw new RangeError(`no port ${id}`);
    this.#ports[id] = undefined;
    if (this.#multiportActive && ch.added) {
      let addAt = -1;
      for (let i = this.#control.length - 1; i >= 0; i--) {
        const m = this.#control[i];
        if (m.id === id && m.event === VIRTIO_CONSOLE_PORT_ADD) {
          addAt = i;
          break;
        }
      }
      if (addAt >= 0) {
        // Never announced: forget the PORT_ADD and what followed it for this port.
        this.#control = this.#control.filter((m, i) => m.id !== id || i < addAt);
      } else {
        this.#control = this.#control.filter((m) =>
          m.id !== id || m.event === VIRTIO_CONSOLE_PORT_REMOVE
        );
        this.#queueControl({ id, event: VIRTIO_CONSOLE_PORT_REMOVE });
      }
    }
    ch.end("PortRemoved", `port ${id} was removed`);
  }

  /** End every port's streams (`DeviceRemoved`) and cancel timers; the device is done. */
  remove(): void {
    this.#removed = true;
    this.#cancel();
    for (const ch of this.#ports) ch?.end("DeviceRemoved", "the console device was removed");
  }

  // -------------------------------------------------------------------------------------------
  // Configuration space (virtio 1.2 §5.3.4)

  #config(): DataView {
    const b = this.info.configSpace;
    return new DataView(b.buffer, b.byteOffset, b.byteLength);
  }

  #writeSize(ch: PortChannel): void {
    const cfg = this.#config();
    cfg.setUint16(CONSOLE_CONFIG_COLS, ch.cols, true);
    cfg.setUint16(CONSOLE_CONFIG_ROWS, ch.rows, true);
  }

  /**
   * Write configuration space: only `emerg_wr` is writable (virtio 1.2 §5.3.5.1: at any
   * time, even before the driver set anything up); its low byte goes to port 0's readable.
   * @param offset Byte offset.
   * @param data The bytes (the first is the character).
   * @throws {VirtioError} `InvalidInput` for any other field, or when F_EMERG_WRITE is off.
   */
  override writeConfig(offset: number, data: Uint8Array): void {
    if (
      this.#emergency && offset === CONSOLE_CONFIG_EMERG_WR && data.length >= 1 &&
      data.length <= 4
    ) {
      this.stats.emergencyWrites++;
      this.#ports[0]?.fromGuest(new Uint8Array([data[0]]), true);
      return;
    }
    this.stats.dropped.badConfigWrite++;
    throw new VirtioError(
      "InvalidInput",
      `virtio-console: ${data.length}-byte write at config offset ${offset} (only emerg_wr is writable${
        this.#emergency ? "" : ", and F_EMERG_WRITE is off"
      })`,
    );
  }

  // -------------------------------------------------------------------------------------------
  // Life cycle

  /**
   * Port 0's queues, and the control queues with MULTIPORT.
   * @returns The count.
   */
  protected override requiredQueues(): number {
    return this.info.hasFeature(VIRTIO_CONSOLE_F_MULTIPORT) ? 4 : 2;
  }

  /**
   * Without MULTIPORT, port 0 is a console the driver has set up and open.
   * @param config The activation config.
   */
  protected override onActivate(config: VirtioDeviceConfig): void {
    this.#multiport = (config.ackedFeatures & featureBit(VIRTIO_CONSOLE_F_MULTIPORT)) !== 0n;
    if (!this.#multiport) {
      const ch = this.#ports[0]!;
      ch.ready = true;
      ch.setGuestOpen(true);
      this.#kickSoon(consoleRxQueue(0));
    }
  }

  /**
   * Serve whatever waits on the new queue set.
   * @param _config The new config.
   */
  protected override onReconfigure(_config: VirtioDeviceConfig): void {
    this.#kickSoon(CONSOLE_CONTROL_RX_QUEUE);
    for (const ch of this.#ports) {
      if (ch === undefined) continue;
      this.#kickSoon(consoleRxQueue(ch.id));
      if (ch.txBlocked) this.#kickSoon(consoleTxQueue(ch.id));
    }
  }

  /**
   * Forget what the driver knew: ports closed on its side, pending control messages dropped.
   * @param _wasActive The config the device was active with, if any.
   */
  protected override onReset(_wasActive: VirtioDeviceConfig | undefined): void {
    this.#cancel();
    this.#multiport = false;
    this.#driverReady = false;
    this.#control = [];
    for (const ch of this.#ports) {
      if (ch === undefined) continue;
      ch.added = false;
      ch.ready = false;
      ch.txBlocked = false;
      ch.setGuestOpen(false);
    }
  }

  get #multiportActive(): boolean {
    return this.active !== undefined && this.#multiport;
  }

  // -------------------------------------------------------------------------------------------
  // Serving

  /**
   * Serve queue `index`: a port's receiveq (host data into new buffers) or transmitq (guest
   * output), or a control queue. One pass is bounded.
   * @param index Queue index.
   * @returns `true` when the pass stopped at its budget with buffers left.
   */
  processQueue(index: number): boolean {
    if (this.active === undefined || !Number.isInteger(index)) return false;
    const role = consoleQueueRole(index);
    if (!this.#multiport && index >= 2) return false; // the queue is not in use
    if (role.control) return role.rx ? this.#serveControlRx() : this.#serveControlTx();
    const qc = this.queue(index);
    if (qc === undefined) return false;
    const ch = this.#ports[role.port];
    if (role.rx) {
      if (ch === undefined || !ch.guestOpen) return false;
      return this.#pass(qc, () => ch.hasHostData && ch.guestOpen, (c) => this.#fillRx(ch, c))
        .more;
    }
    const pass = this.#pass(
      qc,
      () => ch === undefined || ch.acceptsGuestData,
      (c) => this.#takeTx(ch, role.port, c),
    );
    if (ch !== undefined) ch.txBlocked = pass.stopped;
    return pass.more;
  }

  // One pass over a queue: while `want()` says so, take a chain, let `handle` write its used
  // length, and put it in the used ring; the driver is notified as it asked (virtio 1.2
  // §2.7.10). Driver notifications are suppressed while the pass runs and re-armed when the
  // ring runs dry, with a re-check; a pass that stops because `want()` said no leaves them
  // suppressed — whoever makes `want()` true again serves the queue. A malformed chain is
  // returned with length 0; a broken ring is reported with NEEDS_RESET. Nothing is thrown.
  #pass(
    qc: VirtioQueueConfig,
    want: () => boolean,
    handle: (chain: DescriptorChain) => number,
  ): { more: boolean; stopped: boolean } {
    const memory = this.active!.memory;
    const q = qc.queue;
    let used = 0;
    let more = false;
    let stopped = false;
    try {
      outer: do {
        q.disableNotification(memory);
        for (;;) {
          if (!want()) {
            stopped = true;
            break outer;
          }
          if (used >= DEFAULT_SERVE_BUDGET.chains && q.hasPending(memory)) {
            more = true;
            break outer;
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
          let len = 0;
          try {
            len = handle(chain);
          } catch (err) {
            len = 0;
            this.#error(VirtioError.from(err));
          }
          q.addUsed(memory, chain.head, len);
          used++;
          if (q.eventIdx && q.needsNotification(memory)) qc.notifier.notify();
        }
      } while (q.enableNotification(memory));
    } catch (err) {
      more = false;
      const e = VirtioError.from(err);
      this.#error(
        e.needsReset ? e : new VirtioError(e.kind, e.message, { needsReset: true, cause: err }),
      );
    }
    try {
      if (used > 0 && q.broken === undefined && q.needsNotification(memory)) {
        qc.notifier.notify();
      }
    } catch (err) {
      this.#error(VirtioError.from(err));
    }
    return { more, stopped };
  }

  // A port's receive chain: host bytes in (virtio 1.2 §5.3.6: device-writable buffers only).
  #fillRx(ch: PortChannel, chain: DescriptorChain): number {
    if (chain.readableBytes > 0 || chain.writableBytes === 0) {
      this.#refuse("badChain", `port ${ch.id}: a receive chain needs device-writable buffers only`);
      return 0;
    }
    return ch.fillGuest(chain.writer);
  }

  // A port's transmit chain: guest bytes out (device-readable buffers only); used length 0.
  #takeTx(ch: PortChannel | undefined, id: number, chain: DescriptorChain): number {
    if (chain.writableBytes > 0) {
      this.#refuse("badChain", `port ${id}: a transmit chain has device-writable buffers`);
      return 0;
    }
    const total = chain.readableBytes;
    if (total === 0) return 0;
    if (ch === undefined) {
      this.#refuse("noPort", `${total} bytes on the transmitq of port ${id}, which does not exist`);
      return 0;
    }
    const take = Math.min(total, CONSOLE_MAX_CHAIN_BYTES);
    const bytes = new Uint8Array(take);
    chain.reader.readExact(bytes);
    ch.fromGuest(bytes);
    if (take < total) {
      ch.dropped(total - take);
      this.#refuse("oversized", `port ${id}: a ${total}-byte transmit chain, ${take} taken`);
    }
    return 0;
  }

  // ----- control receiveq (device → driver) ---------------------------------------------------

  #serveControlRx(): boolean {
    const qc = this.queue(CONSOLE_CONTROL_RX_QUEUE);
    if (qc === undefined) return false;
    return this.#pass(qc, () => this.#control.length > 0, (c) => this.#writeControl(c)).more;
  }

  #writeControl(chain: DescriptorChain): number {
    if (chain.readableBytes > 0) {
      this.#refuse("badChain", "a control receive chain has device-readable buffers");
      return 0;
    }
    const m = this.#control[0];
    if (chain.writableBytes < m.bytes.length) {
      this.#refuse(
        "smallBuffer",
        `a ${chain.writableBytes}-byte control receive buffer for a ${m.bytes.length}-byte message`,
      );
      return 0;
    }
    chain.writer.writeExact(m.bytes);
    this.#control.shift();
    this.stats.controlSent++;
    return m.bytes.length;
  }

  // Queue a message for the driver. A PORT_OPEN or RESIZE replaces one for the same port still
  // waiting (only the latest state matters), so the queue holds at most a few per port.
  #queueControl(message: ConsoleControlMessage): void {
    const { id, event } = message;
    const bytes = consoleControl(message);
    if (event === VIRTIO_CONSOLE_PORT_OPEN || event === VIRTIO_CONSOLE_RESIZE) {
      const same = this.#control.find((m) => m.id === id && m.event === event);
      if (same !== undefined) {
        same.bytes = bytes;
        return;
      }
    }
    this.#control.push({ id, event, bytes });
    this.#kickSoon(CONSOLE_CONTROL_RX_QUEUE);
  }

  #announce(ch: PortChannel): void {
    ch.added = true;
    this.#queueControl({ id: ch.id, event: VIRTIO_CONSOLE_PORT_ADD });
  }

  // ----- control transmitq (driver → device) --------------------------------------------------

  #serveControlTx(): boolean {
    const qc = this.queue(CONSOLE_CONTROL_TX_QUEUE);
    if (qc === undefined) return false;
    return this.#pass(qc, () => true, (c) => this.#readControl(c)).more;
  }

  // virtio 1.2 §5.3.6.2: the driver's DEVICE_READY, PORT_READY and PORT_OPEN.
  #readControl(chain: DescriptorChain): number {
    const p = parseConsoleControl(chain, this.#maxPorts);
    if (!p.ok) {
      this.#refuse(
        p.refusal,
        `control message refused (${p.refusal}): id ${p.id ?? "?"}, event ${p.event ?? "?"}`,
      );
      return 0;
    }
    const { id, event, value } = p.message;
    if (event === VIRTIO_CONSOLE_DEVICE_READY) {
      this.stats.controlReceived++;
      if (value === 0) {
        this.stats.driverFailures++;
        this.#error(new VirtioError("InvalidInput", "virtio-console: the driver failed to start"));
      } else if (!this.#driverReady) {
        this.#driverReady = true;
        for (const ch of this.#ports) if (ch !== undefined) this.#announce(ch);
      }
      return 0;
    }
    const ch = this.#ports[id];
    if (ch === undefined) {
      this.#refuse("unknownPort", `control event ${event} for port ${id}, which does not exist`);
      return 0;
    }
    this.stats.controlReceived++;
    if (event === VIRTIO_CONSOLE_PORT_READY) {
      if (value === 0) {
        ch.ready = false;
        this.stats.driverFailures++;
        this.#error(
          new VirtioError("InvalidInput", `virtio-console: the driver failed port ${id}`),
        );
      } else if (!ch.ready) {
        // Also after a reset without DEVICE_READY (Linux's restore path): tell it all again.
        ch.ready = true;
        if (ch.console) this.#queueControl({ id, event: VIRTIO_CONSOLE_CONSOLE_PORT, value: 1 });
        if (ch.nameBytes !== undefined) {
          this.#queueControl({ id, event: VIRTIO_CONSOLE_PORT_NAME, data: ch.nameBytes });
        }
        if (ch.console && (ch.cols !== 0 || ch.rows !== 0)) {
          this.#queueControl(resizeMessage(id, ch.size));
        }
        if (ch.hostConnected) {
          this.#queueControl({ id, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
        }
      }
      return 0;
    }
    // VIRTIO_CONSOLE_PORT_OPEN
    ch.setGuestOpen(value === 1);
    if (value === 1) this.#kickSoon(consoleRxQueue(id));
    return 0;
  }

  // ----- host side ----------------------------------------------------------------------------

  #portWants(ch: PortChannel, index: number): void {
    if (this.#ports[ch.id] === ch) this.#kickSoon(index);
  }

  #hostConnection(ch: PortChannel): void {
    if (this.#ports[ch.id] !== ch || !this.#multiportActive || !ch.ready) return;
    this.#queueControl({
      id: ch.id,
      event: VIRTIO_CONSOLE_PORT_OPEN,
      value: ch.hostConnected ? 1 : 0,
    });
  }

  #resized(ch: PortChannel): void {
    if (this.#ports[ch.id] !== ch) return;
    if (ch.id === 0) this.#writeSize(ch);
    const config = this.active;
    if (config === undefined) return;
    if (this.#multiport) {
      if (ch.ready && ch.console) this.#queueControl(resizeMessage(ch.id, ch.size));
    } else if (ch.id === 0 && this.info.hasFeature(VIRTIO_CONSOLE_F_SIZE)) {
      // virtio 1.2 §5.3.6: without MULTIPORT the size is read from the configuration.
      config.notifyDeviceChanges();
    }
  }

  // Serve `index` on a microtask: host actions never serve queues from inside their own call.
  #kickSoon(index: number): void {
    if (this.#removed) return;
    this.#soon.add(index);
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => this.#runSoon());
  }

  #runSoon(): void {
    this.#scheduled = false;
    const indices = [...this.#soon];
    this.#soon.clear();
    for (const index of indices) {
      if (this.processQueue(index)) this.#later.add(index);
    }
    if (this.#later.size > 0 && this.#timer === undefined) {
      // Out of budget: the rest on a later turn of the event loop.
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        const later = [...this.#later];
        this.#later.clear();
        for (const index of later) this.#kickSoon(index);
      }, 0);
    }
  }

  #cancel(): void {
    this.#soon.clear();
    this.#later.clear();
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #refuse(reason: ConsoleDropReason, message: string): void {
    this.stats.dropped[reason]++;
    this.#error(new VirtioError("InvalidInput", `virtio-console: ${message}`));
  }

  #error(err: VirtioError): void {
    this.#onError?.(err);
    this.reportError(err);
  }
}

/**
 * The traditional memory balloon (virtio 1.2 §5.5): the host sets a target number of 4 KiB
 * pages, the guest's driver hands that many free pages over on the inflate queue, and the
 * device gives the host memory behind them back (`madvise` through {@linkcode GuestRam}, so
 * the VMM's resident set shrinks). Deflation returns pages to the guest. With the stats queue
 * the guest reports its memory statistics when asked (on an interval the host chooses); with
 * free page reporting it reports free memory the host may release without a target; with
 * DEFLATE_ON_OOM it may take pages back from the balloon when it runs out of memory.
 *
 * The guest is hostile: a page frame number outside guest RAM, or in device memory (a
 * virtio-mem or pmem region, a DAX window), is ignored and counted, never released; a page
 * inflated twice or deflated while not in the balloon is counted; a request carries at most
 * {@linkcode BALLOON_MAX_PFNS_PER_REQUEST} page numbers, the rest is ignored.
 *
 * @example Attach a balloon to our VMM and shrink the guest by 64 MiB
 * ```ts ignore
 * import { BalloonDevice } from "./balloon.ts";
 * import { MicroVm } from "../kvm/mod.ts";
 * const balloon = new BalloonDevice({ statsIntervalMs: 1000, onStats: (s) => console.log(s) });
 * const vm = MicroVm.create({ kernel, initrd, memorySize: 512 << 20, devices: [balloon] });
 * const run = vm.run();
 * // later, while the guest runs:
 * balloon.setTargetPages((64 << 20) / 4096);
 * ```
 *
 * @module
 */

import { setInterval as nodeSetInterval } from "node:timers";
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC } from "../queue/split.ts";
import type { DescriptorChain } from "../queue/chain.ts";
import {
  featureBit,
  serveQueue,
  TYPE_BALLOON,
  VIRTIO_F_VERSION_1,
  VirtioDeviceBase,
  type VirtioDeviceConfig,
  VirtioDeviceInfo,
  VirtioError,
} from "./device.ts";
import type { GuestRam, GuestRamRange } from "./guest_ram.ts";
import { BalloonPageMap } from "./_balloon_pages.ts";
import {
  BALLOON_CONFIG_SIZE,
  BALLOON_MAX_STATS,
  BALLOON_PAGE_SIZE,
  BALLOON_STAT_SIZE,
  BalloonConfigOffset,
  type BalloonStats,
  parseBalloonStats,
  VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
  VIRTIO_BALLOON_F_MUST_TELL_HOST,
  VIRTIO_BALLOON_F_PAGE_REPORTING,
  VIRTIO_BALLOON_F_STATS_VQ,
} from "./_balloon_wire.ts";

export {
  BALLOON_CONFIG_SIZE,
  BALLOON_MAX_STATS,
  BALLOON_PAGE_SIZE,
  BALLOON_STAT_SIZE,
  BalloonConfigOffset,
  type BalloonStats,
  BalloonStatTag,
  encodeBalloonPfns,
  encodeBalloonStats,
  parseBalloonStats,
  type ParsedBalloonStats,
  VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
  VIRTIO_BALLOON_F_FREE_PAGE_HINT,
  VIRTIO_BALLOON_F_MUST_TELL_HOST,
  VIRTIO_BALLOON_F_PAGE_POISON,
  VIRTIO_BALLOON_F_PAGE_REPORTING,
  VIRTIO_BALLOON_F_STATS_VQ,
  VIRTIO_BALLOON_PFN_SHIFT,
} from "./_balloon_wire.ts";

/** Default size of each queue (free page reporting needs at least 32). */
export const BALLOON_QUEUE_SIZE = 128;

/**
 * Most page frame numbers taken from one inflate or deflate request (Linux sends at most 256);
 * the rest of a longer request is ignored and counted in `truncatedRequests`.
 */
export const BALLOON_MAX_PFNS_PER_REQUEST = 4096;

/** Largest target, in pages (`num_pages` is a 32-bit field). */
export const BALLOON_MAX_TARGET_PAGES = 0xffffffff;

/** Timers for the stats interval; tests inject their own. */
export interface BalloonTimers {
  /**
   * Call `fn` every `ms` milliseconds until cleared.
   * @param fn The callback.
   * @param ms The period.
   * @returns A handle for `clearInterval`.
   */
  setInterval(fn: () => void, ms: number): unknown;
  /**
   * Stop an interval.
   * @param handle What `setInterval` returned.
   */
  clearInterval(handle: unknown): void;
}

/** Options of {@linkcode BalloonDevice}. */
export interface BalloonOptions {
  /** Size of each queue (default {@linkcode BALLOON_QUEUE_SIZE}; a power of two, at least 32). */
  queueSize?: number;
  /** Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest may deflate when out of memory (default false). */
  deflateOnOom?: boolean;
  /** Offer VIRTIO_BALLOON_F_PAGE_REPORTING: release the free pages the guest reports (default false). */
  freePageReporting?: boolean;
  /**
   * Ask the guest for statistics every this many milliseconds (default 0: only on
   * {@linkcode BalloonDevice.requestStats}).
   */
  statsIntervalMs?: number;
  /** Called with each statistics update the guest sends. */
  onStats?: (stats: BalloonStats) => void;
  /**
   * Guest RAM, when not handed over by the VMM ({@linkcode BalloonDevice.setGuestRam}). Without
   * it, pages are accounted but the host memory behind them is not released.
   */
  ram?: GuestRam;
  /** Initial target in 4 KiB pages (default 0: an empty balloon). */
  targetPages?: number;
  /** Called for each error while serving (default: ignore). */
  onError?: (err: VirtioError) => void;
  /** Timers for the stats interval (default: `setInterval` from `node:timers`, unref'ed). */
  timers?: BalloonTimers;
}

/** What the balloon did since it was created. Page counts are in 4 KiB pages. */
export interface BalloonCounters {
  /** Pages put in the balloon by inflate requests. */
  inflatedPages: number;
  /** Pages taken out of the balloon by deflate requests. */
  deflatedPages: number;
  /** Bytes of host memory given back (inflated and reported pages). */
  releasedBytes: number;
  /** Free page reports served. */
  reports: number;
  /** Bytes the guest reported free. */
  reportedBytes: number;
  /** Pages ignored because they are outside guest memory. */
  ignoredOutsideRam: number;
  /** Pages ignored because they are device memory, not RAM. */
  ignoredDeviceMemory: number;
  /** Pages inflated while in the balloon, or deflated while not in it. */
  ignoredDuplicates: number;
  /** Requests with a partial page frame number or more than the cap (the excess ignored). */
  truncatedRequests: number;
  /** Releases the host refused (madvise failures). */
  releaseFailures: number;
  /** Statistics buffers received. */
  statsUpdates: number;
  /** Statistics entries ignored (unknown tags, beyond the cap) or buffers given twice. */
  ignoredStats: number;
}

// What each queue is for; the numbering depends on the negotiated features.
const Role = { Inflate: 0, Deflate: 1, Stats: 2, Report: 3 } as const;
type Role = typeof Role[keyof typeof Role];

const SYSTEM_TIMERS: BalloonTimers = {
  setInterval: (fn, ms) => {
    const handle = nodeSetInterval(fn, ms) as unknown as { unref?: () => void };
    handle.unref?.(); // a forgotten balloon must not keep the process alive
    return handle;
  },
  clearInterval: (handle) => clearInterval(handle as ReturnType<typeof setInterval>),
};

function newCounters(): BalloonCounters {
  return {
    inflatedPages: 0,
    deflatedPages: 0,
    releasedBytes: 0,
    reports: 0,
    reportedBytes: 0,
    ignoredOutsideRam: 0,
    ignoredDeviceMemory: 0,
    ignoredDuplicates: 0,
    truncatedRequests: 0,
    releaseFailures: 0,
    statsUpdates: 0,
    ignoredStats: 0,
  };
}

function checkInterval(ms: number): number {
  if (!Number.isSafeInteger(ms) || ms < 0 || ms > 0x7fffffff) {
    throw new RangeError(`Stats interval must be 0 to 2^31-1 ms, got ${ms}`);
  }
  return ms;
}

/**
 * The virtio memory balloon.
 *
 * Queues: inflate (0) and deflate (1) take device-readable arrays of le32 page frame numbers;
 * then, in this order and only when negotiated (Linux numbers only the queues it uses), the
 * stats queue (a device-readable buffer of 10-byte statistics, which the device keeps until it
 * wants fresh ones) and the reporting queue (device-writable buffers that are the free pages
 * themselves). Every buffer is used with length 0.
 */
export class BalloonDevice extends VirtioDeviceBase {
  readonly #config: DataView;
  readonly #onError: ((err: VirtioError) => void) | undefined;
  readonly #onStats: ((stats: BalloonStats) => void) | undefined;
  readonly #timers: BalloonTimers;
  readonly #scratch = new Uint8Array(BALLOON_MAX_PFNS_PER_REQUEST * 4);
  readonly #scratchView = new DataView(this.#scratch.buffer);
  #ram: GuestRam | undefined;
  #pages: BalloonPageMap | undefined;
  #roles: Role[] = [];
  #statsIntervalMs: number;
  #statsTimer: unknown = undefined;
  #statsHead: number | undefined;
  #stats: BalloonStats | undefined;
  #counters = newCounters();
  // The run of contiguous RAM pages waiting to be released, [start, end).
  #runStart = 0;
  #runEnd = 0;
  #runRange = -1;

  /**
   * Create it.
   * @param options Features, stats interval, guest RAM, initial target.
   * @throws {RangeError} For a queue size that is not a power of two from 32 to 32768, a
   *   negative or non-integer interval, or a target outside 0 to 2^32 - 1.
   */
  constructor(options: BalloonOptions = {}) {
    const queueSize = options.queueSize ?? BALLOON_QUEUE_SIZE;
    if (
      !Number.isInteger(queueSize) || queueSize < 32 || queueSize > 32768 ||
      (queueSize & (queueSize - 1)) !== 0
    ) {
      throw new RangeError(`Queue size must be a power of two from 32 to 32768, got ${queueSize}`);
    }
    let features = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC) |
      featureBit(VIRTIO_F_EVENT_IDX) | featureBit(VIRTIO_BALLOON_F_MUST_TELL_HOST) |
      featureBit(VIRTIO_BALLOON_F_STATS_VQ);
    if (options.deflateOnOom) features |= featureBit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
    if (options.freePageReporting) features |= featureBit(VIRTIO_BALLOON_F_PAGE_REPORTING);
    const queues = options.freePageReporting ? 4 : 3;
    const config = new Uint8Array(BALLOON_CONFIG_SIZE);
    super(
      TYPE_BALLOON,
      new VirtioDeviceInfo(
        "virtio-balloon",
        features,
        new Array<number>(queues).fill(queueSize),
        config,
      ),
    );
    this.#config = new DataView(config.buffer);
    this.#onError = options.onError;
    this.#onStats = options.onStats;
    this.#timers = options.timers ?? SYSTEM_TIMERS;
    this.#statsIntervalMs = checkInterval(options.statsIntervalMs ?? 0);
    this.#ram = options.ram;
    this.setTargetPages(options.targetPages ?? 0);
  }

  /**
   * Take the guest's RAM from the VMM: from now on inflated and reported pages are released.
   * @param ram Where RAM is and how to release it.
   */
  setGuestRam(ram: GuestRam): void {
    this.#ram = ram;
    if (this.active !== undefined) this.#pages = new BalloonPageMap(ram.ranges);
  }

  /** The target: pages the device asks the guest to put in the balloon (`num_pages`). */
  get targetPages(): number {
    return this.#config.getUint32(BalloonConfigOffset.numPages, true);
  }

  /**
   * Change the target at run time: the driver is told through a configuration change
   * interrupt and inflates or deflates towards it.
   * @param pages 4 KiB pages the balloon should hold.
   * @throws {RangeError} When `pages` is not an integer from 0 to 2^32 - 1.
   */
  setTargetPages(pages: number): void {
    if (!Number.isSafeInteger(pages) || pages < 0 || pages > BALLOON_MAX_TARGET_PAGES) {
      throw new RangeError(`Balloon target must be 0 to 2^32-1 pages, got ${pages}`);
    }
    if (pages === this.targetPages) return;
    this.#config.setUint32(BalloonConfigOffset.numPages, pages, true);
    // virtio 1.2 §5.5.6: the driver examines num_pages on a configuration change notification.
    this.active?.notifyDeviceChanges();
  }

  /** Pages the driver says are in the balloon (`actual`, written by the driver). */
  get actualPages(): number {
    return this.#config.getUint32(BalloonConfigOffset.actual, true);
  }

  /** Pages in the balloon as the device counted them from inflate and deflate requests. */
  get pagesInBalloon(): number {
    return this.#pages?.count ?? 0;
  }

  /** The last statistics the guest sent, if any. */
  get stats(): BalloonStats | undefined {
    return this.#stats === undefined ? undefined : { ...this.#stats };
  }

  /** Counters since creation (a copy). */
  get counters(): BalloonCounters {
    return { ...this.#counters };
  }

  /** The stats interval in milliseconds (0: none). */
  get statsIntervalMs(): number {
    return this.#statsIntervalMs;
  }

  /**
   * Change how often the guest is asked for statistics.
   * @param ms The period in milliseconds; 0 stops polling.
   * @throws {RangeError} For a negative, non-integer or too large period.
   */
  setStatsInterval(ms: number): void {
    this.#statsIntervalMs = checkInterval(ms);
    this.#stopStatsTimer();
    this.#startStatsTimer();
  }

  /**
   * Ask the guest for fresh statistics now: the stats buffer it left with the device is given
   * back (virtio 1.2 §5.5.6.3), and the driver refills and returns it.
   * @returns Whether a request went out (false: no stats queue, or no buffer held).
   */
  requestStats(): boolean {
    const config = this.active;
    const index = this.#roles.indexOf(Role.Stats);
    const qc = index < 0 ? undefined : this.queue(index);
    const head = this.#statsHead;
    if (config === undefined || qc === undefined || head === undefined) return false;
    this.#statsHead = undefined;
    try {
      qc.queue.addUsed(config.memory, head, 0);
      if (qc.queue.needsNotification(config.memory)) qc.notifier.notify();
    } catch (err) {
      this.#error(VirtioError.from(err));
      return false;
    }
    return true;
  }

  /**
   * Write configuration space: only `actual` is the driver's to write (virtio 1.2 §5.5.4),
   * possibly a byte at a time (legacy drivers).
   * @param offset Byte offset.
   * @param data The bytes.
   * @throws {VirtioError} `InvalidInput` for any other field.
   */
  override writeConfig(offset: number, data: Uint8Array): void {
    const a = BalloonConfigOffset.actual;
    if (!Number.isSafeInteger(offset) || offset < a || offset + data.length > a + 4) {
      throw new VirtioError(
        "InvalidInput",
        `virtio-balloon: only actual is writable (write at ${offset}, ${data.length} bytes)`,
      );
    }
    this.info.writeConfig(offset, data);
  }

  /** The inflate and deflate queues, and the stats and reporting queues when negotiated. */
  protected override requiredQueues(): number {
    return this.#rolesFor(this.info.ackedFeatures).length;
  }

  #rolesFor(features: bigint): Role[] {
    const roles: Role[] = [Role.Inflate, Role.Deflate];
    if ((features & featureBit(VIRTIO_BALLOON_F_STATS_VQ)) !== 0n) roles.push(Role.Stats);
    if ((features & featureBit(VIRTIO_BALLOON_F_PAGE_REPORTING)) !== 0n) roles.push(Role.Report);
    return roles;
  }

  /**
   * Number the queues from the negotiated features and start stats polling.
   * @param config The activation config.
   */
  protected override onActivate(config: VirtioDeviceConfig): void {
    this.#roles = this.#rolesFor(config.ackedFeatures);
    this.#pages = new BalloonPageMap(this.#ramRanges(config));
    this.#statsHead = undefined;
    this.#startStatsTimer();
    if (this.#roles.includes(Role.Stats)) {
      // Linux adds its first stats buffer and notifies before it sets DRIVER_OK (init_vqs),
      // and transports drop notifications for an inactive device: look at the stats queue
      // once this activation is complete.
      queueMicrotask(() => {
        const index = this.#roles.indexOf(Role.Stats);
        if (index >= 0 && this.active !== undefined && this.#statsHead === undefined) {
          this.processQueue(index);
        }
      });
    }
  }

  /**
   * Queues or memory changed: a held stats buffer is forgotten (the ring may have restarted);
   * without {@linkcode GuestRam} the page map follows the new memory.
   * @param config The new config.
   */
  protected override onReconfigure(config: VirtioDeviceConfig): void {
    this.#statsHead = undefined;
    if (this.#ram === undefined) this.#pages = new BalloonPageMap(this.#ramRanges(config));
  }

  /**
   * Reset: the driver forgot the balloon, so does the device (`actual` back to 0); the target
   * stays, it is the host's.
   * @param _wasActive The config the device was active with.
   */
  protected override onReset(_wasActive: VirtioDeviceConfig | undefined): void {
    this.#stopStatsTimer();
    this.#statsHead = undefined;
    this.#roles = [];
    this.#pages?.clear();
    this.#config.setUint32(BalloonConfigOffset.actual, 0, true);
  }

  /** Stop stats polling for good. */
  remove(): void {
    this.#stopStatsTimer();
  }

  #ramRanges(config: VirtioDeviceConfig): readonly GuestRamRange[] {
    return this.#ram?.ranges ?? config.memory.regions.map((r) => ({ base: r.base, size: r.size }));
  }

  #startStatsTimer(): void {
    if (this.#statsTimer !== undefined || this.#statsIntervalMs === 0) return;
    if (!this.#roles.includes(Role.Stats)) return;
    this.#statsTimer = this.#timers.setInterval(() => this.requestStats(), this.#statsIntervalMs);
  }

  #stopStatsTimer(): void {
    if (this.#statsTimer === undefined) return;
    this.#timers.clearInterval(this.#statsTimer);
    this.#statsTimer = undefined;
  }

  /**
   * Serve queue `index`, one budget's worth.
   * @param index Queue index.
   * @returns `true` when more work is pending.
   */
  processQueue(index: number): boolean {
    const config = this.active;
    if (config === undefined) return false;
    const qc = this.queue(index);
    const role = this.#roles[index];
    if (qc === undefined || role === undefined) {
      this.#error(new VirtioError("InvalidInput", `virtio-balloon has no queue ${index}`));
      return false;
    }
    const onError = (e: VirtioError) => this.#error(e);
    switch (role) {
      case Role.Inflate:
        return serveQueue(config.memory, qc, this.#inflate, onError).more;
      case Role.Deflate:
        return serveQueue(config.memory, qc, this.#deflate, onError).more;
      case Role.Report:
        return serveQueue(config.memory, qc, this.#report, onError).more;
      case Role.Stats: {
        const before = this.#statsHead;
        const pass = serveQueue(config.memory, qc, this.#statsBuffer, onError);
        // A buffer the driver gave while one was held was used by #statsBuffer, outside the
        // loop's own accounting: signal it here.
        if (before !== undefined && this.#statsHead !== before) {
          try {
            if (qc.queue.needsNotification(config.memory)) qc.notifier.notify();
          } catch (err) {
            onError(VirtioError.from(err));
          }
        }
        return pass.more;
      }
    }
  }

  #inflate = (chain: DescriptorChain): number => this.#pfns(chain, true);
  #deflate = (chain: DescriptorChain): number => this.#pfns(chain, false);

  // virtio 1.2 §5.5.6: an array of le32 page frame numbers (address / 4096). Inflated RAM
  // pages are released before the request is used (the device may change their contents from
  // then on); deflated ones only leave the page map: the guest's next touch faults them in.
  #pfns(chain: DescriptorChain, inflate: boolean): number {
    const pages = this.#pages;
    if (pages === undefined) return 0;
    const c = this.#counters;
    const readable = chain.readableBytes;
    let n = Math.floor(readable / 4);
    if (readable % 4 !== 0 || n > BALLOON_MAX_PFNS_PER_REQUEST) c.truncatedRequests++;
    n = Math.min(n, BALLOON_MAX_PFNS_PER_REQUEST);
    const bytes = this.#scratch.subarray(0, n * 4);
    chain.reader.readExact(bytes);
    const view = this.#scratchView;
    const memory = chain.memory;
    this.#runRange = -1;
    for (let i = 0; i < n; i++) {
      const addr = view.getUint32(i * 4, true) * BALLOON_PAGE_SIZE;
      const range = pages.rangeOf(addr);
      if (range < 0) {
        this.#flushRun();
        if (memory.findRegion(addr) === undefined) c.ignoredOutsideRam++;
        else c.ignoredDeviceMemory++;
        continue;
      }
      if (!pages.mark(range, addr, inflate)) {
        this.#flushRun();
        c.ignoredDuplicates++;
        continue;
      }
      if (!inflate) {
        c.deflatedPages++;
        continue;
      }
      c.inflatedPages++;
      // Contiguous pages of one range are released with one call.
      if (range === this.#runRange && addr === this.#runEnd) {
        this.#runEnd += BALLOON_PAGE_SIZE;
      } else {
        this.#flushRun();
        this.#runRange = range;
        this.#runStart = addr;
        this.#runEnd = addr + BALLOON_PAGE_SIZE;
      }
    }
    this.#flushRun();
    return 0;
  }

  #flushRun(): void {
    const start = this.#runStart, end = this.#runEnd;
    const had = this.#runRange >= 0;
    this.#runRange = -1;
    if (had) this.#release(start, end - start);
  }

  // Give back [addr, addr + len) of RAM, rounded inward to the host's pages.
  #release(addr: number, len: number): void {
    const ram = this.#ram;
    if (ram === undefined) return;
    const ps = ram.pageSize;
    const start = Math.ceil(addr / ps) * ps;
    const end = Math.floor((addr + len) / ps) * ps;
    if (end <= start) return;
    try {
      ram.discard(start, end - start);
      this.#counters.releasedBytes += end - start;
    } catch (err) {
      this.#counters.releaseFailures++;
      this.#error(
        new VirtioError("IOError", `virtio-balloon: releasing 0x${start.toString(16)}: ${err}`, {
          cause: err,
        }),
      );
    }
  }

  // virtio 1.2 §5.5.6.7: the device-writable buffers are the free pages themselves.
  #report = (chain: DescriptorChain): number => {
    const pages = this.#pages;
    if (pages === undefined) return 0;
    const c = this.#counters;
    c.reports++;
    const addrs = chain.addrs, lens = chain.lens;
    for (let i = chain.readableCount; i < addrs.length; i++) {
      c.reportedBytes += lens[i];
      let at = Math.ceil(addrs[i] / BALLOON_PAGE_SIZE) * BALLOON_PAGE_SIZE;
      const end = Math.floor((addrs[i] + lens[i]) / BALLOON_PAGE_SIZE) * BALLOON_PAGE_SIZE;
      // A segment lies in one region of guest memory; RAM ranges may be finer.
      while (at < end) {
        const range = pages.rangeOf(at);
        if (range < 0) {
          const left = (end - at) / BALLOON_PAGE_SIZE;
          if (chain.memory.findRegion(at) === undefined) c.ignoredOutsideRam += left;
          else c.ignoredDeviceMemory += left;
          break;
        }
        const stop = Math.min(end, pages.endOf(range));
        this.#release(at, stop - at);
        at = stop;
      }
    }
    return 0;
  };

  // virtio 1.2 §5.5.6.3: the driver's statistics; the buffer is kept to ask for the next ones.
  #statsBuffer = (chain: DescriptorChain): number | undefined => {
    const c = this.#counters;
    const held = this.#statsHead;
    if (held !== undefined) {
      // The driver must have at most one buffer in the queue: use the older one now.
      const qc = this.queue(this.#roles.indexOf(Role.Stats));
      if (qc !== undefined) qc.queue.addUsed(chain.memory, held, 0);
      this.#statsHead = undefined;
      c.ignoredStats++;
    }
    const len = Math.min(chain.readableBytes, (BALLOON_MAX_STATS + 1) * BALLOON_STAT_SIZE);
    const bytes = this.#scratch.subarray(0, len);
    chain.reader.readExact(bytes);
    const parsed = parseBalloonStats(bytes);
    c.ignoredStats += parsed.ignored;
    c.statsUpdates++;
    this.#stats = parsed.stats;
    this.#statsHead = chain.head;
    if (this.#onStats !== undefined) {
      try {
        this.#onStats({ ...parsed.stats });
      } catch {
        // The host's callback failing is not the guest's fault.
      }
    }
    return undefined;
  };

  #error(err: VirtioError): void {
    this.#onError?.(err);
    this.reportError(err);
  }
}

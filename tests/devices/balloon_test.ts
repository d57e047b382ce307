// The memory balloon (virtio 1.2 §5.5) driven through the MMIO transport by the driver harness,
// over guest RAM that is a real anonymous mapping: inflated and reported pages must read back
// as zero (madvise(MADV_DONTNEED) gave them to the host) and leave the mapping's resident set,
// and hostile page numbers (outside RAM, in device memory, twice) are counted, never released.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { mmapAnonymous } from "../../sys/mod.ts";
import {
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FEATURES_OK,
  featureBit,
  type GuestRam,
  MappedGuestRam,
  VIRTIO_F_VERSION_1,
  VIRTIO_INTR_CONFIG,
  type VirtioError,
} from "../../devices/device.ts";
import {
  BALLOON_MAX_PFNS_PER_REQUEST,
  BalloonConfigOffset,
  BalloonDevice,
  type BalloonOptions,
  type BalloonStats,
  BalloonStatTag,
  encodeBalloonPfns,
  encodeBalloonStats,
  parseBalloonStats,
  VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
  VIRTIO_BALLOON_F_MUST_TELL_HOST,
  VIRTIO_BALLOON_F_PAGE_REPORTING,
  VIRTIO_BALLOON_F_STATS_VQ,
} from "../../devices/balloon.ts";
import {
  MMIO_CONFIG_OFFSET,
  type MmioError,
  MmioRegister,
  MmioTransport,
} from "../../transport/mmio.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";
import { DriverQueue } from "../../testing/queue_driver.ts";
import { residentBytes } from "./_rss.ts";

const RAM = 16 << 20;
const PAGE = 4096;
/** First page the tests balloon: above the rings and buffers the driver harness uses. */
const FREE_PFN = (8 << 20) / PAGE;
/** Device memory (a virtio-mem or pmem region) next to RAM. */
const DEVICE_MEMORY = 0x4000_0000;
const ALL = ~0n & 0xffff_ffff_ffff_ffffn;

/** A GuestRam that records its discards around a real one. */
class RecordingRam implements GuestRam {
  readonly calls: [number, number][] = [];
  fail = false;
  constructor(readonly inner: GuestRam) {}
  get ranges() {
    return this.inner.ranges;
  }
  get pageSize() {
    return this.inner.pageSize;
  }
  discard(addr: number, len: number): void {
    this.calls.push([addr, len]);
    if (this.fail) throw new Error("madvise refused");
    this.inner.discard(addr, len);
  }
}

interface Rig {
  mem: GuestMemory;
  /** Host address of the RAM mapping. */
  address: bigint;
  bytes: Uint8Array;
  ram: RecordingRam;
  balloon: BalloonDevice;
  transport: MmioTransport;
  driver: MmioDriver;
  queues: DriverQueue[];
  errors: MmioError[];
  deviceErrors: VirtioError[];
  interrupts: { count: number };
  close(): void;
}

function rig(
  options: BalloonOptions & { features?: bigint; queues?: number; withRam?: boolean } = {},
): Rig {
  const mapping = mmapAnonymous(RAM);
  const mem = new GuestMemory([{ base: 0, buffer: mapping.buffer }]);
  mem.insertRegion({ base: DEVICE_MEMORY, buffer: new ArrayBuffer(1 << 20) });
  const ram = new RecordingRam(new MappedGuestRam([{ base: 0, mapping }]));
  const deviceErrors: VirtioError[] = [];
  const { features, queues, withRam, ...balloonOptions } = options;
  const balloon = new BalloonDevice({ onError: (e) => deviceErrors.push(e), ...balloonOptions });
  if (withRam ?? true) balloon.setGuestRam(ram);
  const errors: MmioError[] = [];
  const interrupts = { count: 0 };
  const transport = new MmioTransport(balloon, mem, {
    interrupt: () => interrupts.count++,
    onError: (e) => errors.push(e),
  });
  const driver = new MmioDriver(transport, mem);
  const dq = driver.init({ features: features ?? ALL, queues });
  assert.deepEqual(errors.map((e) => e.message), []);
  return {
    mem,
    address: mapping.address,
    bytes: new Uint8Array(mapping.buffer),
    ram,
    balloon,
    transport,
    driver,
    queues: dq,
    errors,
    deviceErrors,
    interrupts,
    close: () => {
      balloon.remove();
      mapping.unmap();
    },
  };
}

/** Send one inflate (queue 0) or deflate (queue 1) request and check it is used with length 0. */
function send(r: Rig, queue: number, payload: Uint8Array): void {
  const head = r.queues[queue].addChain([{ readable: payload }]);
  r.driver.kick(queue, true);
  const used = r.queues[queue].takeUsed();
  assert.ok(used !== null, "the device used the request");
  assert.equal(used.id, head);
  assert.equal(used.len, 0);
}

function fillPages(r: Rig, firstPfn: number, count: number, value: number): void {
  r.bytes.fill(value, firstPfn * PAGE, (firstPfn + count) * PAGE);
}

function pageIs(r: Rig, pfn: number, value: number): boolean {
  return r.bytes.subarray(pfn * PAGE, (pfn + 1) * PAGE).every((b) => b === value);
}

function range(first: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => first + i);
}

describe("virtio-balloon", () => {
  it("offers MUST_TELL_HOST and STATS_VQ, and DEFLATE_ON_OOM and PAGE_REPORTING only when asked", () => {
    const plain = new BalloonDevice();
    const offered = (d: BalloonDevice) =>
      BigInt(d.getAvailFeatures(0)) | (BigInt(d.getAvailFeatures(1)) << 32n);
    const f = offered(plain);
    assert.ok(f & featureBit(VIRTIO_F_VERSION_1));
    assert.ok(f & featureBit(VIRTIO_BALLOON_F_MUST_TELL_HOST));
    assert.ok(f & featureBit(VIRTIO_BALLOON_F_STATS_VQ));
    assert.equal(f & featureBit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM), 0n);
    assert.equal(f & featureBit(VIRTIO_BALLOON_F_PAGE_REPORTING), 0n);
    assert.equal(plain.queueMaxSizes().length, 3);
    const full = new BalloonDevice({ deflateOnOom: true, freePageReporting: true });
    assert.ok(offered(full) & featureBit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM));
    assert.ok(offered(full) & featureBit(VIRTIO_BALLOON_F_PAGE_REPORTING));
    assert.equal(full.queueMaxSizes().length, 4);
    assert.throws(() => new BalloonDevice({ queueSize: 16 }), RangeError);
    assert.throws(() => new BalloonDevice({ queueSize: 100 }), RangeError);
    assert.throws(() => new BalloonDevice({ statsIntervalMs: -1 }), RangeError);
    assert.throws(() => new BalloonDevice({ targetPages: 2 ** 32 }), RangeError);
  });

  it("inflating releases the pages to the host: they read zero and leave the resident set", () => {
    const r = rig();
    try {
      const pages = 512; // 2 MiB
      fillPages(r, FREE_PFN, pages + 1, 0xa5);
      const at = r.address + BigInt(FREE_PFN * PAGE);
      assert.equal(residentBytes(at, pages * PAGE), pages * PAGE);
      send(r, 0, encodeBalloonPfns(range(FREE_PFN, pages)));
      assert.equal(residentBytes(at, pages * PAGE), 0, "no inflated page is resident");
      assert.ok(pageIs(r, FREE_PFN, 0) && pageIs(r, FREE_PFN + pages - 1, 0));
      assert.ok(pageIs(r, FREE_PFN + pages, 0xa5), "the page after the balloon is untouched");
      // One madvise for the contiguous run.
      assert.deepEqual(r.ram.calls, [[FREE_PFN * PAGE, pages * PAGE]]);
      const c = r.balloon.counters;
      assert.equal(c.inflatedPages, pages);
      assert.equal(c.releasedBytes, pages * PAGE);
      assert.equal(r.balloon.pagesInBalloon, pages);
    } finally {
      r.close();
    }
  });

  it("coalesces only contiguous pages, in the order given", () => {
    const r = rig();
    try {
      send(r, 0, encodeBalloonPfns([FREE_PFN + 2, FREE_PFN + 3, FREE_PFN, FREE_PFN + 10]));
      assert.deepEqual(r.ram.calls, [
        [(FREE_PFN + 2) * PAGE, 2 * PAGE],
        [FREE_PFN * PAGE, PAGE],
        [(FREE_PFN + 10) * PAGE, PAGE],
      ]);
    } finally {
      r.close();
    }
  });

  it("deflating takes pages out of the balloon without touching them; the guest may write again", () => {
    const r = rig();
    try {
      send(r, 0, encodeBalloonPfns(range(FREE_PFN, 8)));
      send(r, 1, encodeBalloonPfns(range(FREE_PFN, 4)));
      assert.equal(r.balloon.pagesInBalloon, 4);
      assert.equal(r.balloon.counters.deflatedPages, 4);
      assert.equal(r.ram.calls.length, 1, "deflate releases nothing");
      fillPages(r, FREE_PFN, 4, 0x11);
      assert.ok(pageIs(r, FREE_PFN + 3, 0x11));
    } finally {
      r.close();
    }
  });

  it("counts a page inflated twice or deflated while not in the balloon, and releases it once", () => {
    const r = rig();
    try {
      send(r, 0, encodeBalloonPfns([FREE_PFN, FREE_PFN]));
      send(r, 0, encodeBalloonPfns([FREE_PFN]));
      send(r, 1, encodeBalloonPfns([FREE_PFN + 1]));
      const c = r.balloon.counters;
      assert.equal(c.inflatedPages, 1);
      assert.equal(c.ignoredDuplicates, 3);
      assert.equal(c.deflatedPages, 0);
      assert.deepEqual(r.ram.calls, [[FREE_PFN * PAGE, PAGE]]);
    } finally {
      r.close();
    }
  });

  it("ignores and counts page numbers outside guest memory or in device memory, never releasing them", () => {
    const r = rig();
    try {
      const hostile = [
        RAM / PAGE, // first page after RAM
        0xffffffff, // 16 TiB
        DEVICE_MEMORY / PAGE, // device memory
        DEVICE_MEMORY / PAGE + 5,
        0x20000, // 512 MiB: a hole
      ];
      send(r, 0, encodeBalloonPfns(hostile));
      send(r, 1, encodeBalloonPfns(hostile));
      const c = r.balloon.counters;
      assert.equal(c.ignoredOutsideRam, 6);
      assert.equal(c.ignoredDeviceMemory, 4);
      assert.equal(c.inflatedPages, 0);
      assert.deepEqual(r.ram.calls, []);
      assert.equal(r.balloon.pagesInBalloon, 0);
      // A valid page among hostile ones still goes in.
      send(r, 0, encodeBalloonPfns([0xffffffff, FREE_PFN, DEVICE_MEMORY / PAGE]));
      assert.deepEqual(r.ram.calls, [[FREE_PFN * PAGE, PAGE]]);
    } finally {
      r.close();
    }
  });

  it("a partial page number, an empty request and a request past the cap are counted", () => {
    const r = rig();
    try {
      const odd = new Uint8Array(6);
      new DataView(odd.buffer).setUint32(0, FREE_PFN, true);
      send(r, 0, odd);
      assert.equal(r.balloon.counters.inflatedPages, 1);
      assert.equal(r.balloon.counters.truncatedRequests, 1);
      send(r, 0, new Uint8Array(0));
      send(r, 0, new Uint8Array(3));
      assert.equal(r.balloon.counters.truncatedRequests, 2);
      // A device-writable buffer on the inflate queue carries no page numbers.
      const head = r.queues[0].addChain([{ writable: 64 }]);
      r.driver.kick(0, true);
      assert.deepEqual(
        { id: r.queues[0].takeUsed()?.id, n: r.balloon.counters.inflatedPages },
        { id: head, n: 1 },
      );
      // Past the cap: 2000 new pages, then the same again; 10 numbers beyond the cap unread.
      const list = range(FREE_PFN + 1, 2000);
      while (list.length < BALLOON_MAX_PFNS_PER_REQUEST + 10) list.push(FREE_PFN + 1);
      const big = r.queues[0].addChain([{ readable: encodeBalloonPfns(list) }]);
      r.driver.kick(0, true);
      assert.equal(r.queues[0].takeUsed()?.id, big);
      const c = r.balloon.counters;
      assert.equal(c.inflatedPages, 1 + 2000);
      assert.equal(c.ignoredDuplicates, BALLOON_MAX_PFNS_PER_REQUEST - 2000);
      assert.equal(r.balloon.counters.truncatedRequests, 3);
      assert.deepEqual(r.errors, []);
    } finally {
      r.close();
    }
  });

  it("without guest RAM from the VMM, pages are accounted but nothing is released", () => {
    const r = rig({ withRam: false });
    try {
      fillPages(r, FREE_PFN, 1, 0x77);
      send(r, 0, encodeBalloonPfns([FREE_PFN]));
      assert.equal(r.balloon.pagesInBalloon, 1);
      assert.equal(r.balloon.counters.releasedBytes, 0);
      assert.ok(pageIs(r, FREE_PFN, 0x77));
    } finally {
      r.close();
    }
  });

  it("a release the host refuses is counted and reported, and the device goes on", () => {
    const r = rig();
    try {
      r.ram.fail = true;
      send(r, 0, encodeBalloonPfns([FREE_PFN]));
      assert.equal(r.balloon.counters.releaseFailures, 1);
      assert.equal(r.deviceErrors.length, 1);
      assert.match(r.deviceErrors[0].message, /IOError/);
      r.ram.fail = false;
      send(r, 0, encodeBalloonPfns([FREE_PFN + 1]));
      assert.equal(r.balloon.counters.releasedBytes, PAGE);
    } finally {
      r.close();
    }
  });

  it("a new target reaches the driver through a configuration change interrupt", () => {
    const r = rig({ targetPages: 10 });
    try {
      const num = () =>
        new DataView(r.driver.readConfig(BalloonConfigOffset.numPages, 4).buffer).getUint32(
          0,
          true,
        );
      assert.equal(num(), 10);
      const gen = r.transport.configGeneration;
      r.driver.ackInterrupt();
      r.balloon.setTargetPages(1000);
      assert.equal(num(), 1000);
      assert.equal(r.balloon.targetPages, 1000);
      assert.notEqual(r.transport.configGeneration, gen);
      assert.equal(r.driver.ackInterrupt() & VIRTIO_INTR_CONFIG, VIRTIO_INTR_CONFIG);
      // The same target again changes nothing.
      const again = r.interrupts.count;
      r.balloon.setTargetPages(1000);
      assert.equal(r.interrupts.count, again);
      for (const bad of [-1, 1.5, 2 ** 32, NaN]) {
        assert.throws(() => r.balloon.setTargetPages(bad), RangeError);
      }
    } finally {
      r.close();
    }
  });

  it("the driver writes actual (also a byte at a time); every other field is read-only", () => {
    const r = rig();
    try {
      const at = MMIO_CONFIG_OFFSET + BalloonConfigOffset.actual;
      r.transport.write(at, new Uint8Array([0x34, 0x12, 0, 0]));
      assert.equal(r.balloon.actualPages, 0x1234);
      r.transport.write(at + 2, new Uint8Array([0x01]));
      assert.equal(r.balloon.actualPages, 0x11234);
      assert.equal(r.errors.length, 0);
      for (const [offset, len] of [[0, 4], [2, 4], [8, 4], [12, 4], [16, 4]]) {
        r.transport.write(MMIO_CONFIG_OFFSET + offset, new Uint8Array(len).fill(0xff));
      }
      assert.equal(r.errors.length, 5);
      assert.ok(r.errors.every((e) => e.code === "ConfigAccess"), r.errors.join("\n"));
      assert.equal(r.balloon.targetPages, 0);
      assert.equal(r.balloon.actualPages, 0x11234);
    } finally {
      r.close();
    }
  });

  describe("stats queue", () => {
    const STATS = encodeBalloonStats([
      [BalloonStatTag.MEMTOT, 512n << 20n],
      [BalloonStatTag.MEMFREE, 100n << 20n],
      [BalloonStatTag.AVAIL, 300n << 20n],
      [BalloonStatTag.MAJFLT, 7n],
      [4242, 1n], // unknown: ignored
    ]);

    it("keeps the driver's buffer, exposes the values, and returns it to ask for fresh ones", () => {
      const seen: BalloonStats[] = [];
      const r = rig({ onStats: (s) => seen.push(s) });
      try {
        const q = r.queues[2];
        const head = q.addChain([{ readable: STATS }]);
        r.driver.kick(2, true);
        assert.equal(q.takeUsed(), null, "the device holds the stats buffer");
        assert.deepEqual(r.balloon.stats, {
          totalMemory: 512 << 20,
          freeMemory: 100 << 20,
          availableMemory: 300 << 20,
          majorFaults: 7,
        });
        assert.equal(seen.length, 1);
        assert.equal(r.balloon.counters.ignoredStats, 1);
        const irq = r.interrupts.count;
        assert.equal(r.balloon.requestStats(), true);
        assert.equal(r.interrupts.count, irq + 1);
        assert.deepEqual({ id: q.takeUsed()?.id }, { id: head });
        assert.equal(r.balloon.requestStats(), false, "no buffer held until the driver refills");
        q.addChain([{ readable: encodeBalloonStats([[BalloonStatTag.MEMFREE, 5n]]) }]);
        r.driver.kick(2, true);
        assert.equal(r.balloon.stats?.freeMemory, 5);
        assert.equal(r.balloon.counters.statsUpdates, 2);
      } finally {
        r.close();
      }
    });

    it("takes the first buffer Linux adds and notifies before DRIVER_OK", async () => {
      const r = rig();
      try {
        // Start again by hand as Linux's virtio_balloon does: the stats buffer is added and
        // notified while the device is not yet live.
        const R = MmioRegister;
        const t = r.transport;
        t.writeU32(R.Status, 0);
        t.writeU32(R.Status, DEVICE_ACKNOWLEDGE);
        t.writeU32(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
        r.driver.writeDriverFeatures(r.driver.features);
        const status = DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK;
        t.writeU32(R.Status, status);
        const queues = [0, 1, 2].map((i) => {
          const dq = new DriverQueue(r.mem, {
            size: 64,
            ringBase: 0x100000 + i * 0x10000,
            bufferBase: 0x200000 + i * 0x10000,
            bufferEnd: 0x200000 + (i + 1) * 0x10000,
          });
          t.writeU32(R.QueueSel, i);
          t.writeU32(R.QueueNum, 64);
          t.writeU32(R.QueueDescLow, dq.descTable);
          t.writeU32(R.QueueDriverLow, dq.availRing);
          t.writeU32(R.QueueDeviceLow, dq.usedRing);
          t.writeU32(R.QueueReady, 1);
          return dq;
        });
        queues[2].addChain([{ readable: STATS }]);
        t.writeU32(R.QueueNotify, 2); // dropped: the device is not active
        assert.equal(r.balloon.counters.statsUpdates, 0);
        t.writeU32(R.Status, status | DEVICE_DRIVER_OK);
        await Promise.resolve();
        assert.equal(r.balloon.stats?.totalMemory, 512 << 20);
        assert.equal(r.balloon.requestStats(), true);
        assert.ok(queues[2].takeUsed() !== null);
      } finally {
        r.close();
      }
    });

    it("polls on the interval the host sets, and stops on reset", () => {
      let tick: (() => void) | undefined;
      let period = 0;
      let cleared = 0;
      const r = rig({
        statsIntervalMs: 1000,
        timers: {
          setInterval: (fn, ms) => {
            tick = fn;
            period = ms;
            return 1;
          },
          clearInterval: () => cleared++,
        },
      });
      try {
        assert.equal(period, 1000);
        const q = r.queues[2];
        q.addChain([{ readable: STATS }]);
        r.driver.kick(2, true);
        tick!();
        assert.ok(q.takeUsed() !== null, "the interval returned the buffer");
        r.balloon.setStatsInterval(250);
        assert.equal(period, 250);
        assert.equal(cleared, 1);
        r.balloon.setStatsInterval(0);
        assert.equal(cleared, 2);
        r.balloon.setStatsInterval(500);
        r.transport.writeU32(0x070, 0); // Status = 0: reset
        assert.equal(cleared, 3);
        assert.throws(() => r.balloon.setStatsInterval(2 ** 31), RangeError);
      } finally {
        r.close();
      }
    });

    it("a second buffer while one is held uses the older one; odd sizes and junk are ignored", () => {
      const r = rig();
      try {
        const q = r.queues[2];
        const first = q.addChain([{ readable: STATS }]);
        r.driver.kick(2, true);
        const odd = new Uint8Array(25); // two entries and 5 trailing bytes
        odd.set(encodeBalloonStats([[BalloonStatTag.SWAP_IN, 1n], [BalloonStatTag.SWAP_OUT, 2n]]));
        q.addChain([{ readable: odd }]);
        r.driver.kick(2, true);
        assert.equal(q.takeUsed()?.id, first);
        assert.deepEqual(r.balloon.stats, { swapIn: 1, swapOut: 2 });
        // A huge buffer costs at most the cap.
        const huge = new Uint8Array(1 << 20);
        q.addChain([{ readable: huge }]);
        r.driver.kick(2, true);
        assert.equal(r.balloon.stats?.swapIn, 0); // tag 0 entries of zeroes
        assert.ok(r.balloon.counters.ignoredStats > 0);
        assert.deepEqual(r.errors, []);
      } finally {
        r.close();
      }
    });

    it("without STATS_VQ there is no stats queue and requestStats does nothing", () => {
      const r = rig({
        features: ALL & ~featureBit(VIRTIO_BALLOON_F_STATS_VQ),
        queues: 2,
      });
      try {
        assert.equal(r.balloon.requestStats(), false);
        send(r, 0, encodeBalloonPfns([FREE_PFN]));
        assert.equal(r.balloon.pagesInBalloon, 1);
      } finally {
        r.close();
      }
    });
  });

  describe("free page reporting", () => {
    it("releases the reported pages (queue 3 after stats), rounding inward to whole pages", () => {
      const r = rig({ freePageReporting: true });
      try {
        const q = r.queues[3];
        fillPages(r, FREE_PFN, 600, 0x5a);
        const base = FREE_PFN * PAGE;
        const head = q.addChain([
          { writable: 512 * PAGE, at: base },
          { writable: PAGE + 200, at: base + 520 * PAGE - 100 }, // one whole page inside
        ]);
        r.driver.kick(3, true);
        const used = q.takeUsed();
        assert.equal(used?.id, head);
        assert.equal(used?.len, 0);
        assert.ok(pageIs(r, FREE_PFN, 0) && pageIs(r, FREE_PFN + 511, 0));
        assert.ok(pageIs(r, FREE_PFN + 512, 0x5a));
        assert.ok(pageIs(r, FREE_PFN + 520, 0));
        assert.ok(pageIs(r, FREE_PFN + 519, 0x5a) && pageIs(r, FREE_PFN + 521, 0x5a));
        const c = r.balloon.counters;
        assert.equal(c.reports, 1);
        assert.equal(c.reportedBytes, 513 * PAGE + 200);
        assert.equal(c.releasedBytes, 513 * PAGE);
        assert.equal(r.balloon.pagesInBalloon, 0, "reported pages are not in the balloon");
      } finally {
        r.close();
      }
    });

    it("without STATS_VQ the reporting queue is queue 2", () => {
      const r = rig({
        freePageReporting: true,
        features: ALL & ~featureBit(VIRTIO_BALLOON_F_STATS_VQ),
        queues: 3,
      });
      try {
        fillPages(r, FREE_PFN, 1, 0x5a);
        r.queues[2].addChain([{ writable: PAGE, at: FREE_PFN * PAGE }]);
        r.driver.kick(2, true);
        assert.ok(r.queues[2].takeUsed() !== null);
        assert.ok(pageIs(r, FREE_PFN, 0));
      } finally {
        r.close();
      }
    });

    it("reported device memory is ignored and counted; reports outside memory are refused by the ring", () => {
      const r = rig({ freePageReporting: true });
      try {
        const q = r.queues[3];
        r.mem.fill(DEVICE_MEMORY, 2 * PAGE, 0x33);
        q.addChain([{ writable: 2 * PAGE, at: DEVICE_MEMORY }]);
        r.driver.kick(3, true);
        assert.ok(q.takeUsed() !== null);
        assert.equal(r.balloon.counters.ignoredDeviceMemory, 2);
        assert.equal(r.mem.readU8(DEVICE_MEMORY + PAGE), 0x33);
        assert.deepEqual(r.ram.calls, []);
        // A buffer outside guest memory never reaches the device: the ring refuses the chain.
        q.addChain([{ writable: PAGE, at: 0x2000_0000 }]);
        r.driver.kick(3, true);
        assert.equal(q.pendingUsed(), 1, "the chain is used (with length 0)");
        assert.equal(r.balloon.counters.reports, 2 - 1);
        assert.ok(r.deviceErrors.length > 0 || r.errors.length > 0);
      } finally {
        r.close();
      }
    });
  });

  it("reset empties the balloon and actual; the target stays and the device works again", () => {
    const r = rig({ targetPages: 64 });
    try {
      send(r, 0, encodeBalloonPfns(range(FREE_PFN, 4)));
      r.transport.write(
        MMIO_CONFIG_OFFSET + BalloonConfigOffset.actual,
        new Uint8Array([4, 0, 0, 0]),
      );
      r.transport.writeU32(0x070, 0); // Status = 0
      assert.equal(r.balloon.pagesInBalloon, 0);
      assert.equal(r.balloon.actualPages, 0);
      assert.equal(r.balloon.targetPages, 64);
      r.queues = r.driver.init({ features: ALL });
      send(r, 0, encodeBalloonPfns(range(FREE_PFN, 4)));
      assert.equal(r.balloon.pagesInBalloon, 4, "pages inflated before the reset count again");
    } finally {
      r.close();
    }
  });

  it("parseBalloonStats reads entries in any order, the last of a tag winning", () => {
    const p = parseBalloonStats(
      encodeBalloonStats([[BalloonStatTag.MEMTOT, 1n], [BalloonStatTag.MEMTOT, 2n], [9, 3n]]),
    );
    assert.deepEqual(p, { stats: { totalMemory: 2, hugetlbFailures: 3 }, ignored: 0, trailing: 0 });
    assert.deepEqual(parseBalloonStats(new Uint8Array(9)), { stats: {}, ignored: 0, trailing: 9 });
    assert.equal(parseBalloonStats(new Uint8Array(65 * 10)).ignored, 1);
  });
});

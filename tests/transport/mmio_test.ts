import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory, GuestRegion } from "../../memory/guest_memory.ts";
import { VIRTIO_F_EVENT_IDX } from "../../queue/split.ts";
import type { DescriptorChain } from "../../queue/chain.ts";
import { QueueError } from "../../queue/error.ts";
import {
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FAILED,
  DEVICE_FEATURES_OK,
  DEVICE_NEEDS_RESET,
  featureBit,
  serveQueue,
  TYPE_CONSOLE,
  TYPE_RNG,
  VIRTIO_F_NOTIFICATION_DATA,
  VIRTIO_F_RING_RESET,
  VIRTIO_F_VERSION_1,
  VIRTIO_INTR_CONFIG,
  VIRTIO_INTR_VRING,
  type VirtioDevice,
  VirtioDeviceBase,
  type VirtioDeviceConfig,
  VirtioDeviceInfo,
  VirtioError,
  VirtioSharedMemoryList,
} from "../../devices/device.ts";
import { RngDevice } from "../../devices/rng.ts";
import {
  MMIO_DEFAULT_VENDOR_ID,
  MMIO_MAGIC_VALUE,
  MmioError,
  type MmioErrorCode,
  MmioRegister as R,
  MmioTransport,
} from "../../transport/mmio.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";
import { DRIVER_OPT_IN_FEATURES } from "../../testing/queue_driver.ts";

const ACK = DEVICE_ACKNOWLEDGE;
const DRV = DEVICE_DRIVER;
const FOK = DEVICE_FEATURES_OK;
const DOK = DEVICE_DRIVER_OK;
const MEM_SIZE = 8 << 20;

/** A device with configuration bytes, two queues and optional shared memory. */
class TestDevice extends VirtioDeviceBase {
  shmSeen: VirtioSharedMemoryList | undefined;
  served = 0;

  constructor() {
    super(
      TYPE_CONSOLE,
      new VirtioDeviceInfo(
        "test",
        featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_EVENT_IDX) | 0b11n,
        [8, 8],
        new Uint8Array([0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17]),
      ),
    );
  }

  protected override onActivate(config: VirtioDeviceConfig): void {
    this.shmSeen = config.shmRegions;
  }

  override writeConfig(offset: number, data: Uint8Array): void {
    if (offset < 4) throw new VirtioError("InvalidInput", "the first word is read-only");
    this.info.writeConfig(offset, data);
  }

  /** Bump a config byte and signal it, as a device whose config changed does. */
  changeConfig(): void {
    this.info.configSpace[0]++;
    this.active?.deviceChangeNotifier.notify();
  }

  processQueue(index: number): void {
    const qc = this.queue(index);
    if (this.active === undefined || qc === undefined) return;
    serveQueue(this.active.memory, qc, (c: DescriptorChain) => {
      this.served++;
      return c.writer.write(new Uint8Array(c.writer.remaining).fill(0x5a));
    }, (e) => this.reportError(e));
  }
}

interface Rig {
  mem: GuestMemory;
  transport: MmioTransport;
  driver: MmioDriver;
  errors: MmioError[];
  interrupts: number[];
}

function rig(
  options: {
    version?: 1 | 2;
    device?: VirtioDevice;
    vendorId?: number;
    shmRegions?: VirtioSharedMemoryList;
  } = {},
): Rig {
  const mem = GuestMemory.create(MEM_SIZE);
  const errors: MmioError[] = [];
  const interrupts: number[] = [];
  const transport = new MmioTransport(options.device ?? new RngDevice(), mem, {
    version: options.version,
    vendorId: options.vendorId,
    shmRegions: options.shmRegions,
    interrupt: (v) => interrupts.push(v),
    onError: (e) => errors.push(e),
  });
  return { mem, transport, driver: new MmioDriver(transport, mem), errors, interrupts };
}

/** Run `fn` and assert it reported exactly these error codes, in order. */
function expectErrors(r: Rig, codes: MmioErrorCode[], fn: () => void): MmioError[] {
  r.errors.length = 0;
  fn();
  assert.deepEqual(r.errors.map((e) => e.code), codes, r.errors.map((e) => e.message).join("; "));
  for (const e of r.errors) assert.ok(e instanceof MmioError);
  const out = [...r.errors];
  r.errors.length = 0;
  return out;
}

const rd = (r: Rig, off: number) => r.transport.readU32(off);
const wr = (r: Rig, off: number, v: number) => r.transport.writeU32(off, v);

/** ACKNOWLEDGE, DRIVER and every offered feature (modern: then FEATURES_OK). */
function negotiate(r: Rig, features?: bigint): void {
  wr(r, R.Status, 0);
  wr(r, R.Status, ACK);
  wr(r, R.Status, ACK | DRV);
  // The tests lay out split rings.
  r.driver.writeDriverFeatures(
    features ?? r.driver.deviceFeatures() & ~DRIVER_OPT_IN_FEATURES,
  );
  if (r.transport.version === 2) wr(r, R.Status, ACK | DRV | FOK);
}

/** Program queue `index` with the modern registers. */
function setQueue(
  r: Rig,
  index: number,
  rings: { desc: number; avail: number; used: number; size?: number },
): void {
  wr(r, R.QueueSel, index);
  wr(r, R.QueueNum, rings.size ?? 8);
  wr(r, R.QueueDescLow, rings.desc % 2 ** 32);
  wr(r, R.QueueDescHigh, Math.floor(rings.desc / 2 ** 32));
  wr(r, R.QueueDriverLow, rings.avail);
  wr(r, R.QueueDriverHigh, 0);
  wr(r, R.QueueDeviceLow, rings.used);
  wr(r, R.QueueDeviceHigh, 0);
  wr(r, R.QueueReady, 1);
}

/** After a failure that needs a reset: NEEDS_RESET, a config interrupt and a new generation. */
function assertNeedsReset(r: Rig, generationBefore: number): void {
  assert.equal(rd(r, R.Status) & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
  assert.equal(rd(r, R.InterruptStatus) & VIRTIO_INTR_CONFIG, VIRTIO_INTR_CONFIG);
  assert.notEqual(rd(r, R.ConfigGeneration), generationBefore);
  assert.ok(r.interrupts.length > 0);
}

describe("MmioTransport identification registers", () => {
  it("reads magic, version, device id and vendor id", () => {
    const r = rig();
    assert.equal(rd(r, R.MagicValue), MMIO_MAGIC_VALUE);
    assert.equal(rd(r, R.MagicValue), 0x74726976);
    assert.equal(rd(r, R.Version), 2);
    assert.equal(rd(r, R.DeviceId), TYPE_RNG);
    assert.equal(rd(r, R.VendorId), MMIO_DEFAULT_VENDOR_ID);
    assert.equal(r.errors.length, 0);
  });

  it("reports version 1 and a custom vendor id when asked", () => {
    const r = rig({ version: 1, vendorId: 0x1af4 });
    assert.equal(rd(r, R.Version), 1);
    assert.equal(rd(r, R.VendorId), 0x1af4);
  });

  it("reads the offered features page by page", () => {
    const r = rig({ device: new TestDevice() });
    wr(r, R.DeviceFeaturesSel, 0);
    assert.equal(rd(r, R.DeviceFeatures), (1 << VIRTIO_F_EVENT_IDX) | 0b11);
    wr(r, R.DeviceFeaturesSel, 1);
    // VIRTIO_F_VERSION_1 (32) from the device; from the transport VIRTIO_F_RING_PACKED (34),
    // VIRTIO_F_NOTIFICATION_DATA (38) and VIRTIO_F_RING_RESET (40).
    assert.equal(rd(r, R.DeviceFeatures), 0b1_0100_0101);
    wr(r, R.DeviceFeaturesSel, 2);
    assert.equal(rd(r, R.DeviceFeatures), 0);
  });

  it("a legacy transport hides VIRTIO_F_VERSION_1", () => {
    const r = rig({ version: 1, device: new TestDevice() });
    wr(r, R.DeviceFeaturesSel, 1);
    assert.equal(rd(r, R.DeviceFeatures), 0);
  });

  it("reads QueueNumMax per queue and 0 for a queue that does not exist", () => {
    const r = rig({ device: new TestDevice() });
    wr(r, R.QueueSel, 1);
    assert.equal(rd(r, R.QueueNumMax), 8);
    wr(r, R.QueueSel, 2);
    assert.equal(rd(r, R.QueueNumMax), 0);
    assert.equal(rd(r, R.QueueReady), 0);
  });
});

describe("MmioTransport register access rules", () => {
  it("refuses control register accesses that are not 32 bits wide (InvalidAccess)", () => {
    const r = rig();
    for (const width of [1, 2, 8]) {
      const data = new Uint8Array(width).fill(0xcc);
      expectErrors(r, ["InvalidAccess"], () => r.transport.read(R.MagicValue, data));
      assert.ok(data.every((b) => b === 0), "an invalid read returns zeros");
    }
    expectErrors(r, ["InvalidAccess"], () => r.transport.write(R.Status, new Uint8Array([ACK])));
    assert.equal(rd(r, R.Status), 0, "the narrow write was ignored");
    expectErrors(r, ["InvalidAccess"], () => r.transport.write(R.QueueSel, new Uint8Array(2)));
  });

  it("refuses unaligned control register accesses (InvalidAccess)", () => {
    const r = rig();
    expectErrors(r, ["InvalidAccess"], () => r.transport.read(R.MagicValue + 2, new Uint8Array(4)));
    expectErrors(r, ["InvalidAccess"], () => wr(r, R.Status + 1, ACK));
    assert.equal(rd(r, R.Status), 0);
  });

  it("reading write-only registers reads zero and reports InvalidRegister", () => {
    const r = rig();
    const writeOnly = [
      R.DeviceFeaturesSel,
      R.DriverFeatures,
      R.DriverFeaturesSel,
      R.QueueSel,
      R.QueueNum,
      R.QueueNotify,
      R.InterruptAck,
      R.QueueDescLow,
      R.QueueDriverHigh,
      R.QueueDeviceLow,
      R.ShmSel,
    ];
    for (const off of writeOnly) {
      expectErrors(r, ["InvalidRegister"], () => assert.equal(rd(r, off), 0));
    }
  });

  it("reading an unknown register reads zero and reports InvalidRegister", () => {
    const r = rig();
    for (const off of [0x018, 0x048, 0x0f8]) {
      expectErrors(r, ["InvalidRegister"], () => assert.equal(rd(r, off), 0));
    }
  });

  it("writing read-only registers is ignored and reported", () => {
    const r = rig();
    for (const off of [R.MagicValue, R.Version, R.DeviceId, R.InterruptStatus, R.QueueNumMax]) {
      expectErrors(r, ["InvalidRegister"], () => wr(r, off, 1));
    }
    assert.equal(rd(r, R.MagicValue), MMIO_MAGIC_VALUE);
  });

  it("a modern transport has no legacy registers and vice versa", () => {
    const modern = rig();
    expectErrors(modern, ["InvalidRegister"], () => wr(modern, R.GuestPageSize, 4096));
    expectErrors(modern, ["InvalidRegister"], () => wr(modern, R.QueuePfn, 1));
    expectErrors(modern, ["InvalidRegister"], () => wr(modern, R.QueueAlign, 4096));
    expectErrors(modern, ["InvalidRegister"], () => rd(modern, R.QueuePfn));
    const legacy = rig({ version: 1 });
    expectErrors(legacy, ["InvalidRegister"], () => wr(legacy, R.QueueReady, 1));
    expectErrors(legacy, ["InvalidRegister"], () => wr(legacy, R.QueueDescLow, 0x1000));
    expectErrors(legacy, ["InvalidRegister"], () => rd(legacy, R.QueueReady));
    expectErrors(legacy, ["InvalidRegister"], () => rd(legacy, R.ConfigGeneration));
    expectErrors(legacy, ["InvalidRegister"], () => rd(legacy, R.ShmLenLow));
  });

  it("QueueReset reads 0 and refuses writes without VIRTIO_F_RING_RESET", () => {
    const r = rig();
    assert.equal(rd(r, R.QueueReset), 0);
    expectErrors(r, ["InvalidQueueAccess"], () => wr(r, R.QueueReset, 1));
  });
});

describe("MmioTransport per-queue reset (VIRTIO_F_RING_RESET)", () => {
  it("resets one queue, which is set up again and served, without resetting the device", () => {
    const device = new TestDevice();
    const r = rig({ device });
    const [q0, q1] = r.driver.init({ features: r.driver.deviceFeatures() & ~(1n << 34n) });
    assert.notEqual(r.driver.features & featureBit(VIRTIO_F_RING_RESET), 0n);
    q0.addChain([{ writable: 4 }]);
    r.driver.kick(0, true);
    assert.equal(q0.takeUsed()?.len, 4);
    // Reset queue 0: it reads back 0 at once and is no longer ready or served.
    wr(r, R.QueueSel, 0);
    expectErrors(r, [], () => wr(r, R.QueueReset, 1));
    assert.equal(rd(r, R.QueueReset), 0);
    assert.equal(rd(r, R.QueueReady), 0);
    // Set it up again elsewhere, with another size, and enable it while DRIVER_OK.
    setQueue(r, 0, { desc: 0x80000, avail: 0x81000, used: 0x82000, size: 4 });
    assert.equal(rd(r, R.QueueReady), 1);
    assert.equal(r.transport.queues[0].size, 4);
    assert.equal(r.transport.queues[0].descTable, 0x80000);
    // Queue 1 kept running; the device was never reset.
    q1.addChain([{ writable: 2 }]);
    r.driver.kick(1, true);
    assert.equal(q1.takeUsed()?.len, 2);
    assert.equal(r.transport.isActive, true);
    assert.deepEqual(r.errors, []);
  });
});

describe("MmioTransport notification data (VIRTIO_F_NOTIFICATION_DATA)", () => {
  it("takes the queue index from the low half and keeps next_off/next_wrap", () => {
    const r = rig();
    const [q] = r.driver.init({ features: r.driver.deviceFeatures() & ~(1n << 34n) });
    assert.notEqual(r.driver.features & featureBit(VIRTIO_F_NOTIFICATION_DATA), 0n);
    q.addChain([{ writable: 8 }]);
    q.addChain([{ writable: 8 }]);
    r.driver.kick(0, true);
    assert.equal(q.takeAllUsed().length, 2);
    assert.equal(r.transport.core.notificationData(0), 2, "next_off: the next avail index");
    // Without the feature, data in the upper half is an invalid notification.
    const plain = rig();
    plain.driver.init();
    expectErrors(plain, ["InvalidNotify"], () => wr(plain, R.QueueNotify, 0x0002_0000));
  });
});

describe("MmioTransport status state machine", () => {
  it("follows ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK and activates the device", () => {
    const r = rig();
    expectErrors(r, [], () => {
      negotiate(r);
      setQueue(r, 0, { desc: 0x10000, avail: 0x11000, used: 0x12000 });
      wr(r, R.Status, ACK | DRV | FOK | DOK);
    });
    assert.equal(rd(r, R.Status), ACK | DRV | FOK | DOK);
    assert.equal(r.transport.isActive, true);
  });

  it("rejects a status write that clears bits (InvalidStatusTransition)", () => {
    const r = rig();
    wr(r, R.Status, ACK);
    wr(r, R.Status, ACK | DRV);
    expectErrors(r, ["InvalidStatusTransition"], () => wr(r, R.Status, ACK));
    expectErrors(r, ["InvalidStatusTransition"], () => wr(r, R.Status, DRV));
    assert.equal(rd(r, R.Status), ACK | DRV);
  });

  it("rejects DRIVER without ACKNOWLEDGE", () => {
    const r = rig();
    expectErrors(r, ["InvalidStatusTransition"], () => wr(r, R.Status, DRV));
    expectErrors(r, ["InvalidStatusTransition"], () => wr(r, R.Status, DRV | FOK));
    assert.equal(rd(r, R.Status), 0);
  });

  it("rejects FEATURES_OK without DRIVER", () => {
    const r = rig();
    wr(r, R.Status, ACK);
    expectErrors(r, ["InvalidStatusTransition"], () => wr(r, R.Status, ACK | FOK));
    assert.equal(rd(r, R.Status), ACK);
  });

  it("rejects DRIVER_OK without FEATURES_OK in modern mode", () => {
    const r = rig();
    wr(r, R.Status, ACK);
    wr(r, R.Status, ACK | DRV);
    r.driver.writeDriverFeatures(featureBit(VIRTIO_F_VERSION_1));
    setQueue(r, 0, { desc: 0x10000, avail: 0x11000, used: 0x12000 });
    expectErrors(r, ["InvalidStatusTransition"], () => wr(r, R.Status, ACK | DRV | DOK));
    assert.equal(rd(r, R.Status), ACK | DRV);
    assert.equal(r.transport.isActive, false);
  });

  it("accepts DRIVER_OK without FEATURES_OK in legacy mode", () => {
    const r = rig({ version: 1 });
    expectErrors(r, [], () => r.driver.init());
    assert.equal(rd(r, R.Status), ACK | DRV | DOK);
    assert.equal(r.transport.isActive, true);
  });

  it("rejects unknown status bits", () => {
    const r = rig();
    wr(r, R.Status, ACK);
    expectErrors(r, ["InvalidStatusTransition"], () => wr(r, R.Status, ACK | 0x10));
    expectErrors(r, ["InvalidStatusTransition"], () => wr(r, R.Status, ACK | 0x20));
    assert.equal(rd(r, R.Status), ACK);
  });

  it("accepts several steps in one write when each prerequisite is included", () => {
    const r = rig();
    wr(r, R.Status, ACK | DRV);
    assert.equal(rd(r, R.Status), ACK | DRV);
  });
});

describe("MmioTransport feature negotiation", () => {
  it("refuses FEATURES_OK when the driver accepted features the device did not offer", () => {
    const r = rig();
    wr(r, R.Status, ACK);
    wr(r, R.Status, ACK | DRV);
    r.driver.writeDriverFeatures(featureBit(VIRTIO_F_VERSION_1) | featureBit(5));
    const [err] = expectErrors(r, ["FeaturesRejected"], () => wr(r, R.Status, ACK | DRV | FOK));
    assert.equal(err.offset, R.Status);
    assert.equal(rd(r, R.Status) & FOK, 0, "the driver re-reads status and sees FEATURES_OK clear");
    assert.equal(rd(r, R.Status), ACK | DRV);
    // Nothing reaches the device before FEATURES_OK is accepted.
    assert.equal(r.transport.device.ackedFeatures(), 0n);
  });

  it("refuses FEATURES_OK when the driver set bits in feature pages past 63", () => {
    const r = rig();
    wr(r, R.Status, ACK);
    wr(r, R.Status, ACK | DRV);
    r.driver.writeDriverFeatures(featureBit(VIRTIO_F_VERSION_1));
    wr(r, R.DriverFeaturesSel, 2);
    wr(r, R.DriverFeatures, 1);
    expectErrors(r, ["FeaturesRejected"], () => wr(r, R.Status, ACK | DRV | FOK));
    assert.equal(rd(r, R.Status) & FOK, 0);
  });

  it("refuses FEATURES_OK when VIRTIO_F_VERSION_1 is not accepted in modern mode", () => {
    const r = rig();
    r.errors.length = 0;
    assert.throws(() => r.driver.init({ features: featureBit(VIRTIO_F_EVENT_IDX) }), /refused/);
    assert.deepEqual(r.errors.map((e) => e.code), ["FeaturesRejected"]);
    assert.match(r.errors[0].message, /VERSION_1/);
    assert.equal(rd(r, R.Status) & FOK, 0);
  });

  it("accepts a driver that re-negotiates after a refusal", () => {
    const r = rig();
    wr(r, R.Status, ACK);
    wr(r, R.Status, ACK | DRV);
    r.driver.writeDriverFeatures(0n);
    expectErrors(r, ["FeaturesRejected"], () => wr(r, R.Status, ACK | DRV | FOK));
    r.driver.writeDriverFeatures(featureBit(VIRTIO_F_VERSION_1));
    expectErrors(r, [], () => wr(r, R.Status, ACK | DRV | FOK));
    assert.equal(rd(r, R.Status), ACK | DRV | FOK);
  });

  it("ignores DriverFeatures written after FEATURES_OK (FeaturesLocked)", () => {
    const r = rig({ device: new TestDevice() });
    negotiate(r, featureBit(VIRTIO_F_VERSION_1) | 1n);
    assert.equal(r.transport.device.ackedFeatures(), featureBit(VIRTIO_F_VERSION_1) | 1n);
    wr(r, R.DriverFeaturesSel, 0);
    expectErrors(r, ["FeaturesLocked"], () => wr(r, R.DriverFeatures, 0b11));
    assert.equal(r.transport.device.ackedFeatures(), featureBit(VIRTIO_F_VERSION_1) | 1n);
  });

  it("ignores DriverFeatures written before DRIVER (FeaturesLocked)", () => {
    const r = rig({ device: new TestDevice() });
    wr(r, R.Status, ACK);
    expectErrors(r, ["FeaturesLocked"], () => wr(r, R.DriverFeatures, 1));
    assert.equal(r.transport.device.ackedFeatures(), 0n);
  });

  it("hands the negotiated features to the device and its queues", () => {
    const r = rig();
    r.driver.init();
    const acked = r.transport.device.ackedFeatures();
    assert.equal(acked & featureBit(VIRTIO_F_VERSION_1), featureBit(VIRTIO_F_VERSION_1));
    assert.equal(r.transport.queues[0].eventIdx, true);
    assert.equal(r.transport.queues[0].indirect, true);
  });

  it("a legacy driver cannot acknowledge VIRTIO_F_VERSION_1", () => {
    const r = rig({ version: 1, device: new TestDevice() });
    wr(r, R.Status, ACK);
    wr(r, R.Status, ACK | DRV);
    r.driver.writeDriverFeatures(featureBit(VIRTIO_F_VERSION_1) | 1n);
    // A legacy driver has no FEATURES_OK: its features take effect at DRIVER_OK.
    wr(r, R.Status, ACK | DRV | DOK);
    assert.equal(r.transport.device.ackedFeatures(), 1n);
  });
});

describe("MmioTransport queue registers", () => {
  it("records the queue layout the driver writes", () => {
    const r = rig({ device: new TestDevice() });
    negotiate(r);
    setQueue(r, 1, { desc: 0x1_0002_0000, avail: 0x21000, used: 0x22000, size: 4 });
    const q = r.transport.queues[1];
    assert.equal(q.size, 4);
    assert.equal(q.descTable, 0x1_0002_0000);
    assert.equal(q.availRing, 0x21000);
    assert.equal(q.usedRing, 0x22000);
    assert.equal(q.ready, true);
    assert.equal(rd(r, R.QueueReady), 1);
  });

  it("refuses queue registers while the queue is ready (InvalidQueueAccess)", () => {
    const r = rig();
    negotiate(r);
    setQueue(r, 0, { desc: 0x10000, avail: 0x11000, used: 0x12000 });
    for (const off of [R.QueueNum, R.QueueDescLow, R.QueueDriverLow, R.QueueDeviceHigh]) {
      expectErrors(r, ["InvalidQueueAccess"], () => wr(r, off, 0x40000));
    }
    const q = r.transport.queues[0];
    assert.equal(q.size, 8);
    assert.equal(q.descTable, 0x10000);
    // Clearing QueueReady before DRIVER_OK makes the queue writable again.
    wr(r, R.QueueReady, 0);
    expectErrors(r, [], () => wr(r, R.QueueNum, 4));
    assert.equal(q.size, 4);
  });

  it("refuses queue registers after DRIVER_OK (InvalidQueueAccess)", () => {
    const r = rig({ device: new TestDevice() });
    negotiate(r);
    setQueue(r, 0, { desc: 0x10000, avail: 0x11000, used: 0x12000 });
    setQueue(r, 1, { desc: 0x20000, avail: 0x21000, used: 0x22000 });
    wr(r, R.Status, ACK | DRV | FOK | DOK);
    assert.equal(r.transport.isActive, true);
    wr(r, R.QueueSel, 0);
    expectErrors(r, ["InvalidQueueAccess"], () => wr(r, R.QueueReady, 0));
    expectErrors(r, ["InvalidQueueAccess"], () => wr(r, R.QueueDescLow, 0x30000));
    assert.equal(r.transport.queues[0].ready, true);
    assert.equal(r.transport.queues[0].descTable, 0x10000);
  });

  it("refuses QueueReady set after DRIVER_OK for a queue left out", () => {
    const r = rig({ device: new TestDevice() });
    negotiate(r);
    setQueue(r, 0, { desc: 0x10000, avail: 0x11000, used: 0x12000 });
    setQueue(r, 1, { desc: 0x20000, avail: 0x21000, used: 0x22000 });
    wr(r, R.QueueSel, 1);
    wr(r, R.QueueReady, 0);
    wr(r, R.Status, ACK | DRV | FOK | DOK);
    // TestDevice needs both queues: activation failed.
    assert.equal(rd(r, R.Status) & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    wr(r, R.QueueSel, 1);
    expectErrors(r, ["InvalidQueueAccess"], () => wr(r, R.QueueReady, 1));
    assert.equal(r.transport.queues[1].ready, false);
  });

  it("refuses queue registers for a queue that does not exist", () => {
    const r = rig();
    negotiate(r);
    wr(r, R.QueueSel, 5);
    expectErrors(r, ["InvalidQueueAccess"], () => wr(r, R.QueueNum, 8));
    expectErrors(r, ["InvalidQueueAccess"], () => wr(r, R.QueueReady, 1));
    expectErrors(r, ["InvalidQueueAccess"], () => wr(r, R.QueueDescLow, 0));
  });

  it("refuses QueueNotify for a nonexistent queue (InvalidNotify)", () => {
    const r = rig();
    r.driver.init();
    expectErrors(r, ["InvalidNotify"], () => wr(r, R.QueueNotify, 1));
    expectErrors(r, ["InvalidNotify"], () => wr(r, R.QueueNotify, 0x10000));
    expectErrors(r, [], () => wr(r, R.QueueNotify, 0));
  });

  it("ignores QueueNotify before DRIVER_OK", () => {
    const device = new TestDevice();
    const r = rig({ device });
    negotiate(r);
    setQueue(r, 0, { desc: 0x10000, avail: 0x11000, used: 0x12000 });
    expectErrors(r, [], () => wr(r, R.QueueNotify, 0));
    assert.equal(device.served, 0);
  });
});

describe("MmioTransport activation failure and device errors", () => {
  it("a ring outside guest memory fails activation: NEEDS_RESET and a config interrupt", () => {
    const r = rig();
    negotiate(r);
    setQueue(r, 0, { desc: MEM_SIZE + 0x1000, avail: 0x11000, used: 0x12000 });
    const gen = rd(r, R.ConfigGeneration);
    const [err] = expectErrors(
      r,
      ["ActivationFailed"],
      () => wr(r, R.Status, ACK | DRV | FOK | DOK),
    );
    assert.match(err.message, /InvalidRing|outside/);
    assertNeedsReset(r, gen);
    assert.equal(rd(r, R.InterruptStatus), VIRTIO_INTR_CONFIG);
    assert.equal(r.transport.isActive, false);
    assert.equal(rd(r, R.Status) & DOK, DOK);
  });

  it("a bad queue size fails activation", () => {
    const r = rig();
    negotiate(r);
    setQueue(r, 0, { desc: 0x10000, avail: 0x11000, used: 0x12000, size: 3 });
    const gen = rd(r, R.ConfigGeneration);
    expectErrors(r, ["ActivationFailed"], () => wr(r, R.Status, ACK | DRV | FOK | DOK));
    assertNeedsReset(r, gen);
  });

  it("a queue larger than QueueNumMax fails activation", () => {
    const r = rig();
    negotiate(r);
    setQueue(r, 0, { desc: 0x10000, avail: 0x11000, used: 0x12000, size: 1024 });
    expectErrors(r, ["ActivationFailed"], () => wr(r, R.Status, ACK | DRV | FOK | DOK));
    assert.equal(rd(r, R.Status) & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
  });

  it("a missing required queue fails activation", () => {
    const r = rig();
    negotiate(r);
    expectErrors(r, ["ActivationFailed"], () => wr(r, R.Status, ACK | DRV | FOK | DOK));
    assert.equal(rd(r, R.Status) & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
  });

  it("a fatal queue error while serving sets NEEDS_RESET and raises a config interrupt", () => {
    const r = rig();
    const [q] = r.driver.init();
    q.addChain([{ writable: 16 }]);
    r.driver.kick(0);
    assert.equal(q.takeUsed()!.len, 16);
    r.driver.ackInterrupt();
    const gen = rd(r, R.ConfigGeneration);
    q.setAvailIdx(q.availIdx + 1000);
    const errs = expectErrors(r, ["DeviceError"], () => wr(r, R.QueueNotify, 0));
    assert.ok(errs[0].cause instanceof VirtioError);
    assert.equal(errs[0].cause.needsReset, true);
    assert.ok(errs[0].cause.cause instanceof QueueError);
    assert.equal(errs[0].cause.cause.code, "AvailIdxJump");
    assertNeedsReset(r, gen);
    // The device no longer serves until the driver resets it.
    q.setAvailIdx(q.availIdx - 1000);
    q.addChain([{ writable: 16 }]);
    expectErrors(r, [], () => wr(r, R.QueueNotify, 0));
    assert.equal(q.pendingUsed(), 0);
  });

  it("a malformed chain is reported without NEEDS_RESET and the device keeps serving", () => {
    const r = rig();
    const [q] = r.driver.init();
    q.writeDescriptor(q.size - 1, { addr: MEM_SIZE, len: 16, flags: 2, next: 0 });
    q.publish(q.size - 1);
    const head = q.addChain([{ writable: 8 }]);
    const errs = expectErrors(r, ["DeviceError"], () => r.driver.kick(0, true));
    assert.equal((errs[0].cause as VirtioError).needsReset, false);
    assert.deepEqual(q.takeAllUsed().map((u) => [u.id, u.len]), [[q.size - 1, 0], [head, 8]]);
    assert.equal(rd(r, R.Status) & DEVICE_NEEDS_RESET, 0);
  });
});

describe("MmioTransport reset", () => {
  it("writing 0 to Status resets device and queues; the device is reusable", () => {
    const r = rig();
    const [q] = r.driver.init();
    q.addChain([{ writable: 32 }]);
    r.driver.kick(0);
    assert.equal(q.takeUsed()!.len, 32);
    assert.notEqual(rd(r, R.InterruptStatus), 0);
    wr(r, R.Status, 0);
    assert.equal(rd(r, R.Status), 0);
    assert.equal(rd(r, R.InterruptStatus), 0);
    assert.equal(r.transport.isActive, false);
    assert.equal(r.transport.device.ackedFeatures(), 0n);
    const s = r.transport.queues[0].state();
    assert.equal(s.ready, false);
    assert.equal(s.descTable, 0);
    assert.equal(s.nextAvail, 0);
    assert.equal(s.nextUsed, 0);
    // Re-initialise and serve again.
    const [q2] = r.driver.init();
    assert.deepEqual(r.errors, []);
    q2.addChain([{ writable: 64 }]);
    r.driver.kick(0);
    const used = q2.takeUsed()!;
    assert.equal(used.len, 64);
    assert.ok(new Set(used.written).size > 1);
  });

  it("a reset after NEEDS_RESET makes the device usable again", () => {
    const r = rig();
    const [q] = r.driver.init();
    q.setAvailIdx(500);
    wr(r, R.QueueNotify, 0);
    assert.equal(rd(r, R.Status) & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    const [q2] = r.driver.init();
    assert.equal(rd(r, R.Status), ACK | DRV | FOK | DOK);
    q2.addChain([{ writable: 8 }]);
    r.driver.kick(0);
    assert.equal(q2.takeUsed()!.len, 8);
  });

  it("FAILED stops serving until reset", () => {
    const r = rig();
    const [q] = r.driver.init();
    wr(r, R.Status, ACK | DRV | FOK | DOK | DEVICE_FAILED);
    assert.equal(rd(r, R.Status) & DEVICE_FAILED, DEVICE_FAILED);
    assert.equal(r.transport.isActive, false);
    q.addChain([{ writable: 8 }]);
    wr(r, R.QueueNotify, 0);
    assert.equal(q.pendingUsed(), 0);
    // Nothing but a reset is accepted now.
    expectErrors(r, ["InvalidStatusTransition"], () => {
      wr(r, R.Status, ACK | DRV | FOK | DOK | DEVICE_FAILED);
    });
    const [q2] = r.driver.init();
    q2.addChain([{ writable: 8 }]);
    r.driver.kick(0);
    assert.equal(q2.takeUsed()!.len, 8);
  });

  it("FAILED can be set before DRIVER_OK", () => {
    const r = rig();
    wr(r, R.Status, ACK);
    wr(r, R.Status, ACK | DEVICE_FAILED);
    assert.equal(rd(r, R.Status), ACK | DEVICE_FAILED);
    expectErrors(r, ["InvalidStatusTransition"], () => wr(r, R.Status, ACK | DRV | DEVICE_FAILED));
  });
});

describe("MmioTransport interrupts and configuration", () => {
  it("used buffers raise VIRTIO_INTR_VRING; InterruptAck clears it", () => {
    const r = rig();
    const [q] = r.driver.init();
    assert.equal(rd(r, R.InterruptStatus), 0);
    q.addChain([{ writable: 8 }]);
    r.driver.kick(0);
    assert.equal(r.interrupts.length, 1);
    assert.equal(rd(r, R.InterruptStatus), VIRTIO_INTR_VRING);
    wr(r, R.InterruptAck, VIRTIO_INTR_CONFIG);
    assert.equal(rd(r, R.InterruptStatus), VIRTIO_INTR_VRING, "acking another bit changes nothing");
    assert.equal(r.driver.ackInterrupt(), VIRTIO_INTR_VRING);
    assert.equal(rd(r, R.InterruptStatus), 0);
  });

  it("a config change raises VIRTIO_INTR_CONFIG and bumps ConfigGeneration", () => {
    const device = new TestDevice();
    const r = rig({ device });
    r.driver.init();
    const gen = rd(r, R.ConfigGeneration);
    device.changeConfig();
    assert.equal(rd(r, R.ConfigGeneration), (gen + 1) >>> 0);
    assert.equal(rd(r, R.InterruptStatus), VIRTIO_INTR_CONFIG);
    assert.equal(r.driver.readConfig(0, 1)[0], 0x11);
    r.transport.notifyConfigChange();
    assert.equal(rd(r, R.ConfigGeneration), (gen + 2) >>> 0);
    assert.equal(r.transport.configGeneration, (gen + 2) >>> 0);
  });

  it("ConfigGeneration is stable while nothing changes", () => {
    const r = rig({ device: new TestDevice() });
    const gen = rd(r, R.ConfigGeneration);
    r.driver.init();
    r.driver.readConfig(0, 8);
    assert.equal(rd(r, R.ConfigGeneration), gen);
  });

  it("reads the configuration space through offset 0x100 at any width", () => {
    const r = rig({ device: new TestDevice() });
    assert.deepEqual(r.driver.readConfig(0, 8), new Uint8Array([16, 17, 18, 19, 20, 21, 22, 23]));
    assert.equal(rd(r, 0x104), 0x17161514);
    const two = new Uint8Array(2);
    r.transport.read(0x103, two);
    assert.deepEqual(two, new Uint8Array([0x13, 0x14]));
  });

  it("a configuration read past the space reads zero and reports ConfigAccess", () => {
    const r = rig({ device: new TestDevice() });
    const out = new Uint8Array(4).fill(0xff);
    expectErrors(r, ["ConfigAccess"], () => r.transport.read(0x106, out));
    assert.deepEqual(out, new Uint8Array(4));
    const rng = rig();
    expectErrors(rng, ["ConfigAccess"], () => assert.equal(rd(rng, 0x100), 0));
  });

  it("configuration writes reach the device, which may refuse them", () => {
    const r = rig({ device: new TestDevice() });
    expectErrors(r, [], () => r.transport.write(0x105, new Uint8Array([0xaa, 0xbb])));
    assert.deepEqual(r.driver.readConfig(4, 4), new Uint8Array([0x14, 0xaa, 0xbb, 0x17]));
    expectErrors(r, ["ConfigAccess"], () => r.transport.write(0x100, new Uint8Array([1])));
    assert.equal(r.driver.readConfig(0, 1)[0], 0x10);
  });
});

describe("MmioTransport shared memory registers", () => {
  it("read -1 (0xffffffff halves) for a device without shared memory", () => {
    for (const device of [new RngDevice(), new TestDevice()]) {
      const r = rig({ device });
      wr(r, R.ShmSel, 0);
      for (const off of [R.ShmLenLow, R.ShmLenHigh, R.ShmBaseLow, R.ShmBaseHigh]) {
        assert.equal(rd(r, off), 0xffffffff);
      }
    }
  });

  it("report the length and guest base of the selected region", () => {
    const base = 0x4_0000_2000;
    const shm = new VirtioSharedMemoryList({
      hostAddr: 0n,
      guestAddr: base,
      len: 0x3000,
      kvmUserspaceMemoryRegionSlot: 1,
      regionList: [{ offset: 0, len: 0x1000 }, { offset: 0x2000, len: 0x1000 }],
      mmapRegion: new GuestRegion({ base, buffer: new ArrayBuffer(0x3000) }),
    });
    const r = rig({ shmRegions: shm });
    wr(r, R.ShmSel, 0);
    assert.equal(rd(r, R.ShmLenLow), 0x1000);
    assert.equal(rd(r, R.ShmLenHigh), 0);
    assert.equal(rd(r, R.ShmBaseLow), 0x2000);
    assert.equal(rd(r, R.ShmBaseHigh), 4);
    wr(r, R.ShmSel, 1);
    assert.equal(rd(r, R.ShmLenLow), 0x1000);
    assert.equal(rd(r, R.ShmLenHigh), 0);
    assert.equal(rd(r, R.ShmBaseLow), 0x4000);
    assert.equal(rd(r, R.ShmBaseHigh), 4);
    wr(r, R.ShmSel, 2);
    assert.equal(rd(r, R.ShmLenLow), 0xffffffff);
    assert.equal(rd(r, R.ShmBaseHigh), 0xffffffff);
    assert.equal(r.errors.length, 0);
  });

  it("hand the window to the device on activation", () => {
    const shm = new VirtioSharedMemoryList({
      hostAddr: 0n,
      guestAddr: 0x8000_0000,
      len: 0x1000,
      kvmUserspaceMemoryRegionSlot: 1,
      regionList: [{ offset: 0, len: 0x1000 }],
      mmapRegion: new GuestRegion({ base: 0x8000_0000, buffer: new ArrayBuffer(0x1000) }),
    });
    const device = new TestDevice();
    const r = rig({ device, shmRegions: shm });
    r.driver.init();
    assert.equal(device.shmSeen, shm);
  });
});

describe("MmioTransport legacy layout", () => {
  it("GuestPageSize, QueueAlign and QueuePFN place the rings", () => {
    const r = rig({ version: 1, device: new TestDevice() });
    wr(r, R.Status, ACK);
    wr(r, R.Status, ACK | DRV);
    wr(r, R.GuestPageSize, 0x2000);
    wr(r, R.QueueSel, 0);
    wr(r, R.QueueNum, 8);
    wr(r, R.QueueAlign, 0x1000);
    wr(r, R.QueuePfn, 0x10);
    assert.equal(rd(r, R.QueuePfn), 0x10);
    const q = r.transport.queues[0];
    assert.equal(q.ready, true);
    assert.equal(q.descTable, 0x20000);
    assert.equal(q.availRing, 0x20000 + 16 * 8);
    assert.equal(q.usedRing, 0x21000);
    wr(r, R.QueueSel, 1);
    wr(r, R.QueueNum, 4);
    wr(r, R.QueueAlign, 64);
    wr(r, R.QueuePfn, 0x20);
    const q1 = r.transport.queues[1];
    assert.equal(q1.descTable, 0x40000);
    assert.equal(q1.availRing, 0x40040);
    assert.equal(q1.usedRing, 0x40080);
    assert.equal(r.errors.length, 0);
  });

  it("QueuePFN 0 stops the queue", () => {
    const r = rig({ version: 1 });
    wr(r, R.QueueSel, 0);
    wr(r, R.QueuePfn, 0x10);
    assert.equal(r.transport.queues[0].ready, true);
    wr(r, R.QueuePfn, 0);
    assert.equal(r.transport.queues[0].ready, false);
    assert.equal(rd(r, R.QueuePfn), 0);
  });

  it("refuses a GuestPageSize or QueueAlign that is not a power of two", () => {
    const r = rig({ version: 1 });
    expectErrors(r, ["InvalidQueueAccess"], () => wr(r, R.GuestPageSize, 3000));
    expectErrors(r, ["InvalidQueueAccess"], () => wr(r, R.GuestPageSize, 0));
    expectErrors(r, ["InvalidQueueAccess"], () => wr(r, R.QueueAlign, 100));
  });

  it("refuses QueuePFN after DRIVER_OK", () => {
    const r = rig({ version: 1 });
    r.driver.init();
    const desc = r.transport.queues[0].descTable;
    expectErrors(r, ["InvalidQueueAccess"], () => wr(r, R.QueuePfn, 0x100));
    assert.equal(r.transport.queues[0].descTable, desc);
  });

  it("a legacy driver serves through the page-aligned layout", () => {
    const r = rig({ version: 1 });
    const [q] = r.driver.init();
    const tq = r.transport.queues[0];
    assert.equal(tq.descTable, q.descTable);
    assert.equal(tq.usedRing % 4096, 0);
    assert.equal(tq.usedRing, q.usedRing);
    q.addChain([{ writable: 100 }]);
    r.driver.kick(0);
    assert.equal(q.takeUsed()!.len, 100);
  });
});

/**
 * A guest driver for virtio-mmio devices, in TypeScript: the initialisation
 * sequence of virtio 1.2 §3.1.1 and §4.2.3 (or the legacy §4.2.4 one) over
 * an {@linkcode MmioTransport}, with {@linkcode DriverQueue}s in guest memory.
 * It is the test harness for devices behind the MMIO transport.
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import { DRIVER_OPT_IN_FEATURES, DriverQueue } from "./queue_driver.ts";
import { PackedDriverQueue } from "./packed_driver.ts";
import { VIRTIO_F_EVENT_IDX } from "../queue/split.ts";
import {
  DEVICE_ACKNOWLEDGE,
  DEVICE_DRIVER,
  DEVICE_DRIVER_OK,
  DEVICE_FEATURES_OK,
  featureBit,
  VIRTIO_F_NOTIFICATION_DATA,
  VIRTIO_F_RING_PACKED,
  VIRTIO_LEGACY_PAGE_SIZE,
} from "../devices/device.ts";
import {
  MMIO_CONFIG_OFFSET,
  MMIO_MAGIC_VALUE,
  MmioRegister,
  type MmioTransport,
} from "../transport/mmio.ts";

/** Options of {@linkcode MmioDriver.init}. */
export interface MmioDriverInitOptions {
  /** Features the driver understands; it accepts those the device also offers (default: all). */
  features?: bigint;
  /** Size of each queue (default: the device maximum, at most 256). */
  queueSize?: number;
  /** Guest address of the first queue's rings (default 0x10000); queues follow every 64 KiB. */
  ringBase?: number;
  /** First guest address for buffers (default: after the rings). */
  bufferBase?: number;
  /** How many queues to set up (default: all the device has). */
  queues?: number;
}

/** The driver side of one virtio-mmio device. */
export class MmioDriver {
  /** The register file. */
  readonly transport: MmioTransport;
  /** Guest memory. */
  readonly memory: GuestMemory;
  /** The queues set up by `init`. */
  queues: DriverQueue[] = [];
  /** The queues set up by `initPacked`. */
  packedQueues: PackedDriverQueue[] = [];
  /** Features negotiated by `init`. */
  features = 0n;

  /**
   * Create it.
   * @param transport The device's register file.
   * @param memory Guest memory the queues go in.
   */
  constructor(transport: MmioTransport, memory: GuestMemory) {
    this.transport = transport;
    this.memory = memory;
  }

  /** Read a control register. */
  #r(offset: number): number {
    return this.transport.readU32(offset);
  }

  /** Write a control register. */
  #w(offset: number, value: number): void {
    this.transport.writeU32(offset, value);
  }

  /** The device's offered features (both pages). */
  deviceFeatures(): bigint {
    let f = 0n;
    for (let page = 0; page < 2; page++) {
      this.#w(MmioRegister.DeviceFeaturesSel, page);
      f |= BigInt(this.#r(MmioRegister.DeviceFeatures)) << BigInt(32 * page);
    }
    return f;
  }

  /**
   * Write both pages of driver features.
   * @param features The bits.
   */
  writeDriverFeatures(features: bigint): void {
    for (let page = 0; page < 2; page++) {
      this.#w(MmioRegister.DriverFeaturesSel, page);
      this.#w(MmioRegister.DriverFeatures, Number((features >> BigInt(32 * page)) & 0xffffffffn));
    }
  }

  /**
   * Initialise the device: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK
   * (modern), queue setup, DRIVER_OK.
   * @param options Features and queue placement.
   * @returns The driver queues.
   * @throws {Error} When the device is not a virtio-mmio device or refuses the features.
   */
  init(options: MmioDriverInitOptions = {}): DriverQueue[] {
    const R = MmioRegister;
    if (this.#r(R.MagicValue) !== MMIO_MAGIC_VALUE) throw new Error("Bad magic value");
    const legacy = this.#r(R.Version) === 1;
    if (this.#r(R.DeviceId) === 0) throw new Error("No device behind this window");
    this.#w(R.Status, 0);
    this.#w(R.Status, DEVICE_ACKNOWLEDGE);
    this.#w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
    // The rings laid out here are split rings (see `initPacked` for the packed layout); the
    // other opt-in transport features only when asked for.
    const wanted = (options.features ?? ~DRIVER_OPT_IN_FEATURES & 0xffffffffffffffffn) &
      ~featureBit(VIRTIO_F_RING_PACKED);
    this.features = this.deviceFeatures() & wanted;
    this.packedQueues = [];
    this.writeDriverFeatures(this.features);
    let status = DEVICE_ACKNOWLEDGE | DEVICE_DRIVER;
    if (!legacy) {
      status |= DEVICE_FEATURES_OK;
      this.#w(R.Status, status);
      if ((this.#r(R.Status) & DEVICE_FEATURES_OK) === 0) {
        throw new Error("Device refused the features");
      }
    } else {
      this.#w(R.GuestPageSize, VIRTIO_LEGACY_PAGE_SIZE);
    }
    const eventIdx = (this.features & featureBit(VIRTIO_F_EVENT_IDX)) !== 0n;
    const ringBase = options.ringBase ?? 0x10000;
    const count = options.queues ?? this.transport.queues.length;
    const queues: DriverQueue[] = [];
    let bufferBase = options.bufferBase ?? ringBase + 0x10000 * count;
    const bufferSpan = 0x100000;
    for (let i = 0; i < count; i++) {
      this.#w(R.QueueSel, i);
      const max = this.#r(R.QueueNumMax);
      if (max === 0) throw new Error(`Queue ${i} is not available`);
      const size = Math.min(options.queueSize ?? 256, max);
      const base = ringBase + 0x10000 * i;
      const dq = new DriverQueue(this.memory, {
        size,
        ringBase: base,
        usedAlign: legacy ? VIRTIO_LEGACY_PAGE_SIZE : 4,
        bufferBase,
        bufferEnd: Math.min(bufferBase + bufferSpan, this.memory.findRegion(bufferBase)!.end),
        eventIdx,
      });
      bufferBase += bufferSpan;
      this.#w(R.QueueNum, size);
      if (legacy) {
        this.#w(R.QueueAlign, VIRTIO_LEGACY_PAGE_SIZE);
        this.#w(R.QueuePfn, base / VIRTIO_LEGACY_PAGE_SIZE);
      } else {
        this.#w(R.QueueDescLow, dq.descTable);
        this.#w(R.QueueDescHigh, 0);
        this.#w(R.QueueDriverLow, dq.availRing);
        this.#w(R.QueueDriverHigh, 0);
        this.#w(R.QueueDeviceLow, dq.usedRing);
        this.#w(R.QueueDeviceHigh, 0);
        this.#w(R.QueueReady, 1);
      }
      queues.push(dq);
    }
    status |= DEVICE_DRIVER_OK;
    this.#w(R.Status, status);
    this.queues = queues;
    return queues;
  }

  /**
   * Initialise the device with packed virtqueues (virtio 1.2 §2.8): as `init`, accepting
   * VIRTIO_F_RING_PACKED, with {@linkcode PackedDriverQueue}s.
   * @param options Features and queue placement (`queueSize` need not be a power of two).
   * @returns The driver queues.
   * @throws {Error} When the device does not offer the packed ring or refuses the features.
   */
  initPacked(options: MmioDriverInitOptions = {}): PackedDriverQueue[] {
    const R = MmioRegister;
    if (this.#r(R.MagicValue) !== MMIO_MAGIC_VALUE || this.#r(R.Version) !== 2) {
      throw new Error("The packed ring needs a modern virtio-mmio device");
    }
    this.#w(R.Status, 0);
    this.#w(R.Status, DEVICE_ACKNOWLEDGE);
    this.#w(R.Status, DEVICE_ACKNOWLEDGE | DEVICE_DRIVER);
    const offered = this.deviceFeatures();
    if ((offered & featureBit(VIRTIO_F_RING_PACKED)) === 0n) {
      throw new Error("The device does not offer VIRTIO_F_RING_PACKED");
    }
    this.features = offered & (options.features ?? ~DRIVER_OPT_IN_FEATURES & 0xffffffffffffffffn);
    this.features |= featureBit(VIRTIO_F_RING_PACKED);
    this.writeDriverFeatures(this.features);
    const status = DEVICE_ACKNOWLEDGE | DEVICE_DRIVER | DEVICE_FEATURES_OK;
    this.#w(R.Status, status);
    if ((this.#r(R.Status) & DEVICE_FEATURES_OK) === 0) {
      throw new Error("Device refused the features");
    }
    const eventIdx = (this.features & featureBit(VIRTIO_F_EVENT_IDX)) !== 0n;
    const ringBase = options.ringBase ?? 0x10000;
    const count = options.queues ?? this.transport.queues.length;
    let bufferBase = options.bufferBase ?? ringBase + 0x10000 * count;
    const queues: PackedDriverQueue[] = [];
    for (let i = 0; i < count; i++) {
      this.#w(R.QueueSel, i);
      const max = this.#r(R.QueueNumMax);
      if (max === 0) throw new Error(`Queue ${i} is not available`);
      const size = Math.min(options.queueSize ?? 256, max);
      const dq = new PackedDriverQueue(this.memory, {
        size,
        ringBase: ringBase + 0x10000 * i,
        bufferBase,
        bufferEnd: Math.min(bufferBase + 0x100000, this.memory.findRegion(bufferBase)!.end),
        eventIdx,
      });
      bufferBase += 0x100000;
      this.#w(R.QueueNum, size);
      this.#w(R.QueueDescLow, dq.descTable);
      this.#w(R.QueueDescHigh, 0);
      this.#w(R.QueueDriverLow, dq.availRing);
      this.#w(R.QueueDriverHigh, 0);
      this.#w(R.QueueDeviceLow, dq.usedRing);
      this.#w(R.QueueDeviceHigh, 0);
      this.#w(R.QueueReady, 1);
      queues.push(dq);
    }
    this.#w(R.Status, status | DEVICE_DRIVER_OK);
    this.queues = [];
    this.packedQueues = queues;
    return queues;
  }

  /**
   * Notify the device of new buffers on queue `index` if it asked for it.
   * @param index Queue index.
   * @param force Notify even when the device suppressed notifications.
   * @returns Whether a notification was written.
   */
  kick(index: number, force = false): boolean {
    const packed = this.packedQueues[index];
    const needed = (packed ?? this.queues[index]).kickNeeded();
    if (!needed && !force) return false;
    let value = index;
    if ((this.features & featureBit(VIRTIO_F_NOTIFICATION_DATA)) !== 0n) {
      // virtio 1.2 §2.9: next_off in bits 16–30, next_wrap in bit 31.
      const at = packed !== undefined ? packed.availPosition : this.queues[index].availIdx;
      value = (index | ((at & 0xffff) << 16)) >>> 0;
    }
    this.#w(MmioRegister.QueueNotify, value);
    return true;
  }

  /**
   * Read and acknowledge the interrupt status, as an interrupt handler does.
   * @returns The status bits that were set.
   */
  ackInterrupt(): number {
    const bits = this.#r(MmioRegister.InterruptStatus);
    if (bits !== 0) this.#w(MmioRegister.InterruptAck, bits);
    return bits;
  }

  /** The device status register. */
  status(): number {
    return this.#r(MmioRegister.Status);
  }

  /**
   * Read device configuration space.
   * @param offset Offset in the configuration space.
   * @param len Bytes to read.
   * @returns The bytes.
   */
  readConfig(offset: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.transport.read(MMIO_CONFIG_OFFSET + offset, out);
    return out;
  }
}

/**
 * What a transport hands a device on activation: guest memory, queues, notifiers, assigned
 * resources and shared memory (the seed's `VirtioQueueConfig` and `VirtioDeviceConfig`).
 *
 * @module
 */

import type { GuestMemory } from "../memory/guest_memory.ts";
import type { Virtqueue } from "../queue/virtqueue.ts";
import type { VirtioError } from "./errors.ts";
import type { InterruptNotifier } from "./notifier.ts";
import { DeviceResources, type VirtioSharedMemoryList } from "./shared_memory.ts";

/** A queue handed to a device on activation. */
export class VirtioQueueConfig {
  /** Queue index. */
  readonly index: number;
  /** The queue, configured by the driver. */
  readonly queue: Virtqueue;
  /** Signals used buffers to the driver. */
  readonly notifier: InterruptNotifier;

  /**
   * Create it.
   * @param index Queue index.
   * @param queue The configured queue.
   * @param notifier Used-buffer notifier.
   */
  constructor(index: number, queue: Virtqueue, notifier: InterruptNotifier) {
    this.index = index;
    this.queue = queue;
    this.notifier = notifier;
  }

  /** The size the driver chose (at most the maximum the device offers). */
  get actualSize(): number {
    return Math.min(this.queue.size, this.queue.maxSize);
  }
}

/** Everything a device needs once the driver set DRIVER_OK. */
export class VirtioDeviceConfig {
  /** Guest memory. */
  readonly memory: GuestMemory;
  /** The data queues the driver set up (a driver may leave some out). */
  readonly queues: VirtioQueueConfig[];
  /** The control queue, for a device with {@linkcode VirtioDevice.ctrlQueueMaxSizes} > 0. */
  readonly ctrlQueue: VirtioQueueConfig | undefined;
  /** Signals configuration changes to the driver. */
  readonly deviceChangeNotifier: InterruptNotifier;
  /** Features the driver acknowledged. */
  readonly ackedFeatures: bigint;
  /** Resources the VMM assigned (empty over vhost-user). */
  readonly resources: DeviceResources;
  /** The device's shared memory window, if it has one. */
  readonly shmRegions: VirtioSharedMemoryList | undefined;
  /** Called for every error while serving; the transport sets NEEDS_RESET when asked. */
  readonly onError: (err: VirtioError) => void;

  /**
   * Create it.
   * @param options The parts of the configuration.
   */
  constructor(options: {
    memory: GuestMemory;
    queues: VirtioQueueConfig[];
    ctrlQueue?: VirtioQueueConfig;
    deviceChangeNotifier: InterruptNotifier;
    ackedFeatures: bigint;
    resources?: DeviceResources;
    shmRegions?: VirtioSharedMemoryList;
    onError?: (err: VirtioError) => void;
  }) {
    this.memory = options.memory;
    this.queues = options.queues;
    this.ctrlQueue = options.ctrlQueue;
    this.deviceChangeNotifier = options.deviceChangeNotifier;
    this.ackedFeatures = options.ackedFeatures;
    this.resources = options.resources ?? new DeviceResources();
    this.shmRegions = options.shmRegions;
    this.onError = options.onError ?? (() => {});
  }

  /** Tell the driver the device configuration changed. */
  notifyDeviceChanges(): void {
    this.deviceChangeNotifier.notify();
  }
}

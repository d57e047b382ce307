/**
 * Constants of the device framework: status bits, device types, interrupt bits, transport
 * feature bits and the specification versions (virtio 1.2 §2.1, §5, §6).
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Device status bits (virtio 1.2 §2.1)

/** Initial state after device initialization or reset. */
export const DEVICE_INIT = 0x00;
/** The guest OS has found the device and recognised it as a valid virtio device. */
export const DEVICE_ACKNOWLEDGE = 0x01;
/** The guest OS knows how to drive the device. */
export const DEVICE_DRIVER = 0x02;
/** The driver is set up and ready to drive the device. */
export const DEVICE_DRIVER_OK = 0x04;
/** The driver acknowledged all features it understands; feature negotiation is complete. */
export const DEVICE_FEATURES_OK = 0x08;
/** The device experienced an error from which it cannot recover. */
export const DEVICE_NEEDS_RESET = 0x40;
/** Something went wrong in the guest, and it has given up on the device. */
export const DEVICE_FAILED = 0x80;

// ---------------------------------------------------------------------------
// Device types (virtio 1.2 §5)

/** Virtio network card device. */
export const TYPE_NET = 1;
/** Virtio block device. */
export const TYPE_BLOCK = 2;
/** Virtio console device. */
export const TYPE_CONSOLE = 3;
/** Virtio entropy (rng) device. */
export const TYPE_RNG = 4;
/** Virtio balloon device. */
export const TYPE_BALLOON = 5;
/** Virtio vsock device. */
export const TYPE_VSOCK = 19;
/** Virtio mem device. */
export const TYPE_MEM = 24;
/** Virtio-fs device. */
export const TYPE_VIRTIO_FS = 26;
/** Virtio pmem device. */
export const TYPE_PMEM = 27;

// ---------------------------------------------------------------------------
// Interrupt status bits and other constants

/** Interrupt status bit: data available in a used ring. */
export const VIRTIO_INTR_VRING = 0x01;
/** Interrupt status bit: device configuration changed. */
export const VIRTIO_INTR_CONFIG = 0x02;
/** Page size of legacy virtio devices (4 KiB). */
export const VIRTIO_LEGACY_PAGE_SIZE = 4096;

/** Feature bit: the device complies with virtio 1.0 or later (virtio 1.2 §6). */
export const VIRTIO_F_VERSION_1 = 32;
/** Feature bit: the device is behind an IOMMU / has platform access restrictions. */
export const VIRTIO_F_ACCESS_PLATFORM = 33;
/** Feature bit: packed virtqueue layout. */
export const VIRTIO_F_RING_PACKED = 34;
/** Feature bit: the driver passes extra data in its notifications. */
export const VIRTIO_F_NOTIFICATION_DATA = 38;
/** Feature bit: individual virtqueues can be reset. */
export const VIRTIO_F_RING_RESET = 40;

/**
 * Version of the virtio specification a device follows, as used by PCI devices.
 */
export const SpecVersion = {
  /** Legacy (virtio 0.9.5). */
  V0_95: 0,
  /** Virtio 1.0. */
  V1_0: 1,
  /** Virtio 1.1 and later. */
  V1_1: 2,
} as const;
/** A value of {@linkcode SpecVersion}. */
export type SpecVersion = typeof SpecVersion[keyof typeof SpecVersion];

/** The bit for feature number `bit`, as a bigint mask. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

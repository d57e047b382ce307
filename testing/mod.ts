/**
 * The driver side of virtio, for tests without a VM: what a guest driver or a VMM would do,
 * built in the same guest memory the device serves.
 *
 * - {@linkcode DriverQueue}: lays out split rings and buffers (random gaps, indirect tables,
 *   EVENT_IDX, hostile publishing) and programs a device queue as a driver would.
 * - {@linkcode MmioDriver}: drives the virtio-mmio register file through initialisation.
 * - {@linkcode VhostUserFrontend}: the VMM's side of vhost-user, driving a backend over its
 *   socket with memfd guest memory.
 * - {@linkcode takeFrames}, {@linkcode netHeader}, {@linkcode ipv4Frame}: the virtio-net driver's
 *   side of the queues, and frames with correct checksums.
 * - {@linkcode VsockDriver}: a virtio-vsock driver on any of those rings: raw packets in,
 *   decoded packets out.
 * - {@linkcode FuseSession}: a FUSE client (virtio-fs driver side) over a device's queues
 *   ({@linkcode DeviceQueueTransport}) or a vhost-user backend ({@linkcode FrontendTransport}).
 * - {@linkcode testConformance} / {@linkcode runConformance}: the hostile-driver conformance
 *   suite, for any device (malformed rings and chains, register abuse; see `conformance.ts`).
 * - {@linkcode firstDifference} / {@linkcode assertBytes}: byte comparisons that name the first
 *   difference instead of diffing.
 *
 * Never exported from the root `mod.ts`: import it as `@virtio-ts/virtio/testing`.
 *
 * @module
 */

export * from "./queue_driver.ts";
export * from "./packed_driver.ts";
export * from "./mmio_driver.ts";
export * from "./pci_driver.ts";
export * from "./vhost_user_frontend.ts";
export * from "./vsock_driver.ts";
export * from "./bytes.ts";
export * from "./fuse_client.ts";
export * from "./net_driver.ts";
export * from "./conformance.ts";

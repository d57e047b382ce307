/**
 * virtio-ts: the device side of virtio in TypeScript.
 *
 * Guest memory, split virtqueues, the device framework (the
 * dbs-virtio-devices API), the virtio-mmio transport and devices, for VMMs
 * written in TypeScript on Deno and Bun.
 *
 * @example Serve entropy to a driver through the MMIO transport
 * ```ts
 * import { GuestMemory, MmioTransport, RngDevice } from "./mod.ts";
 * import { MmioDriver } from "./testing/mod.ts";
 * const mem = GuestMemory.create(4 << 20);
 * const transport = new MmioTransport(new RngDevice(), mem);
 * // In a VMM the guest kernel is the driver; here the TypeScript driver harness is.
 * const driver = new MmioDriver(transport, mem);
 * const [queue] = driver.init();
 * queue.addChain([{ writable: 32 }]);
 * driver.kick(0);
 * const used = queue.takeUsed();
 * console.assert(used?.len === 32);
 * ```
 *
 * @module
 */

export * from "./memory/guest_memory.ts";
export * from "./queue/mod.ts";
export * from "./devices/device.ts";
export * from "./devices/rng.ts";
export * from "./devices/block.ts";
export * from "./devices/net.ts";
export * from "./devices/vsock.ts";
export * from "./devices/balloon.ts";
export * from "./devices/mem.ts";
export * from "./devices/pmem.ts";
export * from "./devices/console.ts";
export * from "./transport/mod.ts";

/**
 * End to end without a VM: a TypeScript "guest driver" initialises the rng
 * device through the virtio-mmio register file, puts writable buffers on the
 * request queue, kicks, and prints the entropy the device wrote into guest
 * memory.
 *
 * Run: `node_modules/.bin/deno run demo/rng_mmio.ts [--legacy]`
 *
 * @module
 */

import {
  DEVICE_DRIVER_OK,
  GuestMemory,
  MmioTransport,
  RngDevice,
  VIRTIO_INTR_VRING,
} from "../mod.ts";
import { MmioDriver } from "../testing/mod.ts";

const legacy = globalThis.process?.argv?.includes("--legacy") ?? false;
const memory = GuestMemory.create(8 << 20);
let interrupts = 0;
const transport = new MmioTransport(new RngDevice(), memory, {
  version: legacy ? 1 : 2,
  interrupt: () => interrupts++,
  onError: (err) => console.error(`device error: ${err.message}`),
});
const driver = new MmioDriver(transport, memory);
const [queue] = driver.init();
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

console.log(
  `virtio-mmio v${transport.version}: device id ${transport.device.deviceType()} (rng), ` +
    `features 0x${driver.features.toString(16)}, status 0x${driver.status().toString(16)}` +
    ` (DRIVER_OK ${(driver.status() & DEVICE_DRIVER_OK) !== 0})`,
);
for (const size of [16, 64, 4096, 100_000]) {
  // A two-segment chain for the larger reads, so the device crosses a buffer boundary.
  const buffers = size > 64
    ? [{ writable: size >> 1 }, { writable: size - (size >> 1) }]
    : [{ writable: size }];
  queue.addChain(buffers, { indirect: size === 4096 });
  driver.kick(0);
  const bits = driver.ackInterrupt();
  const used = queue.takeUsed();
  if (used === null) throw new Error("device returned nothing");
  const distinct = new Set(used.written).size;
  console.log(
    `read ${used.len} bytes (interrupt ${(bits & VIRTIO_INTR_VRING) !== 0}, ` +
      `${distinct} distinct byte values): ${hex(used.written.subarray(0, 16))}…`,
  );
}
console.log(`interrupts raised: ${interrupts}`);

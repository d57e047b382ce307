/**
 * Launch QEMU with our vhost-user backends attached: a TCG sandbox whose devices are written in
 * TypeScript, no KVM needed. Build (or reuse) the guest image, start backends as their own
 * processes, boot the guest with a script, collect its console, stop everything.
 *
 * @example Boot the test guest with our entropy device served from this process
 * ```ts ignore
 * import { Sandbox } from "./mod.ts";
 * import { RngDevice } from "../devices/rng.ts";
 * const box = await Sandbox.start({ devices: [{ id: "rng", kind: "rng", device: new RngDevice() }] });
 * try {
 *   const r = await box.boot({ script: "step read\ndd if=/dev/hwrng bs=16 count=1 | hexdump -C" });
 *   console.log(r.passed ? "the guest read our entropy" : r.output);
 * } finally {
 *   await box.stop();
 * }
 * ```
 *
 * @module
 */

export * from "./sandbox.ts";
export * from "./qemu.ts";
export * from "./qmp.ts";
export * from "./backends.ts";
export * from "./kernel.ts";

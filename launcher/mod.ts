/**
 * Launch QEMU with our vhost-user backends attached: a TCG sandbox whose devices are written in
 * TypeScript, no KVM needed. Build (or reuse) the guest image, start backends as their own
 * processes, boot the guest with a script, collect its console, stop everything.
 *
 * @example Boot the test guest with our entropy device
 * ```ts ignore
 * import { bootGuest, startBackend } from "./mod.ts";
 * const rng = await startBackend(["--socket", "/tmp/rng.sock", "--device", "rng"]);
 * try {
 *   const r = await bootGuest({
 *     args: ["-chardev", "socket,id=c0,path=/tmp/rng.sock", "-device", "vhost-user-rng-pci,chardev=c0"],
 *     script: "step read\ndd if=/dev/hwrng bs=16 count=1 | hexdump -C",
 *   });
 *   console.log(r.passed ? "guest read our entropy" : r.output);
 * } finally {
 *   await rng.stop();
 * }
 * ```
 *
 * @module
 */

export * from "./qemu.ts";
export * from "./backends.ts";
export * from "./kernel.ts";

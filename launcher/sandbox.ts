/**
 * A TCG sandbox whose devices are written in TypeScript: our vhost-user backends (in this
 * process or as `vhost_user/main.ts` processes) and QEMU wired to them, no KVM needed. Start
 * the backends, build the QEMU command line, boot a guest, wait for it, stop everything —
 * and never leave a backend or QEMU behind, even when this process exits early.
 *
 * @module
 */

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { VirtioDevice } from "../devices/device.ts";
import { VhostUserBackend, type VhostUserBackendOptions } from "../vhost_user/backend.ts";
import { type BackendProcess, startBackend } from "./backends.ts";
import { FdWatcher } from "../sys/mod.ts";
import { bootGuest, type BootOptions, type BootResult } from "./qemu.ts";

/** The vhost-user device kinds QEMU can attach, by the CLI's `--device` name. */
export type SandboxDeviceKind = "blk" | "rng" | "net" | "vsock" | "fs";

/** One device of a {@linkcode Sandbox}. */
export interface SandboxDevice {
  /** Name of the device: the QEMU chardev id and the socket file name. */
  id: string;
  /** Which vhost-user device QEMU puts on its PCI bus. */
  kind: SandboxDeviceKind;
  /** Serve this device in this process (a `VhostUserBackend` on the sandbox's socket). */
  device?: VirtioDevice;
  /** Options of the in-process backend (`socketPath` is the sandbox's). */
  backendOptions?: Omit<VhostUserBackendOptions, "socketPath">;
  /**
   * Or run `vhost_user/main.ts` as its own process with these arguments after
   * `--socket PATH --device KIND` (e.g. `["--file", "disk.img"]`; for vsock
   * `["--guest-cid", "3", "--uds-path", PATH]`: QEMU reads the CID from the backend).
   */
  cli?: string[];
  /** Runtime of a CLI backend (default Deno). */
  runtime?: "deno" | "bun";
  /** Extra `-device` properties for QEMU (e.g. `"num-queues=2"`, `"tag=share"`). */
  qemuProperties?: string;
  /** net: extra `-netdev vhost-user` properties (e.g. `"queues=2"`). */
  netdevProperties?: string;
  /**
   * A command a CLI backend runs under, e.g. `["ip", "netns", "exec", "ns1"]` for a tap in a
   * network namespace (see {@linkcode startBackend}).
   */
  prefix?: string[];
}

/** Options of {@linkcode Sandbox.start}. */
export interface SandboxOptions {
  /** The devices. */
  devices: SandboxDevice[];
  /** Folder for the sockets (default: a new temporary folder, removed by `stop`). */
  dir?: string;
  /** Show CLI backends' stdout (default: ignore it; their stderr is always shown). */
  backendStdout?: "inherit" | "ignore";
}

/**
 * The QEMU arguments that attach a vhost-user device on `socket` (virtio 1.2 §4.1 devices
 * on the PCI bus of `-M q35`).
 * @param kind The device kind.
 * @param id The chardev (and netdev) id.
 * @param socket The backend's socket.
 * @param properties Extra `-device` properties, comma-separated.
 * @param netdevProperties net: extra `-netdev` properties, comma-separated (e.g. `queues=2`).
 * @returns The arguments.
 * @example
 * ```ts
 * import { vhostUserQemuArgs } from "./sandbox.ts";
 * const args = vhostUserQemuArgs("blk", "vda", "/tmp/vda.sock", "num-queues=1");
 * console.assert(args.join(" ") ===
 *   "-chardev socket,id=vda,path=/tmp/vda.sock -device vhost-user-blk-pci,chardev=vda,num-queues=1");
 * ```
 */
export function vhostUserQemuArgs(
  kind: SandboxDeviceKind,
  id: string,
  socket: string,
  properties?: string,
  netdevProperties?: string,
): string[] {
  const extra = properties ? `,${properties}` : "";
  const netdevExtra = netdevProperties ? `,${netdevProperties}` : "";
  const chardev = ["-chardev", `socket,id=${id},path=${socket}`];
  switch (kind) {
    case "net":
      // QEMU 7.2 crashes starting a vhost-user virtio-net-pci with MSI-X under TCG
      // (FACTS.md): INTx (vectors=0) avoids it.
      return [
        ...chardev,
        ...["-netdev", `vhost-user,chardev=${id},id=${id}${netdevExtra}`],
        ...["-device", `virtio-net-pci,netdev=${id},vectors=0${extra}`],
      ];
    case "blk":
    case "rng":
    case "vsock":
    case "fs":
      return [...chardev, "-device", `vhost-user-${kind}-pci,chardev=${id}${extra}`];
  }
}

/**
 * A set of vhost-user backends and the QEMU guests booted on them.
 *
 * @example Boot the test guest with our entropy device served from this process
 * ```ts ignore
 * import { Sandbox } from "./sandbox.ts";
 * import { RngDevice } from "../devices/rng.ts";
 * await using box = await Sandbox.start({ devices: [{ id: "rng", kind: "rng", device: new RngDevice() }] });
 * const r = await box.boot({ script: "step read\ndd if=/dev/hwrng bs=16 count=1 | hexdump -C" });
 * console.log(r.passed ? "the guest read our entropy" : r.output);
 * ```
 */
export class Sandbox {
  /** The folder holding the sockets. */
  readonly dir: string;
  /** The in-process backends, by device id. */
  readonly backends: ReadonlyMap<string, VhostUserBackend>;
  /** The backend processes, by device id. */
  readonly processes: ReadonlyMap<string, BackendProcess>;
  readonly #devices: SandboxDevice[];
  readonly #ownsDir: boolean;
  // One poll(2) for every in-process backend (as in VhostUserBackendSet): under Bun a watcher
  // is a Worker, under Deno a thread of the blocking pool held for good.
  readonly #watcher = new FdWatcher({
    onError: (e) => console.error(`sandbox: ${e instanceof Error ? e.message : String(e)}`),
  });
  #stopped = false;

  private constructor(
    dir: string,
    ownsDir: boolean,
    devices: SandboxDevice[],
    backends: Map<string, VhostUserBackend>,
    processes: Map<string, BackendProcess>,
  ) {
    this.dir = dir;
    this.#ownsDir = ownsDir;
    this.#devices = devices;
    this.backends = backends;
    this.processes = processes;
  }

  /**
   * Start every backend and wait until each listens.
   * @param options The devices and where their sockets go.
   * @returns The running sandbox.
   * @throws {TypeError} When a device has both or neither of `device` and `cli`, or two
   *   devices share an id.
   * @throws {Error} When a backend cannot start (those already started are stopped).
   */
  static async start(options: SandboxOptions): Promise<Sandbox> {
    const ids = new Set<string>();
    for (const d of options.devices) {
      if ((d.device === undefined) === (d.cli === undefined)) {
        throw new TypeError(`Device ${d.id} needs exactly one of device and cli`);
      }
      if (!/^[A-Za-z][A-Za-z0-9_-]*$/.test(d.id) || ids.has(d.id)) {
        throw new TypeError(`Device id ${d.id} is not a unique QEMU id`);
      }
      ids.add(d.id);
    }
    const ownsDir = options.dir === undefined;
    const dir = options.dir ?? mkdtempSync(join(tmpdir(), "vt-sandbox-"));
    const backends = new Map<string, VhostUserBackend>();
    const processes = new Map<string, BackendProcess>();
    const box = new Sandbox(dir, ownsDir, options.devices, backends, processes);
    try {
      for (const d of options.devices) {
        const socket = box.socketPath(d.id);
        if (d.device !== undefined) {
          // QEMU keeps a net device's configuration space itself (and warns when offered it).
          const b = new VhostUserBackend(d.device, {
            ...(d.kind === "net" ? { configSpace: false } : {}),
            watcher: box.#watcher,
            ...d.backendOptions,
            socketPath: socket,
          });
          b.listen();
          backends.set(d.id, b);
        } else {
          const p = await startBackend(["--socket", socket, "--device", d.kind, ...d.cli!], {
            stdout: options.backendStdout,
            runtime: d.runtime,
            prefix: d.prefix,
          });
          processes.set(d.id, p);
        }
      }
    } catch (err) {
      await box.stop();
      throw err;
    }
    return box;
  }

  /**
   * The socket of device `id`.
   * @param id Device id.
   * @returns Its path.
   */
  socketPath(id: string): string {
    return join(this.dir, `${id}.sock`);
  }

  /** The QEMU arguments attaching every device, in order. */
  qemuArgs(): string[] {
    return this.#devices.flatMap((d) =>
      vhostUserQemuArgs(d.kind, d.id, this.socketPath(d.id), d.qemuProperties, d.netdevProperties)
    );
  }

  /**
   * Boot the test guest (or `options.guest`) under QEMU TCG with every device attached, run
   * `options.script` in it and resolve when QEMU exits (see {@linkcode bootGuest}).
   * @param options Boot options; `args` are added after the devices.
   * @returns What the run produced.
   * @throws {Error} When the sandbox was stopped.
   */
  boot(options: BootOptions = {}): Promise<BootResult> {
    if (this.#stopped) return Promise.reject(new Error("The sandbox is stopped"));
    return bootGuest({ ...options, args: [...this.qemuArgs(), ...(options.args ?? [])] });
  }

  /** Stop every backend (processes are sent SIGTERM and awaited) and remove the socket folder. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const b of this.backends.values()) await b.close();
    await this.#watcher.stop();
    for (const p of this.processes.values()) await p.stop();
    if (this.#ownsDir) rmSync(this.dir, { recursive: true, force: true });
  }

  /** `await using` support: {@linkcode Sandbox.stop}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}

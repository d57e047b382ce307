/**
 * Many devices in one process: a set of {@linkcode VhostUserBackend}s, each on its own Unix
 * socket with its own frontend, waiting on one shared {@linkcode FdWatcher} — as
 * qemu-storage-daemon serves several `--export`s. A host with hundreds of guests then pays for
 * one runtime, not one per device.
 *
 * Each device stays isolated: a backend's protocol errors, a hostile or vanishing frontend, a
 * refused memory table or a device error drop or reset that backend's connection only, and are
 * reported to `onError` with that backend's id. The others keep serving.
 *
 * @module
 */

import type { VirtioDevice } from "../devices/device.ts";
import { FdWatcher } from "../sys/mod.ts";
import { VhostUserBackend, type VhostUserBackendOptions } from "./backend.ts";

/** One device of a {@linkcode VhostUserBackendSet}: the device and its backend's options. */
export interface BackendSetEntry
  extends Omit<VhostUserBackendOptions, "watcher" | "onError" | "log"> {
  /** The device to serve. */
  device: VirtioDevice;
  /** A name for messages and {@linkcode VhostUserBackendSet.get} (default: the socket path). */
  id?: string;
}

/** Options of {@linkcode VhostUserBackendSet}. */
export interface VhostUserBackendSetOptions {
  /**
   * Called with each backend's errors (and warnings such as the unsealed-memory one) and its
   * id; the id is `"*"` for poll(2) itself failing, which no backend owns. Default: printed
   * with `console.error`.
   */
  onError?: (id: string, err: Error) => void;
  /** Called with each backend's progress messages and its id (default: none). */
  log?: (id: string, message: string) => void;
}

/**
 * Serves many devices, each on its own socket, in one process; one poll(2) waits on the
 * descriptors of all of them.
 *
 * @example Two entropy devices in one process
 * ```ts
 * import assert from "node:assert/strict";
 * import { mkdtempSync, rmSync } from "node:fs";
 * import { tmpdir } from "node:os";
 * import { join } from "node:path";
 * import { RngDevice } from "../devices/rng.ts";
 * import { VhostUserBackendSet } from "./backend_set.ts";
 *
 * const dir = mkdtempSync(join(tmpdir(), "set-"));
 * const set = new VhostUserBackendSet();
 * set.add({ id: "rng0", device: new RngDevice(), socketPath: join(dir, "rng0.sock") });
 * set.add({ id: "rng1", device: new RngDevice(), socketPath: join(dir, "rng1.sock") });
 * set.listen();
 * assert.equal(set.backends.length, 2);
 * assert.equal(set.get("rng1")?.connected, false);
 * await set.close();
 * rmSync(dir, { recursive: true });
 * ```
 */
export class VhostUserBackendSet {
  readonly #watcher: FdWatcher;
  readonly #onError: (id: string, err: Error) => void;
  readonly #log: ((id: string, message: string) => void) | undefined;
  readonly #entries = new Map<string, VhostUserBackend>();
  #listening = false;
  #closing: Promise<void> | undefined;
  #closedResolve!: () => void;
  /** Resolves when {@linkcode VhostUserBackendSet.close} has finished. */
  readonly closed: Promise<void>;

  /**
   * Make an empty set; add devices with {@linkcode VhostUserBackendSet.add}.
   * @param options Error and progress hooks.
   */
  constructor(options: VhostUserBackendSetOptions = {}) {
    this.#onError = options.onError ??
      ((id, e) => console.error(`vhost-user ${id}: ${e.message}`));
    this.#log = options.log;
    // Every callback is guarded by its backend, which reports to its own onError; what reaches
    // the watcher's is poll(2) itself failing.
    this.#watcher = new FdWatcher({
      onError: (e) => this.#onError("*", e instanceof Error ? e : new Error(String(e))),
    });
    this.closed = new Promise((resolve) => (this.#closedResolve = resolve));
  }

  /** The backends, in the order they were added. */
  get backends(): readonly VhostUserBackend[] {
    return [...this.#entries.values()];
  }

  /** The ids of the backends, in the order they were added. */
  get ids(): readonly string[] {
    return [...this.#entries.keys()];
  }

  /**
   * The backend added under `id`.
   * @param id Its id (or socket path, when it was added without one).
   * @returns The backend, or `undefined`.
   */
  get(id: string): VhostUserBackend | undefined {
    return this.#entries.get(id);
  }

  /**
   * Add a device on its own socket. Once the set listens, the new backend listens at once.
   * @param entry The device, its id and its backend's options.
   * @returns The backend.
   * @throws {Error} When the set is closed, or the id or socket path is already in the set.
   * @throws {RangeError} When an option is out of range (see {@linkcode VhostUserBackend}).
   * @throws {SysError} When the set listens and the socket cannot be created or bound.
   */
  add(entry: BackendSetEntry): VhostUserBackend {
    if (this.#closing !== undefined) throw new Error("the backend set is closed");
    const { device, id: givenId, ...options } = entry;
    const id = givenId ?? options.socketPath;
    if (this.#entries.has(id)) throw new Error(`a device ${id} is already in the set`);
    for (const [other, b] of this.#entries) {
      if (b.socketPath === options.socketPath) {
        throw new Error(`${other} already listens on ${options.socketPath}`);
      }
    }
    const log = this.#log;
    const backend = new VhostUserBackend(device, {
      ...options,
      watcher: this.#watcher,
      onError: (e) => this.#onError(id, e),
      log: log === undefined ? undefined : (m) => log(id, m),
    });
    if (this.#listening) backend.listen();
    this.#entries.set(id, backend);
    return backend;
  }

  /**
   * Listen on every socket. Returns at once; connections are served on the event loop.
   * @throws {SysError} When a socket cannot be created or bound (those already listening go
   *   on; `close()` stops them).
   */
  listen(): void {
    if (this.#closing !== undefined) throw new Error("the backend set is closed");
    if (this.#listening) return;
    this.#listening = true;
    for (const b of this.#entries.values()) b.listen();
  }

  /**
   * Stop one device (hot-unplug): its socket, its connection and its mappings go; the others
   * keep serving.
   * @param id The backend's id.
   * @returns Whether there was such a backend.
   */
  async remove(id: string): Promise<boolean> {
    const backend = this.#entries.get(id);
    if (backend === undefined) return false;
    this.#entries.delete(id);
    await backend.close();
    return true;
  }

  /**
   * Stop every backend, then the shared watcher.
   * @returns A promise that settles when everything is released.
   */
  close(): Promise<void> {
    return this.#closing ??= (async () => {
      const backends = [...this.#entries.values()];
      this.#entries.clear();
      for (const b of backends) await b.close();
      await this.#watcher.stop();
      this.#closedResolve();
    })();
  }
}

/**
 * Serve every entry on its own socket in this process, at once.
 *
 * @example
 * ```ts ignore
 * const set = serveMany([
 *   { id: "vda", device: new BlockDevice({ path: "a.img" }), socketPath: "/tmp/a.sock" },
 *   { id: "vdb", device: new BlockDevice({ path: "b.img" }), socketPath: "/tmp/b.sock" },
 * ]);
 * await set.closed; // after set.close()
 * ```
 *
 * @param entries The devices and their backends' options.
 * @param options Error and progress hooks.
 * @returns The listening set.
 * @throws {Error} When two entries share an id or a socket path (nothing listens then).
 * @throws {SysError} When a socket cannot be created or bound (the set is closed then).
 */
export function serveMany(
  entries: readonly BackendSetEntry[],
  options: VhostUserBackendSetOptions = {},
): VhostUserBackendSet {
  const set = new VhostUserBackendSet(options);
  try {
    for (const e of entries) set.add(e);
    set.listen();
  } catch (err) {
    void set.close();
    throw err;
  }
  return set;
}

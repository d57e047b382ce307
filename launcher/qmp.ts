/**
 * A small QMP client (the QEMU Machine Protocol, JSON over a Unix socket): enough to pause and
 * resume a guest (`stop`/`cont`), which makes QEMU stop and restart its vhost-user rings, and
 * to ask it anything else it answers in one reply.
 *
 * @module
 */

import { connect, type Socket } from "node:net";

/** A QMP command failed, or the connection ended. */
export class QmpError extends Error {
  /** QMP's error class (e.g. `GenericError`), when QEMU answered with one. */
  readonly errorClass: string | undefined;

  /**
   * Create it.
   * @param message Details.
   * @param errorClass QMP's error class.
   */
  constructor(message: string, errorClass?: string) {
    super(message);
    this.name = "QmpError";
    this.errorClass = errorClass;
  }
}

/**
 * A QMP connection in command mode.
 *
 * @example Pause and resume a guest started with `-qmp unix:/tmp/q.sock,server=on,wait=off`
 * ```ts ignore
 * const qmp = await Qmp.connect("/tmp/q.sock");
 * await qmp.execute("stop");
 * await qmp.execute("cont");
 * qmp.close();
 * ```
 */
export class Qmp {
  readonly #socket: Socket;
  #buffer = "";
  #waiters: { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void }[] = [];
  #closed: Error | undefined;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => this.#data(chunk));
    const end = (err?: Error) => {
      this.#closed ??= new QmpError(err ? err.message : "QMP connection closed");
      for (const w of this.#waiters.splice(0)) w.reject(this.#closed);
    };
    socket.on("error", end);
    socket.on("close", () => end());
  }

  /**
   * Connect, read the greeting and enter command mode (`qmp_capabilities`).
   * @param path The socket QEMU listens on.
   * @param timeoutMs How long to keep retrying while QEMU starts (default 10 s).
   * @returns The connection.
   * @throws {QmpError} When QEMU cannot be reached or refuses.
   */
  static async connect(path: string, timeoutMs = 10_000): Promise<Qmp> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path);
          s.once("connect", () => resolve(s));
          s.once("error", reject);
        });
        const qmp = new Qmp(socket);
        await qmp.#next(); // the greeting
        await qmp.execute("qmp_capabilities");
        return qmp;
      } catch (err) {
        if (Date.now() > end) {
          throw new QmpError(`cannot reach QMP at ${path}: ${(err as Error).message}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  #data(chunk: string): void {
    this.#buffer += chunk;
    let nl: number;
    while ((nl = this.#buffer.indexOf("\n")) >= 0) {
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      if (line === "") continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      if ("event" in msg) continue; // asynchronous events are not waited for here
      this.#waiters.shift()?.resolve(msg);
    }
  }

  #next(): Promise<Record<string, unknown>> {
    if (this.#closed) return Promise.reject(this.#closed);
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * Run one command and wait for its reply.
   * @param command The command (e.g. `"stop"`, `"cont"`, `"query-status"`).
   * @param args Its arguments.
   * @returns The `return` value.
   * @throws {QmpError} When QEMU answers with an error or the connection ends.
   */
  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const reply = this.#next();
    this.#socket.write(
      JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n",
    );
    const msg = await reply;
    if ("error" in msg) {
      const e = msg.error as { class?: string; desc?: string };
      throw new QmpError(`${command}: ${e.desc ?? "failed"}`, e.class);
    }
    return msg.return;
  }

  /** Close the connection. */
  close(): void {
    this.#socket.destroy();
  }
}

/**
 * Our vhost-user CLI (`vhost_user/main.ts`) run as its own process, for the real-guest tests
 * and the demo, and the byte pattern the guests write. Only `node:` imports.
 *
 * @module
 */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** A backend process started by {@link startBackend}. */
export interface BackendProcess {
  /** The process. */
  child: ChildProcess;
  /** SIGTERM it (unless it already exited) and wait until it has exited. */
  stop(): Promise<void>;
}

/**
 * Start `vhost_user/main.ts` with `args` and wait until it listens on its `--socket` path.
 *
 * @param args CLI arguments; must include `--socket PATH`.
 * @param options `stdout`: show the backend's stdout (default: ignore it); stderr is shown.
 *   `runtime`: run it with Deno (default) or Bun.
 * @returns The running backend.
 */
export function startBackend(
  args: string[],
  options: { stdout?: "inherit" | "ignore"; runtime?: "deno" | "bun" } = {},
): Promise<BackendProcess> {
  const socket = args[args.indexOf("--socket") + 1];
  if (!args.includes("--socket") || socket === undefined) throw new Error("--socket is required");
  const main = join(ROOT, "vhost_user", "main.ts");
  const bun = options.runtime === "bun";
  return spawnListening(
    join(ROOT, "node_modules", ".bin", bun ? "bun" : "deno"),
    bun ? [main, ...args] : ["run", "--allow-all", main, ...args],
    socket,
    options,
  );
}

/**
 * Start `command` and wait until it listens on the Unix socket `socket` (up to 10 s).
 *
 * @param command The program.
 * @param args Its arguments.
 * @param socket The socket path it will create.
 * @param options `stdout`: show the process's stdout (default: ignore it); stderr is shown.
 * @returns The running process.
 */
export async function spawnListening(
  command: string,
  args: string[],
  socket: string,
  options: { stdout?: "inherit" | "ignore" } = {},
): Promise<BackendProcess> {
  const child = spawn(command, args, { stdio: ["ignore", options.stdout ?? "ignore", "inherit"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const backend = {
    child,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
  for (let i = 0; i < 400 && !existsSync(socket) && child.exitCode === null; i++) {
    await new Promise((r) => setTimeout(r, 25));
  }
  if (!existsSync(socket)) {
    await backend.stop();
    throw new Error(`${command} did not listen on ${socket}`);
  }
  return backend;
}

/**
 * What `yes TEXT | head -c SIZE` prints in the guest: `TEXT\n` repeated, cut at `size` bytes.
 *
 * @param text The line, without its newline.
 * @param size Total bytes.
 * @returns The bytes.
 */
export function yesPattern(text: string, size: number): Uint8Array {
  const line = new TextEncoder().encode(`${text}\n`);
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = line[i % line.length];
  return out;
}

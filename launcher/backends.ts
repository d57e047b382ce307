/**
 * Our vhost-user CLI (`vhost_user/main.ts`) run as its own process, for the sandbox, the
 * real-guest tests, the demo and the benchmarks. Only `node:` imports.
 *
 * @module
 */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { trackChild } from "./_children.ts";

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
 * @param args CLI arguments: `--socket PATH` and one device's options, or `--device` specs
 *   (then `waitFor` names the socket to wait for: the last spec's, which listens last).
 * @param options `stdout`: show the backend's stdout (default: ignore it); stderr is shown.
 *   `runtime`: run it with Deno (default) or Bun. `prefix`: a command the backend runs under,
 *   e.g. `["ip", "netns", "exec", "ns1"]` to put it in a network namespace (it must exec the
 *   rest, so that stopping it stops the backend). `waitFor`: the socket to wait for instead
 *   of the `--socket` argument.
 * @returns The running backend.
 */
export function startBackend(
  args: string[],
  options: {
    stdout?: "inherit" | "ignore";
    runtime?: "deno" | "bun";
    prefix?: string[];
    waitFor?: string;
  } = {},
): Promise<BackendProcess> {
  const socket = options.waitFor ??
    (args.includes("--socket") ? args[args.indexOf("--socket") + 1] : undefined);
  if (socket === undefined) throw new Error("--socket or the waitFor option is required");
  const main = join(ROOT, "vhost_user", "main.ts");
  const bun = options.runtime === "bun";
  const runtime = join(ROOT, "node_modules", ".bin", bun ? "bun" : "deno");
  const runtimeArgs = bun ? [main, ...args] : ["run", "--allow-all", main, ...args];
  const prefix = options.prefix ?? [];
  return spawnListening(
    prefix.length > 0 ? prefix[0] : runtime,
    prefix.length > 0 ? [...prefix.slice(1), runtime, ...runtimeArgs] : runtimeArgs,
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
  trackChild(child);
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

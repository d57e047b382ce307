// Shared by the vhost-user tests: a backend on a socket in a temporary
// directory, frontends connected to it, and reading entropy through a ring.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VhostUserBackend, type VhostUserBackendOptions } from "../../vhost_user/backend.ts";
import {
  VhostUserFrontend,
  type VhostUserFrontendOptions,
} from "../../testing/vhost_user_frontend.ts";
import type { VirtioDevice } from "../../devices/device.ts";

/** Per-test options: a generous timeout (Bun's default is 5 s). */
export const T = { timeout: 30000 };

/** What a test gets from `withBackend`. */
export interface Harness {
  backend: VhostUserBackend;
  errors: Error[];
  /** The backend's socket path. */
  path: string;
  connect(options?: VhostUserFrontendOptions): Promise<VhostUserFrontend>;
}

/** Run `fn` against a backend serving `device`; closes everything afterwards. */
export async function withBackend(
  device: VirtioDevice,
  fn: (h: Harness) => Promise<void>,
  options: Omit<VhostUserBackendOptions, "socketPath" | "onError"> = {},
): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "vhost-user-test-"));
  const errors: Error[] = [];
  const backend = new VhostUserBackend(device, {
    ...options,
    socketPath: join(dir, "backend.sock"),
    onError: (e) => errors.push(e),
  });
  backend.listen();
  const frontends: VhostUserFrontend[] = [];
  try {
    await fn({
      backend,
      errors,
      path: join(dir, "backend.sock"),
      connect: async (options) => {
        const f = await VhostUserFrontend.connect(join(dir, "backend.sock"), options);
        frontends.push(f);
        return f;
      },
    });
  } finally {
    for (const f of frontends) await f.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Sleep. */
export const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Poll `cond` until it holds, failing after `ms`. */
export async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await delay(5);
  }
}

/** Add one writable chain per size, kick, wait for all of them; returns what was written. */
export async function readEntropy(
  fe: VhostUserFrontend,
  sizes: number[],
  index = 0,
): Promise<Uint8Array[]> {
  const { driver } = fe.ring(index);
  const heads = sizes.map((n) => driver.addChain([{ writable: n }]));
  fe.kick(index);
  while (driver.pendingUsed() < sizes.length) {
    // With EVENT_IDX the device notifies once per crossing of used_event: after a call that
    // came with only part of the chains, ask for the next one (as a driver re-enabling its
    // callbacks does) and look again before sleeping, or a backend in another process that
    // completes the rest in between is never heard from.
    if (driver.eventIdx) {
      driver.setUsedEvent(driver.usedIdx());
      if (driver.pendingUsed() >= sizes.length) break;
    }
    assert.ok(await fe.waitCall(index, 5000), "no call from the backend");
  }
  const used = driver.takeAllUsed();
  assert.deepEqual(used.map((u) => u.id), heads);
  return used.map((u, i) => {
    assert.equal(u.len, sizes[i]);
    assert.equal(u.written.length, sizes[i]);
    if (sizes[i] >= 16) assert.ok(new Set(u.written).size > 1, "entropy is constant");
    return u.written;
  });
}

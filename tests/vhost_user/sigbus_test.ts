// A memory table whose regions reach past their files must not kill the backend: mmap accepts
// such a mapping and the first touch of the unbacked part raises SIGBUS, which ends the whole
// process. The backend runs as its own process here (vhost_user/main.ts), so a SIGBUS shows as
// death by signal instead of taking the test runner down; each test then checks that the
// process is still there and serves the next frontend.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BackendProcess, startBackend } from "../../launcher/backends.ts";
import { VhostUserFrontend, vringAddrPayload } from "../../testing/vhost_user_frontend.ts";
import { Request, u64Payload, vringStatePayload } from "../../vhost_user/protocol.ts";
import { VIRTQ_DESC_F_WRITE } from "../../queue/split.ts";
import { EventFd } from "../../sys/mod.ts";
import { delay, readEntropy, T } from "./_harness.ts";

const MiB = 1 << 20;

let dir = "";
let socket = "";
let backend: BackendProcess | undefined;

before(() => {
  dir = mkdtempSync(join(tmpdir(), "vt-sigbus-"));
  socket = join(dir, "rng.sock");
});
after(async () => {
  await backend?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function alive(b: BackendProcess | undefined): b is BackendProcess {
  return b !== undefined && b.child.exitCode === null && b.child.signalCode === null;
}

/** The rng backend process; a new one if an earlier test killed it. */
async function ensureBackend(): Promise<BackendProcess> {
  if (alive(backend)) return backend;
  rmSync(socket, { force: true }); // a dead backend's socket file: wait for the new one's
  backend = await startBackend(["--socket", socket, "--device", "rng", "--verbose"]);
  return backend;
}

/**
 * Run `attack` with a frontend of 1 MiB of (sealed) memory, then check that the backend process
 * did not die and serves a well-behaved frontend.
 */
async function expectSurvives(attack: (fe: VhostUserFrontend) => Promise<void>): Promise<void> {
  const b = await ensureBackend();
  const fe = await VhostUserFrontend.connect(socket, { memorySize: MiB, timeoutMs: 5000 });
  try {
    await attack(fe);
    // Give an accepted table the time to be touched.
    await fe.waitDisconnect(500);
  } catch {
    // The backend refused the table and closed the connection (or died).
  } finally {
    await fe.close();
  }
  let failure: unknown;
  try {
    const next = await VhostUserFrontend.connect(socket, { timeoutMs: 5000 });
    try {
      await next.start();
      await readEntropy(next, [64, 512]);
    } finally {
      await next.close();
    }
  } catch (err) {
    failure = err;
    // Let the exit be seen (and the next test start a new process).
    for (let i = 0; i < 40 && alive(b); i++) await delay(25);
  }
  assert.equal(b.child.signalCode, null, `the backend process died of ${b.child.signalCode}`);
  assert.equal(b.child.exitCode, null, `the backend process exited with ${b.child.exitCode}`);
  if (failure !== undefined) throw failure;
}

describe("vhost-user backend process and memory regions past the end of their file", () => {
  it("a region larger than its memfd, with a buffer in the unbacked tail", T, async () => {
    await expectSurvives(async (fe) => {
      await fe.start({
        memoryRegions: [{ guestAddr: 0, size: 2 * MiB, userAddr: fe.userAddr(0), mmapOffset: 0 }],
      });
      const { driver } = fe.ring(0);
      driver.writeDescriptor(0, {
        addr: MiB + 0x10000,
        len: 64,
        flags: VIRTQ_DESC_F_WRITE,
        next: 0,
      });
      driver.publish(0);
      fe.kick(0, { force: true });
    });
  });

  it("a region whose mmap offset is the end of its memfd, with the rings in it", T, async () => {
    await expectSurvives(async (fe) => {
      await fe.start({
        memoryRegions: [{ guestAddr: 0, size: MiB, userAddr: fe.userAddr(0), mmapOffset: MiB }],
      });
    });
  });

  it("a region larger than its memfd, with a ring in the unbacked tail", T, async () => {
    const kick = new EventFd(), call = new EventFd();
    try {
      await expectSurvives(async (fe) => {
        await fe.start({
          queues: 0,
          memoryRegions: [{ guestAddr: 0, size: 2 * MiB, userAddr: fe.userAddr(0), mmapOffset: 0 }],
        });
        const tail = MiB + 0x10000;
        await fe.request(Request.SET_VRING_NUM, vringStatePayload(0, 16), { needReply: true });
        await fe.request(Request.SET_VRING_BASE, vringStatePayload(0, 0), { needReply: true });
        await fe.request(
          Request.SET_VRING_ADDR,
          vringAddrPayload({
            index: 0,
            flags: 0,
            desc: fe.userAddr(tail),
            avail: fe.userAddr(tail + 0x1000),
            used: fe.userAddr(tail + 0x2000),
            log: 0n,
          }),
          { needReply: true },
        );
        await fe.request(Request.SET_VRING_KICK, u64Payload(0n), {
          fds: [kick.fd],
          needReply: true,
        });
        await fe.request(Request.SET_VRING_CALL, u64Payload(0n), {
          fds: [call.fd],
          needReply: true,
        });
        await fe.setVringEnable(0, true);
      });
    } finally {
      kick.close();
      call.close();
    }
  });
});

describe("vhost_user/main.ts --require-sealed-memory", () => {
  it("drops a frontend with unsealed memory and serves a sealed one", T, async () => {
    const sealedSocket = join(dir, "sealed.sock");
    const b = await startBackend([
      ...["--socket", sealedSocket, "--device", "rng", "--require-sealed-memory"],
    ]);
    try {
      const unsealed = await VhostUserFrontend.connect(sealedSocket, { sealMemory: false });
      try {
        await assert.rejects(unsealed.start(), /closed the connection/);
      } finally {
        await unsealed.close();
      }
      const sealed = await VhostUserFrontend.connect(sealedSocket);
      try {
        await sealed.start();
        await readEntropy(sealed, [64]);
      } finally {
        await sealed.close();
      }
      assert.equal(b.child.exitCode, null);
    } finally {
      await b.stop();
    }
  });
});

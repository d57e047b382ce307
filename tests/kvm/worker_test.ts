// The vCPU worker machinery without KVM: the worker module loads (with FFI) in a Worker of this
// runtime and reports start failures, and the MMIO mailbox works across threads (the worker
// sleeps in Atomics.wait while the main thread serves the access from its message handler).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Mailbox, MAILBOX_SIZE } from "../../kvm/_mailbox.ts";
import { CONSOLE_CHANNEL_SIZE } from "../../kvm/_console.ts";

function once(worker: Worker): Promise<{ type: string; [k: string]: unknown }> {
  return new Promise((resolve, reject) => {
    worker.onmessage = (e) => resolve(e.data);
    worker.onerror = (e) => {
      e.preventDefault?.();
      reject(new Error(e.message));
    };
  });
}

test("the vCPU worker loads in a Worker and reports a failed start as an error", async () => {
  const worker = new Worker(new URL("../../kvm/_vcpu_worker.ts", import.meta.url).href, {
    type: "module",
  });
  try {
    const reply = once(worker);
    worker.postMessage({
      type: "start",
      index: 3,
      vcpuFd: -1,
      vmFd: -1,
      runSize: 4096,
      mailbox: new SharedArrayBuffer(MAILBOX_SIZE),
      console: new SharedArrayBuffer(CONSOLE_CHANNEL_SIZE),
    });
    const msg = await reply;
    assert.equal(msg.type, "error");
    assert.equal(msg.code, "RunFailed");
    assert.equal(msg.index, 3);
  } finally {
    worker.terminate();
  }
});

test("Mailbox serves MMIO accesses across threads (postMessage doorbell + Atomics.wait)", async () => {
  const mailboxUrl = new URL("../../kvm/_mailbox.ts", import.meta.url).href;
  const source = `
    import { Mailbox } from ${JSON.stringify(mailboxUrl)};
    onmessage = (e) => {
      const box = new Mailbox(e.data);
      const results = [];
      for (let i = 0; i < 50; i++) {
        const data = new Uint8Array(4);
        box.request(0xd0000000 + i * 4, false, data, () => postMessage({ type: "mmio" }));
        results.push(new DataView(data.buffer).getUint32(0, true));
        box.request(0xd0000070, true, Uint8Array.of(i, 0, 0, 0), () => postMessage({ type: "mmio" }));
      }
      postMessage({ type: "done", results });
    };
  `;
  const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
  const worker = new Worker(url, { type: "module" });
  const sab = new SharedArrayBuffer(MAILBOX_SIZE);
  const main = new Mailbox(sab);
  const writes: number[] = [];
  try {
    const done = new Promise<number[]>((resolve, reject) => {
      worker.onmessage = (e) => {
        if (e.data.type === "mmio") {
          main.serve((addr, write, data) => {
            if (write) writes.push(data[0]);
            else new DataView(data.buffer).setUint32(0, addr - 0xd0000000 + 1, true);
          });
        } else resolve(e.data.results);
      };
      worker.onerror = (e) => {
        e.preventDefault?.();
        reject(new Error(e.message));
      };
    });
    worker.postMessage(sab);
    const results = await done;
    assert.deepEqual(results, Array.from({ length: 50 }, (_, i) => i * 4 + 1));
    assert.deepEqual(writes, Array.from({ length: 50 }, (_, i) => i));
  } finally {
    worker.terminate();
    URL.revokeObjectURL(url);
  }
});

import { describe, it } from "node:test";
import { setImmediate } from "node:timers";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import type { DriverBuffer, DriverQueue } from "../../testing/queue_driver.ts";
import { MmioDriver } from "../../testing/mmio_driver.ts";
import { type MmioError, MmioRegister, MmioTransport } from "../../transport/mmio.ts";
import {
  featureBit,
  TYPE_CONSOLE,
  VIRTIO_F_RING_PACKED,
  VIRTIO_INTR_CONFIG,
  type VirtioError,
} from "../../devices/device.ts";
import {
  CONSOLE_MAX_CHAIN_BYTES,
  consoleControl,
  ConsoleDevice,
  type ConsoleDeviceMessage,
  type ConsoleDeviceOptions,
  ConsoleError,
  type ConsolePort,
  consoleRxQueue,
  consoleTxQueue,
  decodeConsoleControl,
  VIRTIO_CONSOLE_BAD_ID,
  VIRTIO_CONSOLE_CONSOLE_PORT,
  VIRTIO_CONSOLE_DEVICE_READY,
  VIRTIO_CONSOLE_F_EMERG_WRITE,
  VIRTIO_CONSOLE_F_MULTIPORT,
  VIRTIO_CONSOLE_F_SIZE,
  VIRTIO_CONSOLE_PORT_ADD,
  VIRTIO_CONSOLE_PORT_NAME,
  VIRTIO_CONSOLE_PORT_OPEN,
  VIRTIO_CONSOLE_PORT_READY,
  VIRTIO_CONSOLE_PORT_REMOVE,
  VIRTIO_CONSOLE_RESIZE,
} from "../../devices/console.ts";

const ALL = ~0n & 0xffff_ffff_ffff_ffffn;
const NO_MULTIPORT = ALL & ~featureBit(VIRTIO_CONSOLE_F_MULTIPORT);
const enc = new TextEncoder();
const dec = new TextDecoder();

/** A control message's bytes. */
function msg(id: number, event: number, value: number, data?: Uint8Array): Uint8Array {
  return consoleControl({ id, event, value, data });
}

/** Let microtasks and one turn of the event loop run (the device serves host actions there). */
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

interface Rig {
  mem: GuestMemory;
  dev: ConsoleDevice;
  transport: MmioTransport;
  driver: MmioDriver;
  q: DriverQueue[];
  errors: VirtioError[];
  transportErrors: MmioError[];
  interrupts: { count: number };
}

function rig(
  options: {
    device?: ConsoleDeviceOptions;
    features?: bigint;
    version?: 1 | 2;
    queueSize?: number;
    init?: boolean;
  } = {},
): Rig {
  const mem = GuestMemory.create(32 << 20);
  const errors: VirtioError[] = [];
  const dev = new ConsoleDevice({ onError: (e) => errors.push(e), ...options.device });
  const transportErrors: MmioError[] = [];
  const interrupts = { count: 0 };
  const transport = new MmioTransport(dev, mem, {
    version: options.version,
    interrupt: () => interrupts.count++,
    onError: (e) => transportErrors.push(e),
  });
  const driver = new MmioDriver(transport, mem);
  const r: Rig = { mem, dev, transport, driver, q: [], errors, transportErrors, interrupts };
  if (options.init !== false) {
    r.q = driver.init({ features: options.features, queueSize: options.queueSize });
  }
  return r;
}

/** A multiport rig whose driver said DEVICE_READY and PORT_READY for every port (and read
 * the answers): what Linux does at probe. */
async function multiportRig(
  device: ConsoleDeviceOptions,
  options: { open?: number[] } = {},
): Promise<Rig & { sent: ConsoleDeviceMessage[] }> {
  const r = rig({ device });
  postControlBuffers(r, 32);
  control(r, VIRTIO_CONSOLE_BAD_ID, VIRTIO_CONSOLE_DEVICE_READY, 1);
  const adds = await controlMessages(r);
  const sent = [...adds];
  for (const m of adds) {
    assert.equal(m.event, VIRTIO_CONSOLE_PORT_ADD);
    control(r, m.id, VIRTIO_CONSOLE_PORT_READY, 1);
  }
  sent.push(...await controlMessages(r));
  for (const id of options.open ?? []) control(r, id, VIRTIO_CONSOLE_PORT_OPEN, 1);
  await tick();
  assert.deepEqual(r.errors.map(String), []);
  return { ...r, sent };
}

/** Add a chain on queue `index` and notify the device. */
function send(r: Rig, index: number, buffers: DriverBuffer[], indirect = false): number {
  const head = r.q[index].addChain(buffers, { indirect });
  r.driver.kick(index, true);
  return head;
}

/** The driver sends one control message; returns the used length the device gave it. */
function control(r: Rig, id: number, event: number, value: number, extra?: Uint8Array): number {
  send(r, 3, [{ readable: msg(id, event, value, extra) }]);
  const used = r.q[3].takeUsed();
  assert.ok(used !== null, "the device took the control message");
  return used.len;
}

function postControlBuffers(r: Rig, n: number, size = 4096): void {
  for (let i = 0; i < n; i++) r.q[2].addChain([{ writable: size }]);
  r.driver.kick(2, true);
}

/** What the device wrote to the control receiveq since last asked. */
async function controlMessages(r: Rig): Promise<ConsoleDeviceMessage[]> {
  await tick();
  return r.q[2].takeAllUsed().filter((u) => u.len > 0).map((u) =>
    decodeConsoleControl(u.written.slice(0, u.len))
  );
}

function brief(ms: ConsoleDeviceMessage[]): string[] {
  const names = ["READY", "ADD", "REMOVE", "PORT_READY", "CONSOLE", "RESIZE", "OPEN", "NAME"];
  return ms.map((m) => {
    let s = `${names[m.event] ?? m.event}(${m.id},${m.value})`;
    if (m.event === VIRTIO_CONSOLE_PORT_NAME) s += `:${dec.decode(m.data)}`;
    if (m.event === VIRTIO_CONSOLE_RESIZE) {
      const v = new DataView(m.data.buffer, m.data.byteOffset, m.data.byteLength);
      s += `:${v.getUint16(0, true)}x${v.getUint16(2, true)}`;
    }
    return s;
  });
}

/** Reads everything a port's readable yields, in the background. */
function collect(port: ConsolePort) {
  const chunks: Uint8Array[] = [];
  const reader = port.readable.getReader();
  let ended = false;
  const done = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        ended = true;
        return;
      }
      chunks.push(value);
    }
  })();
  return {
    get bytes(): Uint8Array {
      const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      let off = 0;
      for (const c of chunks) {
        out.set(c, off);
        off += c.length;
      }
      return out;
    },
    get text(): string {
      return dec.decode(this.bytes);
    },
    get ended(): boolean {
      return ended;
    },
    done,
  };
}

/** Events dispatched on a port, in order. */
function events(port: ConsolePort): string[] {
  const seen: string[] = [];
  port.addEventListener("open", () => seen.push("open"));
  port.addEventListener("close", () => seen.push("close"));
  return seen;
}

/** Start a host write and note when it settles. */
function hostWrite(port: ConsolePort, bytes: Uint8Array) {
  const writer = port.writable.getWriter();
  const state = { settled: false, error: undefined as unknown };
  const promise = writer.write(bytes).then(
    () => void (state.settled = true),
    (e) => {
      state.settled = true;
      state.error = e;
    },
  );
  return { writer, state, promise };
}

describe("ConsoleDevice: identity and configuration", () => {
  it("is a console device offering SIZE and EMERG_WRITE, MULTIPORT only with several ports", () => {
    const single = rig({ init: false });
    assert.equal(single.transport.readU32(MmioRegister.DeviceId), TYPE_CONSOLE);
    const f1 = single.driver.deviceFeatures();
    assert.ok(f1 & featureBit(VIRTIO_CONSOLE_F_SIZE));
    assert.ok(f1 & featureBit(VIRTIO_CONSOLE_F_EMERG_WRITE));
    assert.equal(f1 & featureBit(VIRTIO_CONSOLE_F_MULTIPORT), 0n);
    assert.equal(single.transport.queues.length, 2);

    const multi = rig({ init: false, device: { ports: [{ console: true }, { name: "a" }] } });
    assert.ok(multi.driver.deviceFeatures() & featureBit(VIRTIO_CONSOLE_F_MULTIPORT));
    assert.equal(multi.transport.queues.length, 6);

    const roomy = rig({ init: false, device: { maxPorts: 8 } });
    assert.equal(roomy.transport.queues.length, 18);
    const named0 = rig({ init: false, device: { ports: [{ name: "agent" }] } });
    assert.ok(named0.driver.deviceFeatures() & featureBit(VIRTIO_CONSOLE_F_MULTIPORT));
    const quiet = rig({ init: false, device: { emergencyWrite: false } });
    assert.equal(quiet.driver.deviceFeatures() & featureBit(VIRTIO_CONSOLE_F_EMERG_WRITE), 0n);
  });

  it("lays out cols, rows and max_nr_ports little-endian", () => {
    const r = rig({
      init: false,
      device: { ports: [{ console: true, cols: 300, rows: 50 }], maxPorts: 5 },
    });
    const cfg = r.driver.readConfig(0, 12);
    assert.deepEqual([...cfg], [44, 1, 50, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
  });

  const bad: [string, ConsoleDeviceOptions, typeof RangeError | typeof TypeError][] = [
    ["maxPorts 0", { maxPorts: 0 }, RangeError],
    ["maxPorts 65", { maxPorts: 65 }, RangeError],
    ["maxPorts 1.5", { maxPorts: 1.5 }, RangeError],
    ["more ports than maxPorts", { ports: [{}, {}, {}], maxPorts: 2 }, RangeError],
    ["several ports without MULTIPORT", { maxPorts: 2, multiport: false }, RangeError],
    ["queueSize 0", { queueSize: 0 }, RangeError],
    ["an empty name", { ports: [{ name: "" }] }, RangeError],
    ["a name with NUL", { ports: [{}, { name: "a\0" }] }, TypeError],
    ["a 256-byte name", { ports: [{}, { name: "n".repeat(256) }] }, RangeError],
    ["bufferBytes 0", { ports: [{ bufferBytes: 0 }] }, RangeError],
    ["a bad overflow", { ports: [{ overflow: "spill" as "drop" }] }, TypeError],
    ["cols 65536", { ports: [{ console: true, cols: 65536 }] }, RangeError],
    ["rows -1", { ports: [{ console: true, rows: -1 }] }, RangeError],
  ];
  for (const [what, options, type] of bad) {
    it(`refuses ${what}`, () => {
      assert.throws(() => new ConsoleDevice(options), type);
    });
  }
});

for (const version of [2, 1] as const) {
  describe(`ConsoleDevice: one console port, no MULTIPORT (${version === 2 ? "modern" : "legacy"})`, () => {
    it("opens port 0 at activation and closes it at reset", async () => {
      const r = rig({ init: false, version });
      const port = r.dev.port(0)!;
      const seen = events(port);
      assert.equal(port.console, true);
      r.q = r.driver.init();
      assert.equal(r.dev.multiport, false);
      assert.equal(port.guestOpen, true);
      assert.equal(port.ready, true);
      r.transport.writeU32(MmioRegister.Status, 0);
      assert.equal(port.guestOpen, false);
      await tick();
      assert.deepEqual(seen, ["open", "close"]);
    });

    it("delivers a host write made before the driver started once port 0 is up", async () => {
      const r = rig({ version, init: false });
      const w = hostWrite(r.dev.port(0)!, enc.encode("early"));
      await tick();
      assert.equal(w.state.settled, false);
      r.q = r.driver.init();
      send(r, 0, [{ writable: 16 }]);
      await tick();
      assert.equal(w.state.settled, true);
      const used = r.q[0].takeUsed()!;
      assert.equal(dec.decode(used.written.subarray(0, used.len)), "early");
    });

    it("passes guest output to the readable, whatever the chain's shape", async () => {
      const r = rig({ version });
      const out = collect(r.dev.port(0)!);
      send(r, 1, [{ readable: enc.encode("hello ") }]);
      send(r, 1, [{ readable: enc.encode("wor") }, { readable: enc.encode("ld") }]);
      send(r, 1, [{ readable: enc.encode("!") }, { readable: enc.encode("\n") }], true);
      const used = r.q[1].takeAllUsed();
      assert.deepEqual(used.map((u) => u.len), [0, 0, 0]);
      await tick();
      assert.equal(out.text, "hello world!\n");
      assert.equal(r.dev.port(0)!.stats.bytesFromGuest, 13);
      assert.deepEqual(r.errors, []);
    });

    it("puts host writes in guest receive buffers, resolving only when all are in", async () => {
      const r = rig({ version });
      const port = r.dev.port(0)!;
      const w = hostWrite(port, enc.encode("0123456789"));
      await tick();
      assert.equal(w.state.settled, false, "no receive buffer yet: the write waits");
      send(r, 0, [{ writable: 4 }]);
      await tick();
      assert.equal(w.state.settled, false, "4 of 10 bytes in");
      send(r, 0, [{ writable: 3 }, { writable: 100 }]);
      await tick();
      assert.equal(w.state.settled, true);
      const used = r.q[0].takeAllUsed();
      assert.deepEqual(used.map((u) => u.len), [4, 6]);
      assert.equal(
        dec.decode(used[0].written) + dec.decode(used[1].written.subarray(0, 6)),
        "0123456789",
      );
      assert.equal(port.stats.bytesToGuest, 10);
    });

    it("resizes through the configuration space with a configuration interrupt", () => {
      const r = rig({ version, device: { ports: [{ console: true, cols: 80, rows: 25 }] } });
      const gen = r.transport.readU32(MmioRegister.ConfigGeneration);
      const before = r.interrupts.count;
      r.dev.resize(132, 43);
      assert.deepEqual([...r.driver.readConfig(0, 4)], [132, 0, 43, 0]);
      assert.equal(r.interrupts.count, before + 1);
      assert.ok(r.driver.ackInterrupt() & VIRTIO_INTR_CONFIG);
      if (version === 2) assert.notEqual(r.transport.readU32(MmioRegister.ConfigGeneration), gen);
      assert.deepEqual(r.dev.port(0)!.size, { cols: 132, rows: 43 });
    });

    it("resizes without an interrupt when the driver did not take F_SIZE", () => {
      const r = rig({ version, features: ALL & ~featureBit(VIRTIO_CONSOLE_F_SIZE) });
      const before = r.interrupts.count;
      r.dev.resize(100, 30);
      assert.deepEqual([...r.driver.readConfig(0, 4)], [100, 0, 30, 0]);
      assert.equal(r.interrupts.count, before);
    });

    it("takes emergency writes at any time, even before the driver starts", async () => {
      const r = rig({ version, init: false });
      const out = collect(r.dev.port(0)!);
      r.transport.write(0x100 + 8, enc.encode("E")); // a 1-byte write
      r.transport.writeU32(0x100 + 8, 0x1234_5621); // the low byte: "!"
      r.q = r.driver.init();
      r.transport.writeU32(0x100 + 8, 0x0a);
      await tick();
      assert.equal(out.text, "E!\n");
      assert.equal(r.dev.stats.emergencyWrites, 3);
      assert.deepEqual(r.transportErrors, []);
    });

    it("refuses other config writes, and emergency writes when F_EMERG_WRITE is off", () => {
      const r = rig({ version });
      r.transport.writeU32(0x100, 0x00500050); // cols/rows are the device's
      r.transport.writeU32(0x100 + 4, 9); // max_nr_ports too
      r.transport.write(0x100 + 9, new Uint8Array([1])); // not the low byte of emerg_wr
      assert.equal(r.transportErrors.filter((e) => e.code === "ConfigAccess").length, 3);
      assert.equal(r.dev.stats.dropped.badConfigWrite, 3);
      assert.deepEqual([...r.driver.readConfig(0, 4)], [0, 0, 0, 0]);
      const q = rig({ version, device: { emergencyWrite: false } });
      q.transport.writeU32(0x100 + 8, 65);
      assert.equal(q.transportErrors.length, 1);
      assert.equal(q.dev.stats.emergencyWrites, 0);
    });

    it("drops transmit chains with writable buffers and receive chains with readable ones", async () => {
      const r = rig({ version });
      const port = r.dev.port(0)!;
      const out = collect(port);
      send(r, 1, [{ readable: enc.encode("x") }, { writable: 8 }]);
      assert.deepEqual(r.q[1].takeAllUsed().map((u) => u.len), [0]);
      const w = hostWrite(port, enc.encode("data"));
      send(r, 0, [{ readable: enc.encode("?") }, { writable: 8 }]);
      send(r, 0, [{ readable: enc.encode("?") }]);
      await tick();
      assert.deepEqual(r.q[0].takeAllUsed().map((u) => u.len), [0, 0]);
      assert.equal(w.state.settled, false);
      send(r, 0, [{ writable: 8 }]);
      await tick();
      assert.equal(w.state.settled, true, "the data waited for a good buffer");
      assert.equal(r.dev.stats.dropped.badChain, 3);
      assert.equal(r.errors.length, 3);
      assert.ok(r.errors.every((e) => e.kind === "InvalidInput" && !e.needsReset));
      assert.equal(out.text, "");
    });

    it("takes at most CONSOLE_MAX_CHAIN_BYTES of one transmit chain", async () => {
      const r = rig({ version, device: { ports: [{ console: true, bufferBytes: 2 << 20 }] } });
      const out = collect(r.dev.port(0)!);
      const big = new Uint8Array(CONSOLE_MAX_CHAIN_BYTES + 10).fill(0x41);
      send(r, 1, [{ readable: big, at: 16 << 20 }]);
      await tick();
      assert.equal(out.bytes.length, CONSOLE_MAX_CHAIN_BYTES);
      assert.equal(r.dev.port(0)!.stats.droppedBytes, 10);
      assert.equal(r.dev.stats.dropped.oversized, 1);
    });
  });
}

describe("ConsoleDevice: bounded guest output", () => {
  it("a console drops its oldest output past bufferBytes, and keeps serving", async () => {
    const r = rig({ device: { ports: [{ console: true, bufferBytes: 10 }] } });
    const port = r.dev.port(0)!;
    for (const s of ["0123", "4567", "89ab", "cdef"]) send(r, 1, [{ readable: enc.encode(s) }]);
    assert.equal(r.q[1].takeAllUsed().length, 4, "every chain was taken: Linux spins on them");
    assert.equal(port.stats.droppedBytes, 6);
    const out = collect(port);
    await tick();
    assert.equal(out.text, "6789abcdef");
  });

  it('a port with overflow "block" stops taking chains until the host reads', async () => {
    const r = await multiportRig({ ports: [{ console: true }, { name: "p", bufferBytes: 8 }] }, {
      open: [1],
    });
    const port = r.dev.port(1)!;
    const tx = consoleTxQueue(1);
    for (let i = 0; i < 5; i++) send(r, tx, [{ readable: enc.encode(`msg${i}`) }]);
    // 4 + 4 bytes fill the buffer; the rest stays in the ring, nothing is lost.
    assert.equal(r.q[tx].takeAllUsed().length, 2);
    assert.equal(port.stats.droppedBytes, 0);
    const out = collect(port);
    await tick();
    await tick();
    assert.equal(r.q[tx].takeAllUsed().length, 3, "reading made room: the rest was taken");
    assert.equal(out.text, "msg0msg1msg2msg3msg4");
  });

  it("a cancelled reader drops what follows, and the guest is never held", async () => {
    const r = rig({
      device: { ports: [{ bufferBytes: 4, overflow: "block" }] },
      features: NO_MULTIPORT,
    });
    const port = r.dev.port(0)!;
    send(r, 1, [{ readable: enc.encode("abcd") }]);
    send(r, 1, [{ readable: enc.encode("efgh") }]);
    assert.equal(r.q[1].takeAllUsed().length, 1);
    await port.readable.cancel();
    await tick();
    send(r, 1, [{ readable: enc.encode("ijkl") }]);
    assert.equal(r.q[1].takeAllUsed().length, 2);
    assert.equal(port.stats.droppedBytes, 12);
  });
});

describe("ConsoleDevice: MULTIPORT", () => {
  it("announces ports on DEVICE_READY and configures each on PORT_READY", async () => {
    const r = rig({
      device: {
        ports: [{ console: true, cols: 80, rows: 24 }, { name: "org.example.agent" }, {
          name: "off",
          hostConnected: false,
        }],
      },
    });
    assert.equal(r.dev.multiport, true);
    postControlBuffers(r, 16);
    assert.deepEqual(await controlMessages(r), [], "nothing before DEVICE_READY");
    assert.equal(control(r, VIRTIO_CONSOLE_BAD_ID, VIRTIO_CONSOLE_DEVICE_READY, 1), 0);
    assert.deepEqual(brief(await controlMessages(r)), ["ADD(0,0)", "ADD(1,0)", "ADD(2,0)"]);
    control(r, 0, VIRTIO_CONSOLE_PORT_READY, 1);
    control(r, 1, VIRTIO_CONSOLE_PORT_READY, 1);
    control(r, 2, VIRTIO_CONSOLE_PORT_READY, 1);
    assert.deepEqual(brief(await controlMessages(r)), [
      "CONSOLE(0,1)",
      "RESIZE(0,0):80x24",
      "OPEN(0,1)",
      "NAME(1,0):org.example.agent",
      "OPEN(1,1)",
      "NAME(2,0):off",
    ]);
    assert.equal(r.dev.port(1)!.ready, true);
    assert.equal(r.dev.stats.controlReceived, 4);
    assert.equal(r.dev.stats.controlSent, 9);
    assert.deepEqual(r.errors, []);
  });

  it("follows the guest opening and closing a port, with events", async () => {
    const r = await multiportRig({ ports: [{ console: true }, { name: "agent" }] });
    const port = r.dev.port(1)!;
    const seen = events(port);
    control(r, 1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    assert.equal(port.guestOpen, true);
    control(r, 1, VIRTIO_CONSOLE_PORT_OPEN, 0);
    assert.equal(port.guestOpen, false);
    control(r, 1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    await tick();
    assert.deepEqual(seen, ["open", "close", "open"]);
  });

  it("holds host data until the guest opens the port, then delivers it", async () => {
    const r = await multiportRig({ ports: [{ console: true }, { name: "agent" }] });
    const port = r.dev.port(1)!;
    const rx = consoleRxQueue(1);
    send(r, rx, [{ writable: 64 }]);
    const w = hostWrite(port, enc.encode("hello guest"));
    await tick();
    assert.equal(w.state.settled, false, "Linux drops data for a closed port: the device waits");
    assert.equal(r.q[rx].takeUsed(), null);
    control(r, 1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    await tick();
    assert.equal(w.state.settled, true);
    const used = r.q[rx].takeUsed()!;
    assert.equal(dec.decode(used.written.subarray(0, used.len)), "hello guest");
  });

  it("carries guest output of a named port, and of port 0, to their readables", async () => {
    const r = await multiportRig({ ports: [{ console: true }, { name: "a" }, { name: "b" }] }, {
      open: [1, 2],
    });
    const outs = [0, 1, 2].map((id) => collect(r.dev.port(id)!));
    for (const id of [2, 0, 1]) send(r, consoleTxQueue(id), [{ readable: enc.encode(`to-${id}`) }]);
    await tick();
    assert.deepEqual(outs.map((o) => o.text), ["to-0", "to-1", "to-2"]);
  });

  it("tells the driver when the host connects or disconnects, keeping only the latest", async () => {
    const r = await multiportRig({ ports: [{ console: true }, { name: "agent" }] });
    const port = r.dev.port(1)!;
    port.setHostConnected(false);
    assert.deepEqual(brief(await controlMessages(r)), ["OPEN(1,0)"]);
    // No receive buffers: the messages wait, and a newer state replaces an older one.
    port.setHostConnected(true);
    port.setHostConnected(false);
    port.setHostConnected(true);
    await tick();
    postControlBuffers(r, 4);
    assert.deepEqual(brief(await controlMessages(r)), ["OPEN(1,1)"]);
    // Closing the writable disconnects for good.
    await port.writable.close();
    assert.equal(port.hostConnected, false);
    assert.deepEqual(brief(await controlMessages(r)), ["OPEN(1,0)"]);
  });

  it("resizes a console port with RESIZE messages, not the configuration interrupt", async () => {
    const r = await multiportRig({ ports: [{ console: true }, { name: "plain" }] });
    const before = r.interrupts.count;
    r.dev.resize(120, 40);
    r.dev.port(1)!.resize(10, 10); // not a console: nothing to tell
    assert.deepEqual(brief(await controlMessages(r)), ["RESIZE(0,0):120x40"]);
    assert.deepEqual([...r.driver.readConfig(0, 4)], [120, 0, 40, 0]);
    assert.equal(r.driver.ackInterrupt() & VIRTIO_INTR_CONFIG, 0);
    assert.ok(r.interrupts.count >= before);
  });

  it("hot-plugs and unplugs ports", async () => {
    const r = await multiportRig({ ports: [{ console: true }], maxPorts: 4 });
    const port = r.dev.addPort({ name: "late" });
    assert.equal(port.id, 1);
    assert.deepEqual(brief(await controlMessages(r)), ["ADD(1,0)"]);
    control(r, 1, VIRTIO_CONSOLE_PORT_READY, 1);
    assert.deepEqual(brief(await controlMessages(r)), ["NAME(1,0):late", "OPEN(1,1)"]);
    const seen = events(port);
    control(r, 1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    const out = collect(port);
    const w = hostWrite(port, enc.encode("never read"));
    r.dev.removePort(1);
    assert.deepEqual(brief(await controlMessages(r)), ["REMOVE(1,0)"]);
    await w.promise;
    assert.ok(w.state.error instanceof ConsoleError);
    assert.equal((w.state.error as ConsoleError).code, "PortRemoved");
    await out.done;
    assert.equal(out.ended, true);
    await port.closed;
    assert.deepEqual(seen, ["open", "close"]);
    assert.equal(r.dev.port(1), undefined);
    // Its transmitq has no port now: bytes there are dropped and counted.
    send(r, consoleTxQueue(1), [{ readable: enc.encode("late bytes") }]);
    assert.equal(r.dev.stats.dropped.noPort, 1);
    // A port added and removed before the driver heard of it costs the driver nothing.
    r.q[2].takeAllUsed();
    const brief2 = r.dev.addPort({ id: 3 });
    r.dev.removePort(brief2.id);
    assert.deepEqual(await controlMessages(r), []);
    assert.throws(() => r.dev.removePort(0), RangeError);
    assert.throws(() => r.dev.removePort(2), RangeError);
    assert.throws(() => r.dev.addPort({ id: 0 }), RangeError);
    assert.throws(() => r.dev.addPort({ id: 4 }), RangeError);
  });

  it("announces ports added before DEVICE_READY along with the others", async () => {
    const r = rig({ device: { maxPorts: 3 } });
    r.dev.addPort({ id: 2, name: "early" });
    postControlBuffers(r, 8);
    control(r, VIRTIO_CONSOLE_BAD_ID, VIRTIO_CONSOLE_DEVICE_READY, 1);
    assert.deepEqual(brief(await controlMessages(r)), ["ADD(0,0)", "ADD(2,0)"]);
  });

  it("forgets the driver's state on reset, keeps the host's, and serves a restored driver", async () => {
    const r = await multiportRig({ ports: [{ console: true }, { name: "agent" }] }, { open: [1] });
    const port = r.dev.port(1)!;
    const seen = events(port);
    r.transport.writeU32(MmioRegister.Status, 0);
    assert.equal(port.guestOpen, false);
    assert.equal(port.ready, false);
    const w = hostWrite(port, enc.encode("after reset"));
    // Linux's restore path: no DEVICE_READY, a PORT_READY and PORT_OPEN per port.
    r.q = r.driver.init();
    postControlBuffers(r, 8);
    control(r, 1, VIRTIO_CONSOLE_PORT_READY, 1);
    assert.deepEqual(brief(await controlMessages(r)), ["NAME(1,0):agent", "OPEN(1,1)"]);
    send(r, consoleRxQueue(1), [{ writable: 64 }]);
    control(r, 1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    await tick();
    assert.equal(w.state.settled, true);
    assert.deepEqual(seen, ["close", "open"]);
  });

  it("counts the driver's failures to set up the device or a port", async () => {
    const r = rig({ device: { ports: [{ console: true }, { name: "x" }] } });
    postControlBuffers(r, 8);
    control(r, VIRTIO_CONSOLE_BAD_ID, VIRTIO_CONSOLE_DEVICE_READY, 0);
    assert.deepEqual(await controlMessages(r), [], "no ports for a driver that failed");
    control(r, VIRTIO_CONSOLE_BAD_ID, VIRTIO_CONSOLE_DEVICE_READY, 1);
    control(r, VIRTIO_CONSOLE_BAD_ID, VIRTIO_CONSOLE_DEVICE_READY, 1);
    assert.deepEqual(brief(await controlMessages(r)), ["ADD(0,0)", "ADD(1,0)"], "once only");
    control(r, 1, VIRTIO_CONSOLE_PORT_READY, 0);
    assert.equal(r.dev.port(1)!.ready, false);
    assert.equal(r.dev.stats.driverFailures, 2);
    control(r, 1, VIRTIO_CONSOLE_PORT_READY, 1);
    control(r, 1, VIRTIO_CONSOLE_PORT_READY, 1); // a duplicate changes nothing
    assert.deepEqual(brief(await controlMessages(r)), ["NAME(1,0):x", "OPEN(1,1)"]);
  });

  const hostile: [string, DriverBuffer[], string][] = [
    ["a 4-byte message", [{ readable: new Uint8Array(4) }], "short"],
    ["an empty chain", [{ readable: new Uint8Array(0) }], "short"],
    ["a message with a writable buffer", [{
      readable: msg(1, VIRTIO_CONSOLE_PORT_OPEN, 1),
    }, { writable: 8 }], "badChain"],
    [
      "PORT_ADD from the driver",
      [{ readable: msg(1, VIRTIO_CONSOLE_PORT_ADD, 0) }],
      "badEvent",
    ],
    ["PORT_REMOVE from the driver", [{
      readable: msg(1, VIRTIO_CONSOLE_PORT_REMOVE, 0),
    }], "badEvent"],
    ["CONSOLE_PORT from the driver", [{
      readable: msg(0, VIRTIO_CONSOLE_CONSOLE_PORT, 1),
    }], "badEvent"],
    [
      "RESIZE from the driver",
      [{ readable: msg(0, VIRTIO_CONSOLE_RESIZE, 0) }],
      "badEvent",
    ],
    [
      "PORT_NAME from the driver",
      [{ readable: msg(1, VIRTIO_CONSOLE_PORT_NAME, 0) }],
      "badEvent",
    ],
    ["event 200", [{ readable: msg(1, 200, 0) }], "badEvent"],
    [
      "PORT_OPEN value 2",
      [{ readable: msg(1, VIRTIO_CONSOLE_PORT_OPEN, 2) }],
      "badValue",
    ],
    ["PORT_READY value 0x8000", [{
      readable: msg(1, VIRTIO_CONSOLE_PORT_READY, 0x8000),
    }], "badValue"],
    ["PORT_OPEN for port max_nr_ports", [{
      readable: msg(4, VIRTIO_CONSOLE_PORT_OPEN, 1),
    }], "badPort"],
    ["PORT_OPEN for port ~0", [{
      readable: msg(0xffffffff, VIRTIO_CONSOLE_PORT_OPEN, 1),
    }], "badPort"],
    ["PORT_OPEN for a port that does not exist", [{
      readable: msg(3, VIRTIO_CONSOLE_PORT_OPEN, 1),
    }], "unknownPort"],
    ["PORT_READY for a port that does not exist", [{
      readable: msg(2, VIRTIO_CONSOLE_PORT_READY, 1),
    }], "unknownPort"],
  ];
  for (const [what, buffers, reason] of hostile) {
    it(`drops ${what} (${reason}) and goes on`, async () => {
      const r = await multiportRig({ ports: [{ console: true }, { name: "ok" }], maxPorts: 4 });
      send(r, 3, buffers);
      const used = r.q[3].takeUsed();
      assert.ok(used !== null);
      assert.equal(used.len, 0);
      assert.equal(r.dev.stats.dropped[reason as keyof typeof r.dev.stats.dropped], 1);
      assert.equal(r.errors.length, 1);
      assert.equal(r.errors[0].kind, "InvalidInput");
      assert.equal(r.errors[0].needsReset, false);
      assert.equal(r.transport.readU32(MmioRegister.Status) & 0x40, 0, "no NEEDS_RESET");
      assert.equal(r.dev.port(1)!.guestOpen, false);
      control(r, 1, VIRTIO_CONSOLE_PORT_OPEN, 1);
      assert.equal(r.dev.port(1)!.guestOpen, true, "the device still serves");
    });
  }

  it("returns control receive buffers that are too small or readable, keeping the message", async () => {
    const r = rig({ device: { ports: [{ console: true }, { name: "a-long-port-name" }] } });
    r.q[2].addChain([{ writable: 4 }]);
    r.q[2].addChain([{ readable: new Uint8Array(8) }, { writable: 64 }]);
    r.q[2].addChain([{ writable: 8 }]);
    r.driver.kick(2, true);
    control(r, VIRTIO_CONSOLE_BAD_ID, VIRTIO_CONSOLE_DEVICE_READY, 1);
    await tick();
    const used = r.q[2].takeAllUsed();
    assert.deepEqual(used.map((u) => u.len), [0, 0, 8]);
    assert.deepEqual(brief([decodeConsoleControl(used[2].written)]), ["ADD(0,0)"]);
    assert.equal(r.dev.stats.dropped.smallBuffer, 1);
    assert.equal(r.dev.stats.dropped.badChain, 1);
    // A name longer than the buffers waits for a big enough one.
    r.q[2].addChain([{ writable: 8 }]);
    r.q[2].addChain([{ writable: 8 }]);
    r.driver.kick(2, true);
    control(r, 1, VIRTIO_CONSOLE_PORT_READY, 1);
    assert.deepEqual(brief(await controlMessages(r)), ["ADD(1,0)"]);
    postControlBuffers(r, 2, 32);
    assert.deepEqual(brief(await controlMessages(r)), ["NAME(1,0):a-long-port-name", "OPEN(1,1)"]);
  });

  it("survives random control messages and keeps serving", async () => {
    const r = await multiportRig({ ports: [{ console: true }, { name: "agent" }], maxPorts: 3 });
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    for (let i = 0; i < 300; i++) {
      const len = rand(14);
      const bytes = new Uint8Array(len);
      for (let j = 0; j < len; j++) bytes[j] = rand(4) === 0 ? rand(256) : rand(8);
      send(r, 3, [{ readable: bytes }]);
      assert.equal(r.q[3].takeUsed()?.len, 0);
    }
    await tick();
    r.q[2].takeAllUsed();
    const dropped = Object.values(r.dev.stats.dropped).reduce((a, b) => a + b, 0);
    assert.equal(dropped + r.dev.stats.controlReceived - 3, 300);
    assert.equal(r.transport.readU32(MmioRegister.Status) & 0x40, 0);
    control(r, 1, VIRTIO_CONSOLE_PORT_OPEN, 1);
    const out = collect(r.dev.port(1)!);
    send(r, consoleTxQueue(1), [{ readable: enc.encode("still here") }]);
    await tick();
    assert.equal(out.text, "still here");
  });

  it("refuses to start when the driver took MULTIPORT without the control queues", () => {
    const r = rig({ init: false, device: { ports: [{ console: true }, { name: "a" }] } });
    r.driver.init({ queues: 2 });
    assert.equal(r.transport.isActive, false);
    assert.ok(r.transport.readU32(MmioRegister.Status) & 0x40, "NEEDS_RESET");
    assert.ok(r.transportErrors.some((e) => e.code === "ActivationFailed"));
  });

  it("ignores the control and other ports' queues when the driver did not take MULTIPORT", () => {
    const r = rig({
      device: { ports: [{ console: true }, { name: "a" }] },
      features: NO_MULTIPORT,
    });
    assert.equal(r.dev.multiport, false);
    assert.equal(r.q.length, 6);
    send(r, 3, [{ readable: msg(0, VIRTIO_CONSOLE_DEVICE_READY, 1) }]);
    send(r, 5, [{ readable: enc.encode("x") }]);
    assert.equal(r.q[3].takeUsed(), null);
    assert.equal(r.q[5].takeUsed(), null);
    assert.equal(r.dev.port(0)!.guestOpen, true, "port 0 is the console");
  });

  it("serves a long transmit queue in bounded passes", async () => {
    const r = rig({
      device: { ports: [{ console: true, bufferBytes: 1 << 20 }], queueSize: 1024 },
      queueSize: 1024,
    });
    for (let i = 0; i < 600; i++) r.q[1].addChain([{ readable: enc.encode("z") }]);
    r.driver.kick(1, true);
    assert.equal(r.q[1].takeAllUsed().length, 256, "one pass: the budget");
    await tick();
    await tick();
    assert.equal(r.q[1].takeAllUsed().length, 344);
  });

  it("works on packed rings", async () => {
    const r = rig({ init: false, device: { ports: [{ console: true }, { name: "p" }] } });
    assert.ok(r.driver.deviceFeatures() & featureBit(VIRTIO_F_RING_PACKED));
    const q = r.driver.initPacked();
    q[2].addChain([{ writable: 64 }]);
    r.driver.kick(2, true);
    q[3].addChain([{
      readable: msg(VIRTIO_CONSOLE_BAD_ID, VIRTIO_CONSOLE_DEVICE_READY, 1),
    }]);
    r.driver.kick(3, true);
    await tick();
    const used = q[2].takeUsed()!;
    assert.deepEqual(brief([decodeConsoleControl(used.written.subarray(0, used.len))]), [
      "ADD(0,0)",
    ]);
  });

  it("ends every port when the device is removed", async () => {
    const r = await multiportRig({ ports: [{ console: true }, { name: "a" }] });
    const out = collect(r.dev.port(1)!);
    r.dev.remove();
    await out.done;
    const w = hostWrite(r.dev.port(1)!, enc.encode("x"));
    await w.promise;
    assert.equal((w.state.error as ConsoleError).code, "DeviceRemoved");
    assert.throws(() => r.dev.addPort({}), RangeError);
  });
});

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { GuestMemory } from "../../memory/guest_memory.ts";
import { SplitQueue } from "../../queue/split.ts";
import type { DescriptorChain } from "../../queue/chain.ts";
import { type DriverBuffer, DriverQueue } from "../../testing/queue_driver.ts";
import {
  checkConsoleControl,
  consoleControl,
  consoleQueueRole,
  consoleResize,
  consoleRxQueue,
  consoleTxQueue,
  decodeConsoleControl,
  encodePortName,
  parseConsoleControl,
  VIRTIO_CONSOLE_BAD_ID,
  VIRTIO_CONSOLE_CONSOLE_PORT,
  VIRTIO_CONSOLE_DEVICE_READY,
  VIRTIO_CONSOLE_PORT_ADD,
  VIRTIO_CONSOLE_PORT_NAME,
  VIRTIO_CONSOLE_PORT_OPEN,
  VIRTIO_CONSOLE_PORT_READY,
  VIRTIO_CONSOLE_PORT_REMOVE,
  VIRTIO_CONSOLE_RESIZE,
} from "../../devices/_console_control.ts";

function chainOf(buffers: DriverBuffer[]): DescriptorChain {
  const mem = GuestMemory.create(1 << 20);
  const driver = new DriverQueue(mem, { size: 16 });
  const queue = new SplitQueue(16);
  driver.program(queue);
  driver.addChain(buffers);
  return queue.pop(mem)!;
}

describe("console control messages (virtio 1.2 §5.3.6.2)", () => {
  it("encodes the 8-byte header little-endian, with what follows", () => {
    assert.deepEqual(
      [...consoleControl({ id: 0x01020304, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 })],
      [4, 3, 2, 1, 6, 0, 1, 0],
    );
    const name = consoleControl({
      id: 2,
      event: VIRTIO_CONSOLE_PORT_NAME,
      data: new TextEncoder().encode("ab"),
    });
    assert.deepEqual([...name], [2, 0, 0, 0, 7, 0, 0, 0, 0x61, 0x62]);
    const resize = decodeConsoleControl(consoleResize(0, { cols: 132, rows: 43 }));
    assert.equal(resize.event, VIRTIO_CONSOLE_RESIZE);
    assert.deepEqual([...resize.data], [132, 0, 43, 0]);
    assert.throws(() => decodeConsoleControl(new Uint8Array(7)), RangeError);
  });

  it("maps queue indices to ports and the control queues", () => {
    assert.deepEqual([0, 1, 2, 3, 4, 5, 9].map(consoleQueueRole), [
      { control: false, port: 0, rx: true },
      { control: false, port: 0, rx: false },
      { control: true, rx: true },
      { control: true, rx: false },
      { control: false, port: 1, rx: true },
      { control: false, port: 1, rx: false },
      { control: false, port: 3, rx: false },
    ]);
    assert.deepEqual([0, 1, 2, 5].map(consoleRxQueue), [0, 4, 6, 12]);
    assert.deepEqual([0, 1, 2, 5].map(consoleTxQueue), [1, 5, 7, 13]);
  });

  const accepted: [string, number, number, number][] = [
    ["DEVICE_READY with any id (Linux sends ~0)", VIRTIO_CONSOLE_BAD_ID, 0, 1],
    ["DEVICE_READY failure", 0, 0, 0],
    ["PORT_READY", 3, 3, 1],
    ["PORT_READY failure", 0, 3, 0],
    ["PORT_OPEN", 7, 6, 1],
    ["PORT_CLOSE", 7, 6, 0],
  ];
  for (const [what, id, event, value] of accepted) {
    it(`accepts ${what}`, () => {
      const p = parseConsoleControl(
        chainOf([{ readable: consoleControl({ id, event, value }) }]),
        8,
      );
      assert.deepEqual(p, { ok: true, message: { id, event, value } });
    });
  }

  const refused: [string, number, number, number, string][] = [
    ["PORT_ADD (a device event)", 1, VIRTIO_CONSOLE_PORT_ADD, 0, "badEvent"],
    ["PORT_REMOVE (a device event)", 1, VIRTIO_CONSOLE_PORT_REMOVE, 0, "badEvent"],
    ["CONSOLE_PORT (a device event)", 1, VIRTIO_CONSOLE_CONSOLE_PORT, 1, "badEvent"],
    ["RESIZE (a device event)", 0, VIRTIO_CONSOLE_RESIZE, 0, "badEvent"],
    ["PORT_NAME (a device event)", 1, VIRTIO_CONSOLE_PORT_NAME, 0, "badEvent"],
    ["an unknown event", 1, 8, 0, "badEvent"],
    ["event 0xffff", 1, 0xffff, 1, "badEvent"],
    ["PORT_OPEN with value 2", 1, VIRTIO_CONSOLE_PORT_OPEN, 2, "badValue"],
    ["DEVICE_READY with value 0xffff", 0, VIRTIO_CONSOLE_DEVICE_READY, 0xffff, "badValue"],
    ["PORT_READY with value 7", 1, VIRTIO_CONSOLE_PORT_READY, 7, "badValue"],
    ["PORT_OPEN for port max_nr_ports", 8, VIRTIO_CONSOLE_PORT_OPEN, 1, "badPort"],
    ["PORT_READY for port 2^32-1", 0xffffffff, VIRTIO_CONSOLE_PORT_READY, 1, "badPort"],
  ];
  for (const [what, id, event, value, refusal] of refused) {
    it(`refuses ${what}`, () => {
      const p = parseConsoleControl(
        chainOf([{ readable: consoleControl({ id, event, value }) }]),
        8,
      );
      assert.equal(p.ok, false);
      assert.equal(!p.ok && p.refusal, refusal);
      assert.deepEqual(checkConsoleControl({ id, event, value }, 8), p);
    });
  }

  it("refuses a short message, also split over buffers", () => {
    for (const buffers of [[{ readable: new Uint8Array(7) }], [{ readable: new Uint8Array(0) }]]) {
      const p = parseConsoleControl(chainOf(buffers), 8);
      assert.deepEqual(p, { ok: false, refusal: "short" });
    }
    const whole = consoleControl({ id: 2, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
    const split = parseConsoleControl(
      chainOf([{ readable: whole.subarray(0, 3) }, { readable: whole.subarray(3) }]),
      8,
    );
    assert.deepEqual(split, { ok: true, message: { id: 2, event: 6, value: 1 } });
  });

  it("refuses a chain with device-writable buffers and ignores trailing bytes", () => {
    const msg = consoleControl({ id: 1, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
    assert.deepEqual(parseConsoleControl(chainOf([{ readable: msg }, { writable: 8 }]), 8), {
      ok: false,
      refusal: "badChain",
    });
    const long = new Uint8Array(64);
    long.set(msg);
    assert.equal(parseConsoleControl(chainOf([{ readable: long }]), 8).ok, true);
  });

  it("checks port names", () => {
    assert.deepEqual([...encodePortName("é")], [0xc3, 0xa9]);
    assert.equal(encodePortName("x".repeat(255)).length, 255);
    assert.throws(() => encodePortName(""), RangeError);
    assert.throws(() => encodePortName("x".repeat(256)), RangeError);
    assert.throws(() => encodePortName("é".repeat(128)), RangeError);
    assert.throws(() => encodePortName("a\0b"), TypeError);
    assert.throws(() => encodePortName("\ud800"), TypeError);
    assert.throws(() => encodePortName(7 as unknown as string), TypeError);
  });
});

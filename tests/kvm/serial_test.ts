// The 16550A model against what Linux's 8250 driver does: autoconfig probing, the console
// write path, THRE interrupts and their acknowledgement, receive, and loopback.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Serial8250 } from "../../kvm/serial.ts";

function uart() {
  const out: number[] = [];
  const irqs: boolean[] = [];
  const u = new Serial8250({ output: (b) => out.push(b), irq: (l) => irqs.push(l) });
  return { u, out, irqs };
}

test("Serial8250 passes the 8250 autoconfig probe as a 16550A", () => {
  const { u } = uart();
  // Scratch register.
  u.write(7, 0xa5);
  assert.equal(u.read(7), 0xa5);
  u.write(7, 0x5a);
  assert.equal(u.read(7), 0x5a);
  // IER: zero reads back zero, 0x0f reads back 0x0f.
  u.write(1, 0);
  assert.equal(u.read(1) & 0x0f, 0);
  u.write(1, 0x0f);
  assert.equal(u.read(1) & 0x0f, 0x0f);
  u.write(1, 0);
  // Loopback: MCR = LOOP | 0x0a → MSR high nibble 0x90.
  u.write(4, 0x10 | 0x0a);
  assert.equal(u.read(6) & 0xf0, 0x90);
  u.write(4, 0);
  // FIFO enabled → IIR bits 7:6 set (16550A).
  u.write(2, 0x01);
  assert.equal(u.read(2) >> 6, 3);
  u.write(2, 0);
  assert.equal(u.read(2) >> 6, 0);
  // Divisor latch.
  u.write(3, 0x80);
  u.write(0, 0x01);
  u.write(1, 0x00);
  assert.equal(u.read(0), 0x01);
  u.write(3, 0x03);
  assert.equal(u.read(3), 0x03);
});

test("Serial8250 transmits at once: LSR always shows THR empty", () => {
  const { u, out } = uart();
  for (const b of new TextEncoder().encode("hi\n")) {
    assert.equal(u.read(5) & 0x60, 0x60);
    u.write(0, b);
  }
  assert.deepEqual(out, [0x68, 0x69, 0x0a]);
  assert.equal(u.read(5) & 0x60, 0x60);
});

test("Serial8250 raises THRE when enabled, acks it on IIR read, re-raises after a write", () => {
  const { u, irqs } = uart();
  assert.equal(u.read(2) & 0x0f, 0x01, "no interrupt");
  u.write(1, 0x02); // IER.THRI
  assert.equal(u.irqLevel, true);
  assert.deepEqual(irqs, [true]);
  assert.equal(u.read(2) & 0x0f, 0x02, "THRE pending");
  assert.equal(u.irqLevel, false, "IIR read acknowledges");
  assert.equal(u.read(2) & 0x0f, 0x01);
  u.write(0, 0x41);
  assert.equal(u.irqLevel, true, "empty again after the byte left");
  u.write(1, 0);
  assert.equal(u.irqLevel, false);
  assert.deepEqual(irqs, [true, false, true, false]);
});

test("Serial8250 receives input with data-ready interrupts and flags overrun", () => {
  const { u } = uart();
  u.write(1, 0x01); // IER.RDI
  u.input(new Uint8Array([0x31, 0x32]));
  assert.equal(u.irqLevel, true);
  assert.equal(u.read(2) & 0x0f, 0x04);
  assert.equal(u.read(5) & 1, 1);
  assert.equal(u.read(0), 0x31);
  assert.equal(u.read(0), 0x32);
  assert.equal(u.read(5) & 1, 0);
  assert.equal(u.irqLevel, false);
  u.input(new Uint8Array(20));
  assert.equal(u.rxPending, 16);
  assert.equal(u.read(5) & 0x02, 0x02, "overrun");
  assert.equal(u.read(5) & 0x02, 0, "cleared by the read");
  u.write(2, 0x03); // enable + clear receive FIFO
  assert.equal(u.rxPending, 0);
});

test("Serial8250 loopback sends THR to RBR, not to the output", () => {
  const { u, out } = uart();
  u.write(4, 0x10);
  u.write(0, 0x55);
  assert.deepEqual(out, []);
  assert.equal(u.read(0), 0x55);
});

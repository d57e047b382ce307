/**
 * The wire format of the console device (virtio 1.2 §5.3): configuration layout, feature
 * bits, the control messages of MULTIPORT, and a pure parser for the messages a driver sends
 * on the control transmitq — guest bytes in, a typed message or a typed refusal out, before
 * the device acts on anything.
 *
 * @module
 */

import type { DescriptorChain } from "../queue/chain.ts";

// ---------------------------------------------------------------------------
// Feature bits (virtio 1.2 §5.3.3)

/** Feature bit: `cols` and `rows` in the configuration are valid. */
export const VIRTIO_CONSOLE_F_SIZE = 0;
/** Feature bit: several ports; `max_nr_ports` is valid and the control queues are used. */
export const VIRTIO_CONSOLE_F_MULTIPORT = 1;
/** Feature bit: the driver may write characters to `emerg_wr`. */
export const VIRTIO_CONSOLE_F_EMERG_WRITE = 2;

// ---------------------------------------------------------------------------
// Configuration layout (virtio 1.2 §5.3.4): le16 cols, le16 rows, le32 max_nr_ports,
// le32 emerg_wr.

/** Offset of `cols` in the configuration space. */
export const CONSOLE_CONFIG_COLS = 0;
/** Offset of `rows`. */
export const CONSOLE_CONFIG_ROWS = 2;
/** Offset of `max_nr_ports`. */
export const CONSOLE_CONFIG_MAX_NR_PORTS = 4;
/** Offset of `emerg_wr`. */
export const CONSOLE_CONFIG_EMERG_WR = 8;
/** Size of the configuration space. */
export const CONSOLE_CONFIG_SIZE = 12;

// ---------------------------------------------------------------------------
// Queues (virtio 1.2 §5.3.2)

/** The control receiveq (device → driver), with MULTIPORT. */
export const CONSOLE_CONTROL_RX_QUEUE = 2;
/** The control transmitq (driver → device), with MULTIPORT. */
export const CONSOLE_CONTROL_TX_QUEUE = 3;

/**
 * The receiveq of a port: 0 for port 0, then 4, 6, … (the control queues sit at 2 and 3).
 * @param port Port number.
 * @returns The queue index.
 */
export function consoleRxQueue(port: number): number {
  return port === 0 ? 0 : 2 * port + 2;
}

/**
 * The transmitq of a port: 1 for port 0, then 5, 7, ….
 * @param port Port number.
 * @returns The queue index.
 */
export function consoleTxQueue(port: number): number {
  return consoleRxQueue(port) + 1;
}

/**
 * Which port and direction a queue index serves.
 * @param index Queue index.
 * @returns `control` for queues 2 and 3, else the port and whether it is its receiveq.
 */
export function consoleQueueRole(
  index: number,
): { control: true; rx: boolean } | { control: false; port: number; rx: boolean } {
  if (index === CONSOLE_CONTROL_RX_QUEUE || index === CONSOLE_CONTROL_TX_QUEUE) {
    return { control: true, rx: index === CONSOLE_CONTROL_RX_QUEUE };
  }
  const port = index < 2 ? 0 : (index - 2) >> 1;
  return { control: false, port, rx: (index & 1) === 0 };
}

// ---------------------------------------------------------------------------
// Control messages (virtio 1.2 §5.3.6.2): le32 id, le16 event, le16 value, then data.

/** Size of `struct virtio_console_control`. */
export const CONSOLE_CONTROL_SIZE = 8;
/** Size of the `struct virtio_console_resize` that follows a RESIZE message. */
export const CONSOLE_RESIZE_SIZE = 4;

/** Driver → device: the driver is ready for control messages (`value` 1) or failed (0). */
export const VIRTIO_CONSOLE_DEVICE_READY = 0;
/** Device → driver: a new port (the specification's DEVICE_ADD; Linux's PORT_ADD). */
export const VIRTIO_CONSOLE_PORT_ADD = 1;
/** Device → driver: a port goes away (the specification's DEVICE_REMOVE). */
export const VIRTIO_CONSOLE_PORT_REMOVE = 2;
/** Driver → device: a port was set up (`value` 1) or failed (0). */
export const VIRTIO_CONSOLE_PORT_READY = 3;
/** Device → driver: the port is a console (an `hvc` in Linux). */
export const VIRTIO_CONSOLE_CONSOLE_PORT = 4;
/** Device → driver: a console's size changed; a `virtio_console_resize` follows. */
export const VIRTIO_CONSOLE_RESIZE = 5;
/** Both ways: the sender's end of the port is open (`value` 1) or closed (0). */
export const VIRTIO_CONSOLE_PORT_OPEN = 6;
/** Device → driver: the port's UTF-8 name follows (no NUL). */
export const VIRTIO_CONSOLE_PORT_NAME = 7;

/** The port id a driver puts in DEVICE_READY (it names no port). */
export const VIRTIO_CONSOLE_BAD_ID = 0xffffffff;

/** Longest port name accepted, in UTF-8 bytes. */
export const CONSOLE_MAX_NAME_BYTES = 255;

/** A control message a driver may send, parsed and checked. */
export interface ConsoleDriverMessage {
  /** The port (unchecked for DEVICE_READY, which names none). */
  id: number;
  /** `VIRTIO_CONSOLE_DEVICE_READY`, `_PORT_READY` or `_PORT_OPEN`. */
  event: number;
  /** 0 or 1. */
  value: 0 | 1;
}

/** Why a control message from the driver was refused (and dropped). */
export type ConsoleControlRefusal =
  /** The chain has device-writable buffers (virtio 1.2 §5.3.6.1: a transmitq takes none). */
  | "badChain"
  /** Fewer than 8 readable bytes. */
  | "short"
  /** An event the driver never sends (one of the device's, or an unknown number). */
  | "badEvent"
  /** A value other than 0 or 1. */
  | "badValue"
  /** A port id at or beyond `max_nr_ports`. */
  | "badPort";

/** What {@linkcode parseConsoleControl} found. */
export type ConsoleControlParse =
  | { ok: true; message: ConsoleDriverMessage }
  | { ok: false; refusal: ConsoleControlRefusal; id?: number; event?: number };

/**
 * Parse one control message the driver put on the control transmitq (virtio 1.2 §5.3.6.2).
 * Only the three driver events are accepted (DEVICE_READY, PORT_READY, PORT_OPEN), each with
 * a value of 0 or 1 and, but for DEVICE_READY, a port below `maxPorts`. Bytes after the
 * 8-byte header are ignored. Whether the port exists is the device's question.
 * @param chain The chain, not read yet.
 * @param maxPorts `max_nr_ports`.
 * @returns The message, or why it is refused.
 */
export function parseConsoleControl(chain: DescriptorChain, maxPorts: number): ConsoleControlParse {
  if (chain.writableBytes > 0) return { ok: false, refusal: "badChain" };
  if (chain.readableBytes < CONSOLE_CONTROL_SIZE) return { ok: false, refusal: "short" };
  const r = chain.reader;
  const id = r.readU32();
  const event = r.readU16();
  const value = r.readU16();
  return checkConsoleControl({ id, event, value }, maxPorts);
}

/**
 * The rules of {@linkcode parseConsoleControl} on decoded fields.
 * @param fields The port id, event and value.
 * @param maxPorts `max_nr_ports`.
 * @returns The message, or why it is refused.
 */
export function checkConsoleControl(
  fields: { id: number; event: number; value: number },
  maxPorts: number,
): ConsoleControlParse {
  const { id, event, value } = fields;
  switch (event) {
    case VIRTIO_CONSOLE_DEVICE_READY:
    case VIRTIO_CONSOLE_PORT_READY:
    case VIRTIO_CONSOLE_PORT_OPEN:
      break;
    default:
      return { ok: false, refusal: "badEvent", id, event };
  }
  if (value !== 0 && value !== 1) return { ok: false, refusal: "badValue", id, event };
  if (event !== VIRTIO_CONSOLE_DEVICE_READY && !(id < maxPorts)) {
    return { ok: false, refusal: "badPort", id, event };
  }
  return { ok: true, message: { id, event, value } };
}

// ---------------------------------------------------------------------------
// Encoders

/** A control message to encode: the header fields and what follows them. */
export interface ConsoleControlMessage {
  /** Port id. */
  id: number;
  /** `VIRTIO_CONSOLE_*` event. */
  event: number;
  /** Event value (default 0). */
  value?: number;
  /** Bytes that follow the header (a RESIZE's size, a PORT_NAME's name). */
  data?: Uint8Array;
}

/**
 * Encode a control message (virtio 1.2 §5.3.6.2), for the device's control receiveq or a
 * driver harness's control transmitq.
 * @param message The fields, and what follows the header.
 * @returns The message bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { consoleControl, VIRTIO_CONSOLE_PORT_OPEN } from "./console.ts";
 * const m = consoleControl({ id: 1, event: VIRTIO_CONSOLE_PORT_OPEN, value: 1 });
 * assert.deepEqual([...m], [1, 0, 0, 0, 6, 0, 1, 0]);
 * ```
 */
export function consoleControl(message: ConsoleControlMessage): Uint8Array {
  const data = message.data;
  const out = new Uint8Array(CONSOLE_CONTROL_SIZE + (data?.length ?? 0));
  const v = new DataView(out.buffer);
  v.setUint32(0, message.id >>> 0, true);
  v.setUint16(4, message.event & 0xffff, true);
  v.setUint16(6, (message.value ?? 0) & 0xffff, true);
  if (data !== undefined) out.set(data, CONSOLE_CONTROL_SIZE);
  return out;
}

/**
 * Encode a RESIZE message: the header, then le16 cols and le16 rows (virtio 1.2 §5.3.6.2).
 * @param id Port id.
 * @param size The console size.
 * @returns The 12 bytes.
 */
export function consoleResize(id: number, size: { cols: number; rows: number }): Uint8Array {
  const data = new Uint8Array(CONSOLE_RESIZE_SIZE);
  const v = new DataView(data.buffer);
  v.setUint16(0, size.cols, true);
  v.setUint16(2, size.rows, true);
  return consoleControl({ id, event: VIRTIO_CONSOLE_RESIZE, data });
}

/** A control message decoded from device-written bytes (for drivers and tests). */
export interface ConsoleDeviceMessage {
  /** Port id. */
  id: number;
  /** `VIRTIO_CONSOLE_*` event. */
  event: number;
  /** Event value. */
  value: number;
  /** The bytes after the header. */
  data: Uint8Array;
}

/**
 * Decode a control message the device wrote (the driver's side of §5.3.6.2).
 * @param bytes At least the 8-byte header.
 * @returns The message; `data` aliases `bytes`.
 * @throws {RangeError} When `bytes` is shorter than the header.
 */
export function decodeConsoleControl(bytes: Uint8Array): ConsoleDeviceMessage {
  if (bytes.length < CONSOLE_CONTROL_SIZE) {
    throw new RangeError(`a control message has 8 bytes or more, got ${bytes.length}`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    id: v.getUint32(0, true),
    event: v.getUint16(4, true),
    value: v.getUint16(6, true),
    data: bytes.subarray(CONSOLE_CONTROL_SIZE),
  };
}

/**
 * Check and encode a port name: UTF-8, at most {@linkcode CONSOLE_MAX_NAME_BYTES} bytes, no
 * NUL (Linux copies it as a C string), not empty.
 * @param name The name.
 * @returns Its UTF-8 bytes.
 * @throws {TypeError} When it is not a string or holds a NUL or a lone surrogate.
 * @throws {RangeError} When it is empty or too long.
 */
export function encodePortName(name: string): Uint8Array {
  if (typeof name !== "string") throw new TypeError("a port name is a string");
  if (name.includes("\0")) throw new TypeError("a port name cannot hold NUL");
  if (!name.isWellFormed()) throw new TypeError("a port name must be well-formed UTF-16");
  const bytes = new TextEncoder().encode(name);
  if (bytes.length === 0 || bytes.length > CONSOLE_MAX_NAME_BYTES) {
    throw new RangeError(
      `a port name has 1 to ${CONSOLE_MAX_NAME_BYTES} UTF-8 bytes, got ${bytes.length}`,
    );
  }
  return bytes;
}

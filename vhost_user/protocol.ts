/**
 * The vhost-user wire protocol (QEMU docs/interop/vhost-user.rst): message
 * codes, feature bits, payload layouts, and the framing of a byte stream
 * with passed file descriptors into messages.
 *
 * @module
 */

/** Size of the message header: request u32, flags u32, size u32. */
export const HEADER_SIZE = 12;
/** Largest payload this implementation accepts. */
export const MAX_PAYLOAD = 4096;
/** Largest config space transfer in GET_CONFIG / SET_CONFIG. */
export const MAX_CONFIG_SIZE = 256;
/** Most memory regions in SET_MEM_TABLE. */
export const MAX_MEM_REGIONS = 8;
/** Protocol version in the flags of every message. */
export const VERSION = 0x1;
/** Flags bit: this message is a reply. */
export const FLAG_REPLY = 0x4;
/** Flags bit: the sender wants a reply (REPLY_ACK). */
export const FLAG_NEED_REPLY = 0x8;
/** Vring file payload: bits 0–7 are the ring index. */
export const VRING_IDX_MASK = 0xff;
/** Vring file payload: no file descriptor was passed. */
export const VRING_NOFD_MASK = 0x100;

/** Frontend requests. */
export const Request = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

/** Messages the backend sends on the backend request channel (SET_BACKEND_REQ_FD). */
export const BackendRequest = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
} as const;

/** Name of a request code, for messages and logs. */
export function requestName(code: number): string {
  for (const [name, value] of Object.entries(Request)) if (value === code) return name;
  return `UNKNOWN(${code})`;
}

/** Virtio feature bit 30: the backend speaks protocol features. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;
/** Virtio feature bit 26: dirty page logging. */
export const VHOST_F_LOG_ALL = 26;

/** Protocol feature bits. */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  NET_MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

/** Why a connection was dropped. */
export type VhostUserErrorCode =
  /** A header or payload that does not match the protocol. */
  | "Malformed"
  /** A message that is not allowed in the current state. */
  | "OutOfOrder"
  /** A request this backend does not implement. */
  | "Unsupported"
  /** A value (index, size, address, feature) the backend must refuse. */
  | "InvalidValue"
  /** A host resource (mmap, fd) failed. */
  | "Io";

/** A protocol violation by the frontend, or a failure serving it. */
export class VhostUserError extends Error {
  /** What went wrong. */
  readonly code: VhostUserErrorCode;
  /** The request being handled, if known. */
  readonly request: number | undefined;

  /**
   * Create the error; the message names the code and, when given, the request.
   * @param code What went wrong.
   * @param message Details.
   * @param request The request being handled.
   * @param options Standard error options (`cause`).
   */
  constructor(
    code: VhostUserErrorCode,
    message: string,
    request?: number,
    options?: ErrorOptions,
  ) {
    const where = request === undefined ? "" : ` (${requestName(request)})`;
    super(`${code}${where}: ${message}`, options);
    this.name = "VhostUserError";
    this.code = code;
    this.request = request;
  }
}

/** One message, payload and passed descriptors. */
export interface Message {
  /** Request code. */
  request: number;
  /** Flags (version, reply, need-reply). */
  flags: number;
  /** The payload (a copy; owned by the receiver). */
  payload: Uint8Array;
  /** Descriptors passed with the message; the receiver owns (and must close) them. */
  fds: number[];
}

/**
 * Encode a message.
 * @param request Request code.
 * @param flags Flags, including the version.
 * @param payload Payload bytes.
 * @returns Header and payload in one buffer.
 */
export function encode(request: number, flags: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, payload.length, true);
  out.set(payload, HEADER_SIZE);
  return out;
}

/**
 * Encode a u64 payload.
 * @param value The value.
 * @returns 8 bytes.
 */
export function u64Payload(value: bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt.asUintN(64, value), true);
  return out;
}

/**
 * Encode a vring state payload (index u32, num u32).
 * @param index Ring index.
 * @param num The value.
 * @returns 8 bytes.
 */
export function vringStatePayload(index: number, num: number): Uint8Array {
  const out = new Uint8Array(8);
  const v = new DataView(out.buffer);
  v.setUint32(0, index, true);
  v.setUint32(4, num, true);
  return out;
}

/** One region of a SET_MEM_TABLE payload. */
export interface MemoryRegionDesc {
  /** Guest-physical address. */
  guestAddr: number;
  /** Size in bytes. */
  size: number;
  /** Frontend's virtual address of the region. */
  userAddr: bigint;
  /** Offset of the region in the passed fd's mapping. */
  mmapOffset: number;
}

/** A vring address payload. */
export interface VringAddr {
  /** Ring index. */
  index: number;
  /** Flags (bit 0: log). */
  flags: number;
  /** Frontend address of the descriptor table. */
  desc: bigint;
  /** Frontend address of the used ring. */
  used: bigint;
  /** Frontend address of the available ring. */
  avail: bigint;
  /** Guest address for dirty logging. */
  log: bigint;
}

/** The payload decoders of {@linkcode Payload}. */
export interface PayloadDecoders {
  /** A u64 payload. */
  u64(m: Message): bigint;
  /** A vring state payload. */
  vringState(m: Message): { index: number; num: number };
  /** A vring address payload. */
  vringAddr(m: Message): VringAddr;
  /** A SET_MEM_TABLE payload. */
  memTable(m: Message): MemoryRegionDesc[];
  /** A GET_CONFIG / SET_CONFIG payload. */
  config(m: Message): { offset: number; size: number; flags: number; data: Uint8Array };
}

/** Decoders for payloads; each checks the payload size and throws a `Malformed` error. */
export const Payload: PayloadDecoders = {
  /**
   * A u64 payload.
   * @param m The message.
   * @returns The value.
   */
  u64(m: Message): bigint {
    need(m, 8);
    return view(m).getBigUint64(0, true);
  },
  /**
   * A vring state payload.
   * @param m The message.
   * @returns Index and value.
   */
  vringState(m: Message): { index: number; num: number } {
    need(m, 8);
    const v = view(m);
    return { index: v.getUint32(0, true), num: v.getUint32(4, true) };
  },
  /**
   * A vring address payload (index, flags, desc, used, avail, log).
   * @param m The message.
   * @returns The addresses.
   */
  vringAddr(m: Message): VringAddr {
    need(m, 40);
    const v = view(m);
    return {
      index: v.getUint32(0, true),
      flags: v.getUint32(4, true),
      desc: v.getBigUint64(8, true),
      used: v.getBigUint64(16, true),
      avail: v.getBigUint64(24, true),
      log: v.getBigUint64(32, true),
    };
  },
  /**
   * A SET_MEM_TABLE payload.
   * @param m The message.
   * @returns The regions.
   */
  memTable(m: Message): MemoryRegionDesc[] {
    need(m, 8);
    const v = view(m);
    const n = v.getUint32(0, true);
    if (n === 0 || n > MAX_MEM_REGIONS) {
      throw new VhostUserError("InvalidValue", `${n} memory regions`, m.request);
    }
    need(m, 8 + 32 * n);
    const out: MemoryRegionDesc[] = [];
    for (let i = 0; i < n; i++) {
      const o = 8 + 32 * i;
      const guest = v.getBigUint64(o, true);
      const size = v.getBigUint64(o + 8, true);
      const off = v.getBigUint64(o + 24, true);
      const limit = BigInt(Number.MAX_SAFE_INTEGER);
      if (size === 0n) {
        throw new VhostUserError("InvalidValue", `memory region ${i} has size 0`, m.request);
      }
      if (guest > limit || size > limit || off > limit || guest + size > limit) {
        throw new VhostUserError(
          "InvalidValue",
          `memory region ${i} out of range (guest address, size or mmap offset past 2^53)`,
          m.request,
        );
      }
      out.push({
        guestAddr: Number(guest),
        size: Number(size),
        userAddr: v.getBigUint64(o + 16, true),
        mmapOffset: Number(off),
      });
    }
    return out;
  },
  /**
   * A GET_CONFIG / SET_CONFIG payload.
   * @param m The message.
   * @returns Offset, size, flags and data.
   */
  config(m: Message): { offset: number; size: number; flags: number; data: Uint8Array } {
    need(m, 12);
    const v = view(m);
    const offset = v.getUint32(0, true);
    const size = v.getUint32(4, true);
    const flags = v.getUint32(8, true);
    if (size > MAX_CONFIG_SIZE || m.payload.length !== 12 + size) {
      throw new VhostUserError(
        "Malformed",
        `config size ${size} with ${m.payload.length} payload bytes`,
        m.request,
      );
    }
    return { offset, size, flags, data: m.payload.subarray(12, 12 + size) };
  },
};

function need(m: Message, n: number): void {
  if (m.payload.length < n) {
    throw new VhostUserError(
      "Malformed",
      `payload of ${m.payload.length} bytes, need ${n}`,
      m.request,
    );
  }
}

function view(m: Message): DataView {
  return new DataView(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength);
}

/**
 * Reassembles messages from a stream socket. It never asks for more bytes
 * than the current message still needs, so descriptors (which the kernel
 * delivers with the first byte of the message they were sent with) always
 * belong to the message being read.
 */
export class MessageReader {
  #buf = new Uint8Array(HEADER_SIZE + MAX_PAYLOAD);
  #len = 0;
  #fds: number[] = [];

  /**
   * Space to receive into, exactly as large as what the current message still
   * needs; call `commit` with what arrived.
   * @throws {VhostUserError} `Malformed` for a bad header (the stream cannot be resynchronised).
   */
  space(): Uint8Array {
    if (this.#len < HEADER_SIZE) return this.#buf.subarray(this.#len, HEADER_SIZE);
    return this.#buf.subarray(this.#len, HEADER_SIZE + this.#payloadSize());
  }

  #payloadSize(): number {
    const v = new DataView(this.#buf.buffer, 0, HEADER_SIZE);
    const request = v.getUint32(0, true);
    const flags = v.getUint32(4, true);
    const size = v.getUint32(8, true);
    if ((flags & 0x3) !== VERSION) {
      throw new VhostUserError("Malformed", `protocol version ${flags & 0x3}`, request);
    }
    if (size > MAX_PAYLOAD) {
      throw new VhostUserError("Malformed", `payload of ${size} bytes`, request);
    }
    return size;
  }

  /**
   * Record bytes received into `space()` and descriptors that came with them.
   * @param bytes Bytes received.
   * @param fds Descriptors received.
   */
  commit(bytes: number, fds: number[]): void {
    this.#fds.push(...fds);
    this.#len += bytes;
  }

  /**
   * The message, once all of it has arrived.
   * @returns The message or `null`.
   * @throws {VhostUserError} `Malformed` for a bad header.
   */
  next(): Message | null {
    if (this.#len < HEADER_SIZE) return null;
    const size = this.#payloadSize();
    if (this.#len < HEADER_SIZE + size) return null;
    const v = new DataView(this.#buf.buffer, 0, HEADER_SIZE);
    const msg: Message = {
      request: v.getUint32(0, true),
      flags: v.getUint32(4, true),
      payload: this.#buf.slice(HEADER_SIZE, HEADER_SIZE + size),
      fds: this.#fds,
    };
    this.#fds = [];
    this.#len = 0;
    return msg;
  }

  /** Descriptors received but not yet handed out in a message (to close on teardown). */
  takeStrayFds(): number[] {
    const out = this.#fds;
    this.#fds = [];
    return out;
  }
}

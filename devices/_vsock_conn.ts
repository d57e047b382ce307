/**
 * One vsock connection's state as the device keeps it: where it is in its life, which control
 * packets it owes the guest, and the two credit accounts of virtio 1.2 §5.10.6.3 (what the
 * guest may still send us, and what we may still send the guest). No I/O here: the device
 * (`vsock.ts`) moves the bytes and the endpoint (`_vsock_endpoint.ts`) holds the host side.
 *
 * @module
 */

import type { VsockEndpoint } from "./_vsock_endpoint.ts";
import { vsockPeerFree } from "./_vsock_packet.ts";

/** The connection owes the guest a REQUEST (host-initiated, not sent yet). */
export const PENDING_REQUEST = 1;
/** … a RESPONSE (guest-initiated, accepted). */
export const PENDING_RESPONSE = 2;
/** … an RST (the connection is over; nothing else is sent). */
export const PENDING_RST = 4;
/** … a SHUTDOWN with `shutdownToSend`. */
export const PENDING_SHUTDOWN = 8;
/** … a CREDIT_UPDATE (asked for, or much credit returned since the last packet). */
export const PENDING_CREDIT_UPDATE = 16;
/** … a CREDIT_REQUEST (host data waits for credit). */
export const PENDING_CREDIT_REQUEST = 32;

/** Where a connection is in its life. */
export type VsockConnState =
  /** Host-initiated: the REQUEST is pending or sent, the RESPONSE not received. */
  | "connecting"
  /** Both sides agreed; data may flow. */
  | "established"
  /** An RST is pending or the table forgot it: nothing more is accepted. */
  | "closing";

/** One connection between a guest port and a host port. */
export class VsockConn {
  /** The guest's port. */
  readonly guestPort: number;
  /** The host's port. */
  readonly hostPort: number;
  /** `VIRTIO_VSOCK_TYPE_*`. */
  readonly type: number;
  /** Whether the host opened it (REQUEST from the device). */
  readonly hostInitiated: boolean;
  /** The host side. */
  readonly endpoint: VsockEndpoint;
  /** Life stage. */
  state: VsockConnState;
  /** `PENDING_*` bits: control packets owed to the guest. */
  pending = 0;
  /** Flags of the pending SHUTDOWN. */
  shutdownToSend = 0;
  /** SHUTDOWN flags sent so far (they are permanent, virtio 1.2 §5.10.6.4). */
  shutdownSent = 0;
  /** SHUTDOWN flags received from the guest so far. */
  peerShutdown = 0;
  /** The guest's `buf_alloc`. */
  peerBufAlloc = 0;
  /** The guest's `fwd_cnt`. */
  peerFwdCnt = 0;
  /** Payload bytes sent to the guest (mod 2^32). */
  txCnt = 0;
  /** Our `buf_alloc`: the most guest bytes held un-forwarded. */
  readonly bufAlloc: number;
  /** Payload bytes received from the guest (mod 2^32). */
  rxCnt = 0;
  /** Of those, bytes the host side consumed (mod 2^32). */
  fwdCnt = 0;
  /** The `fwd_cnt` last told to the guest. */
  advertisedFwdCnt = 0;
  /** The host side may have something to read (it said so, or it was never asked). */
  hostReadable = true;
  /** The host side reached its end of stream. */
  hostEof = false;
  /** A CREDIT_REQUEST was sent since the credit last grew. */
  creditRequested = false;
  /** Why the pending RST is sent (for the counters). */
  resetReason = "";
  /** Whether the endpoint was released or handed over to finish on its own. */
  endpointDetached = false;
  /** The connect or close timer. */
  timer: ReturnType<typeof setTimeout> | undefined;

  /**
   * Create it.
   * @param guestPort The guest's port.
   * @param hostPort The host's port.
   * @param type `VIRTIO_VSOCK_TYPE_*`.
   * @param endpoint The host side.
   * @param options Who opened it and our buffer size.
   */
  constructor(
    guestPort: number,
    hostPort: number,
    type: number,
    endpoint: VsockEndpoint,
    options: { hostInitiated: boolean; bufAlloc: number },
  ) {
    this.guestPort = guestPort;
    this.hostPort = hostPort;
    this.type = type;
    this.endpoint = endpoint;
    this.hostInitiated = options.hostInitiated;
    this.bufAlloc = options.bufAlloc;
    this.state = options.hostInitiated ? "connecting" : "established";
  }

  /** Bytes the guest can take now. */
  get peerFree(): number {
    return vsockPeerFree(this.peerBufAlloc, this.txCnt, this.peerFwdCnt);
  }

  /** Forwarded bytes the guest has not been told about. */
  get unadvertised(): number {
    return (this.fwdCnt - this.advertisedFwdCnt) >>> 0;
  }

  /** Whether host data may be sent to the guest now, credit aside. */
  get mayCarryData(): boolean {
    return this.state === "established" && !this.hostEof && (this.peerShutdown & 1) === 0 &&
      (this.pending & (PENDING_RST | PENDING_RESPONSE)) === 0;
  }
}

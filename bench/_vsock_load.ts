/**
 * A vsock guest for the benchmark, on the driver side of a {@linkcode VhostUserFrontend}: what
 * the guest's `vmw_vsock_virtio_transport` does, with fixed buffers so the hot loop allocates
 * nothing. rx (ring 0) holds 256 single-descriptor receive buffers, tx (ring 1) 128 slots of a
 * header descriptor and a payload descriptor; both rings signal one call eventfd, so one wait
 * covers both.
 *
 * @module
 */

import { VIRTIO_F_EVENT_IDX, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "../queue/split.ts";
import { featureBit } from "../devices/device.ts";
import { type FrontendRing, VhostUserFrontend } from "../testing/vhost_user_frontend.ts";
import { ProtocolFeature, Request, u64Payload } from "../vhost_user/protocol.ts";
import {
  decodeVsockHeader,
  emptyVsockHeader,
  encodeVsockHeader,
  VIRTIO_VSOCK_OP_CREDIT_UPDATE,
  VIRTIO_VSOCK_OP_REQUEST,
  VIRTIO_VSOCK_OP_RESPONSE,
  VIRTIO_VSOCK_OP_RST,
  VIRTIO_VSOCK_OP_RW,
  VIRTIO_VSOCK_OP_SHUTDOWN,
  VIRTIO_VSOCK_SHUTDOWN_BOTH,
  VIRTIO_VSOCK_TYPE_STREAM,
  VSOCK_HEADER_SIZE,
  VSOCK_HOST_CID,
  type VsockHeader,
  vsockPeerFree,
} from "../devices/vsock.ts";

const RX_BUFFERS = 256;
const TX_SLOTS = 128;
/** The guest's default receive buffer per connection (Linux's default). */
export const GUEST_BUF_ALLOC = 256 << 10;

/** One connection as the benchmark guest sees it. */
interface Conn {
  port: number;
  hostPort: number;
  peerBufAlloc: number;
  peerFwdCnt: number;
  txCnt: number;
  rxBytes: number;
  advertised: number;
  established: boolean;
  closed: boolean;
  shutdown: boolean;
}

/** The benchmark guest. */
export class VsockLoad {
  readonly frontend: VhostUserFrontend;
  readonly #guestCid: number;
  readonly #rx: FrontendRing;
  readonly #tx: FrontendRing;
  readonly #rxAddr: number[] = [];
  readonly #rxSize: number;
  readonly #hdrAddr: number[] = [];
  readonly #payAddr: number[] = [];
  readonly #free: number[] = [];
  #rxUsed = 0;
  #txUsed = 0;
  readonly #scratch = new Uint8Array(VSOCK_HEADER_SIZE);
  readonly #view = new DataView(this.#scratch.buffer);
  readonly #h: VsockHeader = emptyVsockHeader();
  readonly #out: VsockHeader = emptyVsockHeader();
  readonly #conns = new Map<number, Conn>();
  readonly #bufAlloc: number;
  /** Called for each connection request from the host (the guest accepts them all). */
  onRequest: ((c: Conn) => void) | undefined;

  private constructor(
    frontend: VhostUserFrontend,
    guestCid: number,
    rxPayload: number,
    txPayload: number,
    bufAlloc: number,
  ) {
    this.frontend = frontend;
    this.#bufAlloc = bufAlloc;
    this.#guestCid = guestCid;
    this.#rx = frontend.ring(0);
    this.#tx = frontend.ring(1);
    this.#rxSize = VSOCK_HEADER_SIZE + rxPayload;
    const mem = frontend.memory;
    const rx = this.#rx.driver;
    for (let i = 0; i < RX_BUFFERS; i++) {
      const addr = rx.alloc(this.#rxSize, 64);
      this.#rxAddr.push(addr);
      rx.writeDescriptor(i, { addr, len: this.#rxSize, flags: VIRTQ_DESC_F_WRITE, next: 0 });
      rx.publish(i);
    }
    const tx = this.#tx.driver;
    for (let s = 0; s < TX_SLOTS; s++) {
      const hdr = tx.alloc(VSOCK_HEADER_SIZE, 64);
      const pay = tx.alloc(Math.max(txPayload, 1), 64);
      mem.fill(pay, txPayload, 0x5a);
      this.#hdrAddr.push(hdr);
      this.#payAddr.push(pay);
      tx.writeDescriptor(2 * s, { addr: hdr, len: VSOCK_HEADER_SIZE, flags: 0, next: 2 * s + 1 });
      tx.writeDescriptor(2 * s + 1, { addr: pay, len: txPayload, flags: 0, next: 0 });
      this.#free.push(s);
    }
    frontend.kick(0, { force: true });
  }

  /**
   * Connect to our backend on `socket` and set up the three rings.
   * @param socket The backend's socket.
   * @param options The guest CID, the payload room of rx buffers and tx packets, and the
   *   guest's receive buffer per connection (default {@linkcode GUEST_BUF_ALLOC}).
   * @returns The guest.
   */
  static async start(
    socket: string,
    options: { guestCid: number; rxPayload: number; txPayload: number; bufAlloc?: number },
  ): Promise<VsockLoad> {
    const fe = await VhostUserFrontend.connect(socket, { memorySize: 48 << 20 });
    await fe.setOwner();
    const offered = await fe.getFeatures();
    const protocol = await fe.getProtocolFeatures();
    await fe.setProtocolFeatures(
      protocol & (featureBit(ProtocolFeature.MQ) | featureBit(ProtocolFeature.REPLY_ACK)),
    );
    // Without EVENT_IDX: the device signals once per pass, which this loop waits for.
    await fe.setFeatures(offered & ~featureBit(VIRTIO_F_EVENT_IDX));
    await fe.setMemTable();
    const rxBytes = RX_BUFFERS * (VSOCK_HEADER_SIZE + options.rxPayload + 128) + 65536;
    const txBytes = TX_SLOTS * (VSOCK_HEADER_SIZE + options.txPayload + 256) + 65536;
    await fe.setupRing(0, { size: RX_BUFFERS, bufferSize: rxBytes });
    await fe.setupRing(1, { size: 2 * TX_SLOTS, bufferSize: txBytes });
    await fe.setupRing(2, { size: 16, bufferSize: 4096 });
    // One call eventfd for rx and tx.
    await fe.request(Request.SET_VRING_CALL, u64Payload(1n), { fds: [fe.ring(0).call.fd] });
    return new VsockLoad(
      fe,
      options.guestCid,
      options.rxPayload,
      options.txPayload,
      options.bufAlloc ?? GUEST_BUF_ALLOC,
    );
  }

  /** Close the frontend. */
  close(): Promise<void> {
    return this.frontend.close();
  }

  #conn(port: number, hostPort: number): Conn {
    const c: Conn = {
      port,
      hostPort,
      peerBufAlloc: 0,
      peerFwdCnt: 0,
      txCnt: 0,
      rxBytes: 0,
      advertised: 0,
      established: false,
      closed: false,
      shutdown: false,
    };
    this.#conns.set(port, c);
    return c;
  }

  // Send one packet (a free tx slot must exist); payload bytes come from the slot's buffer.
  #send(c: Conn, op: number, len = 0, flags = 0): void {
    const s = this.#free.pop()!;
    const o = this.#out;
    o.srcCid = this.#guestCid;
    o.dstCid = VSOCK_HOST_CID;
    o.srcPort = c.port;
    o.dstPort = c.hostPort;
    o.len = len;
    o.type = VIRTIO_VSOCK_TYPE_STREAM;
    o.op = op;
    o.flags = flags;
    o.bufAlloc = this.#bufAlloc;
    o.fwdCnt = c.rxBytes >>> 0;
    c.advertised = c.rxBytes;
    encodeVsockHeader(this.#view, o);
    const mem = this.frontend.memory;
    mem.write(this.#hdrAddr[s], this.#scratch);
    const tx = this.#tx.driver;
    const desc = tx.descTable + 16 * 2 * s;
    mem.writeU16(desc + 12, len > 0 ? VIRTQ_DESC_F_NEXT : 0);
    if (len > 0) mem.writeU32(desc + 16 + 8, len);
    tx.publish(2 * s);
    if (op === VIRTIO_VSOCK_OP_RW) c.txCnt = (c.txCnt + len) >>> 0;
  }

  // Take what the device returned: tx slots back, rx packets handled and their buffers
  // posted again. Returns whether anything happened.
  #reap(): boolean {
    const mem = this.frontend.memory;
    const tx = this.#tx.driver;
    const txIdx = tx.usedIdx();
    let progress = false;
    while (this.#txUsed !== txIdx) {
      const id = mem.readU32(tx.usedRing + 4 + 8 * (this.#txUsed & (tx.size - 1)));
      this.#free.push(id >>> 1);
      this.#txUsed = (this.#txUsed + 1) & 0xffff;
      progress = true;
    }
    const rx = this.#rx.driver;
    const rxIdx = rx.usedIdx();
    let reposted = false;
    while (this.#rxUsed !== rxIdx) {
      const at = rx.usedRing + 4 + 8 * (this.#rxUsed & (rx.size - 1));
      const id = mem.readU32(at);
      const len = mem.readU32(at + 4);
      this.#rxUsed = (this.#rxUsed + 1) & 0xffff;
      if (len >= VSOCK_HEADER_SIZE) {
        mem.read(this.#rxAddr[id], this.#scratch);
        this.#packet(decodeVsockHeader(this.#view, this.#h));
      }
      rx.publish(id);
      reposted = true;
      progress = true;
    }
    if (reposted) this.frontend.kick(0);
    return progress;
  }

  #packet(h: VsockHeader): void {
    let c = this.#conns.get(h.dstPort);
    if (h.op === VIRTIO_VSOCK_OP_REQUEST) {
      c = this.#conn(h.dstPort, h.srcPort);
      c.peerBufAlloc = h.bufAlloc;
      c.peerFwdCnt = h.fwdCnt;
      c.established = true;
      this.onRequest?.(c);
      return;
    }
    if (c === undefined || c.hostPort !== h.srcPort) return;
    c.peerBufAlloc = h.bufAlloc;
    c.peerFwdCnt = h.fwdCnt;
    switch (h.op) {
      case VIRTIO_VSOCK_OP_RESPONSE:
        c.established = true;
        break;
      case VIRTIO_VSOCK_OP_RW:
        c.rxBytes += h.len;
        break;
      case VIRTIO_VSOCK_OP_SHUTDOWN:
        c.shutdown = true;
        break;
      case VIRTIO_VSOCK_OP_RST:
        c.closed = true;
        break;
    }
  }

  async #wait(): Promise<void> {
    this.frontend.kick(1);
    if (!(await this.frontend.waitCall(0, 10_000))) throw new Error("the device went silent");
  }

  /**
   * Send `bytes` to host port `port` in `packet`-byte RW packets within the device's credit,
   * then close (SHUTDOWN both ways, and the device's RST).
   * @param port The host port.
   * @param bytes How much.
   * @param packet Payload per packet.
   */
  async streamToHost(port: number, bytes: number, packet: number, guestPort = 2000): Promise<void> {
    const c = this.#conn(guestPort, port);
    this.#send(c, VIRTIO_VSOCK_OP_REQUEST);
    while (!c.established && !c.closed) {
      await this.#wait();
      this.#reap();
    }
    if (c.closed) throw new Error(`host port ${port} refused`);
    let sent = 0;
    while (sent < bytes) {
      let queued = false;
      while (
        sent < bytes && this.#free.length > 0 &&
        vsockPeerFree(c.peerBufAlloc, c.txCnt, c.peerFwdCnt) >= packet
      ) {
        this.#send(c, VIRTIO_VSOCK_OP_RW, packet);
        sent += packet;
        queued = true;
      }
      if (queued) this.frontend.kick(1);
      if (!this.#reap()) await this.#wait();
      this.#reap();
    }
    while (this.#free.length === 0) {
      await this.#wait();
      this.#reap();
    }
    this.#send(c, VIRTIO_VSOCK_OP_SHUTDOWN, 0, VIRTIO_VSOCK_SHUTDOWN_BOTH);
    while (!c.closed) {
      await this.#wait();
      this.#reap();
    }
    this.#conns.delete(guestPort);
  }

  /**
   * Accept the next connection from the host and take everything it sends, returning credit
   * as a guest that reads at once does; ends at the host's SHUTDOWN.
   * @returns Bytes received and the seconds from the first byte to the end.
   */
  async streamFromHost(): Promise<{ bytes: number; seconds: number }> {
    let c: Conn | undefined;
    this.onRequest = (conn) => {
      c = conn;
      this.#send(conn, VIRTIO_VSOCK_OP_RESPONSE);
      this.frontend.kick(1);
    };
    let first = 0;
    for (;;) {
      if (!this.#reap()) await this.#wait();
      if (c === undefined) continue;
      if (first === 0 && c.rxBytes > 0) first = performance.now();
      if (c.rxBytes - c.advertised >= this.#bufAlloc / 2 && this.#free.length > 0) {
        this.#send(c, VIRTIO_VSOCK_OP_CREDIT_UPDATE);
        this.frontend.kick(1);
      }
      if (c.shutdown || c.closed) break;
    }
    const seconds = (performance.now() - first) / 1000;
    const conn = c!;
    if (!conn.closed) {
      while (this.#free.length === 0) {
        await this.#wait();
        this.#reap();
      }
      this.#send(conn, VIRTIO_VSOCK_OP_RST);
      this.frontend.kick(1);
    }
    this.#conns.delete(conn.port);
    this.onRequest = undefined;
    return { bytes: conn.rxBytes, seconds };
  }

  /**
   * Open `count` connections to host port `port`, `inflight` at a time: REQUEST, RESPONSE,
   * then RST.
   * @param port The host port.
   * @param count How many.
   * @param inflight Requests outstanding at once.
   * @returns Seconds taken.
   */
  async connectMany(port: number, count: number, inflight: number): Promise<number> {
    const start = performance.now();
    const open = new Set<Conn>();
    let started = 0;
    let done = 0;
    let next = 10_000;
    while (done < count) {
      while (started < count && open.size < inflight && this.#free.length > 0) {
        const c = this.#conn(next++, port);
        if (next > 60_000) next = 10_000;
        open.add(c);
        this.#send(c, VIRTIO_VSOCK_OP_REQUEST);
        started++;
      }
      this.frontend.kick(1);
      if (!this.#reap()) await this.#wait();
      for (const c of open) {
        if (!c.established && !c.closed) continue;
        if (c.closed) throw new Error(`connection ${c.port} refused`);
        if (this.#free.length === 0) break;
        this.#send(c, VIRTIO_VSOCK_OP_RST);
        open.delete(c);
        this.#conns.delete(c.port);
        done++;
      }
    }
    this.frontend.kick(1);
    return (performance.now() - start) / 1000;
  }
}

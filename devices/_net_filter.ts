/**
 * The receive filter of a virtio-net device (virtio 1.2 §5.1.6.5.1–3): RX modes, the MAC
 * filter tables, the default MAC address and the VLAN table, as the control queue sets them.
 *
 * @module
 */

import type { NetMacTable, NetRxMode } from "./_net_ctrl.ts";
import { destinationClass, MAC_BROADCAST, MAC_MULTICAST, vlanId } from "./_net_header.ts";

function emptyMacTable(): NetMacTable {
  return {
    unicast: new Uint8Array(0),
    unicastOverflow: false,
    multicast: new Uint8Array(0),
    multicastOverflow: false,
  };
}

function sameMac(a: Uint8Array, i: number, b: Uint8Array, at: number): boolean {
  return a[i] === b[at] && a[i + 1] === b[at + 1] && a[i + 2] === b[at + 2] &&
    a[i + 3] === b[at + 3] && a[i + 4] === b[at + 4] && a[i + 5] === b[at + 5];
}

function inTable(table: Uint8Array, buf: Uint8Array, at: number): boolean {
  for (let i = 0; i + 6 <= table.length; i += 6) if (sameMac(table, i, buf, at)) return true;
  return false;
}

/**
 * Which received frames the driver wants. After reset it is promiscuous (as QEMU is: until
 * the driver configures the filter, nothing is dropped), with empty tables.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { NetRxFilter } from "./_net_filter.ts";
 * const mac = new Uint8Array([2, 0, 0, 0, 0, 1]);
 * const f = new NetRxFilter(mac);
 * f.setMode("promisc", false);
 * const frame = new Uint8Array(60);
 * frame.set([2, 0, 0, 0, 0, 2]);
 * assert.equal(f.accepts(frame, 0, 60), false); // another station
 * frame.set(mac);
 * assert.equal(f.accepts(frame, 0, 60), true);
 * ```
 */
export class NetRxFilter {
  /** The address unicast frames must carry (config space `mac`; shared, not copied). */
  readonly mac: Uint8Array;
  /** Whether the VLAN table applies (CTRL_VLAN negotiated). */
  vlanFilter = false;
  #promisc = true;
  #allmulti = false;
  #alluni = false;
  #nomulti = false;
  #nouni = false;
  #nobcast = false;
  #table: NetMacTable = emptyMacTable();
  readonly #vlans = new Uint32Array(128);

  /**
   * Create it.
   * @param mac The device's MAC address (a view the filter reads on every frame).
   */
  constructor(mac: Uint8Array) {
    this.mac = mac;
  }

  /** Back to the state after reset. */
  reset(): void {
    this.#promisc = true;
    this.#allmulti =
      this.#alluni =
      this.#nomulti =
      this.#nouni =
      this.#nobcast =
        false;
    this.#table = emptyMacTable();
    this.#vlans.fill(0);
    this.vlanFilter = false;
  }

  /**
   * Turn one RX mode on or off (VIRTIO_NET_CTRL_RX).
   * @param mode The mode.
   * @param on Its new state.
   */
  setMode(mode: NetRxMode, on: boolean): void {
    switch (mode) {
      case "promisc":
        this.#promisc = on;
        break;
      case "allmulti":
        this.#allmulti = on;
        break;
      case "alluni":
        this.#alluni = on;
        break;
      case "nomulti":
        this.#nomulti = on;
        break;
      case "nouni":
        this.#nouni = on;
        break;
      case "nobcast":
        this.#nobcast = on;
        break;
    }
  }

  /**
   * Replace the MAC filter tables (VIRTIO_NET_CTRL_MAC_TABLE_SET).
   * @param table The new tables.
   */
  setTable(table: NetMacTable): void {
    this.#table = table;
  }

  /**
   * Add a VLAN id to the table, or remove it (VIRTIO_NET_CTRL_VLAN_ADD / _DEL).
   * @param vid 0–4095.
   * @param add Add (true) or remove.
   */
  setVlan(vid: number, add: boolean): void {
    if (add) this.#vlans[vid >>> 5] |= 1 << (vid & 31);
    else this.#vlans[vid >>> 5] &= ~(1 << (vid & 31));
  }

  /**
   * Whether the frame at `buf[at]` passes (virtio 1.2 §5.1.6.5.1–3). Promiscuous mode takes
   * everything; otherwise a tagged frame needs its VLAN in the table (with CTRL_VLAN), a
   * broadcast passes unless NOBCAST, a multicast needs ALLMULTI or a table entry (never with
   * NOMULTI), a unicast needs ALLUNI, the device's address or a table entry (never with
   * NOUNI). A table given more addresses than it keeps accepts its whole kind.
   * @param buf Bytes holding the frame.
   * @param at Where it starts.
   * @param len Its length (at least an Ethernet header).
   * @returns Whether the driver gets it.
   */
  accepts(buf: Uint8Array, at: number, len: number): boolean {
    if (this.#promisc) return true;
    if (this.vlanFilter) {
      const vid = vlanId(buf, at, len);
      if (vid >= 0 && (this.#vlans[vid >>> 5] & (1 << (vid & 31))) === 0) return false;
    }
    const kind = destinationClass(buf, at);
    const t = this.#table;
    if (kind === MAC_BROADCAST) return !this.#nobcast;
    if (kind === MAC_MULTICAST) {
      if (this.#nomulti) return false;
      if (this.#allmulti || t.multicastOverflow) return true;
      return inTable(t.multicast, buf, at);
    }
    if (this.#nouni) return false;
    if (this.#alluni || t.unicastOverflow) return true;
    if (sameMac(this.mac, 0, buf, at)) return true;
    return inTable(t.unicast, buf, at);
  }
}

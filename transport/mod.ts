/**
 * Transports: the transport core every way of reaching a device shares (status machine,
 * feature negotiation, queue set-up, activation, NEEDS_RESET, configuration access, budgeted
 * serving), and the virtio-mmio register file on top of it.
 *
 * @module
 */

export * from "./core.ts";
export * from "./mmio.ts";
export * from "./pci.ts";

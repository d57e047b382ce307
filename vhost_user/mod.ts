/**
 * vhost-user: serve our devices to QEMU and other VMMs over a Unix socket
 * (the backend), and drive a backend from TypeScript (the frontend).
 *
 * @module
 */

export * from "./protocol.ts";
export * from "./backend.ts";
export * from "./backend_set.ts";

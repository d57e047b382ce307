/**
 * The host-side programs of the vsock benchmark, each run as its own process: plain blocking
 * Unix-socket I/O through `sys/` (one `read`/`write` call per buffer, no event loop in the
 * way), so that the same program is the peer of our vsock device and of the host-only
 * baseline. Each prints one JSON line per result on stdout.
 *
 * ```sh
 * deno run -A bench/_uds_peer.ts sink PATH            # accept; read each connection to EOF
 * deno run -A bench/_uds_peer.ts closer PATH          # accept and close at once, forever
 * deno run -A bench/_uds_peer.ts source PATH BYTES CHUNK [PORT]
 *                                                    # connect (CONNECT PORT first, when given)
 *                                                    # and write BYTES in CHUNK-byte writes
 * deno run -A bench/_uds_peer.ts connects PATH COUNT  # connect and close COUNT times
 * ```
 *
 * @module
 */

import process from "node:process";
import { existsSync, unlinkSync } from "node:fs";
import {
  accept,
  AF_UNIX,
  bind,
  close,
  connect,
  listen,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  socket,
} from "../sys/mod.ts";
import { read, write } from "../sys/fd.ts";

const [mode, path, a, b, c] = process.argv.slice(2);

function listenOn(p: string): number {
  if (existsSync(p)) unlinkSync(p);
  const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
  bind(fd, p);
  listen(fd, 1024);
  return fd;
}

function writeAll(fd: number, buf: Uint8Array): void {
  let off = 0;
  while (off < buf.length) off += write(fd, buf.subarray(off));
}

switch (mode) {
  case "sink": {
    const l = listenOn(path);
    console.log(JSON.stringify({ listening: path }));
    const buf = new Uint8Array(1 << 20);
    for (;;) {
      const fd = accept(l);
      let bytes = 0;
      let first = 0;
      for (;;) {
        const n = read(fd, buf);
        if (n === 0) break;
        if (bytes === 0) first = performance.now();
        bytes += n;
      }
      const seconds = (performance.now() - first) / 1000;
      close(fd);
      console.log(JSON.stringify({ bytes, seconds }));
    }
  }
  case "closer": {
    const l = listenOn(path);
    console.log(JSON.stringify({ listening: path }));
    for (;;) close(accept(l));
  }
  case "source": {
    const bytes = Number(a);
    const chunk = Number(b);
    const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
    connect(fd, path);
    if (c !== undefined) {
      writeAll(fd, new TextEncoder().encode(`CONNECT ${c}\n`));
      // Byte by byte up to the newline: nothing after "OK <port>\n" is taken.
      const one = new Uint8Array(1);
      let line = "";
      while (!line.endsWith("\n")) {
        if (read(fd, one) === 0) throw new Error(`closed after "${line}"`);
        line += String.fromCharCode(one[0]);
      }
    }
    const buf = new Uint8Array(chunk).fill(0x5a);
    const start = performance.now();
    for (let sent = 0; sent < bytes; sent += chunk) writeAll(fd, buf);
    close(fd);
    console.log(JSON.stringify({ bytes, seconds: (performance.now() - start) / 1000 }));
    break;
  }
  case "connects": {
    const count = Number(a);
    const start = performance.now();
    for (let i = 0; i < count; i++) {
      const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
      connect(fd, path);
      close(fd);
    }
    console.log(JSON.stringify({ count, seconds: (performance.now() - start) / 1000 }));
    break;
  }
  default:
    console.error("usage: _uds_peer.ts sink|closer|source|connects PATH ...");
    process.exit(2);
}

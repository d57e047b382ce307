/**
 * The CLI's device specs: `KIND,key=value,key,...`, one per `--device`, turned into the
 * arguments of the single-device form (`--device KIND --key value --key ...`) so that both
 * forms go through the same option checks. Like QEMU's `-device`/`--export` option strings: a
 * comma inside a value is written twice (`file=a,,b.img` is the file `a,b.img`); a boolean
 * key stands alone or takes `on`/`off` (also `true`/`false`, `yes`/`no`).
 *
 * @module
 */

/** The type of each option, as `node:util` `parseArgs` describes it. */
export type OptionTypes = Readonly<Record<string, { type: "string" | "boolean" }>>;

/** A device spec that cannot be read: the CLI prints it and exits with status 2. */
export class DeviceSpecError extends TypeError {
  /** The spec as given. */
  readonly spec: string;
  /**
   * @param spec The spec as given.
   * @param message What is wrong with it.
   */
  constructor(spec: string, message: string) {
    super(`--device ${spec}: ${message}`);
    this.name = "DeviceSpecError";
    this.spec = spec;
  }
}

const TRUE = new Set(["on", "true", "yes"]);
const FALSE = new Set(["off", "false", "no"]);
const KEY = /^[a-z][a-z0-9-]*$/;

/** Split at single commas; a doubled comma is a comma of the value. */
function splitSpec(spec: string): string[] {
  const parts: string[] = [];
  let cur = "";
  for (let i = 0; i < spec.length; i++) {
    const c = spec[i];
    if (c !== ",") {
      cur += c;
    } else if (spec[i + 1] === ",") {
      cur += ",";
      i++;
    } else {
      parts.push(cur);
      cur = "";
    }
  }
  parts.push(cur);
  return parts;
}

/**
 * The single-device arguments a device spec stands for.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { specArgs } from "./_device_spec.ts";
 *
 * const options = { socket: { type: "string" }, file: { type: "string" }, readonly: { type: "boolean" } } as const;
 * assert.deepEqual(
 *   specArgs("blk,socket=/tmp/a.sock,file=a,,b.img,readonly", options, new Set()),
 *   ["--device", "blk", "--socket=/tmp/a.sock", "--file=a,b.img", "--readonly"],
 * );
 * ```
 *
 * @param spec `KIND,key=value,...`.
 * @param options The options a spec may set (the CLI's).
 * @param reserved Options that are the whole process's, not a device's (refused in a spec).
 * @returns The arguments, `--device KIND` first.
 * @throws {DeviceSpecError} For an empty kind, an unknown, reserved or repeated key, a string
 *   key without a value, or a boolean with a value other than on/off.
 */
export function specArgs(
  spec: string,
  options: OptionTypes,
  reserved: ReadonlySet<string>,
): string[] {
  const [kind, ...pairs] = splitSpec(spec);
  if (kind === "" || kind.includes("=")) {
    throw new DeviceSpecError(spec, "must start with the device kind (blk, rng, net, vsock, fs)");
  }
  const out = ["--device", kind];
  const seen = new Set<string>();
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    const key = eq < 0 ? pair : pair.slice(0, eq);
    const value = eq < 0 ? undefined : pair.slice(eq + 1);
    if (!KEY.test(key)) throw new DeviceSpecError(spec, `bad key ${JSON.stringify(key)}`);
    const type = Object.hasOwn(options, key) ? options[key].type : undefined;
    if (type === undefined || key === "device") {
      throw new DeviceSpecError(spec, `unknown key ${key}`);
    }
    if (reserved.has(key)) {
      throw new DeviceSpecError(spec, `${key} is for the whole process: give --${key} instead`);
    }
    if (seen.has(key)) throw new DeviceSpecError(spec, `${key} given twice`);
    seen.add(key);
    if (type === "boolean") {
      if (value === undefined || TRUE.has(value)) out.push(`--${key}`);
      else if (!FALSE.has(value)) {
        throw new DeviceSpecError(spec, `${key} is on or off, got ${JSON.stringify(value)}`);
      }
    } else {
      if (value === undefined) throw new DeviceSpecError(spec, `${key} needs a value (${key}=…)`);
      // `--key=value` keeps a value that starts with a dash a value.
      out.push(`--${key}=${value}`);
    }
  }
  return out;
}

// LEB128 as the Wasm binary format uses it. The bytes come from strangers, so every read is
// bounds-checked and length-checked: a malformed number is an error, never a wrong value.

// Every complaint about a module (malformed, or well-formed but not runnable here) is one of these,
// with a message meant for whoever supplied the module.
export class WasmModuleError extends Error {
  name = 'WasmModuleError'
}

// A cursor over a byte array; `offset` is public so callers can slice out what they skipped.
export class ByteReader {
  readonly bytes: Uint8Array
  offset: number
  readonly end: number

  constructor (bytes: Uint8Array, offset = 0, end = bytes.length) {
    this.bytes = bytes
    this.offset = offset
    this.end = end
  }

  get remaining (): number {
    return this.end - this.offset
  }

  byte (what: string): number {
    if (this.offset >= this.end) throw new WasmModuleError(`truncated module: ran out of bytes reading ${what} at offset ${this.offset}`)
    return this.bytes[this.offset++]
  }

  take (length: number, what: string): Uint8Array {
    if (length > this.remaining) {
      throw new WasmModuleError(`truncated module: ${what} at offset ${this.offset} needs ${length} bytes, only ${this.remaining} remain`)
    }
    const out = this.bytes.subarray(this.offset, this.offset + length)
    this.offset += length
    return out
  }

  // Unsigned, at most ceil(bits / 7) bytes, and the unused high bits of the last byte must be zero
  // (the spec's rule): a number that would not fit is rejected rather than silently wrapped.
  unsigned (bits: 32 | 64, what: string): bigint {
    const maxBytes = Math.ceil(bits / 7)
    let result = 0n
    for (let i = 0; i < maxBytes; i++) {
      const b = this.byte(what)
      const shift = BigInt(i * 7)
      if (i === maxBytes - 1) {
        const spare = bits - i * 7
        if ((b & 0x80) !== 0 || (b >> spare) !== 0) throw new WasmModuleError(`malformed LEB128 ${what} at offset ${this.offset - 1}: too long or too large for u${bits}`)
      }
      result |= BigInt(b & 0x7f) << shift
      if ((b & 0x80) === 0) return result
    }
    throw new WasmModuleError(`malformed LEB128 ${what}`)
  }

  u32 (what: string): number {
    return Number(this.unsigned(32, what))
  }

  // Signed 33-bit (heap types in reference types): we only need to skip it correctly.
  s33 (what: string): number {
    let result = 0
    let shift = 0
    for (let i = 0; i < 5; i++) {
      const b = this.byte(what)
      result += (b & 0x7f) * 2 ** shift
      shift += 7
      if ((b & 0x80) === 0) {
        if ((b & 0x40) !== 0) result -= 2 ** shift
        return result
      }
    }
    throw new WasmModuleError(`malformed LEB128 ${what}: longer than 5 bytes`)
  }

  name (what: string): string {
    const length = this.u32(`${what} length`)
    const raw = this.take(length, what)
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(raw)
    } catch {
      throw new WasmModuleError(`${what} is not valid UTF-8`)
    }
  }
}

export function encodeU32 (value: number): Uint8Array {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`not a u32: ${value}`)
  const out: number[] = []
  let v = value
  do {
    let b = v & 0x7f
    v = Math.floor(v / 128)
    if (v !== 0) b |= 0x80
    out.push(b)
  } while (v !== 0)
  return Uint8Array.from(out)
}

// The program's stdout and stderr live in shared memory rather than in the worker, so that when
// the watchdog kills a runaway worker the main thread still has everything the program wrote up
// to that moment. Layout: two int32 lengths, then a stdout region and a stderr region of `cap`
// bytes each; the cap applies to both streams together.

import type { OutputSink } from './wasi-host.ts'

const HEADER_BYTES = 8

export function outputBytes (cap: number): number {
  return HEADER_BYTES + 2 * cap
}

export function outputBuffer (cap: number): SharedArrayBuffer {
  return new SharedArrayBuffer(outputBytes(cap))
}

function capOf (buffer: SharedArrayBuffer): number {
  return (buffer.byteLength - HEADER_BYTES) / 2
}

// Worker side. Lengths are published with Atomics.store after the bytes are in place.
export function outputSink (buffer: SharedArrayBuffer): OutputSink {
  const cap = capOf(buffer)
  const lengths = new Int32Array(buffer, 0, 2)
  const data = new Uint8Array(buffer, HEADER_BYTES)
  return {
    write (fd, chunk) {
      const index = fd - 1
      const used = Atomics.load(lengths, 0) + Atomics.load(lengths, 1)
      const room = Math.max(0, cap - used)
      const n = Math.min(room, chunk.length)
      const at = Atomics.load(lengths, index)
      data.set(chunk.subarray(0, n), index * cap + at)
      Atomics.store(lengths, index, at + n)
      return n === chunk.length
    }
  }
}

// Main side, once the program has stopped: empties a buffer for the next call. Only the lengths
// need clearing (nothing past them is ever read), so a reused buffer costs nothing to reset,
// where a fresh one is megabytes to allocate and zero.
export function resetOutput (buffer: SharedArrayBuffer): void {
  const lengths = new Int32Array(buffer, 0, 2)
  Atomics.store(lengths, 0, 0)
  Atomics.store(lengths, 1, 0)
}

// Main side: copies out, so the result does not pin the shared buffer.
export function readOutput (buffer: SharedArrayBuffer): { stdout: Uint8Array, stderr: Uint8Array } {
  const cap = capOf(buffer)
  const lengths = new Int32Array(buffer, 0, 2)
  const data = new Uint8Array(buffer, HEADER_BYTES)
  return {
    stdout: data.slice(0, Atomics.load(lengths, 0)),
    stderr: data.slice(cap, cap + Atomics.load(lengths, 1))
  }
}

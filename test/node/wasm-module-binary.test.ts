import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { ByteReader, WasmModuleError, encodeU32 } from '../../node/wasm/leb128.ts'
import { MAX_TABLE_ELEMENTS, MAX_TABLES, capModuleMemory } from '../../node/wasm/module-binary.ts'

// Hand-assembled modules: a type section, an optional import section, a memory section with the
// given limits (raw bytes: flags, min[, max]), and `memory` exported so tests can grow it.
const HEADER = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]
const section = (id: number, body: number[]): number[] => [id, ...encodeU32(body.length), ...body]
const name = (s: string): number[] => [s.length, ...new TextEncoder().encode(s)]

function moduleWith (opts: { memories?: number[][], importedMemory?: number[], exportMemory?: boolean, tables?: number[][] }): Uint8Array {
  const out = [...HEADER, ...section(1, [1, 0x60, 0, 0])]
  if (opts.importedMemory !== undefined) out.push(...section(2, [1, ...name('env'), ...name('memory'), 0x02, ...opts.importedMemory]))
  if (opts.tables !== undefined) out.push(...section(4, [opts.tables.length, ...opts.tables.flat()]))
  if (opts.memories !== undefined) out.push(...section(5, [opts.memories.length, ...opts.memories.flat()]))
  if (opts.exportMemory === true) out.push(...section(7, [1, ...name('memory'), 0x02, 0]))
  if (opts.tables !== undefined) out.push(...section(7, [1, ...name('table'), 0x01, 0]))
  return Uint8Array.from(out)
}

const instantiate = (bytes: Uint8Array, imports: WebAssembly.Imports = {}): WebAssembly.Memory =>
  new WebAssembly.Instance(new WebAssembly.Module(bytes as Uint8Array<ArrayBuffer>), imports).exports.memory as WebAssembly.Memory

describe('leb128', () => {
  test('reads single- and multi-byte u32, including padded encodings', () => {
    assert.equal(new ByteReader(Uint8Array.of(0x05)).u32('x'), 5)
    assert.equal(new ByteReader(Uint8Array.of(0xe5, 0x8e, 0x26)).u32('x'), 624485)
    assert.equal(new ByteReader(Uint8Array.of(0x81, 0x80, 0x80, 0x80, 0x00)).u32('x'), 1)
    assert.equal(new ByteReader(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0x0f)).u32('x'), 0xffffffff)
  })

  test('rejects numbers that are too long, too large or cut off', () => {
    assert.throws(() => new ByteReader(Uint8Array.of(0x80, 0x80, 0x80, 0x80, 0x80, 0x00)).u32('x'), /malformed LEB128/)
    assert.throws(() => new ByteReader(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0x1f)).u32('x'), /too large for u32/)
    assert.throws(() => new ByteReader(Uint8Array.of(0x80, 0x80)).u32('section size'), /truncated module: ran out of bytes reading section size/)
  })

  test('encodes what it reads', () => {
    for (const n of [0, 1, 127, 128, 65536, 0xffffffff]) assert.equal(new ByteReader(encodeU32(n)).u32('x'), n)
  })
})

describe('memory cap', () => {
  const CAP = 4 // pages

  test('gives a memory without a maximum the cap as its maximum, so growing past it fails', () => {
    const capped = capModuleMemory(moduleWith({ memories: [[0x00, 1]], exportMemory: true }), CAP)
    assert.deepEqual(capped.memory, { min: 1, max: CAP, shared: false, imported: false })
    const memory = instantiate(capped.bytes)
    assert.equal(memory.grow(CAP - 1), 1)
    assert.throws(() => memory.grow(1), RangeError)
    assert.equal(memory.buffer.byteLength, CAP * 65536)
  })

  test('lowers a larger maximum and keeps a smaller one', () => {
    assert.equal(capModuleMemory(moduleWith({ memories: [[0x01, 1, ...encodeU32(60000)]] }), CAP).memory?.max, CAP)
    assert.equal(capModuleMemory(moduleWith({ memories: [[0x01, 1, 2]] }), CAP).memory?.max, 2)
  })

  test('copies an already-capped module unchanged, byte for byte', () => {
    const original = moduleWith({ memories: [[0x01, 1, 2]], exportMemory: true })
    assert.deepEqual(capModuleMemory(original, CAP).bytes, original)
  })

  test('caps an imported memory: a host memory larger than the cap no longer links', () => {
    const capped = capModuleMemory(moduleWith({ importedMemory: [0x00, 1] }), CAP)
    assert.deepEqual(capped.imports, [{ module: 'env', name: 'memory', kind: 'memory', memory: { min: 1, max: CAP, shared: false } }])
    assert.equal(capped.memory?.imported, true)
    const mod = new WebAssembly.Module(capped.bytes)
    assert.throws(() => new WebAssembly.Instance(mod, { env: { memory: new WebAssembly.Memory({ initial: 1, maximum: CAP + 1 }) } }), WebAssembly.LinkError)
    assert.ok(new WebAssembly.Instance(mod, { env: { memory: new WebAssembly.Memory({ initial: 1, maximum: CAP }) } }))
  })

  test('keeps shared memories shared', () => {
    const capped = capModuleMemory(moduleWith({ memories: [[0x03, 1, 100]] }), CAP)
    assert.deepEqual(capped.memory, { min: 1, max: CAP, shared: true, imported: false })
    assert.ok(WebAssembly.validate(capped.bytes))
  })

  test('parses padded LEB128 in limits and section sizes', () => {
    const bytes = Uint8Array.from([...HEADER, 0x05, 0x87, 0x80, 0x80, 0x80, 0x00, 1, 0x00, 0x81, 0x80, 0x80, 0x80, 0x00])
    assert.deepEqual(capModuleMemory(bytes, CAP).memory, { min: 1, max: CAP, shared: false, imported: false })
  })

  test('refuses a module whose minimum already exceeds the cap', () => {
    assert.throws(() => capModuleMemory(moduleWith({ memories: [[0x00, 5]] }), CAP), /needs 327680 bytes of memory to start, more than the limit of 262144 bytes/)
    assert.throws(() => capModuleMemory(moduleWith({ importedMemory: [0x00, 5] }), CAP), /more than the limit/)
  })

  test('refuses memory64, custom page sizes and multiple memories clearly', () => {
    assert.throws(() => capModuleMemory(moduleWith({ memories: [[0x04, 1]] }), CAP), /64-bit memory \(memory64\)/)
    assert.throws(() => capModuleMemory(moduleWith({ memories: [[0x08, 1, 0]] }), CAP), /custom memory page sizes/)
    assert.throws(() => capModuleMemory(moduleWith({ memories: [[0x00, 1], [0x00, 1]] }), CAP), /more than one memory/)
    assert.throws(() => capModuleMemory(moduleWith({ importedMemory: [0x00, 1], memories: [[0x00, 1]] }), CAP), /more than one memory/)
  })

  test('rejects malformed input with a WasmModuleError saying what is wrong', () => {
    const ok = moduleWith({ memories: [[0x00, 1]] })
    assert.throws(() => capModuleMemory(ok.subarray(0, ok.length - 1), CAP), (err: Error) => err instanceof WasmModuleError && /truncated module: section 5/.test(err.message))
    assert.throws(() => capModuleMemory(Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8), CAP), /missing the \\0asm magic bytes/)
    assert.throws(() => capModuleMemory(Uint8Array.of(0, 0x61, 0x73, 0x6d, 0x0d, 0, 1, 0), CAP), /WebAssembly component, not a core module/)
    assert.throws(() => capModuleMemory(Uint8Array.of(0, 0x61, 0x73, 0x6d, 2, 0, 0, 0), CAP), /unsupported WebAssembly binary version 2/)
    assert.throws(() => capModuleMemory(moduleWith({ memories: [[0x01, 3, 2]] }), CAP), /invalid memory limits/)
    const badKind = Uint8Array.from([...HEADER, ...section(2, [1, ...name('env'), ...name('x'), 0x09])])
    assert.throws(() => capModuleMemory(badKind, CAP), /unknown import\/export kind 0x9/)
  })

  test('lists imports of every kind, skipping their descriptions correctly', () => {
    const imports = [
      ...name('wasi_snapshot_preview1'), ...name('fd_write'), 0x00, 0,
      ...name('env'), ...name('table'), 0x01, 0x70, 0x00, 1,
      ...name('env'), ...name('g'), 0x03, 0x7f, 0x00,
      ...name('env'), ...name('memory'), 0x02, 0x00, 1
    ]
    const bytes = Uint8Array.from([...HEADER, ...section(1, [1, 0x60, 0, 0]), ...section(2, [4, ...imports])])
    const capped = capModuleMemory(bytes, CAP)
    assert.deepEqual(capped.imports.map(i => `${i.module}.${i.name}:${i.kind}`), ['wasi_snapshot_preview1.fd_write:function', 'env.table:table', 'env.g:global', 'env.memory:memory'])
    assert.ok(WebAssembly.validate(capped.bytes))
  })

  test('caps tables too: growing a table past the element limit fails', () => {
    const capped = capModuleMemory(moduleWith({ tables: [[0x70, 0x00, 1]] }), CAP)
    const table = new WebAssembly.Instance(new WebAssembly.Module(capped.bytes)).exports.table as WebAssembly.Table
    assert.equal(table.grow(MAX_TABLE_ELEMENTS - 1), 1)
    assert.throws(() => table.grow(1), RangeError)
    assert.throws(() => capModuleMemory(moduleWith({ tables: [[0x70, 0x00, ...encodeU32(MAX_TABLE_ELEMENTS + 1)]] }), CAP), /table of 262145 elements, more than the limit/)
    const many = Array.from({ length: MAX_TABLES + 1 }, () => [0x70, 0x00, 0])
    assert.throws(() => capModuleMemory(moduleWith({ tables: many }), CAP), /5 tables, more than the limit of 4/)
    assert.throws(() => capModuleMemory(moduleWith({ tables: [[0x70, 0x04, 0]] }), CAP), /table64/)
  })
})

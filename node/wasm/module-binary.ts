// Reads just enough of a Wasm binary to know what it imports and exports, and rewrites its memory
// and table limits. V8 lets a module grow its memory to whatever maximum the module itself
// declares (a Worker's resourceLimits do not count Wasm memory), so the only cap that really holds
// is the one written into the module before it is compiled: `memory.grow` past it then fails
// inside the module. Everything else is copied byte for byte; WebAssembly.validate/compile check
// the rest.

import { ByteReader, WasmModuleError, encodeU32 } from './leb128.ts'

export const PAGE_BYTES = 65536
const MAX_PAGES_32 = 65536
// Tables live outside linear memory (8 bytes or more per element), so they get their own cap:
// V8 alone would allow ten million elements per table. Programs compiled from C, Rust or
// AssemblyScript have one function table of a few thousand entries.
export const MAX_TABLES = 4
export const MAX_TABLE_ELEMENTS = 262144

const SECTION_IMPORT = 2
const SECTION_TABLE = 4
const SECTION_MEMORY = 5
const SECTION_EXPORT = 7

const KIND_NAMES = ['function', 'table', 'memory', 'global', 'tag'] as const
export type ExternKind = typeof KIND_NAMES[number]

export interface MemoryLimits {
  min: number
  max: number | undefined
  shared: boolean
}

export interface ImportEntry {
  module: string
  name: string
  kind: ExternKind
  memory?: MemoryLimits
}

export interface ExportEntry {
  name: string
  kind: ExternKind
}

export interface ModuleLayout {
  imports: ImportEntry[]
  exports: ExportEntry[]
  // The one memory, after capping; undefined when the module has none.
  memory: (MemoryLimits & { imported: boolean }) | undefined
}

export interface CappedModule extends ModuleLayout {
  bytes: Uint8Array<ArrayBuffer>
}

function checkHeader (bytes: Uint8Array): void {
  if (bytes.length >= 1 && bytes[0] === 0x28 /* ( */) {
    const head = new TextDecoder().decode(bytes.subarray(0, 64))
    if (/^\(\s*(module|component)\b/.test(head)) throw new WasmModuleError('not a WebAssembly binary: this looks like the text format (.wat); compile it to .wasm first')
  }
  if (bytes.length < 4 || bytes[0] !== 0x00 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) {
    throw new WasmModuleError('not a WebAssembly module: missing the \\0asm magic bytes')
  }
  if (bytes.length < 8) throw new WasmModuleError('truncated module: header is shorter than 8 bytes')
  const version = bytes[4] | (bytes[5] << 8)
  const layer = bytes[6] | (bytes[7] << 8)
  if (layer === 1) throw new WasmModuleError('this is a WebAssembly component, not a core module; only WASI preview 1 core modules run here')
  if (version !== 1 || layer !== 0) throw new WasmModuleError(`unsupported WebAssembly binary version ${version}`)
}

// Flags per the threads, memory64 and custom-page-sizes proposals.
const LIMIT_HAS_MAX = 0x01
const LIMIT_SHARED = 0x02
const LIMIT_64 = 0x04
const LIMIT_PAGE_SIZE = 0x08

function readMemoryLimits (r: ByteReader): MemoryLimits {
  const at = r.offset
  const flags = r.byte('memory limits flags')
  if ((flags & LIMIT_64) !== 0) throw new WasmModuleError('module uses 64-bit memory (memory64), which this runtime does not run')
  if ((flags & LIMIT_PAGE_SIZE) !== 0) throw new WasmModuleError('module uses custom memory page sizes, which this runtime does not run')
  if ((flags & ~(LIMIT_HAS_MAX | LIMIT_SHARED)) !== 0) throw new WasmModuleError(`invalid memory limits flags 0x${flags.toString(16)} at offset ${at}`)
  const min = r.u32('memory minimum')
  const max = (flags & LIMIT_HAS_MAX) !== 0 ? r.u32('memory maximum') : undefined
  if (min > MAX_PAGES_32 || (max !== undefined && (max > MAX_PAGES_32 || max < min))) {
    throw new WasmModuleError(`invalid memory limits at offset ${at}: min ${min}, max ${max}`)
  }
  return { min, max, shared: (flags & LIMIT_SHARED) !== 0 }
}

function capLimits (limits: MemoryLimits, maxPages: number): MemoryLimits {
  if (limits.min > maxPages) {
    throw new WasmModuleError(`module needs ${limits.min * PAGE_BYTES} bytes of memory to start, more than the limit of ${maxPages * PAGE_BYTES} bytes`)
  }
  return { ...limits, max: limits.max === undefined ? maxPages : Math.min(limits.max, maxPages) }
}

function encodeLimits (limits: MemoryLimits): Uint8Array {
  const flags = LIMIT_HAS_MAX | (limits.shared ? LIMIT_SHARED : 0)
  return concat([Uint8Array.of(flags), encodeU32(limits.min), encodeU32(limits.max ?? 0)])
}

// Value and reference types: one byte, except the GC proposal's (ref null? ht) which carry a heap type.
function skipValueType (r: ByteReader, what: string): void {
  const t = r.byte(what)
  if (t === 0x63 || t === 0x64) r.s33(`${what} heap type`)
}

function skipTableLimits (r: ByteReader): void {
  const flags = r.byte('table limits flags')
  if ((flags & ~0x05) !== 0) throw new WasmModuleError(`invalid table limits flags 0x${flags.toString(16)}`)
  const bits = (flags & 0x04) !== 0 ? 64 : 32
  r.unsigned(bits, 'table minimum')
  if ((flags & 0x01) !== 0) r.unsigned(bits, 'table maximum')
}

// A defined table: its element type is copied, its limits capped like memory's.
function capTable (r: ByteReader): Uint8Array[] {
  const typeStart = r.offset
  if (r.bytes[typeStart] === 0x40) throw new WasmModuleError('module declares a table with an initializer expression, which this runtime does not run')
  skipValueType(r, 'table element type')
  const elementType = r.bytes.subarray(typeStart, r.offset)
  const flags = r.byte('table limits flags')
  if ((flags & 0x04) !== 0) throw new WasmModuleError('module uses a 64-bit table (table64), which this runtime does not run')
  if ((flags & ~0x01) !== 0) throw new WasmModuleError(`invalid table limits flags 0x${flags.toString(16)}`)
  const min = r.u32('table minimum')
  const max = (flags & 0x01) !== 0 ? r.u32('table maximum') : undefined
  if (min > MAX_TABLE_ELEMENTS) throw new WasmModuleError(`module declares a table of ${min} elements, more than the limit of ${MAX_TABLE_ELEMENTS}`)
  return [elementType, Uint8Array.of(0x01), encodeU32(min), encodeU32(Math.min(max ?? MAX_TABLE_ELEMENTS, MAX_TABLE_ELEMENTS))]
}

function kindOf (byte: number, at: number): ExternKind {
  const kind = KIND_NAMES[byte]
  if (kind === undefined) throw new WasmModuleError(`unknown import/export kind 0x${byte.toString(16)} at offset ${at}`)
  return kind
}

function concat (parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  let length = 0
  for (const p of parts) length += p.length
  const out = new Uint8Array(length)
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

function section (id: number, payload: Uint8Array[]): Uint8Array[] {
  const body = concat(payload)
  return [Uint8Array.of(id), encodeU32(body.length), body]
}

// Parses the module's layout and returns a copy whose memory (defined or imported) declares a
// maximum of at most maxPages, and whose tables declare at most MAX_TABLE_ELEMENTS. Throws WasmModuleError for bytes that are not a well-formed module
// and for modules this runtime will not run (memory64, several memories, a minimum over the cap).
export function capModuleMemory (bytes: Uint8Array, maxPages: number): CappedModule {
  if (!Number.isInteger(maxPages) || maxPages < 0 || maxPages > MAX_PAGES_32) throw new RangeError(`maxPages must be an integer in 0..${MAX_PAGES_32}`)
  checkHeader(bytes)
  const r = new ByteReader(bytes, 8)
  const out: Uint8Array[] = [bytes.subarray(0, 8)]
  const imports: ImportEntry[] = []
  const exports: ExportEntry[] = []
  let memory: ModuleLayout['memory']
  const addMemory = (limits: MemoryLimits, imported: boolean): MemoryLimits => {
    if (memory !== undefined) throw new WasmModuleError('module declares more than one memory (multi-memory), which this runtime does not run')
    const capped = capLimits(limits, maxPages)
    memory = { ...capped, imported }
    return capped
  }

  while (r.remaining > 0) {
    const start = r.offset
    const id = r.byte('section id')
    const size = r.u32('section size')
    const body = new ByteReader(bytes, r.offset, r.offset + size)
    if (size > r.remaining) {
      throw new WasmModuleError(`truncated module: section ${id} at offset ${start} claims ${size} bytes, only ${r.remaining} remain`)
    }
    r.offset += size

    if (id === SECTION_IMPORT) {
      const count = body.u32('import count')
      const parts: Uint8Array[] = [encodeU32(count)]
      for (let i = 0; i < count; i++) {
        const entryStart = body.offset
        const module = body.name('import module name')
        const name = body.name('import name')
        const kindAt = body.offset
        const kind = kindOf(body.byte('import kind'), kindAt)
        if (kind === 'memory') {
          const headEnd = body.offset
          const capped = addMemory(readMemoryLimits(body), true)
          imports.push({ module, name, kind, memory: capped })
          parts.push(bytes.subarray(entryStart, headEnd), encodeLimits(capped))
          continue
        }
        if (kind === 'function') body.u32('import type index')
        else if (kind === 'table') { skipValueType(body, 'table element type'); skipTableLimits(body) } else if (kind === 'global') { skipValueType(body, 'global type'); body.byte('global mutability') } else { body.byte('tag attribute'); body.u32('tag type index') }
        imports.push({ module, name, kind })
        parts.push(bytes.subarray(entryStart, body.offset))
      }
      if (body.remaining !== 0) throw new WasmModuleError('import section has trailing bytes')
      out.push(...section(id, parts))
    } else if (id === SECTION_TABLE) {
      const count = body.u32('table count')
      // Imported tables are refused later (checkRunnable), so this section holds them all.
      if (count > MAX_TABLES) throw new WasmModuleError(`module declares ${count} tables, more than the limit of ${MAX_TABLES}`)
      const parts: Uint8Array[] = [encodeU32(count)]
      for (let i = 0; i < count; i++) parts.push(...capTable(body))
      if (body.remaining !== 0) throw new WasmModuleError('table section has trailing bytes')
      out.push(...section(id, parts))
    } else if (id === SECTION_MEMORY) {
      const count = body.u32('memory count')
      const parts: Uint8Array[] = [encodeU32(count)]
      for (let i = 0; i < count; i++) parts.push(encodeLimits(addMemory(readMemoryLimits(body), false)))
      if (body.remaining !== 0) throw new WasmModuleError('memory section has trailing bytes')
      out.push(...section(id, parts))
    } else {
      if (id === SECTION_EXPORT) {
        const count = body.u32('export count')
        for (let i = 0; i < count; i++) {
          const name = body.name('export name')
          const kindAt = body.offset
          const kind = kindOf(body.byte('export kind'), kindAt)
          body.u32('export index')
          exports.push({ name, kind })
        }
      }
      out.push(bytes.subarray(start, r.offset))
    }
  }
  return { bytes: concat(out), imports, exports, memory }
}

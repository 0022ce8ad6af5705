// The Wasm function runtime: runs WASI preview 1 commands under memory, wall-time and output
// limits that hold even against a hostile module.
//
// - memory: the module's declared memory maximum is rewritten to the cap before compiling
//   (module-binary.ts), so growing past it fails inside the module;
// - time: each call runs in a worker thread that a watchdog terminates (sandbox-pool.ts);
// - output: stdout/stderr go through our own WASI host into a bounded shared buffer
//   (wasi-host.ts, output-buffer.ts), and the program is stopped when it overflows;
// - no filesystem, no network: the WASI host has no preopens and no sockets; args and env are
//   exactly the caller's.
// Compiled modules are cached per key, so a warm call only instantiates.

import { availableParallelism } from 'node:os'
import { WasmModuleError } from './leb128.ts'
import { type CappedModule, PAGE_BYTES, capModuleMemory } from './module-binary.ts'
import { outputBuffer, outputBytes, readOutput, resetOutput } from './output-buffer.ts'
import type { ImportedMemory, Outcome } from './sandbox-message.ts'
import { sandboxPool } from './sandbox-pool.ts'
import { WASI_MODULE } from './wasi-host.ts'

export { WasmModuleError } from './leb128.ts'
export type { Outcome } from './sandbox-message.ts'

export interface WasmLimits {
  memoryBytes?: number
  timeoutMs?: number
  // stdout and stderr together.
  outputBytes?: number
}

export interface WasmCall {
  // Arguments after the program name; the program sees argv = [key, ...args].
  args?: string[]
  env?: Record<string, string>
  stdin?: Uint8Array
  // May only lower the runtime's defaults; higher values are clamped to them.
  limits?: WasmLimits
}

export interface InvocationResult {
  // The program's exit code, or -1 when it did not exit by itself (stopped, trapped, refused).
  exitCode: number
  stdout: Uint8Array
  stderr: Uint8Array
  outcome: Outcome
  message?: string
  // Wall time of the whole call, including any wait for a worker and compiling.
  ms: number
  // False when the compiled module came from the cache.
  compiled: boolean
  // Size of the program's linear memory when it stopped (0 when unknown, e.g. after a timeout).
  memoryBytes: number
}

export interface WasmRuntimeInit {
  maxMemoryBytes: number
  timeoutMs: number
  maxOutputBytes: number
  // Calls running at once (one worker each); default: cores - 1, at least 1.
  maxConcurrent?: number
  // Compiled modules kept; default 32.
  cacheEntries?: number
  // Calls allowed to wait for a worker before new ones are refused; default 64.
  maxQueued?: number
}

export interface WasmRuntimeStats {
  invocations: number
  outcomes: Record<Outcome, number>
  compiles: number
  cacheHits: number
  cachedModules: number
  workers: number
  running: number
  queued: number
}

export interface WasmValidation {
  // The wasi_snapshot_preview1 functions the module imports.
  imports: string[]
}

export interface WasmRuntime {
  invoke (key: string, wasm: Uint8Array, call?: WasmCall): Promise<InvocationResult>
  validate (wasm: Uint8Array): WasmValidation
  stats (): WasmRuntimeStats
  close (): Promise<void>
}

interface Prepared {
  module: WebAssembly.Module
  layout: CappedModule
}

const MAX_MEMORY_BYTES = 65536 * PAGE_BYTES
const WORKER_HEAP_MB = 64

function positive (name: string, value: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || value > max) {
    throw new RangeError(`${name} must be a positive number${max < Number.MAX_SAFE_INTEGER ? ` no larger than ${max}` : ''}, got ${value}`)
  }
  return value
}

function count (name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`${name} must be a whole number of at least 1, got ${value}`)
  return value
}

// What the runtime will and will not link, checked before any compile.
function checkRunnable (layout: CappedModule): void {
  for (const i of layout.imports) {
    if (i.kind === 'memory') continue
    if (i.module === WASI_MODULE && i.kind === 'function') continue
    if (i.module === 'wasi_unstable') throw new WasmModuleError('module targets the old wasi_unstable API; only wasi_snapshot_preview1 is provided')
    throw new WasmModuleError(`module imports ${i.kind} ${i.module}.${i.name}, which this runtime does not provide (only ${WASI_MODULE} functions)`)
  }
  if (!layout.exports.some(e => e.name === '_start' && e.kind === 'function')) {
    throw new WasmModuleError('module exports no _start function: not a WASI command')
  }
}

function wasiImports (layout: CappedModule): string[] {
  return [...new Set(layout.imports.filter(i => i.module === WASI_MODULE && i.kind === 'function').map(i => i.name))]
}

function checkCall (call: WasmCall): string | undefined {
  const args = call.args ?? []
  if (!Array.isArray(args) || args.some(a => typeof a !== 'string' || a.includes('\0'))) return 'args must be strings without NUL characters'
  for (const [k, v] of Object.entries(call.env ?? {})) {
    if (typeof v !== 'string' || k === '' || k.includes('=') || k.includes('\0') || v.includes('\0')) return `invalid env entry ${JSON.stringify(k)}: names must be non-empty without "=" or NUL, values strings without NUL`
  }
  if (call.stdin !== undefined && !(call.stdin instanceof Uint8Array)) return 'stdin must be a Uint8Array'
  return undefined
}

// A requested limit lowers the default; anything else (missing, larger) leaves the default.
function lower (name: string, requested: number | undefined, ceiling: number): number | string {
  if (requested === undefined) return ceiling
  if (typeof requested !== 'number' || Number.isNaN(requested) || requested < 0) return `limits.${name} must be a non-negative number`
  return Math.min(requested, ceiling)
}

export function createWasmRuntime (init: WasmRuntimeInit): WasmRuntime {
  const maxMemoryBytes = positive('maxMemoryBytes', init.maxMemoryBytes, MAX_MEMORY_BYTES)
  if (maxMemoryBytes < PAGE_BYTES) throw new RangeError(`maxMemoryBytes must be at least one page (${PAGE_BYTES})`)
  const timeoutMs = positive('timeoutMs', init.timeoutMs, 2 ** 31 - 1)
  // Each running call holds a shared buffer of twice this size (output-buffer.ts).
  const maxOutputBytes = positive('maxOutputBytes', init.maxOutputBytes, 2 ** 28)
  const maxConcurrent = count('maxConcurrent', init.maxConcurrent ?? Math.max(1, availableParallelism() - 1))
  const cacheEntries = count('cacheEntries', init.cacheEntries ?? 32)
  const maxQueued = count('maxQueued', init.maxQueued ?? 64)

  const pool = sandboxPool({ size: maxConcurrent, maxQueued, heapMb: WORKER_HEAP_MB })
  // Insertion order is recency: a hit re-inserts, eviction takes the first.
  const cache = new Map<string, Prepared>()
  const compiling = new Map<string, Promise<Prepared>>()
  const outcomes: Record<Outcome, number> = { ok: 0, 'exit-nonzero': 0, timeout: 0, memory: 0, output: 0, trap: 0, refused: 0 }
  // Output buffers of finished calls, reused by the next calls of the same cap. A buffer goes
  // back only once its program has stopped (the worker replied or is dead), so no one writes it.
  const spareOutputs: SharedArrayBuffer[] = []
  const takeOutput = (cap: number): SharedArrayBuffer => {
    const size = outputBytes(cap)
    const at = spareOutputs.findIndex(b => b.byteLength === size)
    if (at < 0) return outputBuffer(cap)
    const [buffer] = spareOutputs.splice(at, 1)
    resetOutput(buffer)
    return buffer
  }
  const giveOutput = (buffer: SharedArrayBuffer): void => {
    if (closed) return
    spareOutputs.push(buffer)
    if (spareOutputs.length > maxConcurrent) spareOutputs.shift()
  }
  let invocations = 0
  let compiles = 0
  let cacheHits = 0
  let closed = false

  // The cap is part of the cache key: the same bytes capped lower are a different module.
  const prepare = async (key: string, wasm: Uint8Array, pages: number): Promise<{ prepared: Prepared, compiled: boolean }> => {
    const cacheKey = `${pages}:${key}`
    const hit = cache.get(cacheKey)
    if (hit !== undefined) {
      cache.delete(cacheKey)
      cache.set(cacheKey, hit)
      cacheHits++
      return { prepared: hit, compiled: false }
    }
    const inFlight = compiling.get(cacheKey)
    if (inFlight !== undefined) return { prepared: await inFlight, compiled: false }
    const work = (async () => {
      const layout = capModuleMemory(wasm, pages)
      checkRunnable(layout)
      let module: WebAssembly.Module
      try {
        module = await WebAssembly.compile(layout.bytes)
      } catch (err) {
        throw new WasmModuleError(`invalid WebAssembly module: ${(err as Error).message}`)
      }
      compiles++
      return { module, layout }
    })()
    compiling.set(cacheKey, work)
    try {
      const prepared = await work
      if (!closed) {
        cache.set(cacheKey, prepared)
        while (cache.size > cacheEntries) cache.delete(cache.keys().next().value as string)
      }
      return { prepared, compiled: true }
    } finally {
      compiling.delete(cacheKey)
    }
  }

  const invoke = async (key: string, wasm: Uint8Array, call: WasmCall = {}): Promise<InvocationResult> => {
    const started = performance.now()
    invocations++
    let compiled = false
    const done = (r: Omit<InvocationResult, 'ms' | 'compiled'>): InvocationResult => {
      outcomes[r.outcome]++
      return { ...r, ms: performance.now() - started, compiled }
    }
    const refuse = (message: string): InvocationResult =>
      done({ exitCode: -1, stdout: new Uint8Array(0), stderr: new Uint8Array(0), outcome: 'refused', message, memoryBytes: 0 })

    if (closed) return refuse('runtime closed')
    if (typeof key !== 'string' || key === '' || key.includes('\0')) return refuse('key must be a non-empty string without NUL characters')
    if (!(wasm instanceof Uint8Array)) return refuse('not a WebAssembly module: expected bytes')
    const memory = lower('memoryBytes', call.limits?.memoryBytes, maxMemoryBytes)
    const time = lower('timeoutMs', call.limits?.timeoutMs, timeoutMs)
    const output = lower('outputBytes', call.limits?.outputBytes, maxOutputBytes)
    for (const limit of [memory, time, output]) if (typeof limit === 'string') return refuse(limit)
    const problem = checkCall(call)
    if (problem !== undefined) return refuse(problem)

    let prepared: Prepared
    try {
      const p = await prepare(key, wasm, Math.floor((memory as number) / PAGE_BYTES))
      prepared = p.prepared
      compiled = p.compiled
    } catch (err) {
      if (err instanceof WasmModuleError) return refuse(err.message)
      throw err
    }

    const { layout, module } = prepared
    const mem = layout.memory
    const imported = layout.imports.find(i => i.kind === 'memory')
    const importedMemory: ImportedMemory | undefined = imported?.memory === undefined
      ? undefined
      : { module: imported.module, name: imported.name, initial: imported.memory.min, maximum: imported.memory.max ?? 0, shared: imported.memory.shared }
    const buffer = takeOutput(Math.floor(output as number))
    const verdict = await pool.run({
      timeoutMs: time as number,
      request: {
        module,
        wasiImports: wasiImports(layout),
        importedMemory,
        memoryMaxBytes: (mem?.max ?? 0) * PAGE_BYTES,
        argv: [key, ...(call.args ?? [])],
        env: { ...call.env },
        stdin: call.stdin ?? new Uint8Array(0),
        output: buffer
      }
    })
    const printed = readOutput(buffer)
    giveOutput(buffer)
    return done({ ...verdict, ...printed })
  }

  return {
    invoke,
    validate (wasm) {
      if (!(wasm instanceof Uint8Array)) throw new WasmModuleError('not a WebAssembly module: expected bytes')
      const layout = capModuleMemory(wasm, Math.floor(maxMemoryBytes / PAGE_BYTES))
      if (!WebAssembly.validate(layout.bytes)) {
        // validate() only says no; compiling says why (and stops at the first error).
        let why = 'it does not validate'
        try {
          new WebAssembly.Module(layout.bytes) // eslint-disable-line no-new
        } catch (err) {
          why = (err as Error).message
        }
        throw new WasmModuleError(`invalid WebAssembly module: ${why}`)
      }
      checkRunnable(layout)
      return { imports: wasiImports(layout) }
    },
    stats () {
      const p = pool.stats()
      return {
        invocations,
        outcomes: { ...outcomes },
        compiles,
        cacheHits,
        cachedModules: cache.size,
        workers: p.workers,
        running: p.busy,
        queued: p.queued
      }
    },
    async close () {
      closed = true
      cache.clear()
      spareOutputs.length = 0
      await pool.close()
    }
  }
}

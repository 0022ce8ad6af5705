import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { type InvocationResult, type WasmRuntime, createWasmRuntime } from '../../node/wasm/runtime.ts'
import { buildWasmFixtures } from '../../scripts/build-wasm-fixtures.ts'

const MiB = 1024 * 1024
const DEFAULTS = { maxMemoryBytes: 16 * MiB, timeoutMs: 5000, maxOutputBytes: 64 * 1024, maxConcurrent: 2 }

const text = (b: Uint8Array): string => new TextDecoder().decode(b)
const bytes = (s: string): Uint8Array => new TextEncoder().encode(s)

// The smallest WASI command there is: `_start` runs `code` (default: nothing).
function tinyCommand (memoryMinPages: number, imports: Uint8Array = Uint8Array.of(), code: number[] = []): Uint8Array {
  const section = (id: number, body: number[]): number[] => [id, body.length, ...body]
  return Uint8Array.from([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [1, 0x60, 0, 0]),
    ...imports,
    ...section(3, [1, 0]),
    ...section(5, [1, 0x00, ...leb(memoryMinPages)]),
    ...section(7, [1, 6, ...bytes('_start'), 0, 0]),
    ...section(10, [1, code.length + 2, 0, ...code, 0x0b])
  ])
}

async function waitFor (condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
}

function leb (n: number): number[] {
  const out: number[] = []
  do {
    let b = n & 0x7f
    n >>>= 7
    if (n !== 0) b |= 0x80
    out.push(b)
  } while (n !== 0)
  return out
}

describe('wasm runtime', () => {
  let dir: string
  let wasm: Record<string, Uint8Array>
  let runtime: WasmRuntime

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'mesh-wasm-'))
    wasm = await buildWasmFixtures(dir)
    runtime = createWasmRuntime(DEFAULTS)
  })

  after(async () => {
    await runtime?.close()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  const echo = (call = {}): Promise<InvocationResult> => runtime.invoke('echo', wasm.echo, call)

  test('passes args, env and stdin and returns exact stdout, stderr and exit code', async () => {
    const r = await echo({ args: ['one', 'two words'], env: { GREETING: 'hi there', EXIT_CODE: '3' }, stdin: bytes('from stdin') })
    assert.equal(r.outcome, 'exit-nonzero')
    assert.equal(r.exitCode, 3)
    assert.equal(text(r.stdout), 'args:one,two words\nenv:EXIT_CODE=3\nenv:GREETING=hi there\nstdin:from stdin\n')
    assert.equal(text(r.stderr), 'argc 3 on stderr\n')
    assert.equal(r.message, undefined)
  })

  test('gives the program nothing the caller did not pass: no host env, argv is [key]', async () => {
    const r = await echo()
    assert.equal(r.outcome, 'ok')
    assert.equal(r.exitCode, 0)
    assert.equal(text(r.stdout), 'args:\nstdin:\n')
    assert.equal(text(r.stderr), 'argc 1 on stderr\n')
  })

  test('passes binary stdin through unchanged', async () => {
    const input = new Uint8Array(10000).map((_, i) => (i * 7) & 0xff)
    const r = await echo({ stdin: input })
    assert.equal(r.outcome, 'ok')
    assert.deepEqual(r.stdout.subarray('args:\nstdin:'.length, -1), input)
  })

  test('compiles once per key and serves warm calls from the cache', async () => {
    const compilesBefore = runtime.stats().compiles
    const first = await runtime.invoke('echo-cache-test', wasm.echo, { env: { EXIT_CODE: '0' } })
    const second = await runtime.invoke('echo-cache-test', wasm.echo, { env: { EXIT_CODE: '0' } })
    assert.equal(first.compiled, true)
    assert.equal(second.compiled, false)
    assert.equal(second.outcome, 'ok')
    assert.deepEqual(second.stdout, first.stdout)
    assert.equal(runtime.stats().compiles, compilesBefore + 1)
  })

  test('stops a program at the wall-time limit, keeps its output so far, and serves other calls', async () => {
    const [looping, normal] = await Promise.all([
      runtime.invoke('loop', wasm.loop, { limits: { timeoutMs: 500 } }),
      echo({ args: ['alongside'] })
    ])
    assert.equal(looping.outcome, 'timeout')
    assert.equal(looping.exitCode, -1)
    assert.equal(text(looping.stdout), 'looping\n')
    assert.match(looping.message ?? '', /wall-time limit of 500 ms/)
    assert.equal(normal.outcome, 'ok')
    assert.equal(text(normal.stdout), 'args:alongside\nstdin:\n')
    // The killed worker is replaced: calls after it still run.
    const afterwards = await echo()
    assert.equal(afterwards.outcome, 'ok')
  })

  test('caps linear memory: a program allocating without bound fails inside the cap', async () => {
    const [hog, normal] = await Promise.all([runtime.invoke('alloc', wasm.alloc), echo({ args: ['alongside'] })])
    assert.equal(hog.outcome, 'memory')
    assert.ok(hog.memoryBytes <= DEFAULTS.maxMemoryBytes, `memory ${hog.memoryBytes} exceeded the cap`)
    assert.ok(hog.memoryBytes > DEFAULTS.maxMemoryBytes / 2, `memory ${hog.memoryBytes} never got near the cap`)
    assert.match(hog.message ?? '', /out of memory/)
    assert.equal(normal.outcome, 'ok')
    assert.equal(text(normal.stdout), 'args:alongside\nstdin:\n')
  })

  test('stops a program that floods its output at the output limit', async () => {
    const [flood, normal] = await Promise.all([runtime.invoke('flood', wasm.flood), echo({ args: ['alongside'] })])
    assert.equal(flood.outcome, 'output')
    assert.equal(flood.stdout.length, DEFAULTS.maxOutputBytes)
    assert.ok(text(flood.stdout).startsWith('flood flood '))
    assert.equal(normal.outcome, 'ok')
    assert.equal(text(normal.stdout), 'args:alongside\nstdin:\n')
  })

  test('per-call limits can lower the defaults', async () => {
    const output = await runtime.invoke('flood', wasm.flood, { limits: { outputBytes: 1000 } })
    assert.equal(output.outcome, 'output')
    assert.equal(output.stdout.length, 1000)
    const memory = await runtime.invoke('alloc', wasm.alloc, { limits: { memoryBytes: 4 * MiB } })
    assert.equal(memory.outcome, 'memory')
    assert.ok(memory.memoryBytes <= 4 * MiB, `memory ${memory.memoryBytes} exceeded the per-call cap`)
    // The stdout limit covers stderr too: echo writes 13 bytes to stdout before stderr.
    const both = await echo({ limits: { outputBytes: 14 } })
    assert.equal(both.outcome, 'output')
    assert.equal(text(both.stdout), 'args:\nstdin:\n')
    assert.equal(text(both.stderr), 'a')
  })

  test('per-call limits cannot raise the defaults', async () => {
    const output = await runtime.invoke('flood', wasm.flood, { limits: { outputBytes: 100 * DEFAULTS.maxOutputBytes } })
    assert.equal(output.outcome, 'output')
    assert.equal(output.stdout.length, DEFAULTS.maxOutputBytes)
    const memory = await runtime.invoke('alloc', wasm.alloc, { limits: { memoryBytes: 1024 * MiB } })
    assert.equal(memory.outcome, 'memory')
    assert.ok(memory.memoryBytes <= DEFAULTS.maxMemoryBytes, `memory ${memory.memoryBytes} exceeded the default cap`)

    const strict = createWasmRuntime({ ...DEFAULTS, timeoutMs: 300, maxConcurrent: 1 })
    try {
      // Were the hour honoured, this call would not come back within the test's lifetime.
      const time = await strict.invoke('loop', wasm.loop, { limits: { timeoutMs: 3_600_000 } })
      assert.equal(time.outcome, 'timeout')
      assert.match(time.message ?? '', /limit of 300 ms/)
    } finally {
      await strict.close()
    }
  })

  test('refuses nonsensical per-call limits', async () => {
    const r = await echo({ limits: { timeoutMs: -1 } })
    assert.equal(r.outcome, 'refused')
    assert.match(r.message ?? '', /limits\.timeoutMs/)
  })

  test('rejects a non-Wasm file with a clear error', async () => {
    const junk = bytes('#!/bin/sh\necho not wasm\n')
    assert.throws(() => runtime.validate(junk), /not a WebAssembly module: missing the \\0asm magic bytes/)
    const r = await runtime.invoke('junk', junk)
    assert.equal(r.outcome, 'refused')
    assert.match(r.message ?? '', /not a WebAssembly module/)
    assert.equal(r.stdout.length, 0)
    assert.throws(() => runtime.validate(bytes('(module (func))')), /text format \(\.wat\)/)
  })

  test('rejects a truncated module with a clear error', async () => {
    for (const cut of [wasm.echo.length >> 1, wasm.echo.length - 1, 6]) {
      const truncated = wasm.echo.slice(0, cut)
      assert.throws(() => runtime.validate(truncated), /truncated module/)
      const r = await runtime.invoke(`truncated-${cut}`, truncated)
      assert.equal(r.outcome, 'refused')
      assert.match(r.message ?? '', /truncated module/)
    }
  })

  test('validate lists the WASI functions a module needs', () => {
    const { imports } = runtime.validate(wasm.echo)
    assert.deepEqual([...imports].sort(), ['args_get', 'args_sizes_get', 'environ_get', 'environ_sizes_get', 'fd_read', 'fd_write', 'proc_exit'])
    assert.deepEqual(runtime.validate(tinyCommand(1)).imports, [])
  })

  test('refuses modules it cannot run safely, before running them', async () => {
    const big = tinyCommand(DEFAULTS.maxMemoryBytes / 65536 + 1)
    assert.throws(() => runtime.validate(big), /needs 16842752 bytes of memory to start, more than the limit of 16777216/)
    const r = await runtime.invoke('big', big)
    assert.equal(r.outcome, 'refused')
    assert.match(r.message ?? '', /more than the limit/)

    // import "env" "host_fn" (func (type 0))
    const importSection = Uint8Array.from([2, 15, 1, 3, ...bytes('env'), 7, ...bytes('host_fn'), 0, 0])
    const foreign = tinyCommand(1, importSection)
    assert.throws(() => runtime.validate(foreign), /imports function env\.host_fn, which this runtime does not provide/)

    const ok = await runtime.invoke('tiny', tinyCommand(1))
    assert.equal(ok.outcome, 'ok')
    assert.equal(ok.exitCode, 0)
  })

  test('reports a trap as a trap, with the engine\'s reason', async () => {
    const r = await runtime.invoke('trap', tinyCommand(1, undefined, [0x00 /* unreachable */]))
    assert.equal(r.outcome, 'trap')
    assert.equal(r.exitCode, -1)
    assert.match(r.message ?? '', /unreachable/)
  })

  test('counts calls by outcome, and refuses calls once closed', async () => {
    const own = createWasmRuntime({ ...DEFAULTS, maxConcurrent: 1 })
    await own.invoke('echo', wasm.echo, { env: { EXIT_CODE: '1' } })
    await own.invoke('echo', wasm.echo)
    const stats = own.stats()
    assert.equal(stats.invocations, 2)
    assert.equal(stats.outcomes['exit-nonzero'], 1)
    assert.equal(stats.outcomes.ok, 1)
    assert.equal(stats.compiles, 1)
    assert.equal(stats.cacheHits, 1)
    assert.equal(stats.workers, 1)
    await own.close()
    const r = await own.invoke('echo', wasm.echo)
    assert.equal(r.outcome, 'refused')
    assert.equal(r.message, 'runtime closed')
    assert.equal(own.stats().workers, 0)
  })

  test('refuses calls beyond the queue bound; close stops running and queued calls', async () => {
    const own = createWasmRuntime({ ...DEFAULTS, maxConcurrent: 1, maxQueued: 1 })
    const running = own.invoke('loop', wasm.loop)
    await waitFor(() => own.stats().running === 1, 10_000)
    const queued = own.invoke('echo', wasm.echo)
    await waitFor(() => own.stats().queued === 1, 10_000)
    const overflow = await own.invoke('echo', wasm.echo)
    assert.equal(overflow.outcome, 'refused')
    assert.match(overflow.message ?? '', /runtime busy/)
    await own.close()
    const [a, b] = await Promise.all([running, queued])
    assert.equal(a.outcome, 'refused')
    assert.equal(b.outcome, 'refused')
    assert.equal(b.message, 'runtime closed')
  })
})

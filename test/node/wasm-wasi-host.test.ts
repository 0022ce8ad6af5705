import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { outputBuffer, outputSink, readOutput } from '../../node/wasm/output-buffer.ts'
import { OutputLimitExceeded, ProcExit, wasiHost } from '../../node/wasm/wasi-host.ts'

const ESUCCESS = 0
const EBADF = 8
const EFAULT = 21
const ENOSYS = 52

const NAMES = [
  'args_get', 'args_sizes_get', 'environ_get', 'environ_sizes_get', 'fd_write', 'fd_read', 'fd_prestat_get',
  'fd_fdstat_get', 'path_open', 'sock_accept', 'proc_exit', 'proc_raise', 'poll_oneoff', 'clock_time_get',
  'random_get', 'made_up_call'
]

// The host driven directly, as a module would: the "module's" memory is a Memory we can read.
function harness (init: { args?: string[], env?: Record<string, string>, stdin?: Uint8Array, outputBytes?: number } = {}) {
  const buffer = outputBuffer(init.outputBytes ?? 1024)
  const host = wasiHost({ args: init.args ?? [], env: init.env ?? {}, stdin: init.stdin ?? new Uint8Array(0), output: outputSink(buffer) })
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 1 })
  host.bindMemory(memory)
  const wasi = host.imports(NAMES)
  const dv = new DataView(memory.buffer)
  const mem = new Uint8Array(memory.buffer)
  const cstrings = (ptrsAt: number, count: number): string[] => Array.from({ length: count }, (_, i) => {
    const at = dv.getUint32(ptrsAt + i * 4, true)
    return new TextDecoder().decode(mem.subarray(at, mem.indexOf(0, at)))
  })
  // Puts `data` at `at` and an iovec for it at `iov`.
  const iovec = (iov: number, at: number, data: Uint8Array | number): void => {
    const len = typeof data === 'number' ? data : data.length
    if (typeof data !== 'number') mem.set(data, at)
    dv.setUint32(iov, at, true)
    dv.setUint32(iov + 4, len, true)
  }
  return { wasi, dv, mem, buffer, cstrings, iovec }
}

describe('wasi host', () => {
  test('hands over exactly the args and env it was given', () => {
    const h = harness({ args: ['prog', 'a b', 'ü'], env: { A: '1', EMPTY: '' } })
    assert.equal(h.wasi.args_sizes_get(0, 4), ESUCCESS)
    assert.equal(h.dv.getUint32(0, true), 3)
    assert.equal(h.dv.getUint32(4, true), 'prog\0a b\0ü\0'.length + 1) // ü is two bytes
    assert.equal(h.wasi.args_get(100, 200), ESUCCESS)
    assert.deepEqual(h.cstrings(100, 3), ['prog', 'a b', 'ü'])
    assert.equal(h.wasi.environ_sizes_get(0, 4), ESUCCESS)
    assert.equal(h.dv.getUint32(0, true), 2)
    assert.equal(h.wasi.environ_get(100, 200), ESUCCESS)
    assert.deepEqual(h.cstrings(100, 2), ['A=1', 'EMPTY='])
  })

  test('writes stdout and stderr through the sink and nowhere else', () => {
    const h = harness()
    h.iovec(0, 100, new TextEncoder().encode('hello '))
    h.iovec(8, 200, new TextEncoder().encode('world'))
    assert.equal(h.wasi.fd_write(1, 0, 2, 50), ESUCCESS)
    assert.equal(h.dv.getUint32(50, true), 11)
    assert.equal(h.wasi.fd_write(2, 8, 1, 50), ESUCCESS)
    assert.equal(h.wasi.fd_write(0, 0, 1, 50), EBADF)
    assert.equal(h.wasi.fd_write(3, 0, 1, 50), EBADF)
    const out = readOutput(h.buffer)
    assert.equal(new TextDecoder().decode(out.stdout), 'hello world')
    assert.equal(new TextDecoder().decode(out.stderr), 'world')
  })

  test('stops the program once stdout and stderr together pass the output limit', () => {
    const h = harness({ outputBytes: 8 })
    h.iovec(0, 100, new TextEncoder().encode('12345'))
    assert.equal(h.wasi.fd_write(1, 0, 1, 50), ESUCCESS)
    assert.throws(() => h.wasi.fd_write(2, 0, 1, 50), OutputLimitExceeded)
    const out = readOutput(h.buffer)
    assert.equal(new TextDecoder().decode(out.stdout), '12345')
    assert.equal(new TextDecoder().decode(out.stderr), '123')
  })

  test('reads stdin in pieces, then reports end of input', () => {
    const h = harness({ stdin: new TextEncoder().encode('abcdefg') })
    h.iovec(0, 100, 4)
    assert.equal(h.wasi.fd_read(0, 0, 1, 50), ESUCCESS)
    assert.equal(h.dv.getUint32(50, true), 4)
    assert.equal(new TextDecoder().decode(h.mem.subarray(100, 104)), 'abcd')
    assert.equal(h.wasi.fd_read(0, 0, 1, 50), ESUCCESS)
    assert.equal(h.dv.getUint32(50, true), 3)
    // The second read fills the same buffer's first three bytes; the fourth is left as it was.
    assert.equal(new TextDecoder().decode(h.mem.subarray(100, 104)), 'efgd')
    assert.equal(h.wasi.fd_read(0, 0, 1, 50), ESUCCESS)
    assert.equal(h.dv.getUint32(50, true), 0)
    assert.equal(h.wasi.fd_read(3, 0, 1, 50), EBADF)
  })

  test('offers no files, directories or sockets', () => {
    const h = harness()
    assert.equal(h.wasi.fd_prestat_get(3, 0), EBADF)
    assert.equal(h.wasi.path_open(3, 0, 0, 1, 0, 0n, 0n, 0, 0), EBADF)
    assert.equal(h.wasi.sock_accept(3, 0, 0), EBADF)
    assert.equal(h.wasi.proc_raise(9), ENOSYS)
    assert.equal(h.wasi.made_up_call(), ENOSYS)
    assert.equal(h.wasi.fd_fdstat_get(1, 0), ESUCCESS)
    assert.equal(h.dv.getUint8(0), 2) // a character device
  })

  test('answers a bad pointer with EFAULT instead of failing', () => {
    const h = harness()
    assert.equal(h.wasi.args_sizes_get(65535, 0), EFAULT)
    assert.equal(h.wasi.fd_write(1, 65530, 1000000, 0), EFAULT)
    assert.equal(h.wasi.random_get(65000, 1000), EFAULT)
  })

  test('exits by throwing ProcExit with the code', () => {
    const h = harness()
    assert.throws(() => h.wasi.proc_exit(7), (err: unknown) => err instanceof ProcExit && err.code === 7)
  })

  test('sleeps through poll_oneoff on a clock and reports the event', () => {
    const h = harness()
    h.dv.setBigUint64(0, 42n, true) // userdata
    h.dv.setUint8(8, 0) // clock subscription
    h.dv.setUint32(16, 1, true) // monotonic
    h.dv.setBigUint64(24, 1_000_000n, true) // 1 ms, relative
    assert.equal(h.wasi.poll_oneoff(0, 100, 1, 200), ESUCCESS)
    assert.equal(h.dv.getUint32(200, true), 1)
    assert.equal(h.dv.getBigUint64(100, true), 42n)
    assert.equal(h.dv.getUint16(108, true), ESUCCESS)
    assert.equal(h.dv.getUint8(110), 0)
  })

  test('reads clocks and random bytes', () => {
    const h = harness()
    assert.equal(h.wasi.clock_time_get(0, 0n, 0), ESUCCESS)
    const realtimeMs = Number(h.dv.getBigUint64(0, true) / 1_000_000n)
    assert.ok(Math.abs(realtimeMs - Date.now()) < 60_000)
    assert.equal(h.wasi.clock_time_get(99, 0n, 0), 28)
    assert.equal(h.wasi.random_get(1000, 256), ESUCCESS)
    assert.ok(h.mem.subarray(1000, 1256).some(b => b !== 0))
  })
})

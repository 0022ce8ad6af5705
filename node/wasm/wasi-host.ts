// Our own WASI preview 1 host, instead of node:wasi: Node documents node:wasi as no security
// boundary, and it hands the program real file descriptors. Here the program gets exactly three
// descriptors (stdin from a buffer, stdout and stderr into a bounded buffer), the args and env the
// caller passed, clocks and randomness. There are no preopens, so no path resolves and no file,
// directory or socket can be opened; every other call answers EBADF or ENOSYS.

export const WASI_MODULE = 'wasi_snapshot_preview1'

const ERRNO_SUCCESS = 0
const ERRNO_BADF = 8
const ERRNO_FAULT = 21
const ERRNO_INVAL = 28
const ERRNO_NOSYS = 52
const ERRNO_SPIPE = 70

const FILETYPE_CHARACTER_DEVICE = 2
const RIGHT_FD_READ = 1n << 1n
const RIGHT_FD_WRITE = 1n << 6n
const RIGHT_POLL_FD_READWRITE = 1n << 27n

// proc_exit unwinds the Wasm stack by throwing; this is what is thrown.
export class ProcExit extends Error {
  name = 'ProcExit'
  readonly code: number
  constructor (code: number) {
    super(`exit ${code}`)
    this.code = code
  }
}

// Thrown out of fd_write once the program has written more than its output allowance.
export class OutputLimitExceeded extends Error {
  name = 'OutputLimitExceeded'
}

// Where the program's stdout and stderr go. The runtime's implementation writes into shared
// memory so the main thread can still read it after killing the worker.
export interface OutputSink {
  // Stores as much of `data` as the allowance permits; returns false when some was cut off.
  write (fd: 1 | 2, data: Uint8Array): boolean
}

export interface WasiHostInit {
  args: string[]
  env: Record<string, string>
  stdin: Uint8Array
  output: OutputSink
}

export interface WasiHost {
  // Imports to pass under `wasi_snapshot_preview1` for exactly the names the module asks for.
  imports (names: string[]): Record<string, (...args: any[]) => number>
  // Called once the instance exists (or with an imported memory before it does).
  bindMemory (memory: WebAssembly.Memory): void
}

const encoder = new TextEncoder()

function encodeStrings (strings: string[]): { items: Uint8Array[], size: number } {
  const items = strings.map(s => encoder.encode(s + '\0'))
  return { items, size: items.reduce((n, b) => n + b.length, 0) }
}

export function wasiHost (init: WasiHostInit): WasiHost {
  let memory: WebAssembly.Memory | undefined
  let stdinAt = 0
  const args = encodeStrings(init.args)
  const env = encodeStrings(Object.entries(init.env).map(([k, v]) => `${k}=${v}`))
  const started = process.hrtime.bigint()
  let sleeper: Int32Array | undefined

  // Views are made per call: memory.grow detaches the old buffer.
  const view = (): DataView => {
    if (memory === undefined) throw new WebAssembly.RuntimeError('module calls WASI but has no memory named "memory"')
    return new DataView(memory.buffer)
  }
  const bytes = (ptr: number, len: number): Uint8Array => {
    if (memory === undefined) throw new WebAssembly.RuntimeError('module calls WASI but has no memory named "memory"')
    const buf = memory.buffer
    if (ptr + len > buf.byteLength) throw new RangeError('out of bounds')
    return new Uint8Array(buf, ptr, len)
  }
  const u32 = (x: number): number => x >>> 0

  const writeStrings = (list: { items: Uint8Array[] }, ptrs: number, buf: number): number => {
    const dv = view()
    let at = u32(buf)
    list.items.forEach((item, i) => {
      dv.setUint32(u32(ptrs) + i * 4, at, true)
      bytes(at, item.length).set(item)
      at += item.length
    })
    return ERRNO_SUCCESS
  }
  const writeSizes = (list: { items: Uint8Array[], size: number }, countPtr: number, sizePtr: number): number => {
    const dv = view()
    dv.setUint32(u32(countPtr), list.items.length, true)
    dv.setUint32(u32(sizePtr), list.size, true)
    return ERRNO_SUCCESS
  }
  const iovecs = (iovs: number, count: number): Array<[number, number]> => {
    const dv = view()
    // A huge count must not make us build a huge array before the bounds check would catch it.
    if (u32(iovs) + u32(count) * 8 > dv.byteLength) throw new RangeError('iovecs out of bounds')
    const out: Array<[number, number]> = []
    for (let i = 0; i < u32(count); i++) {
      const at = u32(iovs) + i * 8
      out.push([dv.getUint32(at, true), dv.getUint32(at + 4, true)])
    }
    return out
  }
  const now = (id: number): bigint | undefined => {
    if (id === 0) return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6))
    if (id === 1) return process.hrtime.bigint()
    // Process and thread CPU time: the program is the thread, so time since it started is close.
    if (id === 2 || id === 3) return process.hrtime.bigint() - started
    return undefined
  }

  const impl: Record<string, (...a: any[]) => number> = {
    args_get: (argv: number, buf: number) => writeStrings(args, argv, buf),
    args_sizes_get: (count: number, size: number) => writeSizes(args, count, size),
    environ_get: (environ: number, buf: number) => writeStrings(env, environ, buf),
    environ_sizes_get: (count: number, size: number) => writeSizes(env, count, size),

    fd_write: (fd: number, iovs: number, iovsLen: number, nwritten: number) => {
      if (fd !== 1 && fd !== 2) return ERRNO_BADF
      let total = 0
      for (const [ptr, len] of iovecs(iovs, iovsLen)) {
        if (len === 0) continue
        if (!init.output.write(fd, bytes(ptr, len))) throw new OutputLimitExceeded('output limit exceeded')
        total += len
      }
      view().setUint32(u32(nwritten), total, true)
      return ERRNO_SUCCESS
    },
    fd_read: (fd: number, iovs: number, iovsLen: number, nread: number) => {
      if (fd !== 0) return ERRNO_BADF
      let total = 0
      for (const [ptr, len] of iovecs(iovs, iovsLen)) {
        const chunk = init.stdin.subarray(stdinAt, stdinAt + len)
        bytes(ptr, chunk.length).set(chunk)
        stdinAt += chunk.length
        total += chunk.length
        if (chunk.length < len) break
      }
      view().setUint32(u32(nread), total, true)
      return ERRNO_SUCCESS
    },
    fd_close: (fd: number) => (fd >= 0 && fd <= 2 ? ERRNO_SUCCESS : ERRNO_BADF),
    fd_seek: (fd: number) => (fd >= 0 && fd <= 2 ? ERRNO_SPIPE : ERRNO_BADF),
    fd_tell: (fd: number) => (fd >= 0 && fd <= 2 ? ERRNO_SPIPE : ERRNO_BADF),
    fd_sync: (fd: number) => (fd >= 0 && fd <= 2 ? ERRNO_SUCCESS : ERRNO_BADF),
    fd_datasync: (fd: number) => (fd >= 0 && fd <= 2 ? ERRNO_SUCCESS : ERRNO_BADF),
    fd_fdstat_get: (fd: number, ptr: number) => {
      if (fd < 0 || fd > 2) return ERRNO_BADF
      const dv = view()
      const at = u32(ptr)
      const rights = (fd === 0 ? RIGHT_FD_READ : RIGHT_FD_WRITE) | RIGHT_POLL_FD_READWRITE
      dv.setUint8(at, FILETYPE_CHARACTER_DEVICE)
      dv.setUint16(at + 2, 0, true)
      dv.setBigUint64(at + 8, rights, true)
      dv.setBigUint64(at + 16, 0n, true)
      return ERRNO_SUCCESS
    },
    fd_filestat_get: (fd: number, ptr: number) => {
      if (fd < 0 || fd > 2) return ERRNO_BADF
      bytes(u32(ptr), 64).fill(0)
      view().setUint8(u32(ptr) + 16, FILETYPE_CHARACTER_DEVICE)
      return ERRNO_SUCCESS
    },
    // No preopened directories: EBADF on fd 3 tells libc the preopen list is empty.
    fd_prestat_get: () => ERRNO_BADF,
    fd_prestat_dir_name: () => ERRNO_BADF,

    clock_res_get: (id: number, ptr: number) => {
      if (now(id) === undefined) return ERRNO_INVAL
      view().setBigUint64(u32(ptr), 1000n, true)
      return ERRNO_SUCCESS
    },
    clock_time_get: (id: number, _precision: bigint, ptr: number) => {
      const t = now(id)
      if (t === undefined) return ERRNO_INVAL
      view().setBigUint64(u32(ptr), t, true)
      return ERRNO_SUCCESS
    },
    random_get: (ptr: number, len: number) => {
      const target = bytes(u32(ptr), u32(len))
      // getRandomValues takes at most 64 KiB at a time, and no shared buffers.
      for (let at = 0; at < target.length; at += 65536) {
        const chunk = new Uint8Array(Math.min(65536, target.length - at))
        crypto.getRandomValues(chunk)
        target.set(chunk, at)
      }
      return ERRNO_SUCCESS
    },
    sched_yield: () => ERRNO_SUCCESS,
    proc_exit: (code: number) => {
      throw new ProcExit(u32(code))
    },
    proc_raise: () => ERRNO_NOSYS,

    // Enough of poll_oneoff for sleeping (clock subscriptions) and for polling stdio, which is
    // always ready. Sleeping blocks the worker, and the wall-time watchdog still applies.
    poll_oneoff: (inPtr: number, outPtr: number, count: number, neventsPtr: number) => {
      const dv = view()
      const n = u32(count)
      if (n === 0) return ERRNO_INVAL
      const ready: Array<{ userdata: bigint, type: number, error: number, nbytes: bigint }> = []
      let soonest: { userdata: bigint, waitNs: bigint } | undefined
      for (let i = 0; i < n; i++) {
        const at = u32(inPtr) + i * 48
        const userdata = dv.getBigUint64(at, true)
        const tag = dv.getUint8(at + 8)
        if (tag === 0) {
          const clock = dv.getUint32(at + 16, true)
          const timeout = dv.getBigUint64(at + 24, true)
          const absolute = (dv.getUint16(at + 40, true) & 1) !== 0
          const t = now(clock)
          if (t === undefined) {
            ready.push({ userdata, type: 0, error: ERRNO_INVAL, nbytes: 0n })
            continue
          }
          const waitNs = absolute ? (timeout > t ? timeout - t : 0n) : timeout
          if (soonest === undefined || waitNs < soonest.waitNs) soonest = { userdata, waitNs }
        } else if (tag === 1 || tag === 2) {
          const fd = dv.getUint32(at + 16, true)
          const ok = tag === 1 ? fd === 0 : fd === 1 || fd === 2
          ready.push({ userdata, type: tag, error: ok ? ERRNO_SUCCESS : ERRNO_BADF, nbytes: ok && tag === 1 ? BigInt(init.stdin.length - stdinAt) : 0n })
        } else {
          return ERRNO_INVAL
        }
      }
      if (ready.length === 0 && soonest !== undefined) {
        sleeper ??= new Int32Array(new SharedArrayBuffer(4))
        const ms = Number(soonest.waitNs / 1000000n)
        if (ms > 0) Atomics.wait(sleeper, 0, 0, ms)
        ready.push({ userdata: soonest.userdata, type: 0, error: ERRNO_SUCCESS, nbytes: 0n })
      }
      ready.forEach((e, i) => {
        const at = u32(outPtr) + i * 32
        bytes(at, 32).fill(0)
        dv.setBigUint64(at, e.userdata, true)
        dv.setUint16(at + 8, e.error, true)
        dv.setUint8(at + 10, e.type)
        dv.setBigUint64(at + 16, e.nbytes, true)
      })
      dv.setUint32(u32(neventsPtr), ready.length, true)
      return ERRNO_SUCCESS
    }
  }

  // A bad pointer from the program is its bug, reported to it as EFAULT like any WASI host does,
  // not a crash of ours. Our own unwinding signals pass through.
  const guarded = (fn: (...a: any[]) => number) => (...a: any[]): number => {
    try {
      return fn(...a)
    } catch (err) {
      if (err instanceof RangeError) return ERRNO_FAULT
      throw err
    }
  }

  return {
    imports (names) {
      const out: Record<string, (...args: any[]) => number> = {}
      for (const name of names) {
        const fn = impl[name]
        if (fn !== undefined) out[name] = guarded(fn)
        else if (/^(fd_|path_|sock_)/.test(name)) out[name] = () => ERRNO_BADF
        else out[name] = () => ERRNO_NOSYS
      }
      return out
    },
    bindMemory (m) {
      memory = m
    }
  }
}

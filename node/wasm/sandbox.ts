// The worker thread a Wasm program runs in. One program at a time; the main thread's watchdog
// terminates this thread when the wall-time limit passes, so nothing here needs to be
// interruptible. The program sees only the WASI host's three descriptors, args and env.

import { parentPort } from 'node:worker_threads'
import { outputSink } from './output-buffer.ts'
import type { RunReply, RunRequest, WorkerMessage } from './sandbox-message.ts'
import { OutputLimitExceeded, ProcExit, WASI_MODULE, wasiHost } from './wasi-host.ts'

// A failure this close to the memory maximum is taken to be memory exhaustion: allocators grow
// memory in chunks and trap or abort when a grow fails, so memory ends just short of the maximum.
function nearMax (memoryBytes: number, maxBytes: number): boolean {
  return maxBytes > 0 && memoryBytes + Math.max(65536, maxBytes / 8) > maxBytes
}

function run (req: RunRequest): RunReply {
  const host = wasiHost({ args: req.argv, env: req.env, stdin: req.stdin, output: outputSink(req.output) })
  const imports: WebAssembly.Imports = { [WASI_MODULE]: host.imports(req.wasiImports) }
  let memory: WebAssembly.Memory | undefined
  const reply = (outcome: RunReply['outcome'], exitCode: number, message?: string): RunReply => {
    const memoryBytes = memory?.buffer.byteLength ?? 0
    if ((outcome === 'trap' || outcome === 'exit-nonzero') && nearMax(memoryBytes, req.memoryMaxBytes)) {
      message = `out of memory: linear memory reached ${memoryBytes} of at most ${req.memoryMaxBytes} bytes` + (message === undefined ? '' : ` (${message})`)
      outcome = 'memory'
    }
    return { type: 'done', id: req.id, outcome, exitCode, memoryBytes, ...(message === undefined ? {} : { message }) }
  }

  try {
    const m = req.importedMemory
    if (m !== undefined) {
      memory = new WebAssembly.Memory({ initial: m.initial, maximum: m.maximum, shared: m.shared })
      imports[m.module] = { ...imports[m.module], [m.name]: memory }
      host.bindMemory(memory)
    }
    const instance = new WebAssembly.Instance(req.module, imports)
    if (memory === undefined && instance.exports.memory instanceof WebAssembly.Memory) {
      memory = instance.exports.memory
      host.bindMemory(memory)
    }
    const start = instance.exports._start
    if (typeof start !== 'function') return reply('refused', -1, 'module has no _start function')
    start()
    return reply('ok', 0)
  } catch (err) {
    if (err instanceof ProcExit) return err.code === 0 ? reply('ok', 0) : reply('exit-nonzero', err.code)
    if (err instanceof OutputLimitExceeded) return reply('output', -1, 'output limit exceeded: program stopped')
    const message = err instanceof Error ? err.message : String(err)
    // V8 reports a memory it cannot reserve at instantiation as a RangeError.
    if (err instanceof RangeError && /memory/i.test(message)) return reply('memory', -1, message)
    return reply('trap', -1, message)
  }
}

const port = parentPort
if (port === null) throw new Error('sandbox.ts must run in a worker thread')
port.on('message', (req: RunRequest) => {
  const reply: WorkerMessage = run(req)
  port.postMessage(reply)
})
port.postMessage({ type: 'ready' } satisfies WorkerMessage)

// A small pool of sandbox workers with a watchdog per call. A call that overruns its wall time
// gets its worker terminated (Wasm cannot be interrupted any other way) and the pool starts a
// fresh worker for whoever is queued; other calls keep running on their own workers.

import { Worker } from 'node:worker_threads'
import type { Outcome, RunReply, RunRequest, WorkerMessage } from './sandbox-message.ts'

const SANDBOX_URL = new URL('./sandbox.ts', import.meta.url)

export interface SandboxJob {
  request: Omit<RunRequest, 'type' | 'id'>
  timeoutMs: number
}

export interface SandboxVerdict {
  exitCode: number
  outcome: Outcome
  message?: string
  memoryBytes: number
}

export interface SandboxPoolInit {
  size: number
  maxQueued: number
  // JS heap cap per worker. It does not bound Wasm linear memory (that is capped in the module),
  // but it does bound Wasm GC objects and anything the host side allocates.
  heapMb: number
}

export interface SandboxPool {
  run (job: SandboxJob): Promise<SandboxVerdict>
  stats (): { workers: number, busy: number, queued: number }
  close (): Promise<void>
}

interface Pending {
  job: SandboxJob
  id: number
  resolve: (v: SandboxVerdict) => void
}

interface Slot {
  worker: Worker
  ready: boolean
  pending: Pending | undefined
  timer: NodeJS.Timeout | undefined
  timedOut: boolean
  error: Error | undefined
}

export function sandboxPool (init: SandboxPoolInit): SandboxPool {
  const slots = new Set<Slot>()
  const queue: Pending[] = []
  let nextId = 1
  let closed = false

  const finish = (slot: Slot, verdict: SandboxVerdict): void => {
    const p = slot.pending
    if (p === undefined) return
    slot.pending = undefined
    clearTimeout(slot.timer)
    slot.timer = undefined
    p.resolve(verdict)
  }

  const dispatch = (slot: Slot, p: Pending): void => {
    slot.pending = p
    slot.worker.ref()
    const request: RunRequest = { type: 'run', id: p.id, ...p.job.request }
    slot.worker.postMessage(request)
    // The clock starts when the program can run, not while it waits for a worker.
    slot.timer = setTimeout(() => {
      slot.timedOut = true
      void slot.worker.terminate()
    }, p.job.timeoutMs)
  }

  const pump = (): void => {
    if (closed) return
    for (const slot of slots) {
      if (queue.length === 0) break
      if (slot.ready && slot.pending === undefined && !slot.timedOut) dispatch(slot, queue.shift() as Pending)
    }
    let starting = 0
    for (const slot of slots) if (!slot.ready) starting++
    while (queue.length > starting && slots.size < init.size) {
      spawn()
      starting++
    }
    // Idle workers must not keep the process alive; busy and starting ones must.
    for (const slot of slots) {
      if (slot.ready && slot.pending === undefined) slot.worker.unref()
    }
  }

  const spawn = (): void => {
    const worker = new Worker(SANDBOX_URL, {
      execArgv: [],
      env: {},
      resourceLimits: { maxOldGenerationSizeMb: init.heapMb, maxYoungGenerationSizeMb: Math.max(4, Math.floor(init.heapMb / 8)) }
    })
    const slot: Slot = { worker, ready: false, pending: undefined, timer: undefined, timedOut: false, error: undefined }
    slots.add(slot)
    worker.on('message', (msg: WorkerMessage) => {
      if (msg.type === 'ready') {
        slot.ready = true
      } else if (slot.pending !== undefined && msg.id === slot.pending.id && !slot.timedOut) {
        const { exitCode, outcome, message, memoryBytes } = msg satisfies RunReply
        finish(slot, { exitCode, outcome, memoryBytes, ...(message === undefined ? {} : { message }) })
      }
      pump()
    })
    worker.on('error', (err) => {
      slot.error = err
    })
    worker.on('exit', () => {
      slots.delete(slot)
      clearTimeout(slot.timer)
      const err = slot.error as (Error & { code?: string }) | undefined
      if (closed) {
        finish(slot, { exitCode: -1, outcome: 'refused', message: 'runtime closed', memoryBytes: 0 })
      } else if (slot.timedOut) {
        finish(slot, { exitCode: -1, outcome: 'timeout', message: `wall-time limit of ${slot.pending?.job.timeoutMs} ms exceeded: program stopped`, memoryBytes: 0 })
      } else if (err?.code === 'ERR_WORKER_OUT_OF_MEMORY') {
        finish(slot, { exitCode: -1, outcome: 'memory', message: `out of memory: ${err.message}`, memoryBytes: 0 })
      } else {
        finish(slot, { exitCode: -1, outcome: 'trap', message: `sandbox worker died: ${err?.message ?? 'exited unexpectedly'}`, memoryBytes: 0 })
      }
      // A worker that cannot even start would be respawned forever; fail the waiting calls instead.
      if (!slot.ready && !closed) {
        for (const p of queue.splice(0)) {
          p.resolve({ exitCode: -1, outcome: 'refused', message: `sandbox worker failed to start: ${err?.message ?? 'exited'}`, memoryBytes: 0 })
        }
      }
      pump()
    })
  }

  return {
    run (job) {
      if (closed) return Promise.resolve({ exitCode: -1, outcome: 'refused', message: 'runtime closed', memoryBytes: 0 })
      if (queue.length >= init.maxQueued) {
        return Promise.resolve({ exitCode: -1, outcome: 'refused', message: `runtime busy: ${queue.length} calls already waiting`, memoryBytes: 0 })
      }
      return new Promise<SandboxVerdict>((resolve) => {
        queue.push({ job, id: nextId++, resolve })
        pump()
      })
    },
    stats () {
      let busy = 0
      for (const slot of slots) if (slot.pending !== undefined) busy++
      return { workers: slots.size, busy, queued: queue.length }
    },
    async close () {
      closed = true
      for (const p of queue.splice(0)) p.resolve({ exitCode: -1, outcome: 'refused', message: 'runtime closed', memoryBytes: 0 })
      await Promise.all([...slots].map(async (slot) => {
        const exited = new Promise(resolve => slot.worker.once('exit', resolve))
        await slot.worker.terminate()
        await exited
      }))
    }
  }
}

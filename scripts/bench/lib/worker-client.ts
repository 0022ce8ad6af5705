// Commands to a worker thread that hosts benchmark nodes (docs-shard.ts, sim/shard.ts): the
// coordinator posts `{ id, op, args }` and the thread answers `{ id, value }` or `{ id, error }`.
// Any other message goes to `onOther`. A thread that died fails every command in flight and every
// one after, rather than leaving them waiting forever.
import { Worker } from 'node:worker_threads'

export class WorkerClient {
  readonly worker: Worker
  private readonly pending = new Map<number, { resolve: (v: any) => void, reject: (e: Error) => void }>()
  private nextId = 0
  private dead?: Error

  constructor (url: URL, workerData: unknown, onOther?: (message: any) => void) {
    this.worker = new Worker(url, { workerData })
    this.worker.on('message', (m: { id?: number, value?: unknown, error?: string }) => {
      const p = m.id == null ? undefined : this.pending.get(m.id)
      if (p == null) {
        onOther?.(m)
        return
      }
      this.pending.delete(m.id!)
      if (m.error != null) p.reject(new Error(m.error))
      else p.resolve(m.value)
    })
    this.worker.on('error', (err) => { this.dead ??= err })
    this.worker.on('exit', (code) => {
      this.dead ??= new Error(`worker thread exited (${code})`)
      for (const p of this.pending.values()) p.reject(this.dead)
      this.pending.clear()
    })
  }

  /** Runs `op` in the thread; `args` travel as they are (structured clone). */
  async call<T = unknown> (op: string, args?: unknown): Promise<T> {
    if (this.dead != null) throw this.dead
    const id = this.nextId++
    return await new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      this.worker.postMessage({ id, op, args })
    })
  }

  async terminate (): Promise<void> {
    await this.worker.terminate()
  }
}

// Process-level resource sampling for the benchmarks: memory after a full GC, CPU time over a window.
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

setFlagsFromString('--expose-gc')
const gcFn = runInNewContext('gc') as () => void

export interface MemorySample {
  rss: number
  heapUsed: number
  external: number
  arrayBuffers: number
}

/** Collects garbage (twice, so finalizers run) and samples process memory, in bytes. */
export async function memory (): Promise<MemorySample> {
  gcFn()
  await new Promise(resolve => setImmediate(resolve))
  gcFn()
  const m = process.memoryUsage()
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers }
}

export function memoryDelta (after: MemorySample, before: MemorySample): MemorySample {
  return {
    rss: after.rss - before.rss,
    heapUsed: after.heapUsed - before.heapUsed,
    external: after.external - before.external,
    arrayBuffers: after.arrayBuffers - before.arrayBuffers
  }
}

/** CPU time (user + system, ms) the process spends during `ms` of wall time, and that wall time. */
export async function cpuOver (ms: number): Promise<{ cpuMs: number, wallMs: number }> {
  const start = process.cpuUsage()
  const t0 = performance.now()
  await new Promise(resolve => setTimeout(resolve, ms))
  const d = process.cpuUsage(start)
  return { cpuMs: (d.user + d.system) / 1000, wallMs: performance.now() - t0 }
}

export const MB = 1024 * 1024

// Process-level resource sampling for the benchmarks: memory after a full GC, CPU time over a window.
import { spawn } from 'node:child_process'
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

/**
 * Runs `script` again as a child process with `args` (so each measured mesh has a process of its
 * own) and resolves with the JSON the child printed on its `RESULT ` line.
 */
export async function runChild<T> (script: string, args: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    proc.stdout.on('data', (d: Buffer) => { out += d.toString() })
    proc.on('error', reject)
    proc.on('exit', (code) => {
      const line = out.split('\n').find(l => l.startsWith('RESULT '))
      if (line == null) reject(new Error(`child ${args.join(' ')} exited ${code} without a result`))
      else resolve(JSON.parse(line.slice(7)))
    })
  })
}

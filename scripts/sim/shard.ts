// A worker thread of the simulation: it hosts one share of the mesh's nodes (`cluster.ts`) and runs
// the coordinator's commands on them (`mesh.ts`). Several threads let N nodes on one machine use
// all its cores, as N machines would, instead of taking turns on one event loop.
//
// Messages (../bench/lib/worker-client.ts): `{ id, op, args }` in, args the method's arguments as
// an array; `{ id, value }` or `{ id, error }` out.
// `op` is a method of the cluster, or one of the thread's own: `loadStart`, `loadStop` (this
// thread's event-loop lag over the window), `noise` (the node warnings and stray errors it counted).
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { parentPort, workerData } from 'node:worker_threads'
import { Cluster } from './cluster.ts'
import type { ClusterInit } from './cluster.ts'

const port = parentPort!
const cluster = new Cluster(workerData as ClusterInit)

// Nodes warn (unreachable bootstrap peers, refused dials) as a matter of course under churn: count
// them instead of flooding the terminal; likewise stray rejections from stopped nodes.
const warnings = new Map<string, number>()
process.removeAllListeners('warning')
process.on('warning', (w) => {
  const key = `${w.name}: ${w.message}`.replace(/[0-9a-zA-Z]{40,}/g, '…').replace(/\/memory\/\S+/g, '/memory/…').slice(0, 100)
  warnings.set(key, (warnings.get(key) ?? 0) + 1)
})
const stray: string[] = []
let strayCount = 0
const onStray = (prefix: string) => (err: any) => {
  strayCount++
  if (stray.length < 5) stray.push(`${prefix}${String(err?.stack ?? err).split('\n').slice(0, 3).join(' | ').slice(0, 300)}`)
}
process.on('unhandledRejection', onStray(''))
process.on('uncaughtException', onStray('uncaught: '))

let lag: ReturnType<typeof monitorEventLoopDelay> | undefined
/** Event-loop lag, ms (the histogram holds the time between 10 ms samples). */
const lagMs = (ns: number): number => Math.round(Math.max(0, ns / 1e6 - 10) * 10) / 10

const own: Record<string, (...args: any[]) => unknown> = {
  loadStart () {
    lag = monitorEventLoopDelay({ resolution: 10 })
    lag.enable()
  },
  loadStop () {
    lag?.disable()
    return lag == null ? null : { p50: lagMs(lag.percentile(50)), p99: lagMs(lag.percentile(99)), max: lagMs(lag.max) }
  },
  noise: () => ({ warnings: [...warnings.values()].reduce((a, b) => a + b, 0), stray: strayCount, firstStray: stray[0] })
}

port.on('message', (msg: { id: number, op: string, args: unknown[] }) => {
  const fn = own[msg.op] ?? (cluster as any)[msg.op]
  void (async () => {
    if (typeof fn !== 'function') throw new Error(`unknown command ${msg.op}`)
    return await fn.apply(own[msg.op] != null ? own : cluster, msg.args)
  })().then(
    value => { port.postMessage({ id: msg.id, value }) },
    (err: any) => { port.postMessage({ id: msg.id, error: String(err?.message ?? err) }) }
  )
})

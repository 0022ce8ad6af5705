// What functions and artifacts cost: invocation latency (warm local, cold local, warm remote),
// invocations per second on one node, and artifact transfer between two nodes against two plain
// Helia nodes moving the same bytes in the same run.
//
// Everything runs in this process, on real TCP over loopback with Noise and yamux:
// - local:  the Wasm runtime directly (runtime.invoke) and through the functions feature of a
//           MeshNode (artifact lookup, verification and the runtime);
// - cold:   the runtime with a fresh cache key per call, so each call compiles;
// - remote: two in-process MeshNodes (functions and artifacts features): B invokes on A over the
//           invoke protocol;
// - transfer: A stores random bytes as artifacts.ts stores a module (storeModule: UnixFS profile
//           unixfs-v1-2025), a reading MeshNode fetches them over bitswap as artifacts.ts reads
//           one (readModuleChunks); and the same bytes between two plain Helia nodes
//           (Helia's createHeliaLight and withLibp2pLight, loaded as Mesh loads them so neither
//           side's threads carry @helia/libp2p's unused defaults (node/helia-light.ts), with
//           libp2p on TCP/Noise/yamux/identify and stock @helia/bitswap and @helia/unixfs
//           defaults). Also `artifacts.fetch` end to end (resolve, fetch, SHA-256,
//           pin) for sizes the artifact limit allows. The reading nodes of both pairs run in a
//           worker thread (functions-reader.ts), so each end of a transfer has its own event loop
//           as two machines would; `--reader thread` puts them on this thread, where a transfer's
//           MB/s is bounded by the CPU sender and receiver need together (figures before the worker
//           were taken that way).
// The trivial function is test/fixtures/wasm/noop.as (exits 0 at once). Rounds interleave Mesh
// and the baseline so drift hits both alike; figures are medians over rounds.
// The process runs V8 as `mesh start` runs it (node/gc-tuning.ts; MESH_V8_DEFAULT_GC=1 for V8's
// default). V8 flags are per process, so the plain Helia pair runs with the same setting.
//
//   node scripts/bench/functions.ts [--rounds 3] [--calls 1000] [--sizes 1,16,64] [--seconds 2]
//                                   [--only transfer] [--reader worker|thread]
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { availableParallelism, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { Worker } from 'node:worker_threads'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { unixfs } from '@helia/unixfs'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { MemoryBlockstore } from 'blockstore-core'
import { MemoryDatastore } from 'datastore-core'
import { buildWasmFixtures } from '../build-wasm-fixtures.ts'
import { artifactsOf, storeModule } from '../../node/artifacts.ts'
import { nodeFeatures } from '../../node/features.ts'
import { functionsOf } from '../../node/functions.ts'
import { tuneGarbageCollection } from '../../node/gc-tuning.ts'
import { createHelia, withLibp2p } from '../../node/helia-light.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { Repo } from '../../node/repo.ts'
import { createWasmRuntime } from '../../node/wasm/runtime.ts'
import { MAX_ARTIFACT_BYTES } from '../../registry/artifact.ts'
import { MB } from './lib/process.ts'
import { mapLimit, median, percentile, round, table } from './lib/stats.ts'
import { collectGarbage, handle } from './functions-reader.ts'
import type { ReaderReply, ReaderRequest } from './functions-reader.ts'
import type { HeliaWithLibp2p } from '@helia/libp2p'
import type { CID } from 'multiformats/cid'

tuneGarbageCollection()

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    calls: { type: 'string', default: '1000' },
    cold: { type: 'string', default: '30' },
    sizes: { type: 'string', default: '1,16,64' },
    seconds: { type: 'string', default: '2' },
    // `transfer`: only the transfer and fetch figures (no invocation latency or rates).
    only: { type: 'string' },
    reader: { type: 'string', default: 'worker' }
  }
})
const ROUNDS = Number(values.rounds)
const CALLS = Number(values.calls)
const COLD = Number(values.cold)
const SIZES = values.sizes.split(',').map(Number)
const SECONDS = Number(values.seconds)
if (values.only != null && values.only !== 'transfer') throw new Error(`--only takes 'transfer', not ${values.only}`)
const INVOCATIONS = values.only == null
if (values.reader !== 'worker' && values.reader !== 'thread') throw new Error(`--reader takes worker or thread, not ${values.reader}`)

// A call or transfer that takes this long has stalled: fail saying so rather than hang.
const STALL_MS = 30_000

const TARGETS = { warmLocalP50: 0.5, warmRemoteP50: 3, perSecond: 1000, mbps64: 150 }

// --- fixtures and nodes ---

/** A valid WASI command (the noop module) padded to `size` bytes with a custom section. */
function paddedModule (noop: Uint8Array, size: number): Uint8Array {
  const name = new TextEncoder().encode('pad')
  const leb = (n: number): number[] => { const o: number[] = []; do { let b = n & 0x7f; n >>>= 7; if (n !== 0) b |= 0x80; o.push(b) } while (n !== 0); return o }
  const room = size - noop.length - 1 - 5 - 1 - name.length
  const body = Uint8Array.from([name.length, ...name])
  const payloadLen = body.length + room
  const header = Uint8Array.from([0, ...leb(payloadLen)])
  const out = new Uint8Array(noop.length + header.length + payloadLen)
  out.set(noop)
  out.set(header, noop.length)
  out.set(body, noop.length + header.length)
  out.set(randomBytes(room), noop.length + header.length + body.length)
  return out
}

async function meshPair (dir: string): Promise<{ a: MeshNode, b: MeshNode }> {
  const repo = new Repo(join(dir, 'a'))
  await repo.init({})
  const a = new MeshNode({ privateKey: await repo.loadKey(), features: nodeFeatures, repoPath: repo.path, config: {}, minPeers: 1 })
  await a.start()
  const b = new MeshNode({ privateKey: await generateKeyPair('Ed25519'), features: nodeFeatures, config: {}, minPeers: 1, bootstrap: [a.libp2p.getMultiaddrs()[0].toString()] })
  await b.start()
  await waitUntil('B to connect to A', () => b.libp2p.getConnections(a.peerId).length > 0)
  return { a, b }
}

// Blocks are dropped between rounds from the stores themselves: Helia's own delete also cancels
// reproviding, which a node without content routing refuses.
const stores = new Map<HeliaWithLibp2p<any>, MemoryBlockstore>()

async function plainHelia (): Promise<HeliaWithLibp2p> {
  const blockstore = new MemoryBlockstore()
  const helia = createHelia({ blockstore, datastore: new MemoryDatastore() })
  const node = withBitswap(withLibp2p(helia, {
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify() }
  }))
  await node.start()
  stores.set(node as HeliaWithLibp2p, blockstore)
  return node as HeliaWithLibp2p
}

async function waitUntil (what: string, check: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

// --- measurements ---

async function latencies (n: number, call: (i: number) => Promise<{ outcome: string, message?: string }>): Promise<number[]> {
  const out: number[] = []
  for (let i = 0; i < n; i++) {
    const t = performance.now()
    const r = await call(i)
    out.push(performance.now() - t)
    if (r.outcome !== 'ok') throw new Error(`invocation ${i} failed: ${r.outcome} ${r.message ?? ''}`)
  }
  return out
}

async function perSecond (concurrency: number, call: () => Promise<{ outcome: string, message?: string }>): Promise<number> {
  const until = performance.now() + SECONDS * 1000
  let done = 0
  const started = performance.now()
  await mapLimit(Array.from({ length: concurrency }), concurrency, async () => {
    while (performance.now() < until) {
      const r = await call()
      if (r.outcome !== 'ok') throw new Error(`invocation failed: ${r.outcome} ${r.message ?? ''}`)
      done++
    }
  })
  return done / ((performance.now() - started) / 1000)
}

/** The reading nodes (functions-reader.ts): in a worker thread, or on this thread. */
async function startReader (where: 'worker' | 'thread'): Promise<{ ask: (r: ReaderRequest) => Promise<ReaderReply>, close: () => Promise<void> }> {
  if (where === 'thread') {
    return { ask: handle, close: async () => { await handle({ type: 'close' }) } }
  }
  const worker = new Worker(new URL('./functions-reader.ts', import.meta.url))
  let waiting: PromiseWithResolvers<ReaderReply> | undefined
  worker.on('message', (reply: ReaderReply) => { waiting?.resolve(reply); waiting = undefined })
  worker.on('error', err => { waiting?.reject(err); waiting = undefined })
  worker.on('exit', code => { waiting?.reject(new Error(`reader exited (${code})`)); waiting = undefined })
  const ask = async (r: ReaderRequest): Promise<ReaderReply> => {
    waiting = Promise.withResolvers<ReaderReply>()
    worker.postMessage(r)
    const reply = await waiting.promise
    if (reply.type === 'error') throw new Error(`reader: ${reply.message}`)
    return reply
  }
  return { ask, close: async () => { await ask({ type: 'close' }); await worker.terminate() } }
}

function storeOf (node: HeliaWithLibp2p<any>): MemoryBlockstore {
  const store = stores.get(node)
  if (store == null) throw new Error('not a bench node')
  return store
}

/** The CIDs a node holds, to drop what a transfer added afterwards. */
async function held (node: HeliaWithLibp2p<any>): Promise<Set<string>> {
  const out = new Set<string>()
  for await (const { cid } of storeOf(node).getAll()) out.add(cid.toString())
  return out
}

/** Drops every block added since `before`, so every round moves the bytes again (and memory stays flat). */
async function forget (node: HeliaWithLibp2p<any>, before: Set<string>): Promise<void> {
  const added: CID[] = []
  const store = storeOf(node)
  for await (const { cid } of store.getAll()) if (!before.has(cid.toString())) added.push(cid)
  for (const cid of added) await store.delete(cid)
}

async function main (): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'mesh-bench-fn-'))
  const load0 = loadavg()
  const { noop } = await buildWasmFixtures(join(dir, 'wasm'), ['noop'])
  const runtime = createWasmRuntime({ maxMemoryBytes: 64 * MB, timeoutMs: 10_000, maxOutputBytes: MB, maxConcurrent: availableParallelism() })
  const { a, b } = await meshPair(dir)
  // MeshNode keeps its store private; with no storePath it is a MemoryBlockstore.
  for (const n of [a, b]) stores.set(n.helia, (n as any).blockstore as MemoryBlockstore)
  const p1 = await plainHelia()
  const manifest = (await artifactsOf(a).publish(noop, { name: 'noop', version: '1.0.0' })).manifest
  const on = a.peerId.toString()
  const reader = await startReader(values.reader as 'worker' | 'thread')
  await reader.ask({ type: 'setup', mesh: a.libp2p.getMultiaddrs()[0].toString(), helia: p1.libp2p.getMultiaddrs()[0].toString() })
  {
    // Warm the reading side too (its code, its connections) with unmeasured transfers of each kind:
    // the first transfers after a start were the slowest of a run. Fresh bytes each time: a holder
    // ignores a want for a block it sent the same peer in the last 5 s (bitswap's do-not-resend
    // window), and the reader has dropped what it read.
    const held0 = await Promise.all([a.helia, p1].map(held))
    for (let i = 0; i < 2; i++) {
      const warm = randomBytes(16 * MB)
      await reader.ask({ type: 'read', kind: 'mesh', cid: (await storeModule(unixfs(a.helia), warm)).toString(), size: warm.length, timeoutMs: STALL_MS })
      await reader.ask({ type: 'read', kind: 'helia', cid: (await unixfs(p1).addBytes(warm)).toString(), size: warm.length, timeoutMs: STALL_MS })
    }
    await reader.ask({ type: 'fetch', manifest, size: noop.length, timeoutMs: STALL_MS })
    await Promise.all([a.helia, p1].map(async (n, i) => forget(n, held0[i])))
  }

  // Warm everything once: workers, module cache, connection, artifact on both sides.
  for (let i = 0; i < (INVOCATIONS ? 50 : 1); i++) {
    await runtime.invoke('noop', noop)
    await functionsOf(a).invoke(manifest, {})
    await functionsOf(b).invoke(manifest, {}, { on, signal: AbortSignal.timeout(STALL_MS) })
  }

  const r: Record<string, number[]> = {}
  const add = (k: string, v: number[]): void => { (r[k] ??= []).push(...v) }
  const addOne = (k: string, v: number): void => add(k, [v])
  process.stderr.write(`functions bench: ${ROUNDS} rounds, ${CALLS} calls per latency figure, ${SIZES.join('/')} MB transfers (readers: ${values.reader}); load ${load0.map(x => x.toFixed(2)).join(' ')}\n`)

  const step = (what: string): void => { if (process.env.BENCH_DEBUG != null) process.stderr.write(`  ${what}\n`) }
  for (let round = 0; round < ROUNDS; round++) {
    if (INVOCATIONS) {
      step('latency')
      add('runtime.warm', await latencies(CALLS, async () => runtime.invoke('noop', noop)))
      add('feature.warm', await latencies(CALLS, async () => functionsOf(a).invoke(manifest, {})))
      add('remote.warm', await latencies(CALLS, async () => functionsOf(b).invoke(manifest, {}, { on, signal: AbortSignal.timeout(STALL_MS) })))
      add('runtime.cold', await latencies(COLD, async (i) => runtime.invoke(`cold-${round}-${i}`, noop)))
      step('rates')
      addOne('runtime.rate', await perSecond(2 * availableParallelism(), async () => runtime.invoke('noop', noop)))
      addOne('feature.rate', await perSecond(4, async () => functionsOf(a).invoke(manifest, {})))
      addOne('remote.rate', await perSecond(4, async () => functionsOf(b).invoke(manifest, {}, { on, signal: AbortSignal.timeout(STALL_MS) })))
    }

    for (const mb of SIZES) {
      const size = mb * MB
      step(`transfer ${mb} MB`)
      // Same bytes for both pairs; who goes first alternates.
      const bytes = randomBytes(size)
      const nodes = [a.helia, p1]
      const before = await Promise.all(nodes.map(held))
      // Mesh stores and reads as artifacts.ts does a module; Helia with @helia/unixfs defaults.
      const meshCid = await storeModule(unixfs(a.helia), bytes)
      const heliaCid = await unixfs(p1).addBytes(bytes)
      const runs = (['mesh', 'helia'] as const).map(kind => async () => {
        // Both threads start each transfer collected: the bytes just generated and stored, and the
        // other pair's transfer, leave garbage whose collection would otherwise land in whichever
        // transfer comes next (Mesh went first in 3 of 5 rounds, and paid for it).
        collectGarbage()
        await reader.ask({ type: 'gc' })
        const cpu = process.threadCpuUsage()
        const t = await reader.ask({ type: 'read', kind, cid: (kind === 'mesh' ? meshCid : heliaCid).toString(), size, timeoutMs: STALL_MS * 4 })
        const used = process.threadCpuUsage(cpu)
        if (t.type !== 'read') throw new Error(`reader answered ${t.type}`)
        addOne(`${kind}.${mb}.mbps`, t.mbps)
        addOne(`${kind}.${mb}.ttfb`, t.ttfbMs)
        // CPU of both ends: this thread (the sender, and the reader too when it runs here) plus the
        // reader's thread. Wall-clock MB/s on a shared machine moves with others' load; this does less.
        addOne(`${kind}.${mb}.cpu`, (used.user + used.system) / 1000 + (values.reader === 'worker' ? t.cpuMs : 0))
        step(`  ${kind} ${mb} MB: ${t.mbps.toFixed(1)} MB/s, CPU here ${((used.user + used.system) / 1000).toFixed(0)} ms, reader's ${t.cpuMs.toFixed(0)} ms`)
      })
      if (round % 2 === 1) runs.reverse()
      for (const run of runs) await run()
      await Promise.all(nodes.map(async (n, i) => forget(n, before[i])))
      // End to end through the artifacts feature, where the artifact limit allows the size.
      if (size <= MAX_ARTIFACT_BYTES) {
        step(`fetch ${mb} MB`)
        const kept = await held(a.helia)
        const module = paddedModule(noop, size)
        const entry = await artifactsOf(a).publish(module, { name: `blob${mb}`, version: `1.0.${round}` })
        const t = await reader.ask({ type: 'fetch', manifest: entry.manifest, size: module.length, timeoutMs: STALL_MS * 4 })
        if (t.type !== 'fetched') throw new Error(`reader answered ${t.type}`)
        addOne(`fetch.${mb}.mbps`, t.mbps)
        await artifactsOf(a).rm(entry.manifest)
        await forget(a.helia, kept)
      }
    }
    process.stderr.write(`round ${round + 1}/${ROUNDS} done\n`)
  }

  const p50 = (k: string): number => percentile(r[k], 0.5)
  const p99 = (k: string): number => percentile(r[k], 0.99)
  const mark = (ok: boolean): string => (ok ? 'meets' : 'MISSES')
  const rate = (k: string): number => median(r[k])
  if (INVOCATIONS) {
    const rows: Array<Array<string | number>> = [
      ['warm local, runtime.invoke', round(p50('runtime.warm'), 3), round(p99('runtime.warm'), 3), `p50 < ${TARGETS.warmLocalP50} ms: ${mark(p50('runtime.warm') < TARGETS.warmLocalP50)}`],
      ['warm local, functions feature', round(p50('feature.warm'), 3), round(p99('feature.warm'), 3), `p50 < ${TARGETS.warmLocalP50} ms: ${mark(p50('feature.warm') < TARGETS.warmLocalP50)}`],
      ['cold local (compile)', round(p50('runtime.cold'), 3), round(p99('runtime.cold'), 3), ''],
      ['warm remote, loopback TCP', round(p50('remote.warm'), 3), round(p99('remote.warm'), 3), `p50 < ${TARGETS.warmRemoteP50} ms: ${mark(p50('remote.warm') < TARGETS.warmRemoteP50)}`]
    ]
    console.log(table(['invocation latency (ms)', 'p50', 'p99', 'target'], rows))
    console.log()
    console.log(table(['invocations/s on one node', 'median', 'target'], [
      ['runtime.invoke', round(rate('runtime.rate'), 0), `>= ${TARGETS.perSecond}: ${mark(rate('runtime.rate') >= TARGETS.perSecond)}`],
      ['functions feature, local', round(rate('feature.rate'), 0), `>= ${TARGETS.perSecond}: ${mark(rate('feature.rate') >= TARGETS.perSecond)}`],
      ['functions feature, remote', round(rate('remote.rate'), 0), '']
    ]))
    console.log()
  }
  const trows = SIZES.map(mb => {
    const m = median(r[`mesh.${mb}.mbps`])
    const h = median(r[`helia.${mb}.mbps`])
    const fetched = r[`fetch.${mb}.mbps`] != null ? round(median(r[`fetch.${mb}.mbps`]), 1) : `n/a (> ${MAX_ARTIFACT_BYTES / MB} MB limit)`
    const target = mb === 64 ? `>= ${TARGETS.mbps64} MB/s: ${mark(m >= TARGETS.mbps64)}; ` : ''
    const cpu = (k: string): number => round(median(r[`${k}.${mb}.cpu`]), 0)
    return [`${mb} MB`, round(m, 1), round(median(r[`mesh.${mb}.ttfb`]), 1), cpu('mesh'), round(h, 1), round(median(r[`helia.${mb}.ttfb`]), 1), cpu('helia'), round(m / h, 2), fetched, `${target}vs Helia: ${mark(m >= h * 0.95)}`]
  })
  console.log(table(['transfer', 'Mesh MB/s', 'TTFB ms', 'CPU ms', 'Helia MB/s', 'TTFB ms', 'CPU ms', 'Mesh/Helia', 'fetch MB/s', 'target'], trows))
  console.log('(CPU ms: JS threads of both ends of one transfer, V8\'s GC helper threads not counted)')
  const load1 = loadavg()
  console.log(`\nload average ${load0.map(x => x.toFixed(2)).join(' ')} at start, ${load1.map(x => x.toFixed(2)).join(' ')} at end; ${availableParallelism()} cores`)

  const summary = {
    bench: 'functions',
    rounds: ROUNDS,
    calls: CALLS,
    ...(INVOCATIONS
      ? {
          latencyMs: Object.fromEntries(['runtime.warm', 'feature.warm', 'runtime.cold', 'remote.warm'].map(k => [k, { p50: round(p50(k), 3), p99: round(p99(k), 3) }])),
          perSecond: Object.fromEntries(['runtime.rate', 'feature.rate', 'remote.rate'].map(k => [k, round(rate(k), 0)]))
        }
      : {}),
    transfer: Object.fromEntries(SIZES.map(mb => [`${mb}MB`, {
      meshMBps: round(median(r[`mesh.${mb}.mbps`]), 1),
      meshTtfbMs: round(median(r[`mesh.${mb}.ttfb`]), 1),
      meshCpuMs: round(median(r[`mesh.${mb}.cpu`]), 0),
      heliaMBps: round(median(r[`helia.${mb}.mbps`]), 1),
      heliaTtfbMs: round(median(r[`helia.${mb}.ttfb`]), 1),
      heliaCpuMs: round(median(r[`helia.${mb}.cpu`]), 0),
      // Per round, in order, for the spread behind the medians.
      meshRounds: r[`mesh.${mb}.mbps`].map(x => round(x, 1)),
      heliaRounds: r[`helia.${mb}.mbps`].map(x => round(x, 1)),
      ...(r[`fetch.${mb}.mbps`] != null ? { fetchMBps: round(median(r[`fetch.${mb}.mbps`]), 1) } : {})
    }])),
    loadavg: [load0, load1].map(l => l.map(x => round(x, 2)))
  }
  console.log(JSON.stringify(summary))

  await runtime.close()
  await reader.close()
  await b.stop()
  await Promise.all([a.stop(), p1.stop()])
  await rm(dir, { recursive: true, force: true })
}

await main()

// The reading side of the transfer figures of scripts/bench/functions.ts: a MeshNode (artifacts
// feature) and a plain Helia node that fetch what the benchmark's A and plain Helia node hold.
//
// Run as a worker thread (the default), the readers have an event loop of their own, as a node on
// another machine would: with both ends on one loop, every transfer is bounded by the CPU that
// sender and receiver need together, one after the other. With `--reader thread` the benchmark
// calls these functions on its own thread instead (how figures before this file were taken).
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { parentPort } from 'node:worker_threads'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { unixfs } from '@helia/unixfs'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { MemoryBlockstore } from 'blockstore-core'
import { MemoryDatastore } from 'datastore-core'
import { CID } from 'multiformats/cid'
import { artifactsOf, readModuleChunks } from '../../node/artifacts.ts'
import { createHelia, withLibp2p } from '../../node/helia-light.ts'
import { nodeFeatures } from '../../node/features.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import type { HeliaWithLibp2p } from '@helia/libp2p'

const MB = 1024 * 1024

// A full collection on demand (V8's gc(), exposed without a command-line flag), so every measured
// transfer starts from a collected heap instead of paying for whatever the previous one left.
setFlagsFromString('--expose-gc')
export const collectGarbage = runInNewContext('gc') as () => void

export type ReaderRequest =
  /** Listening addresses (with /p2p/) of the benchmark's Mesh node A and plain Helia node. */
  | { type: 'setup', mesh: string, helia: string }
  /** Read a UnixFS file: Mesh as artifacts.ts reads a module, Helia with @helia/unixfs defaults. */
  | { type: 'read', kind: 'mesh' | 'helia', cid: string, size: number, timeoutMs: number }
  /** artifacts.fetch end to end (resolve, fetch, SHA-256, pin), then remove it again. */
  | { type: 'fetch', manifest: string, size: number, timeoutMs: number }
  /** A full garbage collection on this thread, before a measured transfer. */
  | { type: 'gc' }
  | { type: 'close' }

export type ReaderReply =
  | { type: 'ready' }
  /** cpuMs: CPU time of this thread during the read (the receiving end's work, GC helpers aside). */
  | { type: 'read', ttfbMs: number, mbps: number, cpuMs: number }
  | { type: 'fetched', mbps: number }
  | { type: 'collected' }
  | { type: 'closed' }
  | { type: 'error', message: string }

interface Readers {
  mesh: MeshNode
  helia: HeliaWithLibp2p
  /** The raw stores, to drop what a read added (each round moves the bytes again). */
  stores: MemoryBlockstore[]
}

let readers: Readers | undefined

async function setup (meshAddr: string, heliaAddr: string): Promise<void> {
  const mesh = new MeshNode({ privateKey: await generateKeyPair('Ed25519'), features: nodeFeatures, config: {}, minPeers: 1, bootstrap: [meshAddr] })
  await mesh.start()
  const store = new MemoryBlockstore()
  const helia = withBitswap(withLibp2p(createHelia({ blockstore: store, datastore: new MemoryDatastore() }), {
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify() }
  })) as HeliaWithLibp2p
  await helia.start()
  await helia.libp2p.dial(multiaddr(heliaAddr))
  const a = multiaddr(meshAddr).getComponents().find(c => c.name === 'p2p')?.value
  const deadline = Date.now() + 20_000
  while (!mesh.libp2p.getConnections().some(c => c.remotePeer.toString() === a)) {
    if (Date.now() > deadline) throw new Error('the reading Mesh node did not connect to A')
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  // MeshNode keeps its store private; with no storePath it is a MemoryBlockstore.
  readers = { mesh, helia, stores: [(mesh as unknown as { blockstore: MemoryBlockstore }).blockstore, store] }
}

function ready (): Readers {
  if (readers == null) throw new Error('reader not set up')
  return readers
}

async function held (): Promise<Array<Set<string>>> {
  return Promise.all(ready().stores.map(async store => {
    const out = new Set<string>()
    for await (const { cid } of store.getAll()) out.add(cid.toString())
    return out
  }))
}

async function forget (before: Array<Set<string>>): Promise<void> {
  const { stores } = ready()
  for (let i = 0; i < stores.length; i++) {
    const added: CID[] = []
    for await (const { cid } of stores[i].getAll()) if (!before[i].has(cid.toString())) added.push(cid)
    for (const cid of added) await stores[i].delete(cid)
  }
}

/** Reads one file over bitswap: ms to the first chunk, MB/s and CPU ms, measured on this thread. */
export async function read (kind: 'mesh' | 'helia', cidText: string, size: number, timeoutMs: number): Promise<{ ttfbMs: number, mbps: number, cpuMs: number }> {
  const { mesh, helia } = ready()
  const before = await held()
  const cid = CID.parse(cidText)
  const signal = AbortSignal.timeout(timeoutMs)
  const cpu = process.threadCpuUsage()
  const t = performance.now()
  let first = 0
  let got = 0
  const chunks = kind === 'mesh' ? readModuleChunks(unixfs(mesh.helia), cid, { signal }) : unixfs(helia).cat(cid, { signal })
  for await (const chunk of chunks) {
    if (got === 0) first = performance.now() - t
    got += chunk.length
  }
  const ms = performance.now() - t
  const used = process.threadCpuUsage(cpu)
  if (got !== size) throw new Error(`read ${got} bytes, expected ${size}`)
  await forget(before)
  return { ttfbMs: first, mbps: size / MB / (ms / 1000), cpuMs: (used.user + used.system) / 1000 }
}

export async function fetchArtifact (manifest: string, size: number, timeoutMs: number): Promise<{ mbps: number }> {
  const { mesh } = ready()
  const before = await held()
  const t = performance.now()
  const { bytes } = await artifactsOf(mesh).fetch(manifest, { signal: AbortSignal.timeout(timeoutMs) })
  const ms = performance.now() - t
  if (bytes.length !== size) throw new Error(`fetched ${bytes.length} bytes, expected ${size}`)
  await artifactsOf(mesh).rm(manifest)
  await forget(before)
  return { mbps: size / MB / (ms / 1000) }
}

export async function handle (request: ReaderRequest): Promise<ReaderReply> {
  switch (request.type) {
    case 'setup': await setup(request.mesh, request.helia); return { type: 'ready' }
    case 'read': return { type: 'read', ...await read(request.kind, request.cid, request.size, request.timeoutMs) }
    case 'fetch': return { type: 'fetched', ...await fetchArtifact(request.manifest, request.size, request.timeoutMs) }
    case 'gc': collectGarbage(); return { type: 'collected' }
    case 'close': {
      const r = readers
      readers = undefined
      if (r != null) await Promise.all([r.mesh.stop(), r.helia.stop()])
      return { type: 'closed' }
    }
  }
}

if (parentPort != null) {
  const port = parentPort
  port.on('message', (request: ReaderRequest) => {
    handle(request).then(
      reply => { port.postMessage(reply) },
      (err: Error) => { port.postMessage({ type: 'error', message: err.stack ?? err.message } satisfies ReaderReply) }
    )
  })
}

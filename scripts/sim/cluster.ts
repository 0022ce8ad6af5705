// One thread's share of the simulated mesh: MeshNodes with their own injected latency, that leave
// (stop), come back (restart with the same key, address and repo) or join anew, and the operations
// of the workload run on them. The coordinator (`mesh.ts`) decides which node does what; this file
// holds the nodes.
//
// Transport: with every node in one thread, `@libp2p/memory`; with the mesh spread over several
// threads, real TCP on 127.0.0.1 (one fixed port per node, so a restart keeps its address), as
// memory connections cannot cross threads. Either way the node's latency is added to every buffer
// it sends, and a partition is enforced in the transport: a dial to a node on the other side fails,
// and every connection across the split is aborted (as a failed link is seen, not closed as a peer
// hanging up would). Healing just lifts the dial ban; the nodes reconnect on their own.
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { ConnectionFailedError } from '@libp2p/interface'
import { memory } from '@libp2p/memory'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { descriptorsFeature, descriptorsOf } from '../../node/descriptors.ts'
import { DATA_MAP, documents, documentsOf } from '../../node/documents.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { tcp } from '../../node/tcp.ts'
import { parseConstraints } from '../../registry/constraints.ts'
import type { FeatureList } from '../../node/feature.ts'
import type { PrivateKey, Transport } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { Uint8ArrayList } from 'uint8arraylist'

export const NETWORK = 'sim'

export interface ClusterInit {
  runId: string
  dir: string
  features: string[]
  /** 'memory' when every node is in this thread; 'tcp' (port basePort + index) when not. */
  transport: 'memory' | 'tcp'
  basePort?: number
  /** Documents every node opens once started (as replicas, not editors). */
  docIds?: string[]
  minPeers?: number
  descriptorPingMs?: number
  slots?: number
}

export interface HostedNode {
  index: number
  address: string
  key: PrivateKey
  peerId: string
  latencyMs: number
  region: string
  repoPath: string
  node?: MeshNode
}

/** One operation's outcome, timed here (in the thread of the node that ran it). */
export interface OpResult {
  ok: boolean
  ms: number
  /** Why it failed: 'timeout', or the error's or the refusal's message. */
  reason?: string
  /** SIM_DEBUG: what to print about it. */
  debug?: string
}

/** Each running node's documents (by index): their state as a string, and their keys. */
export type DocViews = Array<[index: number, Record<string, { state: string, keys: string[] }>]>

/** What every node of this thread has counted, summed. */
export interface ClusterStats {
  dialsRefused: number
  descriptorsPublished: number
  publishedBy: Record<string, number>
  descriptorsReceived: number
  docGossip: number
}

const failureReason = (err: any): string =>
  err?.name === 'TimeoutError' || err?.name === 'AbortError' ? 'timeout' : String(err?.message ?? err)

export class Cluster {
  readonly nodes = new Map<number, HostedNode>()
  private readonly init: ClusterInit
  /** Side of every node of the mesh (all threads'), by index and by peer ID; empty when whole. */
  private sideByIndex = new Map<number, number>()
  private sideByPeer = new Map<string, number>()
  dialsRefused = 0

  constructor (init: ClusterInit) {
    this.init = init
  }

  addressOf (index: number): string {
    return this.init.transport === 'memory'
      ? `/memory/${this.init.runId}-${index}`
      : `/ip4/127.0.0.1/tcp/${this.init.basePort! + index}`
  }

  /** The mesh index an address belongs to (any thread's node). */
  private indexOf (ma: Multiaddr): number | undefined {
    const s = ma.toString()
    const m = this.init.transport === 'memory'
      ? new RegExp(`^/memory/${this.init.runId}-(\\d+)`).exec(s)
      : /^\/ip4\/127\.0\.0\.1\/tcp\/(\d+)/.exec(s)
    if (m == null) return undefined
    return this.init.transport === 'memory' ? Number(m[1]) : Number(m[1]) - this.init.basePort!
  }

  async add (index: number, latencyMs: number, region: string): Promise<{ peerId: string, address: string }> {
    if (this.nodes.has(index)) throw new Error(`node ${index} exists already`)
    const key = await generateKeyPair('Ed25519')
    const repoPath = join(this.init.dir, String(index))
    await mkdir(repoPath, { recursive: true })
    const hosted: HostedNode = { index, address: this.addressOf(index), key, peerId: peerIdFromPrivateKey(key).toString(), latencyMs, region, repoPath }
    this.nodes.set(index, hosted)
    return { peerId: hosted.peerId, address: hosted.address }
  }

  private get (index: number): HostedNode {
    const h = this.nodes.get(index)
    if (h == null) throw new Error(`no node ${index} in this thread`)
    return h
  }

  private running (index: number): MeshNode {
    const node = this.get(index).node
    if (node == null) throw new Error(`node ${index} is not running`)
    return node
  }

  /**
   * The node's transport, refusing dials across the partition, with the node's latency added to
   * every buffer it sends. `memory({ latency })` delays buffers one after another (each waits for
   * the one before it), which caps a connection at 1000/latency buffers a second: at 40 ms, 25 a
   * second for DHT, gossip, pings and documents together, so queues grow without end. Here every
   * buffer leaves `latencyMs` after it was sent, in order (equal timeouts fire in order): a link
   * with a delay, not a throttle. RTT between two nodes is the sum of their latencies.
   */
  private transport (hosted: HostedNode): (components: any) => Transport {
    const factory = this.init.transport === 'memory' ? memory() : tcp()
    const delayed = (maConn: any): any => {
      const latency = hosted.latencyMs
      if (latency <= 0) return maConn
      const sendData = maConn.sendData.bind(maConn)
      const sendClose = maConn.sendClose.bind(maConn)
      const sendReset = maConn.sendReset.bind(maConn)
      maConn.sendData = (data: Uint8ArrayList) => {
        setTimeout(() => {
          try {
            // All of it: TCP's sendData stops at the first write the socket reports as full and
            // says how much it took, for the caller to queue the rest, but this caller was told
            // everything went (and a socket queues what it is given in any case). Dropping the
            // rest cut Noise frames short, and their connections broke on decryption errors.
            let rest = data
            while (rest.byteLength > 0) {
              const { sentBytes } = sendData(rest)
              if (sentBytes <= 0 || sentBytes >= rest.byteLength) break
              rest = rest.sublist(sentBytes)
            }
          } catch {}
        }, latency)
        return { sentBytes: data.byteLength, canSendMore: true }
      }
      maConn.sendClose = async (options: any) => {
        await new Promise(resolve => setTimeout(resolve, latency))
        await sendClose(options)
      }
      maConn.sendReset = (err: any) => { setTimeout(() => { try { sendReset(err) } catch {} }, latency) }
      return maConn
    }
    const wrapUpgrader = (upgrader: any): any => ({
      ...upgrader,
      upgradeInbound: async (maConn: any, opts: any) => upgrader.upgradeInbound(delayed(maConn), opts),
      upgradeOutbound: async (maConn: any, opts: any) => upgrader.upgradeOutbound(delayed(maConn), opts)
    })
    return (components: any) => {
      const t = factory(components)
      const dial = t.dial.bind(t)
      const createListener = t.createListener.bind(t)
      t.dial = async (ma: Multiaddr, options: any) => {
        const target = this.indexOf(ma)
        if (target != null && this.sideByIndex.size > 0 && this.sideByIndex.get(target) !== this.sideByIndex.get(hosted.index)) {
          this.dialsRefused++
          throw new ConnectionFailedError(`partitioned: node ${hosted.index} cannot reach node ${target}`)
        }
        return await dial(ma, { ...options, upgrader: wrapUpgrader(options.upgrader) })
      }
      t.createListener = (options: any) => createListener({ ...options, upgrader: wrapUpgrader(options.upgrader) })
      return t
    }
  }

  private features (): FeatureList {
    const list: FeatureList = []
    if (this.init.features.includes('descriptors')) list.push(['descriptors', descriptorsFeature])
    if (this.init.features.includes('docs')) list.push(['docs', documents])
    return list
  }

  /** Starts (or restarts) a node, bootstrapping from the given addresses, and opens the documents. */
  async start (index: number, bootstrap: string[]): Promise<void> {
    const hosted = this.get(index)
    if (hosted.node != null) throw new Error(`node ${index} is already running`)
    const node = new MeshNode({
      privateKey: hosted.key,
      network: NETWORK,
      listen: [hosted.address],
      bootstrap,
      region: hosted.region,
      transports: [this.transport(hosted)],
      features: this.features(),
      repoPath: hosted.repoPath,
      minPeers: this.init.minPeers,
      config: { descriptors: { pingIntervalMs: this.init.descriptorPingMs ?? 5_000, slots: this.init.slots ?? 4 } }
    })
    hosted.node = node
    try {
      await node.start()
    } catch (err) {
      hosted.node = undefined
      await node.stop().catch(() => {})
      throw err
    }
    if (this.init.features.includes('docs')) {
      const docs = documentsOf(node)
      await Promise.all((this.init.docIds ?? []).map(async id => docs.open(id, { signal: AbortSignal.timeout(5_000) }).catch(() => {})))
    }
  }

  async stop (index: number): Promise<void> {
    const hosted = this.get(index)
    const node = hosted.node
    hosted.node = undefined
    await node?.stop()
  }

  /** Splits the mesh (`sides`: every node's side by index, and its peer ID), or heals it (null). */
  setSides (sides: Array<[index: number, peerId: string, side: number]> | null): void {
    this.sideByIndex = new Map((sides ?? []).map(([i, , s]) => [i, s]))
    this.sideByPeer = new Map((sides ?? []).map(([, p, s]) => [p, s]))
    if (sides == null) return
    for (const h of this.nodes.values()) {
      if (h.node == null) continue
      const mine = this.sideByIndex.get(h.index)
      for (const c of h.node.libp2p.getConnections()) {
        if (this.sideByPeer.get(c.remotePeer.toString()) !== mine) c.abort(new Error('partitioned'))
      }
    }
  }

  /** Connections of each running node. */
  connections (): Array<[number, number]> {
    return [...this.nodes.values()].filter(h => h.node != null).map(h => [h.index, h.node!.libp2p.getConnections().length])
  }

  /** Connections that cross the current split. */
  crossConnections (): number {
    if (this.sideByIndex.size === 0) return 0
    let n = 0
    for (const h of this.nodes.values()) {
      if (h.node == null) continue
      const mine = this.sideByIndex.get(h.index)
      for (const c of h.node.libp2p.getConnections()) if (this.sideByPeer.get(c.remotePeer.toString()) !== mine) n++
    }
    return n
  }

  async lookup (from: number, target: string, timeoutMs: number): Promise<OpResult> {
    const node = this.running(from)
    const started = performance.now()
    try {
      await node.findPeer(peerIdFromString(target), { signal: AbortSignal.timeout(timeoutMs) })
      return { ok: true, ms: performance.now() - started }
    } catch (err: any) {
      const ms = performance.now() - started
      const reason = failureReason(err).replace(/\(\d+ peers asked\)/, '(n peers asked)')
      return { ok: false, ms, reason, debug: `failed after ${Math.round(ms)} ms: ${err?.message}; from has ${node.libp2p.getConnections().length} connections` }
    }
  }

  /** What this thread's nodes know of a peer (SIM_DEBUG, for a failed lookup). */
  async knowledgeOf (peerId: string): Promise<{ connected: number[], known: number }> {
    const connected: number[] = []
    let known = 0
    for (const h of this.nodes.values()) {
      if (h.node == null || h.peerId === peerId) continue
      if (h.node.libp2p.getConnections().some(c => c.remotePeer.toString() === peerId)) connected.push(h.index)
      if (await h.node.libp2p.peerStore.get(peerIdFromString(peerId)).then(p => p.addresses.length > 0, () => false)) known++
    }
    return { connected, known }
  }

  async allocate (from: number, region: string, timeoutMs: number): Promise<OpResult> {
    const node = this.running(from)
    const wasConnected = new Set(node.libp2p.getConnections().map(c => c.remotePeer.toString()))
    const started = performance.now()
    try {
      const r = await descriptorsOf(node).allocate({
        constraints: parseConstraints(`region = ${region}`),
        count: 1,
        ttlMs: 5_000,
        signal: AbortSignal.timeout(timeoutMs)
      })
      const ms = performance.now() - started
      if (!r.ok) return { ok: false, ms, reason: `${r.status}: ${r.explanation}`.replace(/did:key:\S+/g, 'did').slice(0, 80) }
      const c = r.chosen[0]
      const how = c.self ? 'self' : wasConnected.has(c.peerId) ? 'was connected' : 'dialled'
      return { ok: true, ms, debug: `-> ${region} ${c.peerId.slice(-6)} (${how}, ${c.latencySource} ${c.latencyMs?.toFixed(1)} ms)` }
    } catch (err: any) {
      return { ok: false, ms: performance.now() - started, reason: failureReason(err) }
    }
  }

  /** Sets one key of a document; resolves once the write is acknowledged (on disk). */
  async write (from: number, doc: string, key: string, value: number, timeoutMs: number): Promise<OpResult> {
    const node = this.running(from)
    const started = performance.now()
    try {
      await documentsOf(node).set(doc, key, value, { signal: AbortSignal.timeout(timeoutMs) })
      return { ok: true, ms: performance.now() - started }
    } catch (err: any) {
      return { ok: false, ms: performance.now() - started, reason: String(err?.message ?? err) }
    }
  }

  /** Each running node's documents: their state as a string, and their keys. */
  async views (docIds: string[]): Promise<DocViews> {
    const result: DocViews = []
    for (const h of this.nodes.values()) {
      if (h.node == null) continue
      const docs = documentsOf(h.node)
      const perDoc: Record<string, { state: string, keys: string[] }> = {}
      for (const id of docIds) {
        try {
          const doc = await docs.open(id, { signal: AbortSignal.timeout(2_000) })
          const data = doc.getMap(DATA_MAP).toJSON() as Record<string, unknown>
          const keys = Object.keys(data).sort()
          perDoc[id] = { state: JSON.stringify(keys.map(k => [k, data[k]])), keys }
        } catch {
          perDoc[id] = { state: '<unavailable>', keys: [] }
        }
      }
      result.push([h.index, perDoc])
    }
    return result
  }

  stats (): ClusterStats {
    const s: ClusterStats = { dialsRefused: this.dialsRefused, descriptorsPublished: 0, publishedBy: {}, descriptorsReceived: 0, docGossip: 0 }
    for (const h of this.nodes.values()) {
      if (h.node == null) continue
      if (this.init.features.includes('descriptors')) {
        const st = descriptorsOf(h.node).stats()
        s.descriptorsPublished += st.published
        for (const [why, n] of Object.entries(st.publishedBy)) s.publishedBy[why] = (s.publishedBy[why] ?? 0) + n
        s.descriptorsReceived += st.received.gossip + st.received.pull
      }
      if (this.init.features.includes('docs')) s.docGossip += documentsOf(h.node).sync.stats.gossip.received
    }
    return s
  }

  async stopAll (): Promise<void> {
    await Promise.all([...this.nodes.keys()].map(async i => this.stop(i).catch(() => {})))
    await rm(this.init.dir, { recursive: true, force: true })
  }
}

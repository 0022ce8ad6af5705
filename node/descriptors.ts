// The descriptors feature: this node's signed Edge-Node Descriptor, the registry of everyone
// else's, the latency measurements that rank them, and allocation with leases.
//
// - Self: built from the host and config, signed, stored in Helia as a dag-cbor block, gossiped,
//   and rebuilt when a fact that placement depends on changes (addresses, trust, free slots,
//   neighbours) or when half its lifetime has passed, so peers never hold an expired one.
// - Others: every envelope, however it arrives, goes through decodeSigned before the store sees it;
//   the newest seq per DID wins, expired ones are pruned, invalid ones are dropped and counted.
// - Latency: libp2p ping to each connected peer; the samples feed the Vivaldi estimator (the peer's
//   coordinate comes from its descriptor), so nodes we never pinged still get an estimate.
import * as os from 'node:os'
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { didFromPeerId, parsePeerOrDid } from '../identity/did-key.ts'
import { announce } from '../protocols/announce.ts'
import { leaseService } from '../protocols/lease.ts'
import { choose, createLeaseBook, LeaseError } from '../registry/allocation.ts'
import {
  buildDescriptor, decodeSigned, DescriptorError, encodeSigned, MAX_DESCRIPTOR_BYTES, signDescriptor, supersedes
} from '../registry/descriptor.ts'
import { endRecordKey } from '../registry/dht-record.ts'
import { estimateRtt, vivaldiEstimator } from '../registry/vivaldi.ts'
import type { Announce, Verdict } from '../protocols/announce.ts'
import type { LeaseService } from '../protocols/lease.ts'
import type { Choice, Exclusion, LeaseBook } from '../registry/allocation.ts'
import type { Constraint } from '../registry/constraints.ts'
import type { Accelerator, EdgeNodeDescriptor, SignedDescriptor, TrustLevel } from '../registry/descriptor.ts'
import type { Coordinate } from '../registry/vivaldi.ts'
import type { Feature, FeatureFactory } from './feature.ts'
import type { MeshNode } from './mesh-node.ts'
import type { PeerId, PrivateKey } from '@libp2p/interface'

export interface DescriptorsConfig {
  /** Work slots this node offers; default one per core. */
  slots?: number
  zone?: string
  accelerators?: Accelerator[]
  geo?: { lat: number, lon: number }
  /** How often connected peers are pinged and the descriptor's facts rechecked. Default 5 s. */
  pingIntervalMs?: number
  ttlMs?: number
  /** Bound on how many other nodes' descriptors are kept. Default 10 000. */
  maxEntries?: number
  /** Put this node's descriptor in the DHT (under /mesh-end/<peerId>), at most this often. Default 60 s; 0 turns it off. */
  dhtIntervalMs?: number
}

export interface NodeRow {
  did: string
  peerId: string
  self: boolean
  region: string
  zone: string
  addresses: string[]
  cpus: number
  memoryMb: number
  freeMemoryMb: number
  accelerators: string[]
  runtimes: string[]
  /** The level this node verified, not the descriptor's claim (which is `claimedTrust`). */
  trust: TrustLevel
  claimedTrust: TrustLevel
  slots: number
  freeSlots: number
  load: number
  latencyMs: number | null
  latencySource: 'self' | 'measured' | 'estimated' | 'unknown'
  seq: number
  issued: string
  expires: string
}

export interface AllocationRequest {
  constraints: Constraint[]
  count?: number
  slots?: number
  ttlMs?: number
  signal?: AbortSignal
}

export interface Placement extends NodeRow {
  lease: { id: string, slots: number, expiresAt: string }
}

export type AllocationOutcome =
  | { ok: true, chosen: Placement[], exclusions: Exclusion[] }
  | { ok: false, status: 409 | 422, explanation: string, exclusions: Exclusion[], candidates: NodeRow[], refusals?: Array<{ did: string, reason: string }> }

export interface Descriptors {
  /** This node's current signed descriptor and the CID of its block in Helia. */
  self: () => { signed: SignedDescriptor, cid: string }
  /** Every live descriptor, this node's own included. */
  list: () => EdgeNodeDescriptor[]
  get: (did: string) => EdgeNodeDescriptor | undefined
  /** The local store first, else a DHT lookup of the node's record (which, if valid, is stored). */
  find: (did: string, options?: { signal?: AbortSignal, source?: 'any' | 'dht' }) => Promise<{ descriptor: EdgeNodeDescriptor, source: 'local' | 'dht' } | undefined>
  row: (d: EdgeNodeDescriptor) => NodeRow
  /** Latency to a node: measured RTT, else Vivaldi estimate. */
  latency: (did: string) => { ms: number | undefined, source: NodeRow['latencySource'] }
  trustOf: (d: EdgeNodeDescriptor) => TrustLevel
  allocate: (request: AllocationRequest) => Promise<AllocationOutcome>
  release: (did: string, leaseId: string) => Promise<boolean>
  /** Envelopes dropped by reason (schema, bad-signature, expired, wrong-network, …). */
  dropped: () => Record<string, number>
  /** `known` counts live descriptors, this node's own included. */
  stats: () => { known: number, published: number, received: { gossip: number, pull: number, dht: number }, skipped: number, pulls: number, dht: { puts: number, putFailures: number, lookups: number } }
  /** Rebuilds, signs, stores and gossips this node's descriptor now. */
  republish: () => Promise<void>
  /** Asks one peer for every live descriptor it holds. */
  pull: (peer: PeerId) => Promise<{ received: number, accepted: number }>
}

const RTT_SAMPLES = 5

export function descriptorsOf (node: MeshNode): Descriptors {
  const feature = node.features.get('descriptors') as (Feature & { api?: Descriptors }) | undefined
  if (feature?.api == null) throw new Error('this node runs without the descriptors feature')
  return feature.api
}

function levelOfRole (role: string | undefined): TrustLevel {
  if (role === 'root' || role === 'admin' || role === 'member') return role
  if (role === 'open') return 'member'
  return 'unverified'
}

function peekIdSeq (bytes: Uint8Array): { id: string, seq: number } | undefined {
  try {
    const d = (dagCbor.decode(bytes) as any)?.descriptor
    return typeof d?.id === 'string' && typeof d?.seq === 'number' ? { id: d.id, seq: d.seq } : undefined
  } catch {
    return undefined
  }
}

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

export const descriptorsFeature: FeatureFactory = (node, init) => {
  const cfg = ((init.config?.descriptors ?? {}) as DescriptorsConfig)
  const pingIntervalMs = cfg.pingIntervalMs ?? 5_000
  const ttlMs = cfg.ttlMs ?? 10 * 60_000
  const maxEntries = cfg.maxEntries ?? 10_000
  const region = node.region ?? (init.config?.region as string | undefined) ?? 'unknown'
  const zone = cfg.zone ?? region
  const book: LeaseBook = createLeaseBook({ capacity: did => did === node.did ? totalSlots() : undefined })
  const vivaldi = vivaldiEstimator()
  const store = new Map<string, { descriptor: EdgeNodeDescriptor, bytes: Uint8Array }>()
  const rtts = new Map<string, number[]>()
  const droppedBy = new Map<string, number>()
  const received = { gossip: 0, pull: 0, dht: 0 }
  const dhtIntervalMs = cfg.dhtIntervalMs ?? 60_000
  const dhtStats = { puts: 0, putFailures: 0, lookups: 0 }
  /** The descriptor in the DHT is older than the current one (or absent). */
  let dhtDirty = true
  let lastDhtPut = 0
  let dhtPutting = false
  let pulls = 0
  /** Envelopes not newer than what we hold, ignored without a signature check. */
  let skipped = 0
  let leaseRepublish: ReturnType<typeof setTimeout> | undefined
  let published = 0
  let current: { signed: SignedDescriptor, bytes: Uint8Array, cid: CID } | undefined
  let publishedCoordinate: Coordinate | undefined
  let timer: ReturnType<typeof setInterval> | undefined
  let republishing: Promise<void> | undefined
  let again = false
  let stopped = false
  let lastSeq = 0
  let ann: Announce | undefined
  let leases: LeaseService | undefined
  const pulledFrom = new Set<string>()

  function totalSlots (): number {
    return Math.max(0, Math.floor(cfg.slots ?? Math.max(os.cpus().length, 1)))
  }

  const drop = (reason: string): void => { droppedBy.set(reason, (droppedBy.get(reason) ?? 0) + 1) }

  // The private key is the node's own; MeshNode keeps it private, and it is what libp2p signs with.
  const privateKey = (): PrivateKey => (node as unknown as { privateKey: PrivateKey }).privateKey

  function ownTrust (): { level: TrustLevel, credential?: string } {
    const c = node.community
    if (c == null) return { level: 'unverified' }
    const level = levelOfRole(c.roleOf(node.did))
    return c.credential != null && c.credential.length <= 8192 ? { level, credential: c.credential } : { level }
  }

  function trustOf (d: EdgeNodeDescriptor): TrustLevel {
    if (d.id === node.did) return ownTrust().level
    const c = node.community
    if (c == null) return 'unverified'
    if (c.genesis.record.roots.includes(d.id)) return 'root'
    // Membership verdicts are checked credentials; a descriptor's claim alone is not.
    const peer = node.peers().find(p => p.did === d.id && p.authenticated)
    return levelOfRole(peer?.role)
  }

  function measured (did: string): number | undefined {
    const s = rtts.get(did)
    return s == null || s.length === 0 ? undefined : median(s)
  }

  function latency (did: string): { ms: number | undefined, source: NodeRow['latencySource'] } {
    if (did === node.did) return { ms: 0, source: 'self' }
    const m = measured(did)
    if (m !== undefined) return { ms: m, source: 'measured' }
    const d = store.get(did)?.descriptor
    if (d != null) {
      try {
        const e = vivaldi.estimate(d.latency.coordinate)
        if (Number.isFinite(e) && e >= 0) return { ms: Math.round(e * 1000) / 1000, source: 'estimated' }
      } catch {}
    }
    return { ms: undefined, source: 'unknown' }
  }

  function neighbours (): Array<{ did: string, rttMs: number }> {
    return [...rtts.keys()]
      .map(did => ({ did, rttMs: Math.min(measured(did) ?? 0, 60_000) }))
      .sort((a, b) => a.rttMs - b.rttMs)
      .slice(0, 64)
  }

  function addresses (): string[] {
    return node.libp2p.getMultiaddrs().map(String).filter(a => a.length <= 512).slice(0, 32)
  }

  function build (): EdgeNodeDescriptor {
    const slots = totalSlots()
    const now = Date.now()
    // seq must grow even when two rebuilds land in the same millisecond.
    const seq = Math.max(now, lastSeq + 1)
    lastSeq = seq
    return buildDescriptor({
      did: node.did,
      network: node.network,
      region,
      zone,
      addresses: addresses(),
      ...(cfg.geo != null ? { geo: cfg.geo } : {}),
      accelerators: cfg.accelerators ?? [],
      runtimes: ['wasi-preview1'],
      coordinate: vivaldi.coordinate(),
      neighbours: neighbours(),
      trust: ownTrust(),
      capacity: { slots, freeSlots: Math.max(0, slots - book.reservedFor(node.did)) },
      software: { name: 'mesh', version: '0.1.0' },
      now,
      ttlMs,
      seq
    })
  }

  /** The facts whose change makes the published descriptor wrong. */
  function factsOf (d: EdgeNodeDescriptor): string {
    return JSON.stringify([d.addresses, d.region, d.zone, d.trust, d.capacity, d.accelerators, d.latency.neighbours.map(n => n.did).sort()])
  }

  async function publishNow (): Promise<void> {
    const descriptor = build()
    const signed = await signDescriptor(descriptor, privateKey())
    const bytes = encodeSigned(signed)
    const cid = CID.createV1(dagCbor.code, await sha256.digest(bytes))
    const previous = current?.cid
    await node.helia.blockstore.put(cid, bytes)
    current = { signed, bytes, cid }
    publishedCoordinate = descriptor.latency.coordinate
    published++
    dhtDirty = true
    if (previous != null && !previous.equals(cid)) {
      try { await node.helia.blockstore.delete(previous) } catch {}
    }
    await ann?.publish(bytes)
  }

  /** One republish at a time; a request during one runs once more after it. */
  async function republish (): Promise<void> {
    if (stopped) return
    if (republishing != null) {
      again = true
      return await republishing
    }
    republishing = (async () => {
      try {
        do {
          again = false
          await publishNow()
        } while (again && !stopped)
      } finally {
        republishing = undefined
      }
    })()
    return await republishing
  }

  function needsRepublish (): boolean {
    if (current == null) return true
    const d = current.signed.descriptor
    if (Date.now() - Date.parse(d.issued) >= ttlMs / 2) return true
    const probe = { ...d, addresses: addresses(), trust: ownTrust(), latency: { ...d.latency, neighbours: neighbours() }, capacity: { slots: d.capacity.slots, freeSlots: Math.max(0, d.capacity.slots - book.reservedFor(node.did)) } }
    if (factsOf(probe) !== factsOf(d)) return true
    // A coordinate that moved far makes others' estimates of us wrong; small drift is not worth a message.
    if (publishedCoordinate != null) {
      try {
        if (estimateRtt(publishedCoordinate, vivaldi.coordinate()) > 5 && Date.now() - Date.parse(d.issued) > 30_000) return true
      } catch {}
    }
    return false
  }

  async function admit (bytes: Uint8Array, _from: PeerId | undefined, via: 'gossip' | 'pull' | 'dht'): Promise<Verdict> {
    received[via]++
    // Most envelopes are ones we already hold (every pull answer repeats the registry, gossip
    // arrives on several paths): a cheap look at id and seq spares the signature check. An
    // envelope that claims to be newer is always verified in full.
    if (bytes.length <= MAX_DESCRIPTOR_BYTES) {
      const peek = peekIdSeq(bytes)
      if (peek != null) {
        if (peek.id === node.did) return 'ignore'
        const held = store.get(peek.id)?.descriptor.seq
        if (held !== undefined && peek.seq <= held) {
          skipped++
          return 'ignore'
        }
      }
    }
    let signed: SignedDescriptor
    try {
      signed = await decodeSigned(bytes, { maxBytes: MAX_DESCRIPTOR_BYTES })
    } catch (err) {
      drop(err instanceof DescriptorError ? err.reason : 'malformed')
      return 'reject'
    }
    const d = signed.descriptor
    if (d.network !== node.network) {
      drop('wrong-network')
      return 'reject'
    }
    if (d.id === node.did) return 'ignore'
    const had = store.get(d.id)
    if (!supersedes(d, had?.descriptor)) return 'ignore'
    if (had == null && store.size >= maxEntries) {
      prune()
      if (store.size >= maxEntries) {
        drop('registry-full')
        return 'ignore'
      }
    }
    store.set(d.id, { descriptor: d, bytes })
    return 'accept'
  }

  function prune (): void {
    const now = Date.now()
    for (const [did, e] of store) {
      if (Date.parse(e.descriptor.expires) <= now) {
        store.delete(did)
        drop('expired')
      }
    }
  }

  function list (): EdgeNodeDescriptor[] {
    prune()
    return [...(current != null ? [current.signed.descriptor] : []), ...[...store.values()].map(e => e.descriptor)]
  }

  async function pingPeers (): Promise<void> {
    const peers = new Map<string, PeerId>()
    for (const c of node.libp2p.getConnections()) if (c.status === 'open' && c.remotePeer.type === 'Ed25519') peers.set(c.remotePeer.toString(), c.remotePeer)
    await Promise.all([...peers.values()].map(async (peer) => {
      let rtt: number
      try {
        rtt = await node.libp2p.services.ping.ping(peer, { signal: AbortSignal.timeout(5_000) })
      } catch {
        return
      }
      const did = didFromPeerId(peer)
      rtts.set(did, [...(rtts.get(did) ?? []), rtt].slice(-RTT_SAMPLES))
      const remote = store.get(did)?.descriptor.latency.coordinate
      if (remote != null) {
        try {
          vivaldi.observe(did, remote, rtt)
        } catch {
          drop('bad-coordinate')
        }
      }
    }))
    // Forget peers we no longer talk to, so neighbours lists only live links.
    const live = new Set([...peers.values()].map(p => p.toString()))
    for (const did of rtts.keys()) {
      const pid = store.get(did)?.descriptor.peerId
      if (pid != null && !live.has(pid)) {
        rtts.delete(did)
        vivaldi.forget(did)
      }
    }
  }

  async function pullFrom (peer: PeerId): Promise<{ received: number, accepted: number }> {
    if (ann == null) throw new Error('descriptors feature is not running')
    pulls++
    return await ann.pull(peer)
  }

  /** A peer that speaks the pull protocol is asked once per connection for everything it holds. */
  const onIdentify = (evt: CustomEvent<{ peerId: PeerId, protocols: string[] }>): void => {
    const { peerId, protocols } = evt.detail
    if (ann == null || !protocols.includes(ann.protocol)) return
    const key = peerId.toString()
    if (pulledFrom.has(key)) return
    pulledFrom.add(key)
    void (async () => {
      // In a community network the gate opens only after the membership handshake: retry a little.
      for (let attempt = 0; attempt < 5 && !stopped; attempt++) {
        try {
          await pullFrom(peerId)
          return
        } catch {
          await new Promise(resolve => setTimeout(resolve, 500 * (attempt + 1)).unref())
        }
      }
    })()
  }
  const onDisconnect = (evt: CustomEvent<PeerId>): void => { pulledFrom.delete(evt.detail.toString()) }

  /**
   * Peers that connected and were identified before this feature started (a restarted node is
   * redialled by its old peers as soon as it listens) fired no event we heard: ask them now, and
   * tell them who we are, since our first publish went out before anyone listened.
   */
  async function catchUp (): Promise<void> {
    if (ann == null) return
    for (const c of node.libp2p.getConnections()) {
      const peer = await node.libp2p.peerStore.get(c.remotePeer).catch(() => undefined)
      if (peer != null) onIdentify(new CustomEvent('peer:identify', { detail: { peerId: c.remotePeer, protocols: peer.protocols } }))
    }
    const topic = ann.topic
    if ((node.libp2p.services.pubsub?.getSubscribers(topic).length ?? 0) > 0) {
      onSubscription(new CustomEvent('subscription-change', { detail: { subscriptions: [{ topic, subscribe: true }] } }))
    }
  }

  /** Keeps this node's record in the DHT current, at most once per dhtIntervalMs; a failed put is retried next tick. */
  async function putInDht (): Promise<void> {
    if (dhtIntervalMs <= 0 || !dhtDirty || dhtPutting || current == null || stopped) return
    if (Date.now() - lastDhtPut < dhtIntervalMs) return
    if (node.libp2p.getConnections().length === 0) return
    dhtPutting = true
    const bytes = current.bytes
    try {
      dhtDirty = false
      lastDhtPut = Date.now()
      let stored = 0
      for await (const evt of node.libp2p.services.dht.put(endRecordKey(node.peerId.toString()), bytes, { signal: AbortSignal.timeout(30_000) })) {
        if (evt.name === 'PEER_RESPONSE' && evt.messageName === 'PUT_VALUE') stored++
      }
      if (stored === 0) throw new Error('no DHT peer stored the record')
      dhtStats.puts++
    } catch {
      dhtStats.putFailures++
      dhtDirty = true
      lastDhtPut = Date.now() - dhtIntervalMs + Math.min(dhtIntervalMs, 2_000)
    } finally {
      dhtPutting = false
    }
  }

  async function find (did: string, options: { signal?: AbortSignal, source?: 'any' | 'dht' } = {}): Promise<{ descriptor: EdgeNodeDescriptor, source: 'local' | 'dht' } | undefined> {
    if (options.source !== 'dht') {
      const local = api.get(did)
      if (local != null) return { descriptor: local, source: 'local' }
    }
    if (did === node.did && current != null) return { descriptor: current.signed.descriptor, source: 'local' }
    let peerId: string
    try {
      peerId = parsePeerOrDid(did).toString()
    } catch {
      return undefined
    }
    dhtStats.lookups++
    let best: Uint8Array | undefined
    try {
      // kad-dht validates every record it is handed and yields the selector's pick last.
      for await (const evt of node.libp2p.services.dht.get(endRecordKey(peerId), { signal: options.signal ?? AbortSignal.timeout(10_000) })) {
        if (evt.name === 'VALUE') best = evt.value
      }
    } catch (err: any) {
      if (options.signal?.aborted === true) throw err
    }
    if (best == null) return undefined
    let signed: SignedDescriptor
    try {
      signed = await decodeSigned(best, { maxBytes: MAX_DESCRIPTOR_BYTES })
    } catch (err) {
      drop(err instanceof DescriptorError ? err.reason : 'malformed')
      return undefined
    }
    if (signed.descriptor.peerId !== peerId) return undefined
    await admit(best, undefined, 'dht')
    const d = store.get(signed.descriptor.id)?.descriptor ?? signed.descriptor
    return d.network === node.network ? { descriptor: d, source: 'dht' } : undefined
  }
  /** Someone new listens: say who we are (gossipsub drops nothing we published before it joined). */
  let subscriberTimer: ReturnType<typeof setTimeout> | undefined
  const onSubscription = (evt: CustomEvent<{ subscriptions: Array<{ topic: string, subscribe: boolean }> }>): void => {
    if (ann == null || !evt.detail.subscriptions.some(s => s.subscribe && s.topic === ann!.topic)) return
    if (subscriberTimer != null) return
    subscriberTimer = setTimeout(() => {
      subscriberTimer = undefined
      if (current != null && !stopped) void ann?.publish(current.bytes)
    }, 500)
    subscriberTimer.unref()
  }

  async function tick (): Promise<void> {
    await pingPeers()
    prune()
    if (needsRepublish()) await republish()
    void putInDht()
  }

  function placementOf (choice: Choice): NodeRow {
    return row(choice.descriptor)
  }

  function row (d: EdgeNodeDescriptor): NodeRow {
    const l = latency(d.id)
    return {
      did: d.id,
      peerId: d.peerId,
      self: d.id === node.did,
      region: d.region,
      zone: d.zone,
      addresses: d.addresses,
      cpus: d.cpu.cores,
      memoryMb: d.memory.totalMb,
      freeMemoryMb: d.memory.freeMb,
      accelerators: d.accelerators.map(a => a.kind),
      runtimes: d.runtimes,
      trust: trustOf(d),
      claimedTrust: d.trust.level,
      slots: d.capacity.slots,
      freeSlots: d.capacity.freeSlots,
      load: d.load.cpu,
      latencyMs: l.ms ?? null,
      latencySource: l.source,
      seq: d.seq,
      issued: d.issued,
      expires: d.expires
    }
  }

  async function reserveOn (d: EdgeNodeDescriptor, slots: number, ttl: number, signal?: AbortSignal): Promise<{ id: string, slots: number, expiresAt: number }> {
    if (d.id === node.did) {
      const a = leases!.answer({ op: 'reserve', slots, ttlMs: ttl })
      if (a.ok !== true) throw new LeaseError(a.reason as any, String(a.error))
      return a.lease as any
    }
    const peer = await peerFor(d)
    const a = await leases!.request(peer, { op: 'reserve', slots, ttlMs: ttl }, { signal })
    return a.lease
  }

  async function peerFor (d: EdgeNodeDescriptor): Promise<PeerId> {
    const peer = peerIdFromString(d.peerId)
    if (node.libp2p.getConnections(peer).length === 0 && d.addresses.length > 0) {
      // The addresses are signed by the node itself, so they are as good as a DHT answer.
      await node.libp2p.peerStore.merge(peer, { multiaddrs: d.addresses.slice(0, 8).map(a => multiaddr(a)) }).catch(() => {})
    }
    return peer
  }

  async function release (did: string, leaseId: string): Promise<boolean> {
    if (did === node.did) return leases!.answer({ op: 'release', id: leaseId }).released === true
    const d = store.get(did)?.descriptor
    if (d == null) throw new LeaseError('unknown-lease', `no live descriptor of ${did}`)
    const a = await leases!.request(await peerFor(d), { op: 'release', id: leaseId })
    return a.released === true
  }

  async function allocate (req: AllocationRequest): Promise<AllocationOutcome> {
    const count = req.count ?? 1
    const slots = req.slots ?? 1
    const ttl = req.ttlMs ?? 60_000
    const all = list()
    const options = {
      slots,
      rtt: (did: string) => { const l = latency(did); return l.source === 'measured' || l.source === 'self' ? l.ms : undefined },
      estimate: (did: string) => { const l = latency(did); return l.source === 'estimated' ? l.ms : undefined },
      // list() has already dropped expired descriptors, so no 'not expired' stage clutters the explanation.
      trust: trustOf
    }
    const first = choose(all, req.constraints, { ...options, count })
    if (!first.ok) {
      return { ok: false, status: 422, explanation: first.explanation, exclusions: first.exclusions, candidates: first.candidates.map(placementOf) }
    }
    const full = choose(all, req.constraints, { ...options, count: Math.max(all.length, 1) })
    const ranked = full.ok ? full.chosen : full.candidates
    const chosen: Placement[] = []
    const refusals: Array<{ did: string, reason: string }> = []
    // Nearest first; a node whose book is full (its descriptor was stale, or someone else won the
    // race) refuses, and the next eligible one is asked. Constraints are never relaxed.
    for (const c of ranked) {
      if (chosen.length >= count) break
      try {
        const lease = await reserveOn(c.descriptor, slots, ttl, req.signal)
        chosen.push({ ...placementOf(c), lease: { id: lease.id, slots: lease.slots, expiresAt: new Date(lease.expiresAt).toISOString() } })
      } catch (err) {
        if (req.signal?.aborted === true) break
        refusals.push({ did: c.did, reason: err instanceof LeaseError ? err.reason : `unreachable: ${(err as Error).message}`.slice(0, 200) })
      }
    }
    if (chosen.length >= count) return { ok: true, chosen, exclusions: first.exclusions }
    await Promise.all(chosen.map(async p => release(p.did, p.lease.id).catch(() => false)))
    const why = refusals.map(r => `${r.did} ${r.reason}`).join(', ')
    return {
      ok: false,
      status: 409,
      explanation: `${ranked.length} node(s) met every constraint but only ${chosen.length} granted a lease (${why}); needed ${count}`,
      exclusions: first.exclusions,
      candidates: ranked.map(placementOf),
      refusals
    }
  }

  const api: Descriptors = {
    self: () => {
      if (current == null) throw new Error('descriptor not built yet')
      return { signed: current.signed, cid: current.cid.toString() }
    },
    list,
    get: (did) => did === node.did ? current?.signed.descriptor : (list(), store.get(did)?.descriptor),
    find,
    row,
    latency,
    trustOf,
    allocate,
    release,
    dropped: () => Object.fromEntries(droppedBy),
    stats: () => ({ known: list().length, published, received: { ...received }, skipped, pulls, dht: { ...dhtStats } }),
    republish,
    pull: pullFrom
  }

  return {
    api,
    gatedProtocols: () => [`/mesh/${node.network}/descriptors/1.0.0`, `/mesh/${node.network}/lease/1.0.0`],
    async start () {
      stopped = false
      ann = announce({ libp2p: node.libp2p }, {
        network: node.network,
        receive: admit,
        all: () => {
          prune()
          const own = current != null ? [{ id: node.did, seq: current.signed.descriptor.seq, bytes: current.bytes }] : []
          return [...own, ...[...store.values()].map(e => ({ id: e.descriptor.id, seq: e.descriptor.seq, bytes: e.bytes }))]
        },
        have: () => [...(current != null ? [[node.did, current.signed.descriptor.seq] as [string, number]] : []),
          ...[...store.values()].map(e => [e.descriptor.id, e.descriptor.seq] as [string, number])],
        maxBytes: MAX_DESCRIPTOR_BYTES,
        onDropped: drop
      })
      leases = leaseService({ libp2p: node.libp2p }, {
        network: node.network,
        did: node.did,
        book,
        // The lease book, not the descriptor, is what refuses an oversubscription, so free slots
        // are advertised at most once a second: a burst of allocations is one message, not two each.
        onChange: () => {
          if (leaseRepublish != null || stopped) return
          leaseRepublish = setTimeout(() => {
            leaseRepublish = undefined
            void republish().catch(() => {})
          }, 1_000)
          leaseRepublish.unref()
        },
        onDropped: reason => drop(`lease-${reason}`)
      })
      await publishNow()
      await ann.start()
      await leases.start()
      node.libp2p.addEventListener('peer:identify', onIdentify as any)
      node.libp2p.addEventListener('peer:disconnect', onDisconnect as any)
      node.libp2p.services.pubsub?.addEventListener('subscription-change', onSubscription as any)
      await catchUp()
      timer = setInterval(() => { void tick().catch(() => {}) }, pingIntervalMs)
      timer.unref()
      // A first measurement soon after the first peers arrive, not a whole interval later.
      setTimeout(() => { if (!stopped) void tick().catch(() => {}) }, Math.min(1_000, pingIntervalMs)).unref()
    },
    async stop () {
      stopped = true
      if (timer != null) clearInterval(timer)
      if (subscriberTimer != null) clearTimeout(subscriberTimer)
      if (leaseRepublish != null) clearTimeout(leaseRepublish)
      node.libp2p.removeEventListener('peer:identify', onIdentify as any)
      node.libp2p.removeEventListener('peer:disconnect', onDisconnect as any)
      node.libp2p.services.pubsub?.removeEventListener('subscription-change', onSubscription as any)
      await republishing?.catch(() => {})
      await leases?.stop()
      await ann?.stop()
    }
  } satisfies Feature & { api: Descriptors }
}

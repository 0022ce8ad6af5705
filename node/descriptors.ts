// The descriptors feature: this node's signed Edge-Node Descriptor, the registry of everyone
// else's, the latency measurements that rank them, and allocation with leases.
//
// - Self: built from the host and config, signed, stored in Helia as a dag-cbor block, gossiped,
//   and rebuilt at once when a fact that placement depends on changes (addresses, trust, slots, free
//   slots to or from none or by a quarter), at most once a minute or so when its coordinate or its
//   free slots drifted (see needsRepublish), and when nearly half its lifetime has passed, so peers
//   never hold an expired one. Every publish is checked by every node, so publishes are kept rare.
// - Others: every envelope, however it arrives, goes through decodeSigned before the store sees it;
//   the newest seq per DID wins, expired ones are pruned, invalid ones are dropped and counted.
// - Latency: probes to connected peers, a few per tick (see pingPeers); each probe's answer carries
//   the peer's current Vivaldi coordinate (protocols/probe.ts), and both ends get a sample. The
//   estimator places this node, so nodes we never probed still get an estimate from the coordinate
//   in their descriptor.
import * as os from 'node:os'
import * as dagCbor from '@ipld/dag-cbor'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { didFromPeerId, parsePeerOrDid } from '../identity/did-key.ts'
import { announce } from '../protocols/announce.ts'
import { leaseService } from '../protocols/lease.ts'
import { probeProtocol, probeService } from '../protocols/probe.ts'
import { choose, createLeaseBook, leaseOrder, LeaseError, worthADial } from '../registry/allocation.ts'
import {
  buildDescriptor, decodeSigned, DescriptorError, encodeSigned, MAX_DESCRIPTOR_BYTES, signDescriptor, supersedes
} from '../registry/descriptor.ts'
import { endRecordKey } from '../registry/dht-record.ts'
import { DEFAULT_VIVALDI_CONFIG, vivaldiEstimator } from '../registry/vivaldi.ts'
import type { Announce, Verdict } from '../protocols/announce.ts'
import type { LeaseService } from '../protocols/lease.ts'
import type { Probe } from '../protocols/probe.ts'
import type { ChooseOptions, Choice, Exclusion, LeaseBook } from '../registry/allocation.ts'
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
  /**
   * The tick: every tick pings `pingsPerTick` connected peers (those measured longest ago; a peer
   * never measured is pinged at the next tick on top of those) and rechecks the descriptor's facts.
   * Default 1 s, so a node sends about one ping a second whatever its number of connections, as a
   * Serf agent probes one member a second; with ~13 connections each link is re-measured every ~13 s.
   */
  pingIntervalMs?: number
  /** Peers pinged per tick besides the never-measured ones. Default 1. */
  pingsPerTick?: number
  /**
   * Keep a connection (and so probes) to this many of the nodes nearest by estimate. Default 3; 0
   * leaves the probe set to whatever peers the DHT and gossip connected.
   */
  nearPeers?: number
  ttlMs?: number
  /** Bound on how many other nodes' descriptors are kept. Default 10 000. */
  maxEntries?: number
  /** Put this node's descriptor in the DHT (under /mesh-end/<peerId>), at most this often. Default 60 s; 0 turns it off. */
  dhtIntervalMs?: number
}

/**
 * What made this node publish a new descriptor: a fact placement depends on ('facts': addresses,
 * trust, slots…; 'capacity': free slots moved a lot, or to or from none), the refresh before
 * expiry, the first coordinate worth using ('coordinate', gossiped), a soft change at most once a
 * gap ('drift': the coordinate moved, or free slots a little; synced, not gossiped), or an API call.
 */
export type PublishReason = 'start' | 'facts' | 'capacity' | 'refresh' | 'coordinate' | 'drift' | 'request'

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
  /**
   * How many of the nearest candidates known only by estimate are probed before the choice (a
   * dial if not connected). Default 3; 0 chooses on the estimates as they are.
   */
  measure?: number
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
  /** This node's Vivaldi coordinate now (its descriptor carries the one it last published). */
  coordinate: () => Coordinate
  /** Latency to a node: measured RTT, else Vivaldi estimate. */
  latency: (did: string) => { ms: number | undefined, source: NodeRow['latencySource'] }
  trustOf: (d: EdgeNodeDescriptor) => TrustLevel
  allocate: (request: AllocationRequest) => Promise<AllocationOutcome>
  release: (did: string, leaseId: string) => Promise<boolean>
  /** Envelopes dropped by reason (schema, bad-signature, expired, wrong-network, …). */
  dropped: () => Record<string, number>
  /** `known` counts live descriptors, this node's own included. */
  stats: () => { known: number, published: number, publishedBy: Partial<Record<PublishReason, number>>, received: { gossip: number, pull: number, dht: number }, skipped: number, pulls: number, pings: { sent: number, failed: number, answered: number }, nearDials: number, dht: { puts: number, putFailures: number, lookups: number } }
  /** Rebuilds, signs, stores and gossips this node's descriptor now. */
  republish: () => Promise<void>
  /** Asks one peer for every live descriptor it holds. */
  pull: (peer: PeerId) => Promise<{ received: number, accepted: number }>
}

const RTT_SAMPLES = 5
const MAX_NEIGHBOURS = 16
/** Nodes nearest by estimate kept connected and probed (see keepNear), checked this often, once our own coordinate's error is below this. */
const NEAR_PEERS = 3
const NEAR_CHECK_MS = 15_000
const NEAR_MIN_CONFIDENCE = 0.3
/** A node is dialled for nearness only if its estimate is below this share of the nearPeers-th nearest measured RTT. */
const NEAR_MARGIN = 0.7
/** Allocation: estimated candidates probed before choosing, at most, and how long that may take. */
const MEASURE_CANDIDATES = 3
const MEASURE_TIMEOUT_MS = 2_000
/**
 * An unconnected candidate is dialled and measured before an allocation chooses, and a lease asked
 * of it before one of a measured candidate, only if its estimate times this is still below the
 * measured RTT (see worthADial): estimates are off by tens of percent (median error 5-15%, p90
 * 50-100% at 100 nodes). In the 100-node simulation (random regions from random nodes, so nearly
 * every allocation is a node's first of its workload) half of the allocations had waited ~200 ms
 * at p50 for dials to candidates that a connected one was about as near as.
 */
const ESTIMATE_DOUBT = 1.5
/** Workloads whose nearest candidates are kept warm (see keepWarm): how many, for how long after their last allocation, checked how often. */
const WARM_WORKLOADS = 8
const WARM_FOR_MS = 10 * 60_000
const WARM_CHECK_MS = 5_000
/** Estimated candidates beyond the chosen ones looked at for warming, at most (see keepWarm). */
const WARM_EXTRA = 6
/** Other regions whose likeliest lease holder is kept warm before any allocation asks (see regionTargets). */
const WARM_REGIONS = 4
/** Never-measured peers pinged in one tick, at most (a node that just met many peers spreads them out). */
const NEW_PEERS_PER_TICK = 4
/** A warm candidate is probed at every warm check until it has this many samples (see keepWarm). */
const WARM_SAMPLES = 3
/**
 * A warm candidate measured within this share of the best one is a contender: it is probed until
 * it has RTT_SAMPLES samples, as is the best. Two candidates a millisecond apart are told apart by
 * the least of five samples, not of three: at 100 nodes, 5 of 93 nodes chose a node within 10% of
 * the nearest (always the same 5) when every candidate stopped at three.
 */
const CONTENDER_SHARE = 1.25
/** How long after a new accelerator holder is admitted the warm set is looked at again. */
const WARM_SOON_MS = 300
/** A ping that has not answered in this long is a lost sample, not a latency. */
const PING_TIMEOUT_MS = 5_000
/**
 * The least time between two publishes caused by a soft change: a drifted coordinate, or free
 * slots that moved a little. Neither is urgent (an estimate is an estimate; the lease book refuses
 * what the count misstates), and under load coordinates wobble: each republish adds load (every
 * node verifies every publish), which delays probes, which moves coordinates. Measured at 50 nodes
 * in one process with a 30 s gap and a 3 ms threshold: a publish per node every ~27 s, and gossip
 * validation the largest CPU cost of an idle mesh. Simulated at 100 nodes (probes carrying
 * coordinates, one a second): median estimate error after 5 min 15% with 30 s / 3 ms, 12% with
 * 60 s / 5 ms, at half the publishes: a coordinate published less often is also published
 * after it has settled.
 */
const SOFT_REPUBLISH_GAP_MS = 60_000
/**
 * Each gap is longer by up to this share, drawn anew at every publish: nodes started together
 * (a cluster restart, a benchmark) otherwise reach their gaps together, and 50 publishes in the
 * same second, each checked by every node, stalled a 50-node process for seconds.
 */
const SOFT_REPUBLISH_JITTER = 0.5
/** A descriptor sent to this many gossip peers has gone out; fewer, and a new subscriber hears it again. */
const ANNOUNCE_FANOUT = 3
/**
 * How often (plus jitter) one random peer is asked for what we lack. With the pull back, an
 * update reaches all of a 100-node mesh in a handful of rounds (~log2 N).
 */
const SYNC_INTERVAL_MS = 10_000
/** A peer synced with this recently is not pulled from again because its summary showed news. */
const SYNC_BACKOFF_MS = 3_000
/** A coordinate whose error (Vivaldi's confidence, 0-1.5) fell to this is worth publishing the first time. */
const FIRST_COORDINATE_ERROR = 0.5
/** A coordinate that moved this far (ms, see drift) since it was published is republished. */
const COORDINATE_DRIFT_MS = 5

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

export const descriptorsFeature: FeatureFactory = (node, init) => {
  const cfg = ((init.config?.descriptors ?? {}) as DescriptorsConfig)
  const pingIntervalMs = cfg.pingIntervalMs ?? 1_000
  const pingsPerTick = Math.max(0, Math.floor(cfg.pingsPerTick ?? 1))
  const nearPeers = Math.max(0, Math.floor(cfg.nearPeers ?? NEAR_PEERS))
  let lastNearCheck = Date.now()
  let nearDials = 0
  const ttlMs = cfg.ttlMs ?? 10 * 60_000
  const maxEntries = cfg.maxEntries ?? 10_000
  const region = node.region ?? (init.config?.region as string | undefined) ?? 'unknown'
  const zone = cfg.zone ?? region
  const book: LeaseBook = createLeaseBook({ capacity: did => did === node.did ? totalSlots() : undefined })
  // The least of each peer's last 8 samples, not Serf's median of 3: delay from a busy host or link
  // only ever adds, and at 50 nodes in one process a burst of late samples after each wave of
  // publishes moved every coordinate (median error swung 30% -> 90% -> 30% over a few minutes);
  // simulated with such bursts, 16% against 33% after 3 min, and 6% against 7% without them.
  const vivaldi = vivaldiEstimator({ latencyFilterSize: 8, latencyFilterPercentile: 0 })
  /** Others' descriptors by DID, with the expiry parsed once (prune runs on every list()). */
  const store = new Map<string, { descriptor: EdgeNodeDescriptor, bytes: Uint8Array, expiresAt: number }>()
  const rtts = new Map<string, number[]>()
  /** When each connected peer (by peer id) was last measured, for the round robin; and probes in flight. */
  const lastPinged = new Map<string, number>()
  const pinging = new Set<string>()
  /** Connected peers that do not speak the probe protocol: measured with libp2p ping instead. */
  const noProbe = new Set<string>()
  const droppedBy = new Map<string, number>()
  const received = { gossip: 0, pull: 0, dht: 0 }
  /** Probes this node sent, those that failed, and those it answered (each answer is a sample too). */
  const pings = { sent: 0, failed: 0, answered: 0 }
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
  let softGapMs = SOFT_REPUBLISH_GAP_MS
  /** Refreshed between 40% and 50% of its lifetime (spread, like the soft gap), so peers never hold an expired one. */
  let refreshMs = ttlMs / 2
  /** How many gossip peers the current descriptor was sent to; below ANNOUNCE_FANOUT, a new subscriber hears it. */
  let announcedTo = 0
  let lastSync = Date.now()
  let syncGapMs = SYNC_INTERVAL_MS
  let timer: ReturnType<typeof setInterval> | undefined
  let republishing: Promise<void> | undefined
  let again: PublishReason | undefined
  const publishedBy: Partial<Record<PublishReason, number>> = {}
  let stopped = false
  let lastSeq = 0
  let ann: Announce | undefined
  let leases: LeaseService | undefined
  let probe: Probe | undefined
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

  /** The least of the last RTT_SAMPLES: the link's RTT without the queueing that only ever adds to it. */
  function measured (did: string): number | undefined {
    const s = rtts.get(did)
    return s == null || s.length === 0 ? undefined : Math.min(...s)
  }

  function latency (did: string): { ms: number | undefined, source: NodeRow['latencySource'] } {
    if (did === node.did) return { ms: 0, source: 'self' }
    const m = measured(did)
    if (m !== undefined) return { ms: m, source: 'measured' }
    const d = store.get(did)?.descriptor
    // A coordinate at the maximum error was never updated (the node had measured nothing when it
    // published): it sits at the origin and would look nearer than any real one.
    if (d != null && d.latency.coordinate.error < DEFAULT_VIVALDI_CONFIG.errorMax && vivaldi.coordinate().error < DEFAULT_VIVALDI_CONFIG.errorMax) {
      try {
        const e = vivaldi.estimate(d.latency.coordinate)
        if (Number.isFinite(e) && e >= 0) return { ms: Math.round(e * 1000) / 1000, source: 'estimated' }
      } catch {}
    }
    return { ms: undefined, source: 'unknown' }
  }

  /**
   * The nearest measured peers, for the descriptor: informative (nothing places work by it), and
   * every entry is ~75 bytes that each publish carries to every node, so the nearest 16 only.
   */
  function neighbours (): Array<{ did: string, rttMs: number }> {
    return [...rtts.keys()]
      .map(did => ({ did, rttMs: Math.round(Math.min(measured(did) ?? 0, 60_000) * 1000) / 1000 }))
      .sort((a, b) => a.rttMs - b.rttMs)
      .slice(0, MAX_NEIGHBOURS)
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

  /** The facts whose change makes the published descriptor wrong at once. */
  function factsOf (d: EdgeNodeDescriptor): string {
    return JSON.stringify([d.addresses, d.region, d.zone, d.trust, d.capacity.slots, d.accelerators])
  }

  /**
   * Whether free slots moved enough to say so at once: only to or from none, the move that makes
   * allocators skip this node or consider it again. Every other move waits for the soft gap. The
   * lease book, not the descriptor, refuses an oversubscription, so an allocator working from a
   * slightly stale count loses nothing but a retry, while each publish is checked by every node:
   * a publish per lease (~1.4 a second while 50 nodes allocated from 5) kept a 50-node process
   * saturated, and with a quarter of all slots as the threshold, the 100-node simulation's 4-slot
   * nodes still published twice per allocation (reserve, expiry): 199 of 413 publishes a minute.
   */
  function capacityMoved (was: number, now: number): boolean {
    return (was === 0) !== (now === 0)
  }

  /**
   * How far any estimate of the RTT to this node can have moved since `a` was published: the
   * Euclidean move plus the change of height and adjustment (not estimateRtt(a, b), which adds
   * both heights and so never falls below twice the access latency).
   */
  function drift (a: Coordinate, b: Coordinate): number {
    if (a.vec.length !== b.vec.length) return Number.POSITIVE_INFINITY
    return Math.hypot(...a.vec.map((x, i) => x - b.vec[i])) + Math.abs(a.height - b.height) + Math.abs((a.adjustment ?? 0) - (b.adjustment ?? 0))
  }

  async function publishNow (reason: PublishReason): Promise<void> {
    publishedBy[reason] = (publishedBy[reason] ?? 0) + 1
    const descriptor = build()
    const signed = await signDescriptor(descriptor, privateKey())
    const bytes = encodeSigned(signed)
    const cid = CID.createV1(dagCbor.code, await sha256.digest(bytes))
    const previous = current?.cid
    await node.helia.blockstore.put(cid, bytes)
    current = { signed, bytes, cid }
    publishedCoordinate = descriptor.latency.coordinate
    softGapMs = SOFT_REPUBLISH_GAP_MS * (1 + Math.random() * SOFT_REPUBLISH_JITTER)
    refreshMs = ttlMs * (0.4 + 0.1 * Math.random())
    published++
    if (previous != null && !previous.equals(cid)) {
      try { await node.helia.blockstore.delete(previous) } catch {}
    }
    // A soft change is not gossiped: peers get it by anti-entropy (sync), each node fetching it
    // about once, where gossip hands every node D copies to decrypt and check. Measured at 50
    // nodes in one process: ~160 ms of CPU across the mesh per gossiped descriptor (~3 ms a
    // node); with every node's coordinate drifting in its first minutes, that kept a 100-node
    // process saturated. The DHT record, a fallback for nodes not in the registry, waits for a
    // hard change or the refresh too.
    if (reason === 'drift') return
    dhtDirty = true
    announcedTo = 0
    const recipients = await ann?.publish(bytes) ?? 0
    if (current?.bytes === bytes) announcedTo += recipients
  }

  /** One republish at a time; a request during one runs once more after it. */
  async function republish (reason: PublishReason): Promise<void> {
    if (stopped) return
    if (republishing != null) {
      again = reason
      return await republishing
    }
    republishing = (async () => {
      try {
        let why: PublishReason | undefined = reason
        do {
          again = undefined
          await publishNow(why)
          why = again
        } while (why !== undefined && !stopped)
      } finally {
        republishing = undefined
      }
    })()
    return await republishing
  }

  /** Why the published descriptor should be replaced now, if it should. */
  function needsRepublish (): PublishReason | undefined {
    if (current == null) return 'start'
    const d = current.signed.descriptor
    const age = Date.now() - Date.parse(d.issued)
    if (age >= refreshMs) return 'refresh'
    const slots = totalSlots()
    const freeSlots = Math.max(0, slots - book.reservedFor(node.did))
    const now = { ...d, addresses: addresses(), trust: ownTrust(), capacity: { slots, freeSlots } }
    if (factsOf(now) !== factsOf(d)) return 'facts'
    if (capacityMoved(d.capacity.freeSlots, freeSlots)) return 'capacity'
    // Until this node publishes a coordinate it has updated, no one can estimate their latency to
    // it (latency() treats a coordinate at the maximum error as none): its first usable one goes
    // out at once and by gossip, not after the soft gap. Measured at 50 nodes (bench:registry),
    // waiting for the gap left every estimate 'unknown' 70 s after start, and allocations
    // choosing among unknowns picked the nearest GPU node 25% of the time.
    if (publishedCoordinate != null && publishedCoordinate.error >= DEFAULT_VIVALDI_CONFIG.errorMax && vivaldi.coordinate().error <= FIRST_COORDINATE_ERROR) return 'coordinate'
    if (age < softGapMs) return undefined
    if (freeSlots !== d.capacity.freeSlots) return 'drift'
    // A coordinate that moved far makes others' estimates of us wrong; small drift is not worth a
    // message. The neighbour list rides along with whatever publish comes next: nothing places
    // work by it, and under load ping timeouts and reconnections made it wobble, each wobble a
    // publish every node checks. Not gossiped even when the move is large: tried (gossiping moves
    // over 20 ms), and at 100 nodes in one process each gossiped publish added load, load delayed
    // probes, delayed probes moved coordinates, and the loop saturated the process (event-loop lag
    // p50 59 ms, estimates 300-1300% off, against 39% CPU and converging estimates without it).
    if (publishedCoordinate != null && drift(publishedCoordinate, vivaldi.coordinate()) > COORDINATE_DRIFT_MS) return 'drift'
    return undefined
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
    store.set(d.id, { descriptor: d, bytes, expiresAt: Date.parse(d.expires) })
    if (had == null && d.accelerators.length > 0) warmSoon()
    return 'accept'
  }

  function prune (): void {
    const now = Date.now()
    for (const [did, e] of store) {
      if (e.expiresAt <= now) {
        store.delete(did)
        drop('expired')
      }
    }
  }

  function list (): EdgeNodeDescriptor[] {
    prune()
    return [...(current != null ? [current.signed.descriptor] : []), ...[...store.values()].map(e => e.descriptor)]
  }

  /**
   * Pings a few connected peers, not all of them: those never measured (at most
   * NEW_PEERS_PER_TICK), then the `pingsPerTick` measured longest ago. Pinging every peer every
   * tick made a ping storm (at 100 nodes of ~13 connections, 260 ping streams a second at a 5 s
   * tick) whose queueing delay was then measured as latency; a converged Vivaldi coordinate needs
   * few samples, and a peer's RTT is the least of its last RTT_SAMPLES anyway.
   */
  async function pingPeers (): Promise<void> {
    const peers = new Map<string, PeerId>()
    for (const c of node.libp2p.getConnections()) if (c.status === 'open' && c.remotePeer.type === 'Ed25519') peers.set(c.remotePeer.toString(), c.remotePeer)
    // Forget peers we no longer talk to, so neighbours lists only live links.
    for (const key of lastPinged.keys()) if (!peers.has(key)) lastPinged.delete(key)
    for (const key of noProbe) if (!peers.has(key)) noProbe.delete(key)
    for (const did of rtts.keys()) {
      const pid = store.get(did)?.descriptor.peerId
      if (pid != null && !peers.has(pid)) {
        rtts.delete(did)
        vivaldi.forget(did)
      }
    }
    const idle = [...peers.keys()].filter(k => !pinging.has(k))
    const fresh = idle.filter(k => !lastPinged.has(k)).slice(0, NEW_PEERS_PER_TICK)
    const due = idle.filter(k => lastPinged.has(k)).sort((a, b) => lastPinged.get(a)! - lastPinged.get(b)!).slice(0, pingsPerTick)
    await Promise.all([...fresh, ...due].map(async key => { await pingOne(peers.get(key)!) }))
  }

  async function pingOne (peer: PeerId, signal: AbortSignal = AbortSignal.timeout(PING_TIMEOUT_MS)): Promise<void> {
    const key = peer.toString()
    pinging.add(key)
    lastPinged.set(key, Date.now())
    pings.sent++
    let rttMs: number
    let coordinate: unknown
    try {
      if (noProbe.has(key) || probe == null) {
        rttMs = await node.libp2p.services.ping.ping(peer, { signal })
      } else {
        try {
          ({ rttMs, coordinate } = await probe.probe(peer, { signal }))
        } catch (err: any) {
          if (err?.name !== 'UnsupportedProtocolError') throw err
          noProbe.add(key)
          rttMs = await node.libp2p.services.ping.ping(peer, { signal })
        }
      }
    } catch {
      pings.failed++
      return
    } finally {
      pinging.delete(key)
    }
    if (!lastPinged.has(key)) return // disconnected meanwhile
    sample(peer, rttMs, coordinate)
  }

  /** One RTT sample to a connected peer, with its coordinate of the moment if it sent one. */
  function sample (peer: PeerId, rttMs: number, coordinate: unknown): void {
    const did = didFromPeerId(peer)
    rtts.set(did, [...(rtts.get(did) ?? []), rttMs].slice(-RTT_SAMPLES))
    // A peer that sent none (libp2p ping) is placed where its descriptor last said it was.
    const remote = coordinate ?? store.get(did)?.descriptor.latency.coordinate
    if (remote == null) return
    const lost = vivaldi.coordinate().error > NEAR_MIN_CONFIDENCE
    try {
      vivaldi.observe(did, remote as Coordinate, rttMs)
    } catch {
      drop('bad-coordinate')
    }
    // A node that has just found where it is can tell near candidates from far ones: look at the
    // warm set again now, not at the next warm check (keepWarm warmed the first few blindly).
    if (lost && vivaldi.coordinate().error <= NEAR_MIN_CONFIDENCE) warmSoon()
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
  /**
   * Someone listens and our descriptor has reached few peers yet (it was published before we had
   * gossip peers, whose meshes may not have formed): say who we are again. A descriptor that went
   * out to ANNOUNCE_FANOUT peers needs no repeat per new subscriber: a peer that connects pulls
   * the registry from us (onIdentify), anything gossip lost is caught by the periodic sync, and
   * at 100 nodes re-gossiping on every subscription meant one mesh-wide message per new connection.
   */
  let subscriberTimer: ReturnType<typeof setTimeout> | undefined
  const onSubscription = (evt: CustomEvent<{ subscriptions: Array<{ topic: string, subscribe: boolean }> }>): void => {
    if (ann == null || announcedTo >= ANNOUNCE_FANOUT || !evt.detail.subscriptions.some(s => s.subscribe && s.topic === ann!.topic)) return
    if (subscriberTimer != null) return
    subscriberTimer = setTimeout(() => {
      subscriberTimer = undefined
      const sent = current
      if (sent == null || stopped || announcedTo >= ANNOUNCE_FANOUT) return
      void ann?.publish(sent.bytes).then(n => { if (current === sent) announcedTo += n })
    }, 500)
    subscriberTimer.unref()
  }

  /**
   * Anti-entropy, as Serf's push-pull: every SYNC_INTERVAL_MS or so, pull what one random peer
   * holds that we lack; the peer pulls back if our summary shows we hold something newer
   * (onNewer). This is how soft changes travel (they are not gossiped), and it catches what gossip
   * missed (a descriptor published while the gossip mesh was forming reaches a peer that forwards
   * it nowhere). Between peers in sync a pull moves a summary and a zero. A registry too large for
   * one summary (~800 nodes) is not synced: soft changes then wait for the refresh.
   */
  async function sync (): Promise<void> {
    if (ann == null || Date.now() - lastSync < syncGapMs) return
    lastSync = Date.now()
    syncGapMs = SYNC_INTERVAL_MS * (1 + Math.random() * SOFT_REPUBLISH_JITTER)
    const peers = [...pulledFrom]
    if (peers.length === 0) return
    await syncWith(peers[Math.floor(Math.random() * peers.length)])
  }

  /** Peers we are pulling from, or pulled from in the last few seconds (no ping-pong). */
  const syncing = new Map<string, number>()
  async function syncWith (peer: string): Promise<void> {
    const since = syncing.get(peer)
    if (ann == null || stopped || (since !== undefined && Date.now() - since < SYNC_BACKOFF_MS)) return
    syncing.set(peer, Date.now())
    if (syncing.size > 256) for (const [k, t] of syncing) if (Date.now() - t >= SYNC_BACKOFF_MS) syncing.delete(k)
    pulls++
    await ann.pull(peerIdFromString(peer), { onlyDiff: true }).catch(() => {})
  }

  /**
   * Vivaldi learns the shape of the network from the links it measures, and the peers the DHT and
   * gossip connect are random: few are near, so short distances, the ones that decide between
   * candidates in one region, were estimated worst (at 100 nodes in 8 regions, p90 error >100%).
   * Measuring a few nearest nodes too is the Vivaldi paper's remedy (Dabek et al. §5.5); simulated
   * at 100 nodes, median error 12% -> 3% and p90 108% -> 13% after 5 min. So now and then, once
   * our own coordinate means something, dial the node nearest by estimate that we are not
   * connected to, if it is clearly nearer than the `nearPeers`-th nearest peer we measure; its
   * probes then keep the link measured. "Clearly": estimates move, and each dial is a connection
   * with all its protocols (in a 100-node process, dialling whenever the nearest-by-estimate set
   * changed made 5.5 dials a node and added a fifth of a core).
   */
  async function keepNear (): Promise<void> {
    if (nearPeers <= 0 || Date.now() - lastNearCheck < NEAR_CHECK_MS) return
    lastNearCheck = Date.now()
    if (vivaldi.coordinate().error > NEAR_MIN_CONFIDENCE) return
    const connected = new Set(node.libp2p.getConnections().filter(c => c.status === 'open').map(c => c.remotePeer.toString()))
    const near = [...rtts.keys()].map(did => measured(did)!).filter(ms => ms !== undefined).sort((a, b) => a - b)
    const bar = near.length < nearPeers ? Number.POSITIVE_INFINITY : near[nearPeers - 1] * NEAR_MARGIN
    let best: { d: EdgeNodeDescriptor, ms: number } | undefined
    for (const { descriptor: d } of store.values()) {
      if (connected.has(d.peerId)) continue
      const l = latency(d.id)
      if (l.source === 'estimated' && l.ms !== undefined && l.ms < bar && (best == null || l.ms < best.ms)) best = { d, ms: l.ms }
    }
    if (best == null) return
    nearDials++
    await measureNow(best.d, AbortSignal.timeout(PING_TIMEOUT_MS)).catch(() => {})
  }

  async function tick (): Promise<void> {
    await pingPeers()
    prune()
    const reason = needsRepublish()
    if (reason !== undefined) await republish(reason)
    void sync()
    void putInDht()
    void keepNear()
    void keepWarm()
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

  /** Candidates ranked on an estimate that might be nearer than the count-th best one. */
  function closeEstimated (ranked: Choice[], count: number): Choice[] {
    const window = ranked.slice(0, count + MEASURE_CANDIDATES)
    const bar = window[Math.min(count, window.length) - 1]?.latencyMs
    if (bar === undefined) return []
    return window.filter(c => c.latencySource === 'estimated' && c.latencyMs !== undefined && c.latencyMs <= bar * 1.5 + 2)
  }

  const connectedChoice = (c: Choice): boolean => node.libp2p.getConnections(peerIdFromString(c.descriptor.peerId)).length > 0

  /** One probe to a node now, dialling it from its descriptor's addresses if need be. */
  async function measureNow (d: EdgeNodeDescriptor, signal: AbortSignal): Promise<void> {
    const peer = await peerFor(d)
    if (pinging.has(peer.toString())) return // a probe is on its way already
    await pingOne(peer, signal)
  }

  /** Ranking options: measured RTT, else estimate; list() has already dropped expired descriptors. */
  function rankBy (slots: number): ChooseOptions {
    return {
      slots,
      rtt: (did: string) => { const l = latency(did); return l.source === 'measured' || l.source === 'self' ? l.ms : undefined },
      estimate: (did: string) => { const l = latency(did); return l.source === 'estimated' ? l.ms : undefined },
      trust: trustOf
    }
  }

  /** Every node that meets every constraint, nearest first. */
  function rankAll (all: EdgeNodeDescriptor[], constraints: Constraint[], slots: number): Choice[] {
    const full = choose(all, constraints, { ...rankBy(slots), count: Math.max(all.length, 1) })
    return full.ok ? full.chosen : full.candidates
  }

  /**
   * A node that allocated for a workload will most likely allocate for it again: for its last few
   * workloads (constraint sets), the nearest candidates are kept connected, measured, and with a
   * lease stream open, so that the next allocation is a lease's one round trip instead of a dial
   * (Noise, yamux and protocol negotiation: 5-6 round trips plus the handshake's CPU) and is
   * chosen on measured RTTs rather than estimates. Measured in bench:registry at 50 nodes: an
   * allocation that had to dial took 7-34 RTTs, one to a connected node with a fresh stream 2-3.
   */
  const workloads = new Map<string, { constraints: Constraint[], slots: number, count: number, at: number }>()
  let lastWarmCheck = 0
  let warming = false

  function remember (req: AllocationRequest): void {
    const slots = req.slots ?? 1
    const key = JSON.stringify([req.constraints, slots])
    workloads.delete(key)
    workloads.set(key, { constraints: req.constraints, slots, count: req.count ?? 1, at: Date.now() })
    for (const k of workloads.keys()) if (workloads.size > WARM_WORKLOADS) workloads.delete(k)
  }

  /**
   * Workloads a node is likely to run before it has run any: one per accelerator kind that some
   * live node offers, as `accelerator = <kind>`. Accelerators are the scarce hardware placement
   * asks for most (a GPU for inference) and a mesh has few kinds, so keeping their nearest
   * holders warm costs a handful of connections, and a node's first allocation of one is then a
   * lease's round trip instead of a dial. (bench:registry at 50 nodes, before: a workload's first
   * allocation p50 170-250 ms and p99 470-930 ms, against 14-21 ms and 52-263 ms for repeats.)
   */
  function anticipated (all: EdgeNodeDescriptor[]): Array<{ constraints: Constraint[], slots: number, count: number }> {
    const kinds = new Set(all.flatMap(d => d.id === node.did ? [] : d.accelerators.map(a => a.kind)))
    return [...kinds].map(kind => ({ constraints: [{ field: 'accelerator', op: '=', value: kind }], slots: 1, count: 1 }))
  }

  /**
   * The other workload a node is likely to run before it has run any: `region = R`, the
   * constraint placement names most (data sovereignty, nearness to a region's users). For the
   * WARM_REGIONS nearest other regions, the node an allocation there would lease on now (the
   * first of leaseOrder), if it is connected, is kept measured with a lease stream open, so a
   * node's first allocation in a region is one round trip (the 100-node simulation, which
   * allocates in random regions from random nodes: p99 0.7-1.5 s before, 0.3-0.6 s after, with
   * ESTIMATE_DOUBT). Never a dial for it: dialling each region's likeliest node cost 40-41
   * connections a node instead of 32 at 100 nodes in 8 regions and pushed bench:registry's
   * allocation p99 over 50 ms (and warming every node an estimate might place nearer, 63).
   */
  function regionTargets (all: EdgeNodeDescriptor[]): EdgeNodeDescriptor[] {
    const regions = new Set(all.map(d => d.region))
    regions.delete(region)
    const firsts: Choice[] = []
    for (const r of regions) {
      const ranked = rankAll(all, [{ field: 'region', op: '=', value: r }], 1)
      const first = leaseOrder(ranked, 1, connectedChoice, ESTIMATE_DOUBT)[0]
      if (first?.latencyMs !== undefined && connectedChoice(first)) firsts.push(first)
    }
    return firsts.sort((a, b) => a.latencyMs! - b.latencyMs!).slice(0, WARM_REGIONS).map(c => c.descriptor)
  }

  /**
   * A node that has just joined learns the registry in a burst: the warm set is looked at once the
   * burst is over, not at the next warm check (up to WARM_CHECK_MS later), so that an allocation
   * a few seconds after joining finds its candidates connected.
   */
  let warmTimer: ReturnType<typeof setTimeout> | undefined
  function warmSoon (): void {
    if (warmTimer != null) clearTimeout(warmTimer)
    warmTimer = setTimeout(() => {
      warmTimer = undefined
      if (!stopped) void keepWarm(true)
    }, WARM_SOON_MS)
    warmTimer.unref()
  }

  async function keepWarm (now = false): Promise<void> {
    if (warming || leases == null || stopped || (!now && Date.now() - lastWarmCheck < WARM_CHECK_MS)) return
    warming = true
    lastWarmCheck = Date.now()
    try {
      const all = list()
      /** Candidates to keep warm, and how many samples each should have. */
      const targets = new Map<string, { d: EdgeNodeDescriptor, wanted: number }>()
      for (const key of workloads.keys()) if (Date.now() - workloads.get(key)!.at > WARM_FOR_MS) workloads.delete(key)
      // A node that has just joined knows too little of where it is for estimates to mean
      // anything (its coordinate's error is high): it warms the first few candidates whatever
      // their estimates say, and lets the measurements rank them.
      const lost = vivaldi.coordinate().error > NEAR_MIN_CONFIDENCE
      for (const w of [...workloads.values(), ...anticipated(all)]) {
        // The chosen ones, and the others that might be nearer: estimated (or measured fewer
        // than WARM_SAMPLES times) within twice the count-th best. This runs in the background,
        // so it casts a wider net than an allocation stops for: an estimate is sometimes off by
        // half or more (at 50 nodes, p90 error 90-180%), and a candidate estimated at 1.6x the
        // best was, measured, the nearest.
        const candidates = rankAll(all, w.constraints, w.slots)
        const bar = candidates[Math.min(w.count, candidates.length) - 1]?.latencyMs ?? Number.POSITIVE_INFINITY
        candidates.slice(0, w.count + WARM_EXTRA).forEach((c, i) => {
          const samples = rtts.get(c.did)?.length ?? 0
          const unsure = c.latencySource !== 'measured' || samples < WARM_SAMPLES
          const near = c.latencyMs !== undefined && c.latencyMs <= bar * 2 + 2
          if (c.did === node.did || !(i < w.count || lost || (unsure && near))) return
          const contender = c.latencySource === 'measured' && c.latencyMs! <= bar * CONTENDER_SHARE
          const wanted = i < w.count || contender ? RTT_SAMPLES : WARM_SAMPLES
          targets.set(c.did, { d: c.descriptor, wanted: Math.max(wanted, targets.get(c.did)?.wanted ?? 0) })
        })
      }
      for (const d of regionTargets(all)) if (!targets.has(d.id)) targets.set(d.id, { d, wanted: WARM_SAMPLES })
      await Promise.all([...targets.values()].map(async ({ d, wanted }) => {
        const signal = AbortSignal.timeout(PING_TIMEOUT_MS)
        try {
          // One sample is not yet a measurement: one taken while either end was busy (a dial is
          // when both are) would otherwise rank the candidate until the round robin comes back to
          // it. (At 50 nodes in one process, allocations chose a node at 20 ms over one at 3.6 ms
          // that had been measured once, at 64.7 ms.) Samples a warm check apart, not in one
          // burst: taken back to back, all three fell in the same busy second.
          const since = Date.now() - (lastPinged.get(d.peerId) ?? 0)
          if ((rtts.get(d.id)?.length ?? 0) < wanted && since >= WARM_CHECK_MS) await measureNow(d, signal)
          await leases!.prepare(await peerFor(d), { signal })
        } catch {}
      }))
    } finally {
      warming = false
    }
  }

  async function allocate (req: AllocationRequest): Promise<AllocationOutcome> {
    const count = req.count ?? 1
    const slots = req.slots ?? 1
    const ttl = req.ttlMs ?? 60_000
    const all = list()
    // Whether enough nodes meet every constraint (with the explanation if not), and every node
    // that does, nearest first.
    const rank = (): { first: ReturnType<typeof choose>, ranked: Choice[] } =>
      ({ first: choose(all, req.constraints, { ...rankBy(slots), count }), ranked: rankAll(all, req.constraints, slots) })
    let { first, ranked } = rank()
    // An estimate is good to tens of percent, which on short links is a few ms: as much as the
    // gap between candidates in one region. So the estimated candidates that could be nearer than
    // the count-th best are measured first (those worth a dial: see ESTIMATE_DOUBT), and the
    // choice is made on what was measured. Those passed over are measured by the warm check after
    // the allocation (the workload is remembered), so a repeat is judged on measurements.
    const close = first.ok ? closeEstimated(ranked, count).filter(worthADial(ranked, count, connectedChoice, ESTIMATE_DOUBT)).slice(0, Math.max(0, req.measure ?? MEASURE_CANDIDATES)) : []
    if (close.length > 0) {
      const signal = req.signal == null ? AbortSignal.timeout(MEASURE_TIMEOUT_MS) : AbortSignal.any([req.signal, AbortSignal.timeout(MEASURE_TIMEOUT_MS)])
      await Promise.all(close.map(async c => { await measureNow(c.descriptor, signal) }))
      const remeasured = rank()
      first = remeasured.first
      ranked = remeasured.ranked
    }
    if (!first.ok) {
      return { ok: false, status: 422, explanation: first.explanation, exclusions: first.exclusions, candidates: first.candidates.map(placementOf) }
    }
    remember(req)
    const chosen: Placement[] = []
    const refusals: Array<{ did: string, reason: string }> = []
    // Nearest first; a node whose book is full (its descriptor was stale, or someone else won the
    // race) refuses, and the next eligible one is asked. Constraints are never relaxed.
    for (const c of leaseOrder(ranked, count, connectedChoice, ESTIMATE_DOUBT)) {
      if (chosen.length >= count) break
      try {
        const lease = await reserveOn(c.descriptor, slots, ttl, req.signal)
        chosen.push({ ...placementOf(c), lease: { id: lease.id, slots: lease.slots, expiresAt: new Date(lease.expiresAt).toISOString() } })
      } catch (err) {
        if (req.signal?.aborted === true) break
        refusals.push({ did: c.did, reason: err instanceof LeaseError ? err.reason : `unreachable: ${(err as Error).message}`.slice(0, 200) })
      }
    }
    // The candidates this allocation passed over are warmed for the next one, in the background.
    void keepWarm(true)
    if (chosen.length >= count) return { ok: true, chosen, exclusions: first.exclusions }
    await Promise.all(chosen.map(async p => release(p.did, p.lease.id).catch(() => false)))
    // Out of time is not a refusal: say so (the HTTP API answers 504), rather than "N nodes met
    // every constraint but 0 granted a lease ()", which is what a 100-node simulation's timed-out
    // allocations used to report.
    if (req.signal?.aborted === true) throw req.signal.reason ?? new Error('allocation aborted')
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
    coordinate: () => vivaldi.coordinate(),
    latency,
    trustOf,
    allocate,
    release,
    dropped: () => Object.fromEntries(droppedBy),
    stats: () => ({ known: list().length, published, publishedBy: { ...publishedBy }, received: { ...received }, skipped, pulls, pings: { ...pings }, nearDials, dht: { ...dhtStats } }),
    republish: async () => { await republish('request') },
    pull: pullFrom
  }

  return {
    api,
    gatedProtocols: () => [`/mesh/${node.network}/descriptors/1.0.0`, `/mesh/${node.network}/lease/1.0.0`, probeProtocol(node.network)],
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
        onDropped: drop,
        onNewer: peer => { void syncWith(peer.toString()) }
      })
      probe = probeService({ libp2p: node.libp2p }, {
        network: node.network,
        coordinate: () => vivaldi.coordinate(),
        // A peer that probed us measured this link just now: our own next probe goes elsewhere.
        onSample: ({ peer, rttMs, coordinate }) => {
          const key = peer.toString()
          if (stopped || !node.libp2p.getConnections(peer).some(c => c.status === 'open')) return
          pings.answered++
          lastPinged.set(key, Date.now())
          sample(peer, rttMs, coordinate)
        },
        onDropped: drop
      })
      leases = leaseService({ libp2p: node.libp2p }, {
        network: node.network,
        did: node.did,
        book,
        // Free slots are rechecked a second after a lease changes (a burst of allocations is one
        // check), and published only if they moved enough (capacityMoved).
        onChange: () => {
          if (leaseRepublish != null || stopped) return
          leaseRepublish = setTimeout(() => {
            leaseRepublish = undefined
            const reason = needsRepublish()
            if (reason !== undefined) void republish(reason).catch(() => {})
          }, 1_000)
          leaseRepublish.unref()
        },
        onDropped: reason => drop(`lease-${reason}`)
      })
      await publishNow('start')
      await ann.start()
      await leases.start()
      await probe.start()
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
      if (warmTimer != null) clearTimeout(warmTimer)
      node.libp2p.removeEventListener('peer:identify', onIdentify as any)
      node.libp2p.removeEventListener('peer:disconnect', onDisconnect as any)
      node.libp2p.services.pubsub?.removeEventListener('subscription-change', onSubscription as any)
      await republishing?.catch(() => {})
      await probe?.stop()
      await leases?.stop()
      await ann?.stop()
    }
  } satisfies Feature & { api: Descriptors }
}

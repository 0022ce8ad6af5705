// Replicated Yjs documents: live updates and presence over gossip, catch-up and repair over a
// direct stream that runs the y-protocols sync (state vector in, missing update out).
//
// Gossip: one topic per document, `/mesh/<network>/doc/<docId>`. A message is a y-protocols
// message exactly as y-websocket frames it:
//   varUint 0 (sync)      | varUint 2 (update) | varUint8Array Yjs update
//   varUint 1 (awareness) | varUint8Array awareness update
// Messages are signed (gossipsub StrictSign), so `from` is the peer that wrote them, whoever relayed.
// One more, Mesh's own, for a large local update (over `inlineUpdateBytes`):
//   varUint 100 (notice) | varUint8Array state vector of the update
// The update's bytes do not ride the gossip: a node that lacks them runs a sync session with the
// peer that passed it the notice (which has them: it passes a notice on only once it holds what
// the notice names), then passes the notice on. A node gets each update's bytes once, not once per
// mesh peer: gossipsub's IDONTWANT comes too late when every mesh peer forwards at once, and at 50
// nodes each receiver got ~7 copies of every 7 KB batch. This is the lazy push of Plumtree
// (Leitão et al.) and of gossipsub's own IHAVE/IWANT, without waiting for a heartbeat.
//
// Stream `/mesh/<network>/doc-sync/1.0.0`: frames of varUint length | body. The initiator sends a
// header frame (varUint version = 1, varUint budget in bytes, 0 = unlimited), then per document
// `varString docId | varUint 0 | varUint 0 (step 1) | varUint8Array state vector`, then an empty
// frame. The responder answers each document it also holds (and may share with the initiator) with
// step 2 (`… | varUint 1 | varUint8Array update`: what the initiator lacks) and its own step 1, and
// closes its side after the empty frame; the initiator answers each step 1 with step 2 and closes
// its side once the responder's has ended. Either side sends step 2 only while the budget lasts.
// The header may carry a third varUint, flags: bit 0 says the initiator can fetch snapshots by CID;
// bit 1 says it only pulls (fetching what a notice named): the responder sends no step 1 of its own,
// and the initiator would not answer one.
//
// Cold start: a node whose document was compacted offers the snapshot on IPFS (`setSnapshot`: its
// CID and state vector). In a session whose flags allow it, a side answering a step 1 with an
// empty state vector (a replica that never had the document) first sends
// `… | varUint 3 (snapshot) | varUint8Array (varString CID | varUint bytes | varUint8Array state
// vector)`, then step 2 holding only what the snapshot lacks. The receiver fetches the snapshot by
// CID (bitswap, every block verified) before it reads on; if that fails, it applies the small
// step 2 anyway (Yjs keeps it pending) and asks the same peer for a full sync without snapshots.
//
// A document whose allowedZones exclude some peers never travels over gossip (anyone may subscribe
// to a topic): it replicates only over the stream, to peers whose zone is allowed.
import * as decoding from 'lib0/decoding'
import * as encoding from 'lib0/encoding'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as Y from 'yjs'
import type { GossipSub, Message } from '@libp2p/gossipsub'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import type { Libp2p } from 'libp2p'

const MESSAGE_SYNC = 0
const MESSAGE_AWARENESS = 1
const SYNC_STEP1 = 0
const SYNC_STEP2 = 1
const SYNC_UPDATE = 2
const SYNC_SNAPSHOT = 3
const MESSAGE_NOTICE = 100
const FLAG_SNAPSHOTS = 1
const FLAG_PULL = 2
const STREAM_VERSION = 1
const DOC_ID = /^[a-z0-9][a-z0-9._-]{0,127}$/
const MAX_SESSION_DOCS = 1000

/** What doc-sync needs of a store (`node/doc-store.ts` provides it). */
export interface DocSyncStore {
  load: (docId: string) => Promise<Y.Doc | undefined>
  /** Resolves once the update is durable. */
  append: (docId: string, update: Uint8Array) => Promise<void>
  list?: () => Promise<Array<{ docId: string }>>
}

export interface DocSyncComponents {
  libp2p: Pick<Libp2p, 'peerId' | 'handle' | 'unhandle' | 'register' | 'unregister' | 'dialProtocol'> & { services: { pubsub?: GossipSub } }
  store: DocSyncStore
  peerId?: PeerId
  /** Fetches a snapshot by CID (from IPFS: verified); without it, snapshots are never used. */
  snapshots?: {
    fetch: (cid: string, options: { signal: AbortSignal, maxBytes: number }) => Promise<Uint8Array>
  }
}

/** A document snapshot offered by CID. */
export interface SnapshotRef {
  cid: string
  /** Encoded Yjs state vector of the snapshot. */
  stateVector: Uint8Array
  bytes: number
}

export interface DocSyncInit {
  network: string
  /** Largest gossip message (update or awareness) accepted or sent. Default 1 MiB. */
  maxMessageBytes?: number
  /** Largest stream frame accepted or sent; a document's missing part must fit. Default 16 MiB. */
  maxSyncMessageBytes?: number
  /** How often to compare state vectors with a random peer per document (each wait drawn between 0.5 and 1.5 times it). Default 30 s; 0 never. */
  antiEntropyIntervalMs?: number
  /**
   * Update bytes an anti-entropy round may move in each direction (state vectors aside). A
   * document whose missing part does not fit what is left is deferred (counted), so a part larger
   * than the whole cap is only ever repaired by the uncapped catch-up on connect, join or restart.
   * Default 1 MiB.
   */
  antiEntropyBytesPerRound?: number
  /** A sync session is aborted after this long. Default 30 s. */
  syncTimeoutMs?: number
  /** Peers to catch up with when a document is opened. Default 3. */
  joinPeers?: number
  /** Open every document the store holds on start. Default false. */
  openStored?: boolean
  /** Whether a peer takes part in a document at all (sends or receives it). Default: everyone. */
  authorize?: (peer: PeerId, docId: string) => boolean | Promise<boolean>
  /**
   * Peer IDs allowed to write a document; undefined means every authorized peer. Yjs updates are
   * not signed, so an update is attributed to the peer that signed its gossip message or, in a
   * sync, to the stream's remote peer: a non-writer can neither publish nor relay updates (so
   * readers catch up from writers), and every writer is trusted with the whole document (one
   * writer can forge what looks like another's edit).
   */
  writers?: (docId: string) => string[] | undefined
  /** Zones (regions) a document may live in; undefined means anywhere. */
  allowedZones?: (docId: string) => string[] | undefined
  /** This node's zone. */
  nodeZone?: string
  /** A peer's zone, as far as this node knows (its signed descriptor); undefined if unknown. */
  peerZone?: (peer: PeerId) => string | undefined
  /** Offer a snapshot instead of the whole state only when it is at least this big. Default 64 KiB. */
  snapshotMinBytes?: number
  /**
   * A local update larger than this goes on gossip as a notice, and its bytes are fetched over the
   * sync stream (see the top of this file). Default 4 KiB; Infinity sends every update whole.
   */
  inlineUpdateBytes?: number
  /** Largest repair learned from a sync that is passed on over gossip. Default 256 KiB. */
  maxRelayBytes?: number
  /** Largest snapshot fetched. Default 256 MiB. */
  maxSnapshotBytes?: number
}

export interface UpdateOrigin {
  local: boolean
  /** The peer an update came from (gossip: the signer; sync: the stream's remote peer). */
  peer?: string
  via?: 'gossip' | 'sync'
}

export type UpdateListener = (update: Uint8Array, origin: UpdateOrigin) => void

export interface DocSyncStats {
  /** Messages and frames refused, by reason. */
  dropped: Record<string, number>
  /**
   * `batchedUpdates`: local updates that went out, in `published` messages (or syncs); `notices`:
   * published messages that were notices of a large update; `fetches`: sessions run to fetch what
   * a received notice named.
   */
  gossip: { received: number, published: number, publishFailed: number, batchedUpdates: number, notices: number, fetches: number }
  sync: { sessions: number, failed: number, bytesSent: number, bytesReceived: number, updatesApplied: number, updateBytesReceived: number, relayed: number }
  snapshot: { offered: number, fetched: number, fetchFailed: number, bytesFetched: number }
  antiEntropy: { rounds: number, sessions: number, repaired: number, deferred: number }
  persistFailed: number
}

export interface DocSync {
  readonly protocol: string
  topic: (docId: string) => string
  /** Loads (or creates) a document and joins its replication. */
  open: (docId: string) => Promise<Y.Doc>
  /** Leaves a document's replication; the Y.Doc stays usable but is no longer saved or shared. */
  close: (docId: string) => Promise<void>
  docs: () => string[]
  /** The Y.Doc of an open document (everything its store holds, and what is on its way there). */
  opened: (docId: string) => Y.Doc | undefined
  /**
   * Runs `fn` in one transaction and resolves once its update is on disk and published: the
   * acknowledged write. Editing the Y.Doc directly works too, but acknowledges nothing.
   */
  transact: (docId: string, fn: (doc: Y.Doc) => void) => Promise<void>
  /** Resolves once every update so far is on disk (and local ones published). */
  flushed: (docId: string) => Promise<void>
  onUpdate: (docId: string, listener: UpdateListener) => () => void
  awareness: (docId: string) => awarenessProtocol.Awareness
  /** This node's own presence in a document; it has none (null) until given one. */
  setAwareness: (docId: string, state: Record<string, unknown> | null) => void
  /** Catch up with a peer now, for the given documents (default: all open ones). */
  syncWith: (peer: PeerId, docIds?: string[]) => Promise<void>
  /** Offers (or with undefined, withdraws) a document's snapshot to replicas that start cold. */
  setSnapshot: (docId: string, ref: SnapshotRef | undefined) => void
  snapshotOf: (docId: string) => SnapshotRef | undefined
  /** One anti-entropy round now; resolves when it is done. */
  antiEntropy: () => Promise<void>
  readonly stats: DocSyncStats
  start: () => Promise<void>
  stop: () => Promise<void>
}

/** Marks updates that came from the network, so they are saved but not published again. */
class RemoteOrigin {
  readonly peer: string
  readonly via: 'gossip' | 'sync'
  constructor (peer: string, via: 'gossip' | 'sync') {
    this.peer = peer
    this.via = via
  }
}

interface OpenDoc {
  id: string
  doc: Y.Doc
  awareness: awarenessProtocol.Awareness
  topic: string
  gossip: boolean
  /** Persistence chain, in update order. */
  tail: Promise<void>
  /** Resolves once the last local update so far is published. */
  lastShare: Promise<void>
  /** Local updates on disk, waiting to go out together as one merged update. */
  outbox?: { updates: Uint8Array[], done: Promise<void>, resolve: () => void }
  pumping: boolean
  /** Set by transact to collect the acknowledgements of its own updates. */
  capture?: Array<Promise<void>>
  listeners: Set<UpdateListener>
  /**
   * Awareness clients whose state this node speaks for: its own, and those of clients connected to
   * it (y-websocket). Their changes go on gossip; other nodes' clients are theirs to relay.
   */
  localClients: Set<number>
  /**
   * The last step 2 this node computed, for the state vector it answered: the peers that fetch a
   * notice's update all ask from the same state, and encoding it again for each cost as much as
   * applying it. Valid while the document (and what it holds pending) is unchanged.
   */
  lastDiff?: { base: Uint8Array, diff: Uint8Array, pending: unknown[] }
  off: () => void
}

type Parsed =
  | { kind: 'update', update: Uint8Array }
  | { kind: 'awareness', update: Uint8Array }
  | { kind: 'notice', sv: Map<number, number> }

interface SessionResult { sent: number, received: number, repaired: number, deferred: number }

function newResult (): SessionResult {
  return { sent: 0, received: 0, repaired: 0, deferred: 0 }
}

class Dropped extends Error {
  readonly reason: string
  constructor (reason: string) {
    super(reason)
    this.reason = reason
  }
}

export function docSync (components: DocSyncComponents, init: DocSyncInit): DocSync {
  const { libp2p, store } = components
  const self = components.peerId ?? libp2p.peerId
  const prefix = `/mesh/${init.network}`
  const protocol = `${prefix}/doc-sync/1.0.0`
  const maxMessageBytes = init.maxMessageBytes ?? 1024 * 1024
  const maxFrame = init.maxSyncMessageBytes ?? 16 * 1024 * 1024
  const antiEntropyIntervalMs = init.antiEntropyIntervalMs ?? 30_000
  const roundBudget = init.antiEntropyBytesPerRound ?? 1024 * 1024
  const syncTimeoutMs = init.syncTimeoutMs ?? 30_000
  const joinPeers = init.joinPeers ?? 3
  const snapshotMinBytes = init.snapshotMinBytes ?? 64 * 1024
  const maxSnapshotBytes = init.maxSnapshotBytes ?? 256 * 1024 * 1024
  const maxRelayBytes = Math.min(init.maxRelayBytes ?? 256 * 1024, maxMessageBytes - 16)
  const inlineUpdateBytes = init.inlineUpdateBytes ?? 4 * 1024
  const snapshots = new Map<string, SnapshotRef>()
  /** Snapshot fetches in flight, by CID: two sessions offering the same one fetch it once. */
  const fetching = new Map<string, Promise<Uint8Array>>()
  /** Documents whose snapshot fetch failed: their next session asks for the whole state. */
  const noSnapshot = new Set<string>()
  const pubsub = libp2p.services.pubsub

  const open = new Map<string, OpenDoc>()
  const opening = new Map<string, Promise<OpenDoc>>()
  /** Connected peers that speak the sync protocol. */
  const peers = new Map<string, PeerId>()
  /** Peers whose gossip subscription list this node has had since they connected. */
  const subscriptionsSeen = new Set<string>()
  /** Per peer: documents waiting for a sync session ('all' = every open one), and whether one runs. */
  const syncQueue = new Map<string, { docs: Set<string> | 'all', running: boolean, waiters: Array<() => void> }>()
  const streams = new Set<Stream>()
  const parsedGossip = new WeakMap<Message, Parsed>()
  let topologyId: string | undefined
  let timer: ReturnType<typeof setTimeout> | undefined
  /** Anti-entropy rounds are scheduled (each one schedules the next). */
  let ticking = false
  let started = false
  let roundRunning: Promise<void> | undefined

  const stats: DocSyncStats = {
    dropped: {},
    gossip: { received: 0, published: 0, publishFailed: 0, batchedUpdates: 0, notices: 0, fetches: 0 },
    sync: { sessions: 0, failed: 0, bytesSent: 0, bytesReceived: 0, updatesApplied: 0, updateBytesReceived: 0, relayed: 0 },
    snapshot: { offered: 0, fetched: 0, fetchFailed: 0, bytesFetched: 0 },
    antiEntropy: { rounds: 0, sessions: 0, repaired: 0, deferred: 0 },
    persistFailed: 0
  }
  const drop = (reason: string): void => { stats.dropped[reason] = (stats.dropped[reason] ?? 0) + 1 }

  const topic = (docId: string): string => `${prefix}/doc/${docId}`

  function zonesOf (docId: string): string[] | undefined {
    return init.allowedZones?.(docId)
  }

  function zoneAllows (docId: string, peer: PeerId): boolean {
    const zones = zonesOf(docId)
    if (zones == null) return true
    const zone = init.peerZone?.(peer)
    return zone != null && zones.includes(zone)
  }

  async function mayShare (docId: string, peer: PeerId): Promise<boolean> {
    if (!zoneAllows(docId, peer)) return false
    if (init.authorize == null) return true
    try {
      return await init.authorize(peer, docId)
    } catch {
      return false
    }
  }

  function isWriter (docId: string, peer: PeerId): boolean {
    const writers = init.writers?.(docId)
    return writers == null || writers.includes(peer.toString())
  }

  /** The checks every remote update passes before it touches a document; throws Dropped. */
  async function admitUpdate (docId: string, peer: PeerId, update: Uint8Array): Promise<OpenDoc> {
    const entry = open.get(docId)
    if (entry == null) throw new Dropped('unknown-doc')
    if (!zoneAllows(docId, peer)) throw new Dropped('zone')
    if (!(await mayShare(docId, peer))) throw new Dropped('unauthorized')
    if (!isWriter(docId, peer)) throw new Dropped('not-writer')
    // Decoding the whole update proves it well formed without touching the document: garbage
    // fails here, so a failed apply later is at worst a partial apply of well-formed structs.
    try {
      Y.decodeUpdate(update)
    } catch {
      throw new Dropped('invalid-update')
    }
    return entry
  }

  /**
   * Applies an admitted update; true if the document learned something: new structs or deletions
   * (Yjs emits an update for exactly those), or a part it keeps pending until what it depends on
   * arrives.
   */
  function applyRemote (entry: OpenDoc, update: Uint8Array, origin: RemoteOrigin): boolean {
    const { store: structs } = entry.doc
    const pendingBefore = [structs.pendingStructs, structs.pendingDs]
    let learned = false
    const onUpdate = (_u: Uint8Array, o: unknown): void => { if (o === origin) learned = true }
    entry.doc.on('update', onUpdate)
    try {
      Y.applyUpdate(entry.doc, update, origin)
    } catch {
      drop('apply-failed')
    } finally {
      entry.doc.off('update', onUpdate)
    }
    return learned || structs.pendingStructs !== pendingBefore[0] || structs.pendingDs !== pendingBefore[1]
  }

  /** What the document holds beyond the state vector `base` (Yjs step 2), reusing the last answer. */
  function diffFrom (entry: OpenDoc, base: Uint8Array): Uint8Array {
    const { pendingStructs, pendingDs } = entry.doc.store
    const last = entry.lastDiff
    if (last != null && last.pending[0] === pendingStructs && last.pending[1] === pendingDs && Buffer.from(last.base.buffer, last.base.byteOffset, last.base.byteLength).equals(base)) return last.diff
    const diff = Y.encodeStateAsUpdate(entry.doc, base)
    entry.lastDiff = { base, diff, pending: [pendingStructs, pendingDs] }
    return diff
  }

  // --- gossip ---------------------------------------------------------------------------------

  function parseGossip (data: Uint8Array): Parsed {
    if (data.length > maxMessageBytes) throw new Dropped('oversized')
    try {
      const d = decoding.createDecoder(data)
      const type = decoding.readVarUint(d)
      let parsed: Parsed
      if (type === MESSAGE_SYNC) {
        const sub = decoding.readVarUint(d)
        if (sub !== SYNC_UPDATE) throw new Dropped('unexpected-message')
        parsed = { kind: 'update', update: decoding.readVarUint8Array(d) }
      } else if (type === MESSAGE_AWARENESS) {
        parsed = { kind: 'awareness', update: decoding.readVarUint8Array(d) }
      } else if (type === MESSAGE_NOTICE) {
        const sv = Y.decodeStateVector(decoding.readVarUint8Array(d))
        if (sv.size === 0) throw new Dropped('malformed')
        parsed = { kind: 'notice', sv }
      } else {
        throw new Dropped('unexpected-message')
      }
      if (decoding.hasContent(d)) throw new Dropped('malformed')
      return parsed
    } catch (err) {
      if (err instanceof Dropped) throw err
      throw new Dropped('malformed')
    }
  }

  function docIdOfTopic (t: string): string | undefined {
    const head = `${prefix}/doc/`
    if (!t.startsWith(head)) return undefined
    const id = t.slice(head.length)
    return DOC_ID.test(id) ? id : undefined
  }

  async function validateGossip (msg: Message, source: PeerId): Promise<'accept' | 'reject' | 'ignore'> {
    const docId = docIdOfTopic(msg.topic)
    if (docId == null || !open.has(docId)) return 'ignore'
    try {
      if (msg.type !== 'signed') throw new Dropped('unsigned')
      const parsed = parseGossip(msg.data)
      if (parsed.kind === 'update') {
        const entry = await admitUpdate(docId, msg.from, parsed.update)
        stats.gossip.received++
        // Applied here, where gossipsub has already dropped the copies it has seen. An update that
        // teaches this node nothing goes no further ('ignore'): whichever way it came first, this
        // node passed it on then (gossip forwards news, a sync's news is relayed, see
        // relayRepair). So at a heal each relay dies out where it is old news, rather than every
        // relay of the same repair reaching every node (at 50 nodes: ~1,000 deliveries of 25 KB
        // updates, each decoded and applied, most of the heal's CPU).
        return applyRemote(entry, parsed.update, new RemoteOrigin(msg.from.toString(), 'gossip')) ? 'accept' : 'ignore'
      } else if (parsed.kind === 'notice') {
        const entry = open.get(docId)!
        if (!zoneAllows(docId, msg.from)) throw new Dropped('zone')
        if (!(await mayShare(docId, msg.from))) throw new Dropped('unauthorized')
        if (!isWriter(docId, msg.from)) throw new Dropped('not-writer')
        stats.gossip.received++
        // Old news goes no further, as with updates; news is passed on once it is here.
        if (holds(entry, parsed.sv)) return 'ignore'
        await fetchNoticed(entry, source, parsed.sv)
        return holds(entry, parsed.sv) ? 'accept' : 'ignore'
      } else {
        if (parsed.update.length === 0) throw new Dropped('malformed')
        if (!zoneAllows(docId, msg.from)) throw new Dropped('zone')
        if (!(await mayShare(docId, msg.from))) throw new Dropped('unauthorized')
      }
      parsedGossip.set(msg, parsed)
      return 'accept'
    } catch (err) {
      drop(err instanceof Dropped ? err.reason : 'malformed')
      return 'reject'
    }
  }

  /** Whether the document has every struct a state vector names. */
  function holds (entry: OpenDoc, sv: Map<number, number>): boolean {
    for (const [client, clock] of sv) if (Y.getState(entry.doc.store, client) < clock) return false
    return true
  }

  /**
   * Fetches what a notice names from the peer that passed it on. One fetch per document at a time:
   * a notice that arrives while one runs waits for it (that session brings whatever the other peer
   * holds, usually this notice's update too) and fetches from its own peer only if still missing.
   * Concurrent fetches from several peers each brought the same batches when every node wrote.
   * Not relayed: the notice is.
   */
  const noticeFetches = new Map<string, Promise<void>>()
  async function fetchNoticed (entry: OpenDoc, peer: PeerId, sv: Map<number, number>): Promise<void> {
    while (!holds(entry, sv)) {
      const running = noticeFetches.get(entry.id)
      if (running != null) {
        await running
        continue
      }
      stats.gossip.fetches++
      const mine = runSession(peer, [entry.id], 0, { pull: true }).then(() => {}, () => {}).finally(() => noticeFetches.delete(entry.id))
      noticeFetches.set(entry.id, mine)
      await mine
      return
    }
  }

  const onGossip = (evt: CustomEvent<Message>): void => {
    const msg = evt.detail
    const parsed = parsedGossip.get(msg)
    if (parsed == null || msg.type !== 'signed') return
    const docId = docIdOfTopic(msg.topic)
    const entry = docId != null ? open.get(docId) : undefined
    // Updates were applied when they were validated; what is left here is presence.
    if (entry == null || parsed.kind !== 'awareness') return
    stats.gossip.received++
    try {
      awarenessProtocol.applyAwarenessUpdate(entry.awareness, parsed.update, new RemoteOrigin(msg.from.toString(), 'gossip'))
    } catch {
      drop('invalid-awareness')
    }
  }

  const onSubscriptionChange = (evt: CustomEvent<{ peerId: PeerId, subscriptions: Array<{ topic: string, subscribe: boolean }> }>): void => {
    const { peerId, subscriptions } = evt.detail
    const docs = subscriptions.filter(s => s.subscribe).map(s => docIdOfTopic(s.topic)).filter((id): id is string => id != null && open.has(id))
    // The list a peer sends when a connection opens is not a join: the connect session covers
    // those documents (at a healed partition, syncing again per list doubled the sessions).
    const initial = !subscriptionsSeen.has(peerId.toString())
    subscriptionsSeen.add(peerId.toString())
    // A peer that joins a document we hold catches up from us (its own join may have asked others).
    if (docs.length > 0 && !initial && peers.has(peerId.toString())) requestSync(peerId, docs)
    // …and learns at once who is here, rather than at their next renewal (up to 15 s).
    for (const id of docs) {
      const entry = open.get(id)!
      publishAwareness(entry, [...entry.localClients].filter(c => entry.awareness.getStates().has(c)))
    }
  }

  async function publish (entry: OpenDoc, message: Uint8Array): Promise<void> {
    if (pubsub == null || !entry.gossip || !started) return
    try {
      await pubsub.publish(entry.topic, message)
      stats.gossip.published++
    } catch {
      stats.gossip.publishFailed++
    }
  }

  function publishAwareness (entry: OpenDoc, clients: number[]): void {
    if (clients.length === 0) return
    const message = encodeMessage(e => {
      encoding.writeVarUint(e, MESSAGE_AWARENESS)
      encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(entry.awareness, clients))
    })
    if (message.length <= maxMessageBytes) void publish(entry, message)
    else drop('awareness-too-large')
  }

  /**
   * Queues a local update (on disk) for publishing; resolves once it is out. Updates queued while
   * a batch is being published, or in the same tick, go out together as one merged update: one
   * signature, one message, one validation per receiver instead of one per update.
   */
  function enqueue (entry: OpenDoc, update: Uint8Array): Promise<void> {
    if (entry.outbox == null) {
      let resolve!: () => void
      const done = new Promise<void>(r => { resolve = r })
      entry.outbox = { updates: [], done, resolve }
    }
    entry.outbox.updates.push(update)
    const done = entry.outbox.done
    if (!entry.pumping) void pump(entry)
    return done
  }

  async function pump (entry: OpenDoc): Promise<void> {
    entry.pumping = true
    try {
      while (entry.outbox != null) {
        await new Promise(resolve => setImmediate(resolve))
        const batch = entry.outbox
        entry.outbox = undefined
        try {
          await share(entry, batch.updates.length === 1 ? batch.updates[0] : Y.mergeUpdates(batch.updates))
        } catch {
          stats.gossip.publishFailed++
        }
        stats.gossip.batchedUpdates += batch.updates.length
        batch.resolve()
      }
    } finally {
      entry.pumping = false
    }
  }

  /**
   * The notice that stands for a large update on gossip, or undefined if it must travel whole: a
   * notice names structs, not deletions, and a fetch from a reader brings nothing, so updates that
   * delete, and documents with named writers, always do.
   */
  function noticeFor (entry: OpenDoc, update: Uint8Array): Uint8Array | undefined {
    if (!entry.gossip || pubsub == null || update.length <= inlineUpdateBytes || init.writers?.(entry.id) != null) return undefined
    if (Y.decodeUpdate(update).ds.clients.size > 0) return undefined
    stats.gossip.notices++
    return encodeMessage(e => {
      encoding.writeVarUint(e, MESSAGE_NOTICE)
      // Not encodeStateVectorFromUpdate: it names only clients whose structs start at clock 0.
      encoding.writeVarUint8Array(e, encodeStateVector(Y.parseUpdateMeta(update).to))
    })
  }

  /** Sends a local update to the document's peers; called once the update is on disk. */
  async function share (entry: OpenDoc, update: Uint8Array): Promise<void> {
    const notice = noticeFor(entry, update)
    if (notice != null) {
      await publish(entry, notice)
      return
    }
    const message = encodeMessage(e => {
      encoding.writeVarUint(e, MESSAGE_SYNC)
      encoding.writeVarUint(e, SYNC_UPDATE)
      encoding.writeVarUint8Array(e, update)
    })
    if (entry.gossip && pubsub != null && message.length <= maxMessageBytes) {
      await publish(entry, message)
      return
    }
    // Too big for gossip, or not allowed on it: peers fetch it with a sync instead.
    for (const peer of candidatePeers(entry).slice(0, 8)) requestSync(peer, [entry.id])
  }

  // --- documents ------------------------------------------------------------------------------

  async function openDoc (docId: string): Promise<OpenDoc> {
    if (!DOC_ID.test(docId)) throw new Error(`invalid document ID ${JSON.stringify(docId.slice(0, 140))}: use 1-128 characters of a-z 0-9 . _ - starting with a letter or digit`)
    const zones = zonesOf(docId)
    if (zones != null && (init.nodeZone == null || !zones.includes(init.nodeZone))) {
      throw new Error(`document ${docId} may only live in zones ${zones.join(', ')}; this node is in ${init.nodeZone ?? 'no zone'}`)
    }
    const doc = (await store.load(docId)) ?? new Y.Doc()
    const awareness = new awarenessProtocol.Awareness(doc)
    // A replica is not an editor: no presence of its own until `setAwareness` gives it one (as
    // y-websocket's server does). Awareness starts every doc with `{}` and renews it on gossip
    // every 15 s, which at N nodes is N² signed deliveries per document per 15 s, all arriving in
    // one burst when the documents were opened together: at 50 nodes in one process, seconds of
    // CPU every 15 s and propagation outliers of 6-27 s. Cleared before anything listens, so
    // there is no removal to announce either.
    awareness.setLocalState(null)
    const entry: OpenDoc = {
      id: docId,
      doc,
      awareness,
      topic: topic(docId),
      gossip: zones == null,
      tail: Promise.resolve(),
      lastShare: Promise.resolve(),
      pumping: false,
      listeners: new Set(),
      localClients: new Set(),
      off: () => {}
    }
    const onDocUpdate = (update: Uint8Array, origin: unknown): void => {
      entry.lastDiff = undefined
      const remote = origin instanceof RemoteOrigin ? origin : undefined
      // Appended at once, in update order; the store batches concurrent appends into one fsync.
      const persisted = store.append(docId, update)
      const durable = entry.tail.then(async () => { await persisted })
      entry.tail = durable.catch((err) => {
        stats.persistFailed++
        process.emitWarning(`document ${docId}: an update was not saved: ${err.message}`)
      })
      // Publishing does not wait for the disk: the write is acknowledged once it is both durable
      // and published, but peers get it an fsync sooner. (Should this node crash before the
      // fsync, the unacknowledged update lives on at its peers and comes back with a sync.)
      // Updates made while one batch is on its way gather into the next (see enqueue).
      const acked = remote == null ? Promise.all([durable, enqueue(entry, update)]).then(() => {}) : durable
      if (remote == null) entry.lastShare = acked.catch(() => {})
      entry.capture?.push(acked)
      const info: UpdateOrigin = remote == null ? { local: true } : { local: false, peer: remote.peer, via: remote.via }
      for (const l of entry.listeners) {
        try { l(update, info) } catch {}
      }
    }
    const onAwareness = ({ added, updated, removed }: { added: number[], updated: number[], removed: number[] }, origin: unknown): void => {
      const changed = [...added, ...updated, ...removed]
      if (origin instanceof RemoteOrigin) {
        // Another node speaks for these now (a client that moved, or a relay of our own echo).
        for (const id of changed) if (id !== doc.clientID) entry.localClients.delete(id)
        return
      }
      // Every node times out the others' clients by itself: a timeout is not news to relay.
      if (origin === 'timeout') return
      for (const id of [...added, ...updated]) entry.localClients.add(id)
      for (const id of removed) entry.localClients.delete(id)
      publishAwareness(entry, changed)
    }
    doc.on('update', onDocUpdate)
    awareness.on('update', onAwareness)
    entry.off = () => {
      doc.off('update', onDocUpdate)
      awareness.off('update', onAwareness)
    }
    open.set(docId, entry)
    if (entry.gossip && pubsub != null) {
      pubsub.topicValidators.set(entry.topic, async (from, msg) => validateGossip(msg, from) as any)
      // Gossipsub refuses subscriptions before it starts; start() subscribes the rest.
      if (started) pubsub.subscribe(entry.topic)
    }
    if (started) {
      const candidates = candidatePeers(entry)
      for (const peer of shuffle(candidates).slice(0, joinPeers)) requestSync(peer, [docId])
    }
    return entry
  }

  function getOpen (docId: string): OpenDoc {
    const entry = open.get(docId)
    if (entry == null) throw new Error(`document ${docId} is not open`)
    return entry
  }

  /** Peers that probably hold a document: its topic's subscribers first, then any sync peer. */
  function candidatePeers (entry: OpenDoc): PeerId[] {
    const out = new Map<string, PeerId>()
    if (entry.gossip && pubsub != null) {
      for (const p of pubsub.getSubscribers(entry.topic)) if (peers.has(p.toString())) out.set(p.toString(), p)
    }
    if (out.size === 0 || !entry.gossip) {
      for (const [id, p] of peers) if (zoneAllows(entry.id, p)) out.set(id, p)
    }
    return [...out.values()].filter(p => zoneAllows(entry.id, p))
  }

  async function closeDoc (docId: string): Promise<void> {
    const entry = open.get(docId)
    if (entry == null) return
    open.delete(docId)
    // Acknowledged writes waiting in the outbox go out before this node leaves the topic.
    await entry.tail
    await entry.lastShare
    if (entry.gossip && pubsub != null) {
      // Tell the others this node's cursor is gone before leaving the topic.
      if (entry.awareness.getLocalState() != null) {
        const message = encodeMessage(e => {
          encoding.writeVarUint(e, MESSAGE_AWARENESS)
          encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(entry.awareness, [entry.doc.clientID], new Map()))
        })
        await publish(entry, message)
      }
      pubsub.unsubscribe(entry.topic)
      pubsub.topicValidators.delete(entry.topic)
    }
    entry.off()
    entry.awareness.destroy()
    await entry.tail
  }

  // --- sync sessions --------------------------------------------------------------------------

  function requestSync (peer: PeerId, docs: string[] | 'all'): Promise<void> {
    const key = peer.toString()
    let q = syncQueue.get(key)
    if (q == null) {
      q = { docs: new Set(), running: false, waiters: [] }
      syncQueue.set(key, q)
    }
    if (docs === 'all' || q.docs === 'all') q.docs = 'all'
    else for (const d of docs) q.docs.add(d)
    const done = new Promise<void>(resolve => q.waiters.push(resolve))
    if (!q.running) void drain(peer, q)
    return done
  }

  async function drain (peer: PeerId, q: { docs: Set<string> | 'all', running: boolean, waiters: Array<() => void> }): Promise<void> {
    q.running = true
    while (started && (q.docs === 'all' || q.docs.size > 0)) {
      const wanted = q.docs === 'all' ? [...open.keys()] : [...q.docs].filter(d => open.has(d))
      const waiters = q.waiters.splice(0)
      q.docs = new Set()
      for (let i = 0; i < wanted.length; i += MAX_SESSION_DOCS) {
        await runSession(peer, wanted.slice(i, i + MAX_SESSION_DOCS), 0).catch(() => {})
      }
      for (const w of waiters) w()
    }
    q.running = false
    for (const w of q.waiters.splice(0)) w()
    syncQueue.delete(peer.toString())
  }

  /**
   * Runs one session as initiator. Returns the update bytes moved and documents repaired. A `pull`
   * session only fetches: it sends the peer nothing the peer lacks (its own news goes out as its
   * notices) and relays nothing it learns (the notice that asked for it is passed on instead).
   * Answering the peer's step 1 there made every notice fetch a two-way repair: with every node
   * writing, each batch reached a node by several sessions and came back as relays, 4x the sync
   * bytes of one writer's.
   */
  async function runSession (peer: PeerId, docIds: string[], budget: number, options: { pull?: boolean } = {}): Promise<SessionResult> {
    const shared: OpenDoc[] = []
    for (const id of docIds) {
      const entry = open.get(id)
      if (entry != null && await mayShare(id, peer)) shared.push(entry)
    }
    const result = newResult()
    if (shared.length === 0) return result
    stats.sync.sessions++
    const stream = await libp2p.dialProtocol(peer, protocol, { signal: AbortSignal.timeout(syncTimeoutMs) }).catch(() => undefined)
    if (stream == null) {
      stats.sync.failed++
      return result
    }
    const session = new Session(stream, peer, budget, result)
    session.pull = options.pull ?? false
    const retried = shared.filter(e => noSnapshot.has(e.id)).map(e => e.id)
    session.snapshots = components.snapshots != null && retried.length === 0
    for (const id of retried) noSnapshot.delete(id)
    try {
      session.send(encodeMessage(e => {
        encoding.writeVarUint(e, STREAM_VERSION)
        encoding.writeVarUint(e, budget)
        encoding.writeVarUint(e, (session.snapshots ? FLAG_SNAPSHOTS : 0) | (session.pull ? FLAG_PULL : 0))
      }))
      for (const entry of shared) {
        session.send(encodeMessage(e => {
          encoding.writeVarString(e, entry.id)
          encoding.writeVarUint(e, MESSAGE_SYNC)
          encoding.writeVarUint(e, SYNC_STEP1)
          encoding.writeVarUint8Array(e, Y.encodeStateVector(entry.doc))
        }))
      }
      session.send(new Uint8Array(0))
      for await (const frame of session.frames()) {
        await session.handle(frame, false)
        await session.drained()
      }
      await stream.close({ signal: AbortSignal.timeout(syncTimeoutMs) })
    } catch (err) {
      stats.sync.failed++
      if (err instanceof Dropped) drop(err.reason)
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    } finally {
      session.done()
    }
    return result
  }

  async function handleInbound (stream: Stream, connection: Connection): Promise<void> {
    const peer = connection.remotePeer
    const result = newResult()
    const session = new Session(stream, peer, 0, result)
    try {
      let headerSeen = false
      let ended = false
      // An honest initiator sends a step 1 per document (at most MAX_SESSION_DOCS) and a step 2 per
      // document we answered.
      let allowance = MAX_SESSION_DOCS + open.size + 2
      for await (const frame of session.frames()) {
        if (--allowance < 0) throw new Dropped('too-many-frames')
        if (!headerSeen) {
          headerSeen = true
          const d = decoding.createDecoder(frame)
          const version = readOrDrop(() => decoding.readVarUint(d))
          session.budget = readOrDrop(() => decoding.readVarUint(d))
          if (version !== STREAM_VERSION) throw new Dropped('unsupported-version')
          const flags = decoding.hasContent(d) ? readOrDrop(() => decoding.readVarUint(d)) : 0
          session.snapshots = (flags & FLAG_SNAPSHOTS) !== 0
          session.askBack = (flags & FLAG_PULL) === 0
          continue
        }
        if (frame.length === 0) {
          if (ended) throw new Dropped('malformed')
          ended = true
          await session.drained()
          await stream.close({ signal: AbortSignal.timeout(syncTimeoutMs) })
          continue
        }
        await session.handle(frame, !ended)
        await session.drained()
      }
      if (!ended) throw new Dropped('truncated')
    } catch (err) {
      if (err instanceof Dropped) drop(err.reason)
      stream.abort(err instanceof Error ? err : new Error(String(err)))
    } finally {
      session.done()
    }
  }

  /** One end of a sync stream: bounded frame reading, the y-protocols steps, the budget. */
  class Session {
    readonly stream: Stream
    readonly peer: PeerId
    budget: number
    readonly result: SessionResult
    /** Whether snapshots may be offered and fetched in this session (the initiator's flag). */
    snapshots = false
    /** Initiator of a pull session: it answers no step 1 and relays nothing it learns. */
    pull = false
    /** Responder: whether to send its own step 1 (not to a pull). */
    askBack = true
    private readonly timeout: ReturnType<typeof setTimeout>

    constructor (stream: Stream, peer: PeerId, budget: number, result: SessionResult) {
      this.stream = stream
      this.peer = peer
      this.budget = budget
      this.result = result
      streams.add(stream)
      this.timeout = setTimeout(() => stream.abort(new Error('document sync timed out')), syncTimeoutMs)
    }

    done (): void {
      clearTimeout(this.timeout)
      streams.delete(this.stream)
    }

    send (body: Uint8Array): void {
      const head = encoding.createEncoder()
      encoding.writeVarUint(head, body.length)
      this.stream.send(concat(encoding.toUint8Array(head), body))
      stats.sync.bytesSent += body.length
    }

    async drained (): Promise<void> {
      if (this.stream.writableNeedsDrain) await this.stream.onDrain({ signal: AbortSignal.timeout(syncTimeoutMs) })
    }

    async * frames (): AsyncGenerator<Uint8Array> {
      const chunks: Uint8Array[] = []
      let buffered = 0
      let want = -1
      let headLen = 0
      for await (const chunk of this.stream) {
        const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray()
        chunks.push(bytes)
        buffered += bytes.length
        stats.sync.bytesReceived += bytes.length
        for (;;) {
          if (want < 0) {
            const head = readLength(chunks)
            if (head == null) break
            if (head.length > maxFrame) throw new Dropped('oversized')
            want = head.length
            headLen = head.headLen
          }
          if (buffered < headLen + want) break
          const all = chunks.length === 1 ? chunks[0] : concat(...chunks)
          const frame = all.subarray(headLen, headLen + want)
          const rest = all.subarray(headLen + want)
          chunks.length = 0
          buffered = rest.length
          if (rest.length > 0) chunks.push(rest)
          want = -1
          yield frame
        }
      }
      if (buffered > 0) throw new Dropped('truncated')
    }

    /** One document frame; `answerStep1` says whether this end may still answer with step 1. */
    async handle (frame: Uint8Array, answerStep1: boolean): Promise<void> {
      const d = decoding.createDecoder(frame)
      const docId = readOrDrop(() => decoding.readVarString(d))
      const type = readOrDrop(() => decoding.readVarUint(d))
      const step = readOrDrop(() => decoding.readVarUint(d))
      const payload = readOrDrop(() => decoding.readVarUint8Array(d))
      if (decoding.hasContent(d) || type !== MESSAGE_SYNC || !DOC_ID.test(docId)) throw new Dropped('malformed')
      const entry = open.get(docId)
      if (step === SYNC_STEP1) {
        // Unknown or not-shared documents get no answer: the peer learns nothing about them.
        if (this.pull || entry == null || !(await mayShare(docId, this.peer))) return
        let sv: Uint8Array
        try {
          Y.decodeStateVector(payload)
          sv = payload
        } catch {
          throw new Dropped('malformed')
        }
        const snap = snapshots.get(docId)
        let base = sv
        let ref: Uint8Array | undefined
        if (this.snapshots && snap != null && snap.bytes >= snapshotMinBytes && Y.decodeStateVector(sv).size === 0) {
          // The peer fetches the snapshot by CID; the stream carries only what came after it.
          base = snap.stateVector
          ref = encodeMessage(e => {
            encoding.writeVarString(e, snap.cid)
            encoding.writeVarUint(e, snap.bytes)
            encoding.writeVarUint8Array(e, snap.stateVector)
          })
        }
        const diff = diffFrom(entry, base)
        if (!isWriter(docId, self)) {
          // The peer would refuse anything from a non-writer, even what it already has.
        } else if (this.budget > 0 && this.result.sent + diff.length > this.budget) {
          this.result.deferred++
        } else if (diff.length + docId.length + 16 > maxFrame) {
          drop('too-large-to-send')
        } else {
          if (ref != null) {
            stats.snapshot.offered++
            this.send(docFrame(docId, SYNC_SNAPSHOT, ref))
          }
          this.result.sent += diff.length
          this.send(docFrame(docId, SYNC_STEP2, diff))
        }
        if (answerStep1 && this.askBack) this.send(docFrame(docId, SYNC_STEP1, Y.encodeStateVector(entry.doc)))
      } else if (step === SYNC_SNAPSHOT) {
        if (!this.snapshots || components.snapshots == null) throw new Dropped('unexpected-snapshot')
        const r = decoding.createDecoder(payload)
        const cid = readOrDrop(() => decoding.readVarString(r))
        const bytes = readOrDrop(() => decoding.readVarUint(r))
        const stateVector = readOrDrop(() => decoding.readVarUint8Array(r))
        if (decoding.hasContent(r) || cid.length === 0 || cid.length > 256) throw new Dropped('malformed')
        const snapSv = readOrDrop(() => Y.decodeStateVector(stateVector))
        if (entry == null) return
        await loadSnapshot(entry, this.peer, cid, bytes, snapSv)
      } else if (step === SYNC_STEP2 || step === SYNC_UPDATE) {
        this.result.received += payload.length
        stats.sync.updateBytesReceived += payload.length
        try {
          const admitted = await admitUpdate(docId, this.peer, payload)
          stats.sync.updatesApplied++
          // A replica catching up from nothing has news for no one: it does not relay.
          const fresh = admitted.doc.store.clients.size === 0
          if (applyRemote(admitted, payload, new RemoteOrigin(this.peer.toString(), 'sync'))) {
            this.result.repaired++
            if (!fresh && !this.pull) relayRepair(admitted, payload)
          }
        } catch (err) {
          // A refused update is counted, and the rest of the session goes on.
          if (!(err instanceof Dropped)) throw err
          drop(err.reason)
        }
      } else {
        throw new Dropped('malformed')
      }
    }
  }

  /**
   * Fetches a snapshot a peer offered and applies it, with the checks of any update from that
   * peer. A failure is counted and answered with a full sync later; the session goes on.
   */
  async function loadSnapshot (entry: OpenDoc, peer: PeerId, cid: string, bytes: number, snapSv: Map<number, number>): Promise<void> {
    const have = Y.decodeStateVector(Y.encodeStateVector(entry.doc))
    if ([...snapSv].every(([client, clock]) => (have.get(client) ?? 0) >= clock)) return
    try {
      if (bytes > maxSnapshotBytes) throw new Dropped('oversized')
      let p = fetching.get(cid)
      if (p == null) {
        p = components.snapshots!.fetch(cid, { signal: AbortSignal.timeout(syncTimeoutMs), maxBytes: maxSnapshotBytes })
          .finally(() => fetching.delete(cid))
        fetching.set(cid, p)
      }
      const state = await p
      const admitted = await admitUpdate(entry.id, peer, state)
      stats.snapshot.fetched++
      stats.snapshot.bytesFetched += state.length
      applyRemote(admitted, state, new RemoteOrigin(peer.toString(), 'sync'))
    } catch (err) {
      stats.snapshot.fetchFailed++
      if (err instanceof Dropped) drop(err.reason)
      noSnapshot.add(entry.id)
      void requestSync(peer, [entry.id])
    }
  }

  /**
   * What a sync taught this node, its gossip neighbours most likely lack too (a healed partition:
   * only nodes with a link across sync, the rest of each side would wait for anti-entropy). So a
   * small enough repair goes on gossip once; nodes that have it already neither apply nor pass
   * it on. Only a writer relays: others would have the relay refused.
   *
   * Every node that learns something passes it on, by gossip or by this relay; that is what lets
   * a node drop what it knew already (validateGossip). Holding relays back when another node's
   * relay of the same ranges arrived first (Trickle-style suppression) was tried and broke that:
   * the node that held back and the one that dropped the other's relay as old news can be the
   * only ways to a third node, which then waited for anti-entropy (a 12 s heal at 50 nodes).
   */
  function relayRepair (entry: OpenDoc, update: Uint8Array): void {
    if (!entry.gossip || pubsub == null || !isWriter(entry.id, self) || update.length > maxRelayBytes) return
    stats.sync.relayed++
    // Whole, not as a notice: tried, and at 50 nodes heals took 1.35-2.3 s against 1.6-1.8 s,
    // with more sessions (each receiver's fetch) than the relays they replaced.
    void publish(entry, encodeMessage(e => {
      encoding.writeVarUint(e, MESSAGE_SYNC)
      encoding.writeVarUint(e, SYNC_UPDATE)
      encoding.writeVarUint8Array(e, update)
    }))
  }

  // --- anti-entropy ---------------------------------------------------------------------------

  async function antiEntropyRound (): Promise<void> {
    if (roundRunning != null) return roundRunning
    roundRunning = (async () => {
      stats.antiEntropy.rounds++
      const byPeer = new Map<string, { peer: PeerId, docs: string[] }>()
      for (const entry of shuffle([...open.values()])) {
        const candidates = candidatePeers(entry)
        if (candidates.length === 0) continue
        const peer = candidates[Math.floor(Math.random() * candidates.length)]
        const slot = byPeer.get(peer.toString()) ?? { peer, docs: [] }
        slot.docs.push(entry.id)
        byPeer.set(peer.toString(), slot)
      }
      let left = roundBudget
      for (const { peer, docs } of byPeer.values()) {
        if (!started || left <= 0) break
        stats.antiEntropy.sessions++
        const r = await runSession(peer, docs, left).catch(newResult)
        // Both ends cap what they send at the budget given, so each direction stays within the cap.
        left -= Math.max(r.sent, r.received)
        stats.antiEntropy.repaired += r.repaired
        stats.antiEntropy.deferred += r.deferred
      }
    })().finally(() => { roundRunning = undefined })
    return roundRunning
  }

  async function openPublic (docId: string): Promise<Y.Doc> {
    const existing = open.get(docId)
    if (existing != null) return existing.doc
    let p = opening.get(docId)
    if (p == null) {
      p = openDoc(docId).finally(() => opening.delete(docId))
      opening.set(docId, p)
    }
    return (await p).doc
  }

  return {
    protocol,
    topic,
    stats,
    open: openPublic,
    close: closeDoc,
    docs: () => [...open.keys()].sort(),
    opened: (docId) => open.get(docId)?.doc,
    async transact (docId, fn) {
      const entry = getOpen(docId)
      if (!isWriter(docId, self)) throw new Error(`this node may not write document ${docId}`)
      const captured: Array<Promise<void>> = []
      const outer = entry.capture
      entry.capture = captured
      try {
        entry.doc.transact(() => fn(entry.doc))
      } finally {
        entry.capture = outer
        outer?.push(...captured)
      }
      await Promise.all(captured)
    },
    async flushed (docId) {
      const entry = getOpen(docId)
      await entry.tail
      await entry.lastShare
    },
    onUpdate (docId, listener) {
      const entry = getOpen(docId)
      entry.listeners.add(listener)
      return () => { entry.listeners.delete(listener) }
    },
    awareness: (docId) => getOpen(docId).awareness,
    setAwareness (docId, state) {
      getOpen(docId).awareness.setLocalState(state)
    },
    async syncWith (peer, docIds) {
      await requestSync(peer, docIds ?? 'all')
    },
    setSnapshot (docId, ref) {
      if (ref == null) snapshots.delete(docId)
      else snapshots.set(docId, ref)
    },
    snapshotOf: (docId) => snapshots.get(docId),
    antiEntropy: antiEntropyRound,
    async start () {
      if (started) return
      started = true
      await libp2p.handle(protocol, (stream, connection) => handleInbound(stream, connection), {
        maxInboundStreams: 8,
        maxOutboundStreams: 8
      })
      topologyId = await libp2p.register(protocol, {
        onConnect: (peer) => {
          peers.set(peer.toString(), peer)
          // The session covers both directions, so one side starting it is enough.
          if (self.toString() < peer.toString()) requestSync(peer, 'all')
        },
        onDisconnect: (peer) => {
          peers.delete(peer.toString())
          subscriptionsSeen.delete(peer.toString())
        }
      })
      pubsub?.addEventListener('message', onGossip)
      pubsub?.addEventListener('subscription-change', onSubscriptionChange)
      if (init.openStored === true && store.list != null) {
        for (const { docId } of await store.list()) {
          try { await openPublic(docId) } catch (err: any) { process.emitWarning(`document ${docId} not opened: ${err.message}`) }
        }
      }
      for (const entry of open.values()) {
        if (entry.gossip && pubsub != null && !pubsub.getTopics().includes(entry.topic)) pubsub.subscribe(entry.topic)
      }
      if (antiEntropyIntervalMs > 0) {
        // Each wait drawn between half and one and a half intervals: nodes started together (a
        // cluster, a benchmark, a simulation) otherwise run their rounds in the same instant, every
        // session encoding a whole delete set; at 50 replicas in two threads, writes made then
        // waited 130-240 ms.
        const next = (): void => {
          if (!ticking) return
          timer = setTimeout(() => { void antiEntropyRound().finally(next) }, antiEntropyIntervalMs * (0.5 + Math.random()))
          timer.unref()
        }
        ticking = true
        next()
      }
    },
    async stop () {
      if (!started) return
      ticking = false
      if (timer != null) clearTimeout(timer)
      for (const id of [...open.keys()]) await closeDoc(id)
      started = false
      pubsub?.removeEventListener('message', onGossip)
      pubsub?.removeEventListener('subscription-change', onSubscriptionChange)
      if (topologyId != null) libp2p.unregister(topologyId)
      for (const s of streams) s.abort(new Error('document sync stopped'))
      await libp2p.unhandle(protocol).catch(() => {})
      await roundRunning
      peers.clear()
      subscriptionsSeen.clear()
    }
  }
}

function readOrDrop<T> (read: () => T): T {
  try {
    return read()
  } catch {
    throw new Dropped('malformed')
  }
}

function encodeStateVector (sv: Map<number, number>): Uint8Array {
  return encodeMessage(e => {
    encoding.writeVarUint(e, sv.size)
    for (const [client, clock] of sv) {
      encoding.writeVarUint(e, client)
      encoding.writeVarUint(e, clock)
    }
  })
}

function docFrame (docId: string, step: number, payload: Uint8Array): Uint8Array {
  return encodeMessage(e => {
    encoding.writeVarString(e, docId)
    encoding.writeVarUint(e, MESSAGE_SYNC)
    encoding.writeVarUint(e, step)
    encoding.writeVarUint8Array(e, payload)
  })
}

function encodeMessage (write: (e: encoding.Encoder) => void): Uint8Array {
  const e = encoding.createEncoder()
  write(e)
  return encoding.toUint8Array(e)
}

/** Reads a varUint frame length from the buffered chunks; undefined until it is complete. */
function readLength (chunks: Uint8Array[]): { length: number, headLen: number } | undefined {
  let length = 0
  let shift = 0
  let i = 0
  for (const chunk of chunks) {
    for (const byte of chunk) {
      length += (byte & 0x7f) * 2 ** shift
      shift += 7
      i++
      if ((byte & 0x80) === 0) return { length, headLen: i }
      // Five bytes already say 32 GiB: anything longer is not a length we would accept.
      if (i >= 5) throw new Dropped('oversized')
    }
  }
  return undefined
}

function concat (...parts: Uint8Array[]): Uint8Array {
  let size = 0
  for (const p of parts) size += p.length
  const out = new Uint8Array(size)
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

function shuffle<T> (items: T[]): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    const t = items[i]
    items[i] = items[j]
    items[j] = t
  }
  return items
}

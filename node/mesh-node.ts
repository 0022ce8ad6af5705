// A running Mesh node: libp2p (DHT, gossip) and Helia on one host, a repo on disk, and the little
// policy a private mesh needs: stay inside your network, keep enough peers to stay routable.
import { once } from 'node:events'
import { withBitswap } from '@helia/bitswap'
import * as dagCbor from '@ipld/dag-cbor'
import * as dagJson from '@ipld/dag-json'
import { MessageType } from '@libp2p/kad-dht'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { createHash, randomUUID } from 'node:crypto'
import { FsBlockstore } from 'blockstore-fs'
import { MemoryBlockstore } from 'blockstore-core'
import { MemoryDatastore } from 'datastore-core'
import { FsDatastore } from 'datastore-fs'
import createMortice from 'mortice'
import * as json from 'multiformats/codecs/json'
import { didFromPeerId } from '../identity/did-key.ts'
import { signingKey } from '../identity/signing-key.ts'
import { membership } from '../protocols/membership.ts'
import { revocationSync } from '../protocols/revocations.ts'
import { sha256OnceHasher, withStreamingBitswap } from './bitswap-stream.ts'
import { meshBlockRouting } from './block-routing.ts'
import { createHelia, withLibp2p } from './helia-light.ts'
import { dhtProtocol, gossipProtocols, libp2pOptions, protocolPrefix } from './libp2p.ts'
import { UserError } from './errors.ts'
import { componentLogger } from './quiet-logger.ts'
import { reconnector } from './reconnect.ts'
import type { Community } from './community.ts'
import type { Feature, FeatureList } from './feature.ts'
import type { Libp2pInit, MeshServices } from './libp2p.ts'
import type { Membership } from '../protocols/membership.ts'
import type { Reconnector } from './reconnect.ts'
import type { RevocationSync } from '../protocols/revocations.ts'
import type { BitswapOptions } from '@helia/bitswap'
import type { HeliaWithLibp2p } from '@helia/libp2p'
import type { Connection, PeerId, PrivateKey } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { Libp2p } from 'libp2p'
import type { Mortice } from 'mortice'

export interface MeshNodeInit {
  privateKey: PrivateKey
  network?: string
  listen?: string[]
  bootstrap?: string[]
  region?: string
  /** Where blocks and the datastore live; omitted, they stay in memory (simulations). */
  storePath?: { blocks: string, datastore: string }
  gossip?: boolean
  /** Keep at least this many connections, dialing peers from the routing table. Default 8. */
  minPeers?: number
  /** The community network this node belongs to; its ID replaces `network`. */
  community?: Community
  /** Capabilities that run on the node (see feature.ts), with the repo they may keep state in. */
  features?: FeatureList
  repoPath?: string
  config?: Record<string, unknown>
  /** Replaces TCP, for simulations on `@libp2p/memory` (see libp2pOptions). */
  transports?: Libp2pInit['transports']
  /** libp2p's metrics (node/telemetry.ts). */
  metrics?: Libp2pInit['metrics']
}

export interface PeerEntry {
  peerId: string
  did: string
  address: string
  direction: 'inbound' | 'outbound'
  rttMs?: number
  /** Passed the membership handshake of this node's community network. */
  authenticated: boolean
  role?: string
}

export interface NodeIdentity {
  peerId: string
  did: string
  network: string
  addresses: string[]
  protocols: string[]
  region?: string
  /** The community network, when the node is in one. */
  community?: { id: string, name: string, open: boolean, roots: string[], role: string }
}

export interface FoundPeer {
  peerId: string
  did: string
  addresses: string[]
  /** Peers that answered the lookup before it found the target. */
  queried: number
  ms: number
}

export class MeshNode {
  readonly network: string
  readonly helia: HeliaWithLibp2p<MeshServices>
  readonly region?: string
  /** Counters for the metrics endpoint; reasons are label values. */
  readonly counters = { peersRejected: new Map<string, number>(), revocationsDropped: new Map<string, number>() }
  readonly community?: Community
  /** The node's identity key, for features that sign (descriptors, manifests). */
  readonly privateKey: PrivateKey
  private membership?: Membership
  private revocationSync?: RevocationSync
  /** Running features by name; feature modules export typed getters over this. */
  readonly features = new Map<string, Feature>()
  private readonly started: Feature[] = []
  readonly bootstrap: Multiaddr[]
  private readonly minPeers: number
  private readonly blockstore: FsBlockstore | MemoryBlockstore
  private readonly gcLock: Mortice
  private readonly datastore: FsDatastore | MemoryDatastore
  /** Peers refused (wrong network, failed membership), by peer ID, until a time (ms). */
  private readonly denied = new Map<string, { until: number, reason: string }>()
  private keeper?: ReturnType<typeof setInterval>
  /** Dials peers whose connection broke (not ones that hung up) again, with backoff. */
  reconnects?: Reconnector
  private stopping = false
  private keeping = false
  private selfQueried: Promise<void> = Promise.resolve()
  /** Aborted on stop, so no dial outlives the node. */
  private readonly lifetime = new AbortController()
  private gateUp = false

  constructor (init: MeshNodeInit) {
    this.community = init.community
    this.privateKey = signingKey(init.privateKey)
    this.network = init.community?.id ?? init.network ?? 'default'
    this.region = init.region
    this.minPeers = init.minPeers ?? 8
    this.bootstrap = (init.bootstrap ?? []).map(parseMultiaddr)
    this.blockstore = init.storePath != null ? new FsBlockstore(init.storePath.blocks) : new MemoryBlockstore()
    this.datastore = init.storePath != null ? new FsDatastore(init.storePath.datastore) : new MemoryDatastore()
    const options = libp2pOptions({
      privateKey: this.privateKey,
      network: this.network,
      listen: init.listen ?? ['/ip4/127.0.0.1/tcp/0'],
      gossip: init.gossip,
      transports: init.transports,
      metrics: init.metrics,
      admitPeer: init.community == null ? undefined : (peer) => this.admits(peer),
      dht: init.config?.dht as Libp2pInit['dht'],
      connectionGater: {
        denyDialPeer: (peer) => this.isDenied(peer),
        denyInboundEncryptedConnection: (peer) => this.isDenied(peer),
        denyOutboundEncryptedConnection: (peer) => this.isDenied(peer)
      }
    })
    // Helia without the defaults Mesh never runs (helia-light.ts).
    const helia = createHelia({
      logger: componentLogger(),
      blockstore: this.blockstore,
      datastore: this.datastore,
      codecs: [dagCbor, dagJson, json],
      // Verifies a block bitswap has just hashed without hashing it again (bitswap-stream.ts).
      hashers: [sha256OnceHasher],
      // Bitswap asks connected peers first and the DHT only when they do not answer (block-routing.ts).
      routers: [meshBlockRouting(() => this.helia.libp2p)]
    })
    // Helia guards its blockstore with a read-write lock (reads and puts share it, a delete takes it
    // alone), a mortice mutex that mortice keeps by name, and Helia never names it: every Helia
    // node in a process shares one. Nodes sharing a process (tests, benchmarks, simulations) then
    // deadlock: B's fetch of a block holds the read side until A sends the block, A's descriptor
    // republish queues a delete behind it, and A's bitswap, asked for the block, queues its read
    // behind that delete (seen in the functions benchmark: a transfer stalled until its timeout).
    // Each node gets its own lock.
    this.gcLock = createMortice({ name: `mesh-blockstore-${randomUUID()}`, singleProcess: true })
    ;(helia.blockstore as unknown as { lock: Mortice }).lock = this.gcLock
    // Bitswap keeps its standard protocol ID: @helia/bitswap 4 dials `/ipfs/bitswap/1.2.0` whatever
    // it is told to handle. Peers of other networks are hung up on, and in a community network the
    // membership gate covers it.
    // Mesh streams blocks as it reads them, over one stream per peer, and hashes each arriving block
    // once (bitswap-stream.ts).
    this.helia = withStreamingBitswap(withBitswap(withLibp2p(helia, options), BITSWAP_OPTIONS)) as HeliaWithLibp2p<MeshServices>
    for (const [name, factory] of init.features ?? []) {
      this.features.set(name, factory(this, { repoPath: init.repoPath, config: init.config }))
    }
  }

  get libp2p (): Libp2p<MeshServices> {
    return this.helia.libp2p
  }

  get peerId (): PeerId {
    return this.helia.libp2p.peerId
  }

  get did (): string {
    return didFromPeerId(this.peerId)
  }

  async start (): Promise<void> {
    if ('open' in this.blockstore) await this.blockstore.open()
    if ('open' in this.datastore) await this.datastore.open()
    try {
      await this.helia.start()
    } catch (err: any) {
      await this.stop().catch(() => {})
      if (err.code === 'EADDRINUSE' || /EADDRINUSE/.test(err.message)) {
        const addr = /(\/\S+): Error: listen EADDRINUSE/.exec(err.message)?.[1]
        throw new UserError(`cannot listen on ${addr ?? 'a listen address'}: address already in use`)
      }
      throw err
    }
    // kad-dht's first self-query (it starts once the routing table has a peer) is what makes this
    // node known to the peers nearest its ID, so findable by everyone. Listened for from here on,
    // so a query that ends before the bootstrap dials return is not missed.
    this.selfQueried = once(this.libp2p, 'kad-dht:query:self', { signal: this.lifetime.signal }).then(() => {}, () => {})
    // Identify answers with the protocols of our own peer-store entry, which protocol handlers
    // registered during start update concurrently; on a disk datastore an update can be lost
    // (bitswap went missing after a restart). Set the entry from the registrar once all are in,
    // and identify-push tells peers that connected meanwhile.
    // Helia hands out its libp2p only once started, so the membership gate goes up now; until it
    // is up, the connection gater refuses every peer of a community node.
    if (this.community != null) {
      await this.startMembership(this.community)
      this.gateUp = true
    }
    await this.libp2p.peerStore.patch(this.peerId, { protocols: this.libp2p.getProtocols() })
    this.libp2p.addEventListener('peer:identify', (evt) => {
      const { connection, protocols } = evt.detail
      // Mesh nodes talk only to nodes of their own network: one that does not speak this network's
      // DHT protocol is another network (or not Mesh at all), and is hung up on.
      if (!protocols.includes(dhtProtocol(this.network))) {
        // Only briefly: the peer may be about to join this node's network (`mesh join` moves it).
        void this.refuse(connection.remotePeer, 'wrong-network', 10_000)
      }
    })
    for (const feature of this.features.values()) {
      await feature.start?.()
      this.started.push(feature)
    }
    await this.dialBootstrap()
    this.keeper = setInterval(() => { void this.keepPeers() }, 10_000)
    this.keeper.unref()
    this.reconnects = reconnector(this.libp2p, async (peer) => {
      if ((this.denied.get(peer.toString())?.until ?? 0) > Date.now()) return false
      const known = await this.libp2p.peerStore.get(peer).catch(() => undefined)
      return known?.protocols.includes(dhtProtocol(this.network)) === true
    })
    this.reconnects.start()
  }

  /**
   * Community nodes check every peer: the membership handshake gates the DHT, gossip, bitswap and
   * every Mesh protocol, and revocations spread to every member.
   */
  private async startMembership (community: Community): Promise<void> {
    const prefix = protocolPrefix(this.network)
    this.membership = membership({ libp2p: this.libp2p }, {
      protocolPrefix: prefix,
      presentation: () => community.presentation(),
      verify: async (peer, bytes) => community.verify(peer, bytes),
      settleEarly: (peer) => community.earlyVerdict(peer),
      gated: this.gatedProtocols(),
      onAccepted: (peer) => {
        // kad-dht skipped this peer when it connected (it was not yet a member): add it now.
        void (this.libp2p.services.dht as any).routingTable?.add(peer).catch(() => {})
        if (community.revocations.size > 0) void this.revocationSync?.push(peer, community.revocations.toJSON()).catch(() => {})
      },
      onRejected: (peer, reason) => {
        process.emitWarning(`refused peer ${peer}: ${reason}`, { code: 'MESH_MEMBERSHIP' })
        void this.refuse(peer, reason)
      },
      onRefusedByRemote: (peer, reason) => {
        process.emitWarning(`peer ${peer} refused us: ${reason}`, { code: 'MESH_MEMBERSHIP' })
      }
    })
    this.revocationSync = revocationSync({ libp2p: this.libp2p }, {
      protocolPrefix: prefix,
      all: () => community.revocations.toJSON(),
      peers: () => [...this.membership?.accepted().keys() ?? []].map(id => peerIdFromString(id)),
      receive: async (tokens, from) => {
        const { added, rejected } = await community.addRevocations(tokens)
        if (rejected > 0) this.count(this.counters.revocationsDropped, 'invalid', rejected)
        if (added.length > 0) this.enforceRevocations()
        return added.map(r => r.token)
      },
      onDropped: (_from, reason) => { this.count(this.counters.revocationsDropped, reason) }
    })
    await this.membership.start()
    await this.revocationSync.start()
  }

  /** The protocols only members may use. */
  gatedProtocols (): string[] {
    const prefix = protocolPrefix(this.network)
    return [
      dhtProtocol(this.network), BITSWAP_PROTOCOL, `${prefix}/revocations/1.0.0`, ...gossipProtocols(this.network),
      ...[...this.features.values()].flatMap(f => f.gatedProtocols?.() ?? [])
    ]
  }

  /** Revokes a DID or credential ID (this node must be a root or an admin) and tells every member. */
  async revoke (token: string): Promise<void> {
    if (this.community == null) throw new UserError('this node is not in a community network')
    const { added } = await this.community.addRevocations([token])
    this.enforceRevocations()
    if (added.length > 0) this.revocationSync?.broadcast([token])
  }

  /** Hangs up on every connected member whose DID or credential is now revoked. */
  private enforceRevocations (): void {
    if (this.community == null || this.membership == null) return
    for (const [id, verdict] of this.membership.accepted()) {
      if (this.community.isRevoked(verdict)) {
        const peer = peerIdFromString(id)
        this.membership.forget(peer)
        void this.refuse(peer, 'revoked')
      }
    }
  }

  /** What the DHT may take in or hand out: not refused peers, nor connected ones still unchecked. */
  private admits (peer: PeerId): boolean {
    if (this.isDenied(peer)) return false
    if (this.membership == null) return true
    if (this.membership.accepted().has(peer.toString())) return true
    return this.libp2p.getConnections(peer).length === 0
  }

  private count (counter: Map<string, number>, reason: string, n = 1): void {
    counter.set(reason, (counter.get(reason) ?? 0) + n)
  }

  private isDenied (peer: PeerId): boolean {
    if (this.community != null && !this.gateUp) return true
    return this.refusal(peer) != null
  }

  /** Why this node keeps a peer out, while it does (so callers can say so, not just "gated"). */
  refusal (peer: PeerId): { reason: string, until: number } | undefined {
    const entry = this.denied.get(peer.toString())
    if (entry == null) return undefined
    if (entry.until > Date.now()) return entry
    this.denied.delete(peer.toString())
    return undefined
  }

  /**
   * Keeps a peer out: hangs up, forgets it (so our DHT never hands out its addresses) and refuses
   * it for `forMs`. Counted by reason.
   */
  async refuse (peer: PeerId, reason: string, forMs = 10 * 60_000): Promise<void> {
    this.count(this.counters.peersRejected, reason)
    this.denied.set(peer.toString(), { until: Date.now() + forMs, reason })
    await (this.libp2p.services.dht as any).routingTable?.remove(peer).catch(() => {})
    await this.libp2p.hangUp(peer).catch(() => {})
    await this.libp2p.peerStore.delete(peer).catch(() => {})
  }

  /**
   * Dials the bootstrap list (start waits for these dials, at most 10 s, then for the first DHT
   * self-query, at most 5 s); filling up to `minPeers` goes on in the background, so a slow or
   * refusing peer never holds up a node's start.
   */
  private async dialBootstrap (): Promise<void> {
    let reached = 0
    await Promise.all(this.bootstrap.map(async (ma) => {
      try {
        await this.libp2p.dial(ma, { signal: this.within(10_000) })
        reached++
      } catch (err: any) {
        if (!this.stopping) process.emitWarning(`bootstrap ${ma} unreachable: ${err.message}`)
      }
    }))
    // A node that has joined is one the mesh can find: wait (at most 5 s, kad-dht's own limit for
    // it) for the first self-query. Measured at 100 nodes: without this, lookups right after the
    // last nodes joined missed them, and the DHT bench's first round of lookups failed every time.
    if (reached > 0) {
      const limit = this.within(5_000)
      await Promise.race([this.selfQueried, new Promise(resolve => limit.addEventListener('abort', resolve, { once: true }))])
    }
    void this.keepPeers()
  }

  /** A signal that fires after `ms`, or when the node stops. */
  private within (ms: number): AbortSignal {
    return AbortSignal.any([AbortSignal.timeout(ms), this.lifetime.signal])
  }

  /**
   * Keeps the node routable without its seed: when it has fewer than `minPeers` connections it
   * dials peers it already knows (routing table, then the peer store on disk, which outlives a
   * restart) and, if it still has none, its bootstrap list again.
   */
  private async keepPeers (): Promise<void> {
    if (this.stopping || this.keeping) return
    this.keeping = true
    try {
      await this.fillPeers()
    } catch {
      // A failed round is retried by the next tick.
    } finally {
      this.keeping = false
    }
  }

  private async fillPeers (): Promise<void> {
    await Promise.all(this.libp2p.getConnections().map(async c => this.ensureIdentified(c, { signal: this.within(5_000) })))
    const connected = new Set(this.libp2p.getConnections().map(c => c.remotePeer.toString()))
    // Up to twice minPeers, each round also tries one known peer it is not connected to: a node
    // whose neighbours all sat on its side of a partition otherwise never links across once the
    // partition heals (nothing drops it below minPeers), and gossip stays split.
    if (connected.size >= 2 * this.minPeers) return
    const self = this.peerId.toString()
    const candidates: PeerId[] = []
    for (const peer of await this.libp2p.peerStore.all().catch(() => [])) {
      const id = peer.id.toString()
      if (id !== self && !connected.has(id) && peer.addresses.length > 0 &&
        peer.protocols.includes(dhtProtocol(this.network))) candidates.push(peer.id)
    }
    const wanted = Math.max(1, this.minPeers - connected.size)
    await Promise.all(candidates.sort(() => Math.random() - 0.5).slice(0, wanted).map(async (id) => {
      await this.libp2p.dial(id, { signal: this.within(5_000) }).catch(() => {})
    }))
    if (this.libp2p.getConnections().length === 0 && this.bootstrap.length > 0 && !this.stopping) {
      await Promise.all(this.bootstrap.map(async ma => this.libp2p.dial(ma, { signal: this.within(5_000) }).catch(() => {})))
    }
  }

  async stop (): Promise<void> {
    this.stopping = true
    this.lifetime.abort()
    if (this.keeper != null) clearInterval(this.keeper)
    this.reconnects?.stop()
    // Only what started stops: a node whose start failed (a port in use) has nothing to undo there.
    for (const feature of this.started.splice(0).reverse()) {
      await feature.stop?.().catch((err: Error) => { process.emitWarning(`stopping a feature: ${err.message}`) })
    }
    await this.revocationSync?.stop()
    await this.membership?.stop()
    await this.helia.stop()
    this.gcLock.finalize()
    if ('close' in this.blockstore) await this.blockstore.close()
    if ('close' in this.datastore) await this.datastore.close()
  }

  identity (): NodeIdentity {
    return {
      peerId: this.peerId.toString(),
      did: this.did,
      network: this.network,
      addresses: this.libp2p.getMultiaddrs().map(String),
      protocols: this.libp2p.getProtocols(),
      region: this.region,
      community: this.community == null
        ? undefined
        : {
            id: this.community.id,
            name: this.community.name,
            open: this.community.genesis.record.policy.open,
            roots: this.community.genesis.record.roots,
            role: this.community.roleOf(this.did)
          }
    }
  }

  peers (): PeerEntry[] {
    const seen = new Map<string, PeerEntry>()
    const accepted = this.membership?.accepted()
    for (const conn of this.libp2p.getConnections()) {
      const id = conn.remotePeer.toString()
      if (seen.has(id) && conn.status !== 'open') continue
      const verdict = accepted?.get(id)
      seen.set(id, { ...peerEntry(conn), authenticated: verdict != null, role: verdict?.role })
    }
    return [...seen.values()]
  }

  /** A DHT lookup that goes to the network, even when the peer is already known locally. */
  async findPeer (peer: PeerId, options: { signal?: AbortSignal } = {}): Promise<FoundPeer> {
    const started = performance.now()
    const asked = new Set<string>()
    /** Peers the answers named (the query follows only those nearer the target than their namer). */
    const named = new Map<string, { id: PeerId, multiaddrs: Multiaddr[] }>()
    const found = (multiaddrs: Multiaddr[]): FoundPeer => ({
      peerId: peer.toString(),
      did: didFromPeerId(peer),
      addresses: multiaddrs.map(String),
      queried: asked.size,
      ms: performance.now() - started
    })
    try {
      for await (const event of this.libp2p.services.dht.findPeer(peer, { useCache: false, signal: options.signal })) {
        if (event.name === 'PEER_RESPONSE') {
          asked.add(event.from.toString())
          for (const p of event.closer) if (p.multiaddrs.length > 0) named.set(p.id.toString(), p)
        }
        if (event.name === 'FINAL_PEER') return found(event.peer.multiaddrs)
      }
    } catch (err: any) {
      if (options.signal?.aborted === true) throw err
      if (err.name !== 'NotFoundError') throw err
    }
    const second = await this.askNeighbours(peer, asked, named, options)
    if (second != null) return found(second)
    throw new UserError(`peer ${peer} was not found in the DHT (${asked.size} peers asked)`)
  }

  /**
   * A lookup's second pass: asks the connected peers the query did not ask (at most 16, at once)
   * for the target. A query asks the peers of its routing table nearest the target and stops when
   * their answers name no one nearer; with the small tables Mesh keeps (node/libp2p.ts), those can
   * all be peers that never heard of the target while another neighbour knows it well. Measured at
   * 100 nodes: 1-3 lookups in 1,000 ended that way, each time with a neighbour that knew the target.
   * With fewer than 16 such neighbours it also asks (and so dials) peers it knows the addresses of,
   * nearest the target first: a node churn had left with 3 connections, all asked, failed to find
   * a target connected to 16 nodes and known by address to a quarter of the mesh.
   * If none of them knows the target, it asks (at most 16 of) the peers the answers (the query's
   * and theirs) named, nearest the target first, whether or not they are nearer than the peer that
   * named them (the query follows only those that are). In the 100-node simulation during a split,
   * a node asked its 16 neighbours, none of which knew a target held by 6 nodes and known by
   * address to a quarter of the mesh (16 peers that each know it with p = 1/4 all miss it about
   * once in 100 lookups).
   */
  private async askNeighbours (peer: PeerId, asked: Set<string>, named: Map<string, { id: PeerId, multiaddrs: Multiaddr[] }>, options: { signal?: AbortSignal }): Promise<Multiaddr[] | undefined> {
    const network = (this.libp2p.services.dht as any).network
    if (typeof network?.sendRequest !== 'function') return undefined
    const target = peer.toString()
    const self = this.libp2p.peerId.toString()
    const fresh = (p: PeerId): boolean => !asked.has(p.toString()) && p.toString() !== target && p.toString() !== self
    const kadId = (p: PeerId): Buffer => createHash('sha256').update(p.toMultihash().bytes).digest()
    const goal = kadId(peer)
    const distance = (p: PeerId): Buffer => { const d = kadId(p); for (let i = 0; i < d.length; i++) d[i] ^= goal[i]; return d }
    const nearestFirst = <T extends { id: PeerId }>(ps: T[]): T[] =>
      ps.map(p => ({ p, d: distance(p.id) })).sort((a, b) => Buffer.compare(a.d, b.d)).map(x => x.p)
    const neighbours = [...new Map(this.libp2p.getConnections().map(c => [c.remotePeer.toString(), c.remotePeer])).values()]
      .filter(fresh).slice(0, 16)
    if (neighbours.length < 16) {
      const taken = new Set(neighbours.map(String))
      const known = await this.libp2p.peerStore.all({ filters: [(p) => p.addresses.length > 0 && fresh(p.id) && !taken.has(p.id.toString())] })
      neighbours.push(...nearestFirst(known).slice(0, 16 - neighbours.length).map(p => p.id))
    }
    const done = new AbortController()
    const signal = options.signal == null ? done.signal : AbortSignal.any([options.signal, done.signal])
    const request = { type: MessageType.FIND_NODE, key: peer.toMultihash().bytes }
    const round = async (peers: PeerId[]): Promise<Multiaddr[]> => {
      const path = { index: 0, queued: 0, running: peers.length, total: peers.length }
      return await Promise.any(peers.map(async (neighbour) => {
        for await (const event of network.sendRequest(neighbour, request, { signal, path })) {
          if (event.name !== 'PEER_RESPONSE') continue
          asked.add(neighbour.toString())
          const match = event.closer.find((p: { id: PeerId }) => p.id.equals(peer))
          if (match?.multiaddrs.length > 0) return match.multiaddrs as Multiaddr[]
          for (const p of event.closer) if (p.multiaddrs.length > 0) named.set(p.id.toString(), p)
        }
        throw new Error('does not know the peer')
      }))
    }
    const aborted = (): boolean => options.signal?.aborted === true
    try {
      if (neighbours.length > 0) {
        try {
          return await round(neighbours)
        } catch {
          if (aborted()) throw options.signal!.reason
        }
      }
      const next = nearestFirst([...named.values()].filter(p => fresh(p.id))).slice(0, 16)
      if (next.length === 0) return undefined
      // Their addresses came in the answers; the request dials by peer ID.
      await Promise.all(next.map(async p => this.libp2p.peerStore.merge(p.id, { multiaddrs: p.multiaddrs }).catch(() => {})))
      return await round(next.map(p => p.id)).catch(() => {
        if (aborted()) throw options.signal!.reason
        return undefined
      })
    } finally {
      // The requests still out once one answered (or the lookup gave up).
      done.abort()
    }
  }

  async connect (target: string, options: { signal?: AbortSignal } = {}): Promise<PeerEntry> {
    const conn = target.startsWith('/')
      ? await this.libp2p.dial(parseMultiaddr(target), options)
      : await this.libp2p.dial(peerIdFromString(target), options)
    await this.ensureIdentified(conn, options)
    return peerEntry(conn)
  }

  /**
   * Identify can fail on a busy or just-started peer (the stream is closed before the answer), and
   * then no protocol topology (DHT, bitswap, gossip) ever hears of the connection. Run it again.
   */
  private async ensureIdentified (conn: Connection, options: { signal?: AbortSignal } = {}): Promise<void> {
    const peer = await this.libp2p.peerStore.get(conn.remotePeer).catch(() => undefined)
    if (peer != null && peer.protocols.length > 0) return
    await this.libp2p.services.identify.identify(conn, options).catch(() => {})
  }
}

function peerEntry (conn: Connection): PeerEntry {
  return {
    peerId: conn.remotePeer.toString(),
    did: conn.remotePeer.type === 'Ed25519' ? didFromPeerId(conn.remotePeer) : '',
    address: conn.remoteAddr.toString(),
    direction: conn.direction,
    rttMs: conn.rtt,
    authenticated: false
  }
}

const BITSWAP_PROTOCOL = '/ipfs/bitswap/1.2.0'

const BITSWAP_OPTIONS: BitswapOptions = {
  // Bitswap waits this long after a want before sending its want list, to batch wants. A reader's
  // wants for a node's children are all added in one turn of the event loop, so 1 ms batches them
  // as well as the default 10 ms did, and each round trip of a read (root, then leaves) is 9 ms
  // shorter: a 1 MB module's time to first byte went from ~80 to ~25 ms on loopback.
  sendWantlistDebounce: 1
}

export function parseMultiaddr (text: string): Multiaddr {
  try {
    return multiaddr(text)
  } catch (err: any) {
    throw new UserError(`not a valid multiaddr: ${text} (${err.message})`)
  }
}

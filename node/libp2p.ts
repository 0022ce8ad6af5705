// The libp2p half of a Mesh node: transports, encryption, muxing, and the services every node runs.
// Kept as a plain options factory so the node, the tests and the benchmarks assemble nodes alike.
import { gossipsub } from '@libp2p/gossipsub'
import { identify, identifyPush } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { ping } from '@libp2p/ping'
import { END_RECORD_NAMESPACE, endRecordSelector, endRecordValidator } from '../registry/dht-record.ts'
import { cacheEd25519Verification } from './ed25519-verify.ts'
import { meshNoise } from './noise.ts'
import { componentLogger } from './quiet-logger.ts'
import { tcp } from './tcp.ts'
import { meshYamux } from './yamux.ts'
import type { GossipSub } from '@libp2p/gossipsub'
import type { Identify, IdentifyPush } from '@libp2p/identify'
import type { ConnectionGater, PeerId, PrivateKey, ServiceMap, Transport } from '@libp2p/interface'
import type { KadDHT } from '@libp2p/kad-dht'
import type { Ping } from '@libp2p/ping'
import type { Datastore } from 'interface-datastore'
import type { Libp2pOptions } from 'libp2p'

export interface MeshServices extends ServiceMap {
  identify: Identify
  identifyPush: IdentifyPush
  ping: Ping
  dht: KadDHT
  pubsub?: GossipSub
}

export interface Libp2pInit {
  privateKey: PrivateKey
  /** Network name: every Mesh protocol, the DHT's included, lives under `/mesh/<network>/`. */
  network: string
  listen: string[]
  datastore?: Datastore
  /** Gossipsub is the transport of documents and announcements; the DHT benchmark leaves it out. */
  gossip?: boolean
  connectionGater?: ConnectionGater
  /**
   * Whether the DHT may hand out or take in this peer. A community node says no to peers that are
   * connected but have not passed the membership handshake yet, and to refused ones.
   */
  admitPeer?: (peer: PeerId) => boolean
  /** Replaces TCP, for simulations on `@libp2p/memory`. */
  transports?: Array<(components: any) => Transport>
  /**
   * The routing table's shape (`dht` in config.json). It holds 2^prefixLength × kBucketSize peers;
   * the defaults (1, 3) suit meshes of up to a few hundred nodes, where lookups end in one hop. A
   * mesh of thousands wants more buckets (prefixLength 4-6) so every lookup keeps getting closer.
   */
  dht?: { kBucketSize?: number, prefixLength?: number }
  /** libp2p's metrics (node/telemetry.ts: `libp2pMetrics`). */
  metrics?: Libp2pOptions['metrics']
}

/** The protocol prefix of a network: `/mesh/<network>`. */
export function protocolPrefix (network: string): string {
  return `/mesh/${network}`
}

export function dhtProtocol (network: string): string {
  return `${protocolPrefix(network)}/kad/1.0.0`
}

/**
 * Gossipsub's protocol IDs. They cannot carry the network prefix: gossipsub 17 fixes them and
 * keys features on them. Topics carry the prefix instead, and peers of other networks are hung up on.
 */
export function gossipProtocols (_network: string): string[] {
  return ['/meshsub/1.2.0', '/meshsub/1.1.0', '/meshsub/1.0.0']
}

export function libp2pOptions (init: Libp2pInit): Libp2pOptions<MeshServices> {
  // Noise handshakes, identify records and gossip messages are verified with remote keys imported
  // once (ed25519-verify.ts); the node's own key signs through one key object (signing-key.ts).
  cacheEd25519Verification()
  const services: Record<string, any> = {
    identify: identify(),
    identifyPush: identifyPush(),
    // The connection monitor and the DHT both ping; with ping's default of one outbound stream per
    // connection they collide, and the monitor then aborts a healthy connection.
    ping: ping({ maxInboundStreams: 16, maxOutboundStreams: 16 }),
    dht: kadDHT({
      protocol: dhtProtocol(init.network),
      datastorePrefix: `/dht/${init.network}`,
      // A private or community mesh runs on LAN and loopback addresses: keep them, and answer
      // queries from the start (kad-dht otherwise waits for a public address before serving).
      peerInfoMapper: init.admitPeer == null
        ? passthroughMapper
        : (peer) => init.admitPeer!(peer.id) ? peer : { ...peer, multiaddrs: [] },
      clientMode: false,
      // The first self-query waits for the routing table's first peer (from the bootstrap list),
      // then makes this node known to the peers nearest it; MeshNode.start waits for it.
      initialQuerySelfInterval: 0,
      // Connections are what a mesh pays for: on this class of machine (2 cores) a TCP+Noise+identify
      // connection costs ~17-25 ms CPU for its two ends, and kad-dht pings, so dials, every peer it
      // hears of while its routing table has room. With the defaults (k 20, prefixLength 6: room
      // for 1280) a node ends up connected to nearly everyone: at 100 nodes in one process
      // formation did not finish in 60 s, p95 lookups took seconds, 12-19 MB RSS per node. So:
      // - 2 buckets of 3 (6 peers in the table): each node dials a handful of peers, not all of
      //   them. Lookups stay one hop in practice, because a DHT server answers FIND_NODE with the
      //   target itself when it is in its peer store, and every peer that ever heard of the target
      //   is. Measured at 100 nodes (bench:dht): buckets of 4 opened 919-998 connections during
      //   formation, buckets of 3 opened 557-677, formation 24-30 s -> 19-20 s, with lookup
      //   latency the same within noise; at ~20 ms CPU a connection, connections are most of
      //   formation's CPU either way.
      kBucketSize: init.dht?.kBucketSize ?? 3,
      prefixLength: init.dht?.prefixLength ?? 1,
      // alpha 10 on 10 disjoint paths puts up to 100 requests (and dials) in flight per lookup;
      // S/Kademlia's disjoint paths guard against an adversary on the path, which a mesh of keyed,
      // credentialed members does not have to assume. Three requests on one path, nearest first:
      // at 50 nodes p50 125 -> 56 ms, RSS 19 -> 12 MB/node, formation >120 s -> 57 s.
      alpha: 3,
      disjointPaths: 1,
      // Signed descriptors under /mesh-end/<peerId>: checked before storing, newest seq wins.
      validators: { [END_RECORD_NAMESPACE]: endRecordValidator(init.network) },
      selectors: { [END_RECORD_NAMESPACE]: endRecordSelector }
    })
  }
  if (init.gossip !== false) {
    services.pubsub = gossipsub({
      emitSelf: false,
      allowPublishToZeroTopicPeers: true,
      fallbackToFloodsub: false,
      // Gossipsub checks a message's signature before it notices a copy it has already seen; a
      // node gets ~D copies of each. Keyed by sender and seqno (the ID strict signing computes
      // anyway; the cache records a message only once it has passed), duplicates are dropped
      // first: at 50 nodes, propagation p50 224 -> 113 ms and a third less CPU per write.
      fastMsgIdFn: (m) => Buffer.from(m.from ?? []).toString('base64') + Buffer.from(m.seqno ?? []).toString('base64'),
      // Gossipsub's score punishes more than 10 peers on one IP (P6, quadratic). Mesh nodes behind
      // one NAT, on one campus or on loopback share an IP, and peers are admitted by key and
      // credential: at 50 nodes on loopback 40 nodes scored their peers negative and the topic
      // mesh never formed.
      scoreParams: { IPColocationFactorWeight: 0 },
      // Four mesh peers per topic (3-8), not six (4-12): every message reaches a node about D
      // times, and each copy is decrypted and parsed, each forward encrypted. Documents and
      // descriptors are also repaired by sync and anti-entropy, so the extra redundancy bought
      // little. docs bench, 50 nodes, alternated (2026-12-06): all writers 3.7-4.9k -> 4.4-5.2k
      // updates/s, process CPU per single write -20%, propagation p99 no worse.
      D: 4,
      Dlo: 3,
      Dhi: 8,
      Dout: 2
    })
  }
  return {
    privateKey: init.privateKey,
    logger: componentLogger(),
    datastore: init.datastore,
    connectionGater: init.connectionGater,
    metrics: init.metrics,
    addresses: { listen: init.listen },
    // TCP with one writev per connection per tick (tcp.ts).
    transports: init.transports ?? [tcp()],
    // Noise, with session keys imported into node:crypto once and frame lengths read without a
    // throw per chunk (noise.ts).
    connectionEncrypters: [meshNoise()],
    // Yamux, with window updates at half the window instead of after every frame (yamux.ts).
    streamMuxers: [meshYamux()],
    // libp2p pings every connection of a node at the same instant every 10 s and aborts any
    // connection whose ping misses an adaptive timeout. A node with 20 peers pays little for that,
    // but a busy node (or a simulation of 100 nodes on one core) gets bursts of hundreds of pings a
    // second, and a ping queued behind them times out and kills a healthy connection: measured at
    // 100 nodes, 1,960 pings in an 8 s lookup run, with lookups then waiting on redials. Closed
    // sockets are seen at once anyway; the monitor only has to find silent, half-open ones.
    connectionMonitor: { pingInterval: 60_000 },
    connectionManager: {
      // libp2p rejects a host that opens more than `inboundConnectionThreshold` connections a
      // second (default 5). On a LAN, behind a NAT or on loopback many peers share one address,
      // so a seed that a whole site joins through would reset most of them. Mesh admits peers by
      // key (Noise) and, in community networks, by credential, so the per-host rate limit only
      // guards against floods: allow bursts of a few hundred.
      inboundConnectionThreshold: 500,
      maxIncomingPendingConnections: 100,
      maxConnections: 500,
      dialTimeout: 10_000
    },
    services: services as any
  }
}

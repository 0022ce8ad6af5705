// The connecting side (node B) of scripts/bench/identity.ts, in a worker thread of its own: B's
// identify and Noise work runs on this event loop, not on the one that runs A's handshake, as it
// would on another machine. Per `connect` request it starts a fresh B (same key per variant),
// dials A, pings A's DHT (a gated protocol), waits for its own verdict on A, stops B and answers
// with the times on a clock the main thread shares (performance.timeOrigin + performance.now()).
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parentPort } from 'node:worker_threads'
import { privateKeyFromProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromString } from '@libp2p/peer-id'
import { lpStream } from '@libp2p/utils'
import { multiaddr } from '@multiformats/multiaddr'
import { decodeGenesis } from '../../identity/network.ts'
import { Community } from '../../node/community.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import type { Genesis } from '../../identity/network.ts'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'

/** What B needs to know about one variant; keys and genesis travel as bytes. */
export interface DialerVariant {
  network: string
  /** B's key, privateKeyToProtobuf. */
  key: Uint8Array
  /** The genesis block (Genesis.bytes), for community variants. */
  genesis?: Uint8Array
  credential?: string
  /** A's listening address, with /p2p/. */
  addr: string
  /** A's peer ID. */
  peer: string
  /** The DHT protocol of the variant's network. */
  protocol: string
}

export type DialerRequest =
  | { type: 'setup', variants: Record<string, DialerVariant> }
  | { type: 'connect', variant: string }
  | { type: 'close' }

export type DialerReply =
  | { type: 'ready', now: number }
  /** Absolute times (ms, shared clock): dial started, DHT ping answered, B's verdict on A (community only). */
  | { type: 'connected', dialAt: number, pingAt: number, verdictAt?: number }
  | { type: 'closed' }
  | { type: 'error', message: string }

interface Prepared {
  network: string
  key: PrivateKey
  genesis?: Genesis
  credential?: string
  addr: Multiaddr
  peer: PeerId
  protocol: string
  dir?: string
}

const DHT_PING = Uint8Array.of(0x08, 0x05) // kad-dht Message { type: PING }
const now = (): number => performance.timeOrigin + performance.now()
const prepared = new Map<string, Prepared>()

if (parentPort == null) throw new Error('identity-dialer.ts runs as a worker of scripts/bench/identity.ts')
const port = parentPort

async function setup (variants: Record<string, DialerVariant>): Promise<void> {
  for (const [name, v] of Object.entries(variants)) {
    prepared.set(name, {
      network: v.network,
      key: privateKeyFromProtobuf(v.key),
      genesis: v.genesis == null ? undefined : await decodeGenesis(v.genesis),
      credential: v.credential,
      addr: multiaddr(v.addr),
      peer: peerIdFromString(v.peer),
      protocol: v.protocol,
      dir: v.genesis == null ? undefined : await mkdtemp(join(tmpdir(), 'mesh-bench-identity-b-'))
    })
  }
}

/** The node's membership handshake (private to MeshNode; the bench reads its verdicts). */
function verdictOf (node: MeshNode, peer: PeerId): Promise<unknown> | undefined {
  return (node as unknown as { membership?: { verdict: (p: PeerId) => Promise<unknown> } }).membership?.verdict(peer)
}

async function connect (name: string): Promise<DialerReply> {
  const p = prepared.get(name)
  if (p == null) throw new Error(`no setup for variant ${name}`)
  // a fresh community per B incarnation, as a node joining for the first time would have
  const community = p.genesis == null || p.dir == null ? undefined : await Community.create(p.dir, p.genesis, p.credential)
  const b = new MeshNode({ privateKey: p.key, network: p.network, community, gossip: false, minPeers: 0 })
  await b.start()
  try {
    const signal = AbortSignal.timeout(10_000)
    const dialAt = now()
    await b.libp2p.dial(p.addr, { signal })
    let verdictAt: number | undefined
    const verdict = verdictOf(b, p.peer)?.then(() => { verdictAt = now() })
    const stream = await b.libp2p.dialProtocol(p.peer, p.protocol, { signal })
    const lp = lpStream(stream)
    await lp.write(DHT_PING, { signal })
    const answer = (await lp.read({ signal })).subarray()
    const pingAt = now()
    if (answer[0] !== 0x08 || answer[1] !== 0x05) throw new Error('the DHT did not answer the ping')
    await stream.close().catch(() => {})
    await verdict
    return { type: 'connected', dialAt, pingAt, verdictAt }
  } finally {
    await b.stop()
  }
}

async function close (): Promise<void> {
  for (const p of prepared.values()) if (p.dir != null) await rm(p.dir, { recursive: true, force: true })
  prepared.clear()
}

port.on('message', (request: DialerRequest) => {
  const run = async (): Promise<DialerReply> => {
    switch (request.type) {
      case 'setup': await setup(request.variants); return { type: 'ready', now: now() }
      case 'connect': return await connect(request.variant)
      case 'close': await close(); return { type: 'closed' }
    }
  }
  run().then(
    reply => { port.postMessage(reply) },
    (err: Error) => { port.postMessage({ type: 'error', message: err.stack ?? err.message } satisfies DialerReply) }
  )
})

// Identity benchmark: did:key resolution, credential verification (cold and cached) against
// did-jwt-vc's verifyCredential measured in the same run, and the time the membership handshake
// adds to a new connection between two MeshNodes (real TCP on 127.0.0.1, real Noise).
//
//   node scripts/bench/identity.ts [--rounds 5] [--resolutions 20000] [--verifications 2000]
//                                  [--baseline 300] [--connections 60]
//
// The crypto figures and the listening node A run on this process's main thread; the connecting
// node B runs in a worker thread (identity-dialer.ts), because two ends sharing one event loop
// queue each other's identify and Noise work ahead of the handshake, which separate machines never
// do. The worker starts a fresh B (same key per variant) for every connection and stops it after;
// A is long-lived, and each connection waits until A has seen the previous one close. Connection
// times are taken on B; A's verdict is stamped here on the clock both threads share
// (performance.timeOrigin + performance.now()). Rounds interleave every measurement with its
// baseline; the table shows medians over rounds. Last line: JSON.
import { mkdtemp, rm } from 'node:fs/promises'
import { createPublicKey, verify } from 'node:crypto'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { Worker } from 'node:worker_threads'
import { generateKeyPair, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { verifyCredential as libraryVerify } from 'did-jwt-vc'
import { Resolver } from 'did-resolver'
import { getResolver as keyDidResolver } from 'key-did-resolver'
import { clearCredentialCache, didOfKey, issueCredential, verifyCredential } from '../../identity/credentials.ts'
import { createGenesis, issueMembership } from '../../identity/network.ts'
import { didResolver } from '../../identity/resolver.ts'
import { Community } from '../../node/community.ts'
import { dhtProtocol } from '../../node/libp2p.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import { median, percentile, round, table } from './lib/stats.ts'
import type { DialerReply, DialerRequest, DialerVariant } from './identity-dialer.ts'
import type { PeerId } from '@libp2p/interface'

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    resolutions: { type: 'string', default: '20000' },
    verifications: { type: 'string', default: '2000' },
    baseline: { type: 'string', default: '300' },
    connections: { type: 'string', default: '60' }
  }
})
const ROUNDS = Number(args.rounds)
const RESOLUTIONS = Number(args.resolutions)
const VERIFICATIONS = Number(args.verifications)
const BASELINE = Number(args.baseline)
const CONNECTIONS = Number(args.connections)
const ISSUERS = 16
const WORKING_SET = 256
type LibraryResolver = Parameters<typeof libraryVerify>[1]

const log = (line: string): void => { process.stderr.write(line + '\n') }

/** Operations per second of `fn` over `items`, awaited one after another. */
async function rate<T> (items: T[], fn: (item: T) => unknown): Promise<number> {
  const t0 = performance.now()
  for (const item of items) await fn(item)
  return items.length / ((performance.now() - t0) / 1000)
}

// --- fixtures ---------------------------------------------------------------------------------

const issuerKeys = await Promise.all(Array.from({ length: ISSUERS }, async () => await generateKeyPair('Ed25519')))
const subject = didOfKey(await generateKeyPair('Ed25519'))
const workingSet = await freshDidKeys(WORKING_SET)

/** did:keys of new key pairs: valid, and never resolved before. */
async function freshDidKeys (n: number): Promise<string[]> {
  return await Promise.all(Array.from({ length: n }, async () => didOfKey(await generateKeyPair('Ed25519'))))
}

async function credentials (n: number, key = (i: number) => issuerKeys[i % ISSUERS]): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < n; i++) {
    out.push(await issueCredential({ key: key(i), subject, type: 'MeshMembershipCredential', claims: { network: 'bafyreibench', role: 'member' }, expiresIn: 3600 }))
  }
  return out
}

// --- resolution and verification ---------------------------------------------------------------

interface CryptoRound {
  resolveWarm: number
  resolveCold: number
  resolveLibrary: number
  verifyCold: number
  verifyColdNewIssuers: number
  verifyWarm: number
  verifyLibrary: number
  rawVerify: number
}

const standard = new Resolver(keyDidResolver())
const ours = didResolver({ web: false })

async function cryptoRound (): Promise<CryptoRound> {
  const warmDids = Array.from({ length: RESOLUTIONS }, (_, i) => workingSet[i % WORKING_SET])
  for (const did of workingSet) await ours.resolve(did)
  const coldDids = await freshDidKeys(Math.max(200, Math.floor(RESOLUTIONS / 50)))
  const libraryDids = warmDids.slice(0, Math.max(500, Math.floor(RESOLUTIONS / 10)))

  const cold = await credentials(VERIFICATIONS)
  const newIssuerKeys = await Promise.all(Array.from({ length: Math.max(100, Math.floor(VERIFICATIONS / 10)) }, async () => await generateKeyPair('Ed25519')))
  const coldNewIssuers = await credentials(newIssuerKeys.length, i => newIssuerKeys[i])
  const library = await credentials(BASELINE)
  const keyObjects = issuerKeys.map(k => createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(k.publicKey.raw).toString('base64url') }, format: 'jwk' }))
  const raw = cold.map((jwt, i) => {
    const dot = jwt.lastIndexOf('.')
    return { data: Buffer.from(jwt.slice(0, dot)), signature: Buffer.from(jwt.slice(dot + 1), 'base64url'), key: keyObjects[i % ISSUERS] }
  })

  const r: Partial<CryptoRound> = {}
  r.resolveLibrary = await rate(libraryDids, async did => await standard.resolve(did))
  r.resolveWarm = await rate(warmDids, async did => await ours.resolve(did))
  r.resolveCold = await rate(coldDids, async did => await ours.resolve(did))
  r.verifyLibrary = await rate(library, async jwt => await libraryVerify(jwt, standard as unknown as LibraryResolver))
  r.rawVerify = await rate(raw, ({ data, signature, key }) => verify(null, data, key, signature))
  r.verifyCold = await rate(cold, async jwt => await verifyCredential(jwt))
  r.verifyColdNewIssuers = await rate(coldNewIssuers, async jwt => await verifyCredential(jwt))
  r.verifyWarm = await rate([...cold, ...cold, ...cold], async jwt => await verifyCredential(jwt))
  return r as CryptoRound
}

// --- handshake overhead ------------------------------------------------------------------------

type Variant = 'none' | 'open' | 'closed' | 'closed-cold'

const VARIANTS: Record<Variant, string> = {
  none: 'no community (plain named network): the baseline',
  open: 'open community: neither side presents a credential; both are checked as open members',
  closed: 'closed community: the joiner presents a root-issued credential the root verified before (cached)',
  'closed-cold': 'closed community, credential cache emptied before each connection'
}

/** A long-lived node A per variant (this thread); the dialer worker starts a B per connection (same key per variant). */
interface Pair {
  variant: Variant
  a: MeshNode
  peerB: PeerId
  dialer: DialerVariant
  /** When A's verdict on the current B came in (shared clock), once A has seen B connect. */
  verdictAt?: Promise<number>
}

const dirs: string[] = []
const now = (): number => performance.timeOrigin + performance.now()

async function community (genesis: Awaited<ReturnType<typeof createGenesis>>): Promise<Community> {
  const dir = await mkdtemp(join(tmpdir(), 'mesh-bench-identity-'))
  dirs.push(dir)
  return await Community.create(dir, genesis)
}

/** The node's membership handshake (private to MeshNode; the bench reads its verdicts). */
function verdictOf (node: MeshNode, peer: PeerId): Promise<unknown> | undefined {
  return (node as unknown as { membership?: { verdict: (p: PeerId) => Promise<unknown> } }).membership?.verdict(peer)
}

async function pair (variant: Variant): Promise<Pair> {
  const keyA = await generateKeyPair('Ed25519')
  const keyB = await generateKeyPair('Ed25519')
  const network = `bench-identity-${variant}`
  let genesis: Awaited<ReturnType<typeof createGenesis>> | undefined
  let credential: string | undefined
  if (variant !== 'none') {
    genesis = await createGenesis({ key: keyA, name: `bench-${variant}`, open: variant === 'open' })
    if (variant !== 'open') credential = await issueMembership({ key: keyA, genesis, subject: didOfKey(keyB), role: 'member', expiresIn: 86_400 })
  }
  const a = new MeshNode({ privateKey: keyA, network, community: genesis == null ? undefined : await community(genesis), gossip: false, minPeers: 0 })
  await a.start()
  const peerB = peerIdFromPrivateKey(keyB)
  const p: Pair = {
    variant,
    a,
    peerB,
    dialer: {
      network,
      key: privateKeyToProtobuf(keyB),
      genesis: genesis?.bytes,
      credential,
      addr: a.libp2p.getMultiaddrs()[0].toString(),
      peer: a.peerId.toString(),
      protocol: dhtProtocol(a.network)
    }
  }
  // Asked right after the handshake's own peer:connect listener (registered at start) made the entry.
  a.libp2p.addEventListener('peer:connect', evt => {
    if (evt.detail.equals(peerB)) p.verdictAt = verdictOf(a, peerB)?.then(now)
  })
  return p
}

/** The dialer worker: one request at a time, one reply each. */
function dialerWorker (): { request: (r: DialerRequest) => Promise<DialerReply>, worker: Worker } {
  const worker = new Worker(new URL('./identity-dialer.ts', import.meta.url))
  let waiting: { resolve: (r: DialerReply) => void, reject: (e: Error) => void } | undefined
  worker.on('message', (reply: DialerReply) => {
    const w = waiting
    waiting = undefined
    if (reply.type === 'error') w?.reject(new Error(`dialer: ${reply.message}`))
    else w?.resolve(reply)
  })
  worker.on('error', err => { waiting?.reject(err); waiting = undefined })
  worker.on('exit', code => { waiting?.reject(new Error(`dialer exited (${code})`)); waiting = undefined })
  return {
    worker,
    request: async r => await new Promise((resolve, reject) => {
      waiting = { resolve, reject }
      worker.postMessage(r)
    })
  }
}

/** Resolves once A holds no connection to `peer` (B's next incarnation must not find its old one). */
async function gone (a: MeshNode, peer: PeerId): Promise<void> {
  if (a.libp2p.getConnections(peer).length === 0) return
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { done(); reject(new Error('A did not see B disconnect within 10 s')) }, 10_000)
    const onDisconnect = (evt: CustomEvent<PeerId>): void => { if (evt.detail.equals(peer)) { done(); resolve() } }
    const done = (): void => { clearTimeout(timer); a.libp2p.removeEventListener('peer:disconnect', onDisconnect) }
    a.libp2p.addEventListener('peer:disconnect', onDisconnect)
  })
}

const handshakeSamples = new Map<Variant, number[]>()

/**
 * B (in the worker) dials A, then sends one DHT ping (a gated protocol) and reads the answer: the
 * time until the peer is usable, in ms, timed on B. For community variants, also the time from
 * dial until both sides hold their verdict (A's stamped here, on the clock both threads share).
 * Starting and stopping B are not timed.
 */
async function connectOnce (p: Pair, request: (r: DialerRequest) => Promise<DialerReply>, record = true): Promise<number> {
  p.verdictAt = undefined
  if (p.variant === 'closed-cold') clearCredentialCache() // A's cache: A is the side that verifies
  const reply = await request({ type: 'connect', variant: p.variant })
  if (reply.type !== 'connected') throw new Error(`dialer answered ${reply.type}`)
  await gone(p.a, p.peerB)
  if (reply.verdictAt != null) {
    if (p.verdictAt == null) throw new Error(`A never saw B connect (${p.variant})`)
    const ms = Math.max(await p.verdictAt, reply.verdictAt) - reply.dialAt
    if (record) handshakeSamples.set(p.variant, [...handshakeSamples.get(p.variant) ?? [], ms])
  }
  return reply.pingAt - reply.dialAt
}

// --- run ---------------------------------------------------------------------------------------

log(`identity bench: ${ROUNDS} rounds, load average ${loadavg().map(l => l.toFixed(2)).join(' ')}`)
const cryptoRounds: CryptoRound[] = []
const variants = Object.keys(VARIANTS) as Variant[]
const pairs = await Promise.all(variants.map(pair))
const samples = new Map<Variant, number[]>(variants.map(v => [v, []]))
const dialer = dialerWorker()
try {
  const sent = now()
  const ready = await dialer.request({ type: 'setup', variants: Object.fromEntries(pairs.map(p => [p.variant, p.dialer])) })
  // the threads' clocks must agree for A's verdict time to be compared with B's dial time
  if (ready.type !== 'ready' || ready.now < sent - 1 || ready.now > now() + 1) throw new Error('the dialer worker\'s clock disagrees with this thread\'s')
  // one connection per variant to warm everything up (and the credential cache, for `closed`)
  for (const p of pairs) await connectOnce(p, dialer.request, false)
  for (let r = 0; r < ROUNDS; r++) {
    cryptoRounds.push(await cryptoRound())
    const perRound = Math.ceil(CONNECTIONS / ROUNDS)
    for (let i = 0; i < perRound; i++) {
      for (const p of pairs) samples.get(p.variant)?.push(await connectOnce(p, dialer.request))
    }
    log(`round ${r + 1}/${ROUNDS} done (load ${loadavg()[0].toFixed(2)})`)
  }
} finally {
  await dialer.request({ type: 'close' }).catch(() => {})
  await dialer.worker.terminate()
  for (const p of pairs) await p.a.stop().catch(() => {})
  for (const dir of dirs) await rm(dir, { recursive: true, force: true })
}

const med = (k: keyof CryptoRound): number => median(cryptoRounds.map(r => r[k]))
const ratios = (k: keyof CryptoRound, base: keyof CryptoRound): number => median(cryptoRounds.map(r => r[k] / r[base]))
const none = samples.get('none') as number[]
const handshake = Object.fromEntries(variants.map(v => {
  const s = samples.get(v) as number[]
  return [v, { n: s.length, p50: round(percentile(s, 0.5), 2), p99: round(percentile(s, 0.99), 2), addedP50: round(percentile(s, 0.5) - percentile(none, 0.5), 2), addedP99: round(percentile(s, 0.99) - percentile(none, 0.99), 2) }]
})) as Record<Variant, { n: number, p50: number, p99: number, addedP50: number, addedP99: number }>

const verdictMs = Object.fromEntries(variants.filter(v => v !== 'none').map(v => {
  const s = handshakeSamples.get(v) ?? []
  return [v, { n: s.length, p50: round(percentile(s, 0.5), 2), p99: round(percentile(s, 0.99), 2) }]
}))
const verdict = (ok: boolean): string => ok ? 'meets' : 'MISSES'
const rows: Array<Array<string | number>> = [
  ['did:key resolutions/s (working set of 256 DIDs)', round(med('resolveWarm'), 0), `target >= 100,000: ${verdict(med('resolveWarm') >= 100_000)}`],
  ['did:key resolutions/s (never-seen DIDs, X25519 derived)', round(med('resolveCold'), 0), 'not a target: derivation is BigInt math, then cached'],
  ['  baseline: did-resolver + key-did-resolver', round(med('resolveLibrary'), 0), `ours (working set) is ${round(ratios('resolveWarm', 'resolveLibrary'), 1)}x`],
  ['verifications/s cold (distinct JWTs, 16 issuers)', round(med('verifyCold'), 0), `target >= 5,000: ${verdict(med('verifyCold') >= 5_000)}; ${round(ratios('verifyCold', 'verifyLibrary'), 1)}x did-jwt-vc`],
  ['verifications/s cold, a new issuer each', round(med('verifyColdNewIssuers'), 0), `${round(ratios('verifyColdNewIssuers', 'verifyLibrary'), 1)}x did-jwt-vc`],
  ['verifications/s warm (cached)', round(med('verifyWarm'), 0), `${round(ratios('verifyWarm', 'verifyLibrary'), 0)}x did-jwt-vc`],
  ['  baseline: did-jwt-vc verifyCredential/s', round(med('verifyLibrary'), 0), 'key-did-resolver, same JWT shape'],
  ['  reference: node:crypto Ed25519 verify/s', round(med('rawVerify'), 0), `cold path runs at ${round(100 * ratios('verifyCold', 'rawVerify'), 0)}% of it`],
  ...variants.map(v => [
    `connect + DHT ping, ${v} (ms p50 / p99)`,
    `${handshake[v].p50} / ${handshake[v].p99}`,
    v === 'none' ? 'baseline' : `adds ${handshake[v].addedP50} / ${handshake[v].addedP99} ms; target p99 < 5: ${verdict(handshake[v].addedP99 < 5)}`
  ]),
  ...Object.entries(verdictMs).map(([v, d]) => [`dial to both verdicts, ${v} (ms p50 / p99)`, `${d.p50} / ${d.p99}`, 'the handshake itself, measured directly'])
]
console.log(table(['figure', 'value', 'against'], rows))
for (const v of variants) console.log(`  ${v}: ${VARIANTS[v]}`)
if (loadavg()[0] > cpus().length) console.log(`  load average above the ${cpus().length} cores: connection p99s (and their differences) are mostly scheduling stalls; compare runs`)
console.log(`  rounds: ${ROUNDS}, medians over rounds; connections per variant: ${none.length}; load average ${loadavg().map(l => l.toFixed(2)).join(' ')}`)
console.log(JSON.stringify({
  bench: 'identity',
  rounds: ROUNDS,
  loadavg: loadavg().map(l => round(l, 2)),
  resolutionsPerSec: { workingSet: round(med('resolveWarm'), 0), neverSeen: round(med('resolveCold'), 0), keyDidResolver: round(med('resolveLibrary'), 0) },
  verificationsPerSec: {
    cold: round(med('verifyCold'), 0),
    coldNewIssuers: round(med('verifyColdNewIssuers'), 0),
    warm: round(med('verifyWarm'), 0),
    didJwtVc: round(med('verifyLibrary'), 0),
    nodeCryptoVerify: round(med('rawVerify'), 0),
    coldVsDidJwtVc: round(ratios('verifyCold', 'verifyLibrary'), 2)
  },
  handshakeMs: handshake,
  dialToVerdictsMs: verdictMs,
  targets: { resolutionsPerSec: 100_000, coldVerificationsPerSec: 5_000, handshakeAddedP99Ms: 5 }
}))
process.exit(0)

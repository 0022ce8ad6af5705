// The Edge-Node Descriptor (END): a node's signed, short-lived self-description, published so that
// others can place work on it. It is JSON-LD: `@context` is END_CONTEXT, whose document ships as
// registry/context.jsonld. Nothing ever fetches that URL; the node serves the document itself
// (`contextDocument()`, e.g. at GET /ns/end/v1) so JSON-LD tools can expand descriptors offline.
//
// Wire form: dag-cbor of { descriptor, signer, signature }. The Ed25519 signature is detached and
// covers SIGNING_DOMAIN ‖ dag-cbor(descriptor). dag-cbor's encoding is canonical (sorted keys,
// minimal ints, strict decode), so a verifier re-encodes the decoded descriptor and gets back the
// exact signed bytes; the domain prefix keeps an END signature from being valid for anything else.
import { verify as cryptoVerify } from 'node:crypto'
import { readFileSync } from 'node:fs'
import * as os from 'node:os'
import * as dagCbor from '@ipld/dag-cbor'
import { Ajv } from 'ajv'
import addFormatsModule from 'ajv-formats'
import { didKeyFromEd25519, ed25519FromDidKey, ed25519KeyObject, InvalidDidError, peerIdFromDid } from '../identity/did-key.ts'
import { BoundedCache } from '../identity/verification-cache.ts'
import { createCoordinate } from './vivaldi.ts'
import type { PrivateKey } from '@libp2p/interface'
import type { KeyObject } from 'node:crypto'
import type { Coordinate } from './vivaldi.ts'

export const END_CONTEXT = 'https://mesh.dev/ns/end/v1'
export const END_TYPE = 'EdgeNodeDescriptor'
export const SIGNING_DOMAIN = 'mesh/end/v1\n'
const SIGNING_DOMAIN_BYTES = new TextEncoder().encode(SIGNING_DOMAIN)
/** Descriptors travel in gossip and DHT records; anything bigger than this is refused unread. */
export const MAX_DESCRIPTOR_BYTES = 64 * 1024
export const DEFAULT_TTL_MS = 10 * 60 * 1000
/** How far in the future `issued` may be before we call the sender's clock wrong. */
export const DEFAULT_CLOCK_SKEW_MS = 5 * 60 * 1000

export const TRUST_LEVELS = ['unverified', 'member', 'admin', 'root'] as const
export type TrustLevel = typeof TRUST_LEVELS[number]
export const ACCELERATOR_KINDS = ['gpu', 'tpu', 'npu', 'fpga'] as const
export type AcceleratorKind = typeof ACCELERATOR_KINDS[number]

export interface Accelerator { kind: AcceleratorKind, model: string, memoryMb: number }
export interface Neighbour { did: string, rttMs: number }

export interface EdgeNodeDescriptor {
  '@context': typeof END_CONTEXT
  type: typeof END_TYPE
  /** The node's did:key; its key signs the descriptor. */
  id: string
  peerId: string
  addresses: string[]
  network: string
  cpu: { cores: number, arch: string, model: string }
  memory: { totalMb: number, freeMb: number }
  accelerators: Accelerator[]
  region: string
  zone: string
  geo?: { lat: number, lon: number }
  runtimes: string[]
  latency: { coordinate: Coordinate, neighbours: Neighbour[] }
  /** A claim: only as good as `credential`, which the node must verify before trusting the level. */
  trust: { level: TrustLevel, credential?: string }
  load: { cpu: number, invocations: number }
  capacity: { slots: number, freeSlots: number }
  software: { name: string, version: string }
  issued: string
  expires: string
  /** Monotonic per node: a higher seq from the same id replaces a lower one. */
  seq: number
}

export interface SignedDescriptor {
  descriptor: EdgeNodeDescriptor
  /** The did:key that signed; must equal descriptor.id. */
  signer: string
  signature: Uint8Array
}

export type DescriptorErrorReason = 'malformed' | 'too-large' | 'schema' | 'bad-signature' | 'expired' | 'not-yet-valid' | 'wrong-key'

export class DescriptorError extends Error {
  name = 'DescriptorError'
  readonly reason: DescriptorErrorReason
  constructor (reason: DescriptorErrorReason, message: string) {
    super(message)
    this.reason = reason
  }
}

function loadJson (file: string): unknown {
  return JSON.parse(readFileSync(new URL(file, import.meta.url), 'utf8'))
}

export const END_SCHEMA = loadJson('./end.schema.json') as Record<string, unknown>
const CONTEXT_DOCUMENT = loadJson('./context.jsonld')

/** The JSON-LD context document for END_CONTEXT, for the node to serve locally. */
export function contextDocument (): unknown {
  return structuredClone(CONTEXT_DOCUMENT)
}

const ajv = new Ajv({ allErrors: false, strict: true })
addFormatsModule.default(ajv, ['date-time'])
const validateSchema = ajv.compile(END_SCHEMA)

/** Schema plus the cross-field rules JSON Schema cannot say; throws DescriptorError('schema'). */
export function validateDescriptor (value: unknown): asserts value is EdgeNodeDescriptor {
  if (!validateSchema(value)) {
    const e = validateSchema.errors?.[0]
    const where = e?.instancePath === '' || e?.instancePath === undefined ? 'descriptor' : e.instancePath
    throw new DescriptorError('schema', `invalid descriptor: ${where} ${e?.message ?? 'is invalid'}`)
  }
  const d = value as EdgeNodeDescriptor
  if (d.capacity.freeSlots > d.capacity.slots) throw new DescriptorError('schema', 'invalid descriptor: capacity.freeSlots exceeds capacity.slots')
  if (d.memory.freeMb > d.memory.totalMb) throw new DescriptorError('schema', 'invalid descriptor: memory.freeMb exceeds memory.totalMb')
  if (Date.parse(d.expires) <= Date.parse(d.issued)) throw new DescriptorError('schema', 'invalid descriptor: expires is not after issued')
}

/**
 * Keys already derived, by `did peerId`: deriving one (base58 decode, a peer ID and its CID) cost
 * more than the signature check, and every republished descriptor of a node names the same pair.
 */
const derivedKeys = new BoundedCache<string, Uint8Array>({ maxEntries: 4096 })

/** The descriptor's key, from its DID; also checks that peerId names the same key. */
function keyOf (d: EdgeNodeDescriptor): Uint8Array {
  const pair = `${d.id} ${d.peerId}`
  const known = derivedKeys.get(pair)
  if (known !== undefined) return known
  let raw: Uint8Array
  try {
    raw = ed25519FromDidKey(d.id)
    if (peerIdFromDid(d.id).toString() !== d.peerId) throw new DescriptorError('wrong-key', `peerId ${d.peerId} is not the key of ${d.id}`)
  } catch (err) {
    if (err instanceof DescriptorError) throw err
    const why = err instanceof InvalidDidError ? err.message : 'not an Ed25519 public key'
    throw new DescriptorError('wrong-key', `descriptor id names no usable key: ${why}`)
  }
  derivedKeys.set(pair, raw)
  return raw
}

/**
 * Public keys as node:crypto key objects, by raw key. @libp2p/crypto builds a key object from a
 * JWK on every verify, which was a third of a descriptor check's CPU; a mesh re-verifies the same
 * few hundred keys all day. Bounded: past the limit the oldest entries go.
 */
const keyObjects = new Map<string, KeyObject>()
const MAX_KEY_OBJECTS = 4096

function verifyEd25519 (raw: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
  const id = Buffer.from(raw).toString('base64url')
  let key = keyObjects.get(id)
  if (key === undefined) {
    key = ed25519KeyObject(raw)
    if (keyObjects.size >= MAX_KEY_OBJECTS) keyObjects.delete(keyObjects.keys().next().value!)
    keyObjects.set(id, key)
  }
  return cryptoVerify(null, data, key, signature)
}

function signingInput (d: EdgeNodeDescriptor): Uint8Array {
  let body: Uint8Array
  try {
    body = dagCbor.encode(d)
  } catch (err) {
    // e.g. a field present but `undefined`, which JSON Schema lets through and CBOR cannot carry.
    throw new DescriptorError('schema', `descriptor is not encodable: ${(err as Error).message}`)
  }
  const domain = SIGNING_DOMAIN_BYTES
  const out = new Uint8Array(domain.length + body.length)
  out.set(domain)
  out.set(body, domain.length)
  return out
}

export interface OsFacts {
  cpus: () => Array<{ model: string }>
  totalmem: () => number
  freemem: () => number
  arch: () => string
  loadavg: () => number[]
}

export interface DescriptorFacts {
  did: string
  network: string
  region: string
  /** Defaults to the region. */
  zone?: string
  addresses?: string[]
  geo?: { lat: number, lon: number }
  accelerators?: Accelerator[]
  runtimes?: string[]
  coordinate?: Coordinate
  neighbours?: Neighbour[]
  trust?: { level: TrustLevel, credential?: string }
  /** Defaults: cpu from the 1-minute load average over the core count, 0 invocations. */
  load?: { cpu?: number, invocations?: number }
  /** Defaults to one slot per core, all free. */
  capacity?: { slots: number, freeSlots: number }
  software: { name: string, version: string }
  /** ms since the epoch; defaults to Date.now(). */
  now?: number
  ttlMs?: number
  /** Defaults to `now`, which stays monotonic across restarts without storing anything. */
  seq?: number
  /** The host facts; defaults to node:os. Tests inject their own. */
  os?: OsFacts
}

const MB = 1024 * 1024

/** A descriptor of this host from OS facts and configuration; throws DescriptorError('schema') on bad facts. */
export function buildDescriptor (facts: DescriptorFacts): EdgeNodeDescriptor {
  const host = facts.os ?? os
  const now = facts.now ?? Date.now()
  const ttlMs = facts.ttlMs ?? DEFAULT_TTL_MS
  const cpus = host.cpus()
  // os.cpus() is empty in some containers; one core is the honest floor.
  const cores = Math.max(cpus.length, 1)
  const loadCpu = facts.load?.cpu ?? Math.round(Math.min(Math.max((host.loadavg()[0] ?? 0) / cores, 0), 1) * 1000) / 1000
  let peerId: string
  try {
    peerId = peerIdFromDid(facts.did).toString()
  } catch (err) {
    throw new DescriptorError('wrong-key', `not a node DID: ${(err as Error).message}`)
  }
  const d: EdgeNodeDescriptor = {
    '@context': END_CONTEXT,
    type: END_TYPE,
    id: facts.did,
    peerId,
    addresses: facts.addresses ?? [],
    network: facts.network,
    cpu: { cores, arch: host.arch(), model: (cpus[0]?.model ?? 'unknown').trim().slice(0, 256) },
    memory: { totalMb: Math.max(Math.floor(host.totalmem() / MB), 1), freeMb: Math.floor(host.freemem() / MB) },
    accelerators: facts.accelerators ?? [],
    region: facts.region,
    zone: facts.zone ?? facts.region,
    runtimes: facts.runtimes ?? ['wasi-preview1'],
    latency: { coordinate: facts.coordinate ?? createCoordinate(), neighbours: facts.neighbours ?? [] },
    trust: facts.trust ?? { level: 'unverified' },
    load: { cpu: loadCpu, invocations: facts.load?.invocations ?? 0 },
    capacity: facts.capacity ?? { slots: cores, freeSlots: cores },
    software: facts.software,
    issued: new Date(now).toISOString(),
    expires: new Date(now + ttlMs).toISOString(),
    seq: facts.seq ?? now
  }
  if (facts.geo !== undefined) d.geo = facts.geo
  // Free memory can momentarily read above total on some kernels; never publish that.
  d.memory.freeMb = Math.min(d.memory.freeMb, d.memory.totalMb)
  validateDescriptor(d)
  return d
}

/** Sign with the node's key, which must be the key of `desc.id` (else DescriptorError('wrong-key')). */
export async function signDescriptor (desc: EdgeNodeDescriptor, privateKey: PrivateKey): Promise<SignedDescriptor> {
  validateDescriptor(desc)
  keyOf(desc)
  if (privateKey.type !== 'Ed25519') throw new DescriptorError('wrong-key', `descriptors are signed with Ed25519 keys, got ${privateKey.type}`)
  const signer = didKeyFromEd25519(privateKey.publicKey.raw)
  if (signer !== desc.id) throw new DescriptorError('wrong-key', `key ${signer} cannot sign for ${desc.id}`)
  const descriptor = structuredClone(desc)
  const signature = await privateKey.sign(signingInput(descriptor))
  return { descriptor, signer, signature }
}

export function encodeSigned (signed: SignedDescriptor): Uint8Array {
  return dagCbor.encode({ descriptor: signed.descriptor, signer: signed.signer, signature: signed.signature })
}

export interface VerifyOptions {
  /** ms since the epoch; defaults to Date.now(). */
  now?: number
  clockSkewMs?: number
}

export interface DecodeOptions extends VerifyOptions {
  maxBytes?: number
}

/**
 * Checks an envelope however it arrived (dag-cbor, or dag-json over HTTP): shape, schema, that the
 * signer is the descriptor's own DID, the signature, and the validity window. Returns the envelope.
 */
export async function verifySigned (envelope: unknown, options: VerifyOptions = {}): Promise<SignedDescriptor> {
  if (envelope === null || typeof envelope !== 'object' || Array.isArray(envelope)) {
    throw new DescriptorError('malformed', 'a signed descriptor is a map of descriptor, signer, signature')
  }
  const keys = Object.keys(envelope).sort().join(',')
  if (keys !== 'descriptor,signature,signer') throw new DescriptorError('malformed', `a signed descriptor has exactly descriptor, signer, signature; got ${keys}`)
  const { descriptor, signer, signature } = envelope as Record<string, unknown>
  if (!(signature instanceof Uint8Array) || signature.length !== 64) throw new DescriptorError('malformed', 'signature must be 64 bytes')
  if (typeof signer !== 'string') throw new DescriptorError('malformed', 'signer must be a DID string')
  validateDescriptor(descriptor)
  const raw = keyOf(descriptor)
  if (signer !== descriptor.id) throw new DescriptorError('wrong-key', `descriptor for ${descriptor.id} is signed by ${signer}`)
  let ok: boolean
  try {
    ok = verifyEd25519(raw, signingInput(descriptor), signature)
  } catch {
    ok = false
  }
  if (!ok) throw new DescriptorError('bad-signature', `signature does not verify for ${descriptor.id}`)
  const now = options.now ?? Date.now()
  if (Date.parse(descriptor.expires) <= now) throw new DescriptorError('expired', `descriptor of ${descriptor.id} expired at ${descriptor.expires}`)
  if (Date.parse(descriptor.issued) > now + (options.clockSkewMs ?? DEFAULT_CLOCK_SKEW_MS)) {
    throw new DescriptorError('not-yet-valid', `descriptor of ${descriptor.id} is issued in the future (${descriptor.issued})`)
  }
  return { descriptor, signer, signature }
}

/** Decode and verify bytes from the network: size first, then everything verifySigned checks. */
export async function decodeSigned (bytes: Uint8Array, options: DecodeOptions = {}): Promise<SignedDescriptor> {
  const max = options.maxBytes ?? MAX_DESCRIPTOR_BYTES
  if (!(bytes instanceof Uint8Array)) throw new DescriptorError('malformed', 'expected bytes')
  if (bytes.length > max) throw new DescriptorError('too-large', `signed descriptor is ${bytes.length} bytes, limit ${max}`)
  let envelope: unknown
  try {
    envelope = dagCbor.decode(bytes)
  } catch (err) {
    throw new DescriptorError('malformed', `not dag-cbor: ${(err as Error).message}`)
  }
  return await verifySigned(envelope, options)
}

/** Whether `incoming` should replace `current` in a registry: same node, higher seq. */
export function supersedes (incoming: EdgeNodeDescriptor, current: EdgeNodeDescriptor | undefined): boolean {
  return current === undefined || (incoming.id === current.id && incoming.seq > current.seq)
}

export function trustRank (level: TrustLevel): number {
  return TRUST_LEVELS.indexOf(level)
}

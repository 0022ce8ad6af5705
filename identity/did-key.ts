// did:key for Ed25519 keys, and the mapping between a node's DID and its libp2p peer ID.
// A did:key is `did:key:z` + base58btc(multicodec ed25519-pub (0xed 0x01) ‖ 32-byte public key).
import { createPublicKey } from 'node:crypto'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey, peerIdFromString } from '@libp2p/peer-id'
import { base58btc } from 'multiformats/bases/base58'
import { BoundedCache } from './verification-cache.ts'
import type { PeerId } from '@libp2p/interface'
import type { KeyObject } from 'node:crypto'

const ED25519_PUB = Uint8Array.of(0xed, 0x01)

export class InvalidDidError extends Error {
  name = 'InvalidDidError'
}

export function didKeyFromEd25519 (publicKey: Uint8Array): string {
  if (publicKey.length !== 32) throw new InvalidDidError(`an Ed25519 public key is 32 bytes, got ${publicKey.length}`)
  const bytes = new Uint8Array(34)
  bytes.set(ED25519_PUB)
  bytes.set(publicKey, 2)
  return `did:key:${base58btc.encode(bytes)}`
}

/** The raw Ed25519 public key a `did:key` names; throws InvalidDidError for anything else. */
export function ed25519FromDidKey (did: string): Uint8Array {
  if (!did.startsWith('did:key:z')) throw new InvalidDidError(`not an Ed25519 did:key: ${did}`)
  let bytes: Uint8Array
  try {
    bytes = base58btc.decode(did.slice('did:key:'.length))
  } catch {
    throw new InvalidDidError(`malformed did:key (bad base58btc): ${did}`)
  }
  if (bytes.length !== 34 || bytes[0] !== ED25519_PUB[0] || bytes[1] !== ED25519_PUB[1]) {
    throw new InvalidDidError(`did:key is not an Ed25519 key: ${did}`)
  }
  return bytes.subarray(2)
}

/**
 * DIDs already derived, by peer ID string (which a PeerId caches): a node derives the DID of the
 * peer behind every probe, stream and message it checks, and each is a base58 encode.
 */
const didsByPeer = new BoundedCache<string, string>({ maxEntries: 4096 })

export function didFromPeerId (peerId: PeerId): string {
  if (peerId.type !== 'Ed25519') throw new InvalidDidError(`peer ${peerId} has a ${peerId.type} key; Mesh DIDs need Ed25519`)
  const key = peerId.toString()
  let did = didsByPeer.get(key)
  if (did === undefined) {
    did = didKeyFromEd25519(peerId.publicKey.raw)
    didsByPeer.set(key, did)
  }
  return did
}

export function peerIdFromDid (did: string): PeerId {
  return peerIdFromPublicKey(publicKeyFromRaw(ed25519FromDidKey(did)))
}

/** Accepts a peer ID string or a did:key and returns the peer ID. */
export function parsePeerOrDid (text: string): PeerId {
  if (text.startsWith('did:')) return peerIdFromDid(text)
  try {
    return peerIdFromString(text)
  } catch {
    throw new InvalidDidError(`not a peer ID or did:key: ${text}`)
  }
}

// --- DID document -----------------------------------------------------------------------------
// The did:key spec (w3c-ccg did-key-spec v0.7+) expands a did:key with one verification method whose
// fragment is the multibase key itself, referenced from the four signing relationships, plus an
// X25519 keyAgreement method derived from the Ed25519 key (the birational map). key-did-resolver 4
// still emits the pre-v0.7 form (Ed25519VerificationKey2018 + publicKeyBase58, which the spec
// dropped); we emit the current form with the same ids and the same key bytes.

const X25519_PUB = Uint8Array.of(0xec, 0x01)
const P = 2n ** 255n - 19n
const D = mod(-121665n * inverse(121666n))

export type DidKeyFormat = 'Multikey' | 'Ed25519VerificationKey2020'

export interface DidKeyVerificationMethod {
  id: string
  type: string
  controller: string
  publicKeyMultibase: string
}

export interface DidKeyDocument {
  '@context': string[]
  id: string
  verificationMethod: DidKeyVerificationMethod[]
  authentication: string[]
  assertionMethod: string[]
  capabilityDelegation: string[]
  capabilityInvocation: string[]
  keyAgreement: DidKeyVerificationMethod[]
}

const CONTEXTS: Record<DidKeyFormat, string[]> = {
  Multikey: ['https://www.w3.org/ns/did/v1', 'https://w3id.org/security/multikey/v1'],
  Ed25519VerificationKey2020: ['https://www.w3.org/ns/did/v1', 'https://w3id.org/security/suites/ed25519-2020/v1', 'https://w3id.org/security/suites/x25519-2020/v1']
}

/** The DID document of an Ed25519 did:key (throws InvalidDidError, also for a key not on the curve). */
export function didKeyDocument (did: string, format: DidKeyFormat = 'Multikey'): DidKeyDocument {
  const publicKey = ed25519FromDidKey(did)
  const fingerprint = did.slice('did:key:'.length)
  const x25519 = x25519FromEd25519(publicKey, did)
  const keyId = `${did}#${fingerprint}`
  const xFingerprint = base58btc.encode(concat(X25519_PUB, x25519))
  const multikey = format === 'Multikey'
  return {
    '@context': CONTEXTS[format],
    id: did,
    verificationMethod: [{ id: keyId, type: multikey ? 'Multikey' : 'Ed25519VerificationKey2020', controller: did, publicKeyMultibase: fingerprint }],
    authentication: [keyId],
    assertionMethod: [keyId],
    capabilityDelegation: [keyId],
    capabilityInvocation: [keyId],
    keyAgreement: [{ id: `${did}#${xFingerprint}`, type: multikey ? 'Multikey' : 'X25519KeyAgreementKey2020', controller: did, publicKeyMultibase: xFingerprint }]
  }
}

/**
 * Montgomery u = (1 + y) / (1 - y) of an Edwards point (RFC 7748 §4.1). Hand-written because the only
 * implementation around (@noble/curves) is not one of our dependencies. It also checks that the bytes
 * decode to a curve point, which the spec requires, and refuses the identity point (u undefined).
 */
export function x25519FromEd25519 (publicKey: Uint8Array, label = 'key'): Uint8Array {
  const y = edwardsY(publicKey, label)
  let u = mod((1n + y) * inverse(1n - y))
  const out = new Uint8Array(32)
  for (let i = 0; i < 32; i++, u >>= 8n) out[i] = Number(u & 0xffn)
  return out
}

/**
 * A raw Ed25519 public key as a node:crypto key object, for `crypto.verify`. Callers that verify
 * the same keys again and again keep these: building one is most of what @libp2p/crypto's
 * verify costs, and it builds one per call.
 */
export function ed25519KeyObject (publicKey: Uint8Array): KeyObject {
  return createPublicKey({ format: 'jwk', key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(publicKey).toString('base64url') } })
}

/** Throws InvalidDidError unless the bytes are an Ed25519 point a did:key may name (as the spec requires). */
export function assertEd25519Point (publicKey: Uint8Array, label = 'key'): void {
  edwardsY(publicKey, label)
}

/** The y coordinate of an encoded Edwards point, once it is known to decode to a point other than the identity. */
function edwardsY (publicKey: Uint8Array, label: string): bigint {
  if (publicKey.length !== 32) throw new InvalidDidError(`an Ed25519 public key is 32 bytes, got ${publicKey.length}`)
  let y = 0n
  for (let i = 31; i >= 0; i--) y = (y << 8n) | BigInt(publicKey[i])
  const xOdd = y >> 255n
  y &= (1n << 255n) - 1n
  if (y >= P || y === 1n) throw new InvalidDidError(`not a usable Ed25519 public key: ${label}`)
  // x² = (y² - 1) / (d·y² + 1) must be a square; (a/b) and a·b have the same Jacobi symbol, so no
  // inversion is needed for the check
  const num = mod(y * y - 1n)
  const den = mod(D * y * y + 1n)
  if ((num === 0n && xOdd === 1n) || (num !== 0n && jacobi(num * den % P, P) !== 1)) {
    throw new InvalidDidError(`not a point on the Ed25519 curve: ${label}`)
  }
  return y
}

function mod (a: bigint): bigint {
  const r = a % P
  return r < 0n ? r + P : r
}

/** a⁻¹ mod P by the extended Euclidean algorithm: several times faster than Fermat's a^(P-2) in BigInt. */
function inverse (a: bigint): bigint {
  let t = 0n
  let nextT = 1n
  let r = P
  let nextR = mod(a)
  while (nextR !== 0n) {
    const q = r / nextR
    const t2 = t - q * nextT
    t = nextT
    nextT = t2
    const r2 = r - q * nextR
    r = nextR
    nextR = r2
  }
  return t < 0n ? t + P : t
}

/** The Jacobi symbol (a/n) for odd n (binary algorithm); for prime n, 1 iff a is a non-zero square. */
function jacobi (a: bigint, n: bigint): number {
  a %= n
  let sign = 1
  while (a !== 0n) {
    while ((a & 1n) === 0n) {
      a >>= 1n
      const r = n & 7n
      if (r === 3n || r === 5n) sign = -sign
    }
    const t = a
    a = n
    n = t
    if ((a & 3n) === 3n && (n & 3n) === 3n) sign = -sign
    a %= n
  }
  return n === 1n ? sign : 0
}

function concat (a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length)
  out.set(a)
  out.set(b, a.length)
  return out
}

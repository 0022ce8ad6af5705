// Verifiable credentials as vc-jwt (W3C VC 1.1 JWT encoding, EdDSA), issued with a node's libp2p
// Ed25519 key: the issuer is that key's did:key. Verification gives a typed result or a
// CredentialError whose `reason` a caller can switch on; nothing a peer sends can crash it.
//
// Verification has a fast path for EdDSA credentials whose issuer is a did:key or an Ed25519
// did:jwk: these DIDs are self-certifying (the key is in the DID, no resolver can say otherwise),
// so the signature is checked with node:crypto (OpenSSL, ~10x did-jwt's pure-JS Ed25519) against
// a KeyObject cached per DID, and the outcome depends on the JWT string alone. That outcome is
// cached (bounded LRU keyed by the exact JWT): a credential seen before is not verified again, but
// its validity period is checked against `now` on every call. Other issuers (did:web, anything a
// caller's resolver adds) go through did-jwt-vc each time, since their documents can change.
// Revocation is never cached here: callers (identity/network.ts checkMembership) check it each time.
import { randomUUID, verify as verifySignature } from 'node:crypto'
import { createVerifiableCredentialJwt, verifyCredential as verifyVcJwt } from 'did-jwt-vc'
import { JWT_ERROR } from 'did-jwt'
import { base64url } from 'multiformats/bases/base64'
import { assertEd25519Point, didKeyFromEd25519, ed25519FromDidKey, ed25519KeyObject, InvalidDidError } from './did-key.ts'
import { didResolver } from './resolver.ts'
import { BoundedCache } from './verification-cache.ts'
import type { KeyObject } from 'node:crypto'
import type { PrivateKey } from '@libp2p/interface'
import type { Resolvable } from 'did-resolver'

export type CredentialErrorReason =
  'malformed' | 'too-large' | 'unsupported-algorithm' | 'bad-signature' | 'expired' | 'not-yet-valid' | 'unresolvable-issuer'

export class CredentialError extends Error {
  name = 'CredentialError'
  readonly reason: CredentialErrorReason
  constructor (reason: CredentialErrorReason, message: string) {
    super(message)
    this.reason = reason
  }
}

export interface IssueCredentialInit {
  /** An Ed25519 libp2p private key; the issuer is its did:key. */
  key: PrivateKey
  /** The subject's DID. */
  subject: string
  /** Credential type(s) besides `VerifiableCredential`. */
  type?: string | string[]
  /** Claims about the subject (credentialSubject minus `id`). */
  claims?: Record<string, unknown>
  /** Lifetime in seconds from issuance; or give `expiresAt`. Omit both for no expiry. */
  expiresIn?: number
  expiresAt?: Date
  /** Defaults to a fresh `urn:uuid:`. */
  id?: string
  /** Defaults to now; lets tests and back-dated issuance be deterministic. */
  issuedAt?: Date
}

export interface VerifyCredentialOptions {
  /** Defaults to an offline resolver (did:key, did:jwk): no network unless the caller asks for it. */
  resolver?: Resolvable
  now?: Date
  /** Bound on the JWT string (default 16 KiB). */
  maxBytes?: number
  /** Tolerated clock difference between issuer and verifier (default 60 s). */
  skewSeconds?: number
  /** Use (and fill) the cache of verified credentials (default true); false verifies from scratch. */
  cache?: boolean
}

export interface VerifiedCredential {
  issuer: string
  subject: string
  /** All types, `VerifiableCredential` included. */
  types: string[]
  claims: Record<string, unknown>
  id: string | undefined
  issuedAt: Date
  expiresAt: Date | undefined
  jwt: string
}

const VC_CONTEXT = 'https://www.w3.org/2018/credentials/v1'
const DEFAULT_MAX_BYTES = 16 * 1024
/** did-jwt-vc refuses timestamps of 12 digits and more (milliseconds by mistake); so do we. */
const MAX_TIMESTAMP = 100_000_000_000
const offline = didResolver({ web: false })

/** What verification established about a JWT that depends on the string alone (not on `now`). */
interface Checked {
  issuer: string
  subject: string
  types: readonly string[]
  claims: Readonly<Record<string, unknown>>
  id: string | undefined
  /** credentialSubject.id, which must be absent or equal to sub. */
  subjectId: unknown
  issuedAt: number
  notBefore: number | undefined
  expiresAt: number | undefined
}

/** Verified credentials by exact JWT; bounded in entries and in characters held. */
const verified = new BoundedCache<string, Checked & { jwt: string }>({ maxEntries: 10_000, maxWeight: 16 * 1024 * 1024, weigh: c => c.jwt.length })
/** Public keys of self-certifying issuers; null marks a DID whose key is not a usable point. */
const issuerKeys = new BoundedCache<string, KeyObject | null>({ maxEntries: 4096 })
const stats = { hits: 0, fast: 0, slow: 0 }
const utf8 = new TextDecoder('utf-8', { fatal: true })

/** How verifications were served so far (for benchmarks and tests). */
export function credentialCacheStats (): { hits: number, fast: number, slow: number, entries: number } {
  return { ...stats, entries: verified.size }
}

/** Empties the caches of verified credentials and issuer keys. */
export function clearCredentialCache (): void {
  verified.clear()
  issuerKeys.clear()
}

/** Signs with a libp2p key directly, so the raw private key never leaves it. */
export function jwtSigner (key: PrivateKey): (data: string | Uint8Array) => Promise<string> {
  if (key.type !== 'Ed25519') throw new TypeError(`credentials are signed with Ed25519 keys, got ${key.type}`)
  return async data => base64url.baseEncode(await key.sign(typeof data === 'string' ? new TextEncoder().encode(data) : data))
}

export function didOfKey (key: PrivateKey): string {
  if (key.type !== 'Ed25519') throw new TypeError(`Mesh DIDs need Ed25519 keys, got ${key.type}`)
  return didKeyFromEd25519(key.publicKey.raw)
}

export async function issueCredential (init: IssueCredentialInit): Promise<string> {
  const issuer = didOfKey(init.key)
  const iat = seconds(init.issuedAt ?? new Date())
  const exp = init.expiresAt != null ? seconds(init.expiresAt) : init.expiresIn != null ? iat + Math.floor(init.expiresIn) : undefined
  if (exp != null && !(exp > iat)) throw new TypeError('a credential must expire after it is issued')
  if (typeof init.subject !== 'string' || !init.subject.startsWith('did:')) throw new TypeError(`the subject must be a DID, got ${String(init.subject)}`)
  const types = init.type == null ? [] : Array.isArray(init.type) ? init.type : [init.type]
  const { id: _ignored, ...claims } = init.claims ?? {}
  return await createVerifiableCredentialJwt({
    sub: init.subject,
    nbf: iat,
    iat,
    ...(exp == null ? {} : { exp }),
    jti: init.id ?? `urn:uuid:${randomUUID()}`,
    vc: {
      '@context': [VC_CONTEXT],
      type: ['VerifiableCredential', ...types.filter(t => t !== 'VerifiableCredential')],
      // the subject id stays in credentialSubject too: did-jwt-vc refuses an empty one
      credentialSubject: { id: init.subject, ...claims }
    }
  }, { did: issuer, signer: jwtSigner(init.key), alg: 'EdDSA' }, { removeOriginalFields: false })
}

export async function verifyCredential (jwt: string, options: VerifyCredentialOptions = {}): Promise<VerifiedCredential> {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES
  if (typeof jwt !== 'string') throw new CredentialError('malformed', 'a credential is a JWT string')
  if (jwt.length > maxBytes) throw new CredentialError('too-large', `credential is ${jwt.length} bytes, the limit is ${maxBytes}`)
  const useCache = options.cache !== false
  const cached = useCache ? verified.get(jwt) : undefined
  if (cached != null) {
    stats.hits++
    try {
      return withinValidity(cached, jwt, options)
    } catch (err) {
      // expired for good at this `now`: make room (asked about an earlier time, it is verified afresh)
      if ((err as CredentialError).reason === 'expired') verified.delete(jwt)
      throw err
    }
  }

  const { header, payload } = decodeJwt(jwt)
  // checked before any signature work: only EdDSA, so neither `none` nor an HMAC confusion can get through
  if (header.alg !== 'EdDSA' && header.alg !== 'Ed25519') {
    throw new CredentialError('unsupported-algorithm', `credential algorithm ${String(header.alg)} is not EdDSA`)
  }
  const checked = claimsOf(payload)

  const key = selfCertifyingKey(checked.issuer)
  if (key !== undefined) {
    stats.fast++
    if (key === null) throw new CredentialError('unresolvable-issuer', `cannot resolve the credential issuer (${checked.issuer.slice(0, 120)} names no usable Ed25519 key)`)
    const dot = jwt.lastIndexOf('.')
    const signature = base64urlBytes(jwt.slice(dot + 1))
    if (signature?.length !== 64 || !verifySignature(null, Buffer.from(jwt.slice(0, dot), 'latin1'), key, signature)) {
      throw new CredentialError('bad-signature', 'credential signature does not match its issuer')
    }
    sameSubject(checked)
    if (useCache) verified.set(jwt, { ...checked, jwt })
  } else {
    stats.slow++
    try {
      // time checks are ours (withinValidity), so that `now` and the skew are one definition with clear reasons
      await verifyVcJwt(jwt, (options.resolver ?? offline) as Parameters<typeof verifyVcJwt>[1], {
        proofPurpose: 'assertionMethod',
        policies: { issuanceDate: false, expirationDate: false, aud: false }
      })
    } catch (err) {
      throw fromLibraryError(err)
    }
    sameSubject(checked)
  }
  return withinValidity(checked, jwt, options)
}

/** Checked once the signature holds, so that a tampered `sub` reads as what it is: a bad signature. */
function sameSubject (checked: Checked): void {
  if (checked.subjectId != null && checked.subjectId !== checked.subject) {
    throw new CredentialError('malformed', 'credential names two subjects (sub and credentialSubject.id differ)')
  }
}

/** Everything about the payload that does not need the signature: shape, W3C data model, times. */
function claimsOf (payload: Record<string, unknown>): Checked {
  const iss = payload.iss
  const sub = payload.sub
  const vc = payload.vc as Record<string, unknown> | undefined
  if (typeof iss !== 'string' || typeof sub !== 'string' || typeof vc !== 'object' || vc === null) {
    throw new CredentialError('malformed', 'credential lacks iss, sub or vc')
  }
  for (const claim of ['iat', 'nbf', 'exp'] as const) {
    const value = payload[claim]
    if (value != null && !(Number.isSafeInteger(value) && (value as number) < MAX_TIMESTAMP)) {
      throw new CredentialError('malformed', `credential ${claim} is not a time in seconds`)
    }
  }
  const types = Array.isArray(vc.type) ? vc.type : [vc.type]
  if (!types.every(t => typeof t === 'string')) throw new CredentialError('malformed', 'credential types are not strings')
  // the W3C data model as did-jwt-vc checks it, here so that both verification paths agree
  if (!types.includes('VerifiableCredential')) throw new CredentialError('malformed', 'invalid credential: type is missing VerifiableCredential')
  const contexts = Array.isArray(vc['@context']) ? vc['@context'] : [vc['@context']]
  if (!contexts.includes(VC_CONTEXT)) throw new CredentialError('malformed', `invalid credential: @context is missing ${VC_CONTEXT}`)
  const subject = vc.credentialSubject
  if (typeof subject !== 'object' || subject === null || Array.isArray(subject)) throw new CredentialError('malformed', 'credential has no credentialSubject')
  const { id: subjectId, ...claims } = subject as Record<string, unknown>
  const iat = payload.iat as number | undefined
  const nbf = payload.nbf as number | undefined
  return {
    issuer: iss,
    subject: sub,
    types: Object.freeze([...types as string[]]),
    claims: deepFreeze(claims),
    id: typeof payload.jti === 'string' ? payload.jti : undefined,
    subjectId,
    issuedAt: iat ?? nbf ?? 0,
    notBefore: nbf ?? iat,
    expiresAt: payload.exp as number | undefined
  }
}

/** The validity period against `now` (with skew), every time: a cached credential still expires. */
function withinValidity (checked: Checked, jwt: string, options: VerifyCredentialOptions): VerifiedCredential {
  const now = seconds(options.now ?? new Date())
  const skew = options.skewSeconds ?? 60
  const { notBefore, expiresAt } = checked
  if (notBefore != null && notBefore > now + skew) throw new CredentialError('not-yet-valid', `credential is not valid before ${iso(notBefore)}`)
  if (expiresAt != null && expiresAt <= now - skew) throw new CredentialError('expired', `credential expired at ${iso(expiresAt)}`)
  return {
    issuer: checked.issuer,
    subject: checked.subject,
    types: checked.types as string[],
    claims: checked.claims as Record<string, unknown>,
    id: checked.id,
    issuedAt: new Date(checked.issuedAt * 1000),
    expiresAt: expiresAt == null ? undefined : new Date(expiresAt * 1000),
    jwt
  }
}

/**
 * The key of a did:key (Ed25519) or an Ed25519 did:jwk issuer, as a node:crypto KeyObject; null if
 * the DID is of that kind but names no usable key; undefined for anything else (did-jwt decides).
 */
function selfCertifyingKey (issuer: string): KeyObject | null | undefined {
  const known = issuerKeys.get(issuer)
  if (known !== undefined) return known
  let raw: Uint8Array
  if (issuer.startsWith('did:key:z6Mk') && issuer.length <= 64 && !/[#?/;]/.test(issuer)) {
    try {
      raw = ed25519FromDidKey(issuer)
      assertEd25519Point(raw, issuer)
    } catch (err) {
      if (!(err instanceof InvalidDidError)) throw err
      issuerKeys.set(issuer, null)
      return null
    }
  } else if (issuer.startsWith('did:jwk:') && issuer.length <= 512 && !/[#?/;]/.test(issuer)) {
    const jwk = jwkOf(issuer.slice('did:jwk:'.length))
    if (jwk == null) return undefined
    raw = jwk
  } else {
    return undefined
  }
  const key = ed25519KeyObject(raw)
  issuerKeys.set(issuer, key)
  return key
}

/** The raw key of a did:jwk that holds a plain Ed25519 signing key; undefined for any other JWK. */
function jwkOf (id: string): Uint8Array | undefined {
  let jwk: Record<string, unknown>
  try {
    jwk = jsonPart(id, 'did:jwk')
  } catch {
    return undefined
  }
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || 'd' in jwk || jwk.use === 'enc' || typeof jwk.x !== 'string') return undefined
  const x = base64urlBytes(jwk.x)
  return x?.length === 32 ? x : undefined
}

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

/**
 * Strict base64url (canonical, no padding), as multiformats decodes it, at Buffer's speed: Buffer
 * alone would skip stray characters and ignore non-zero bits in the last character.
 */
function base64urlBytes (text: string, alphabetChecked = false): Buffer | undefined {
  if (!alphabetChecked && !/^[A-Za-z0-9_-]*$/.test(text)) return undefined
  const tail = text.length % 4
  if (tail === 1) return undefined
  if (tail !== 0) {
    const last = BASE64URL.indexOf(text[text.length - 1])
    if ((last & (tail === 2 ? 0x0f : 0x03)) !== 0) return undefined
  }
  return Buffer.from(text, 'base64url')
}

function deepFreeze<T> (value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}

/** Header and payload of a compact JWT, without verifying it; CredentialError('malformed') on garbage. */
export function decodeJwt (jwt: string): { header: Record<string, unknown>, payload: Record<string, unknown> } {
  const parts = typeof jwt === 'string' ? jwt.split('.') : []
  if (parts.length !== 3 || parts.some(p => !/^[A-Za-z0-9_-]*$/.test(p)) || parts[2] === '') {
    throw new CredentialError('malformed', 'not a compact JWT (three base64url parts)')
  }
  const header = jsonPart(parts[0], 'header', true)
  const payload = jsonPart(parts[1], 'payload', true)
  return { header, payload }
}

function jsonPart (part: string, what: string, alphabetChecked = false): Record<string, unknown> {
  let value: unknown
  try {
    const bytes = base64urlBytes(part, alphabetChecked)
    if (bytes == null) throw new SyntaxError('not canonical base64url')
    value = JSON.parse(utf8.decode(bytes))
  } catch {
    throw new CredentialError('malformed', `JWT ${what} is not base64url JSON`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new CredentialError('malformed', `JWT ${what} is not an object`)
  return value as Record<string, unknown>
}

function fromLibraryError (err: unknown): CredentialError {
  const message = String((err as Error)?.message ?? err)
  if (message.startsWith(JWT_ERROR.RESOLVER_ERROR)) return new CredentialError('unresolvable-issuer', `cannot resolve the credential issuer (${message})`)
  if (message.startsWith(JWT_ERROR.INVALID_SIGNATURE) || message.startsWith(JWT_ERROR.NO_SUITABLE_KEYS)) {
    return new CredentialError('bad-signature', 'credential signature does not match its issuer')
  }
  if (message.startsWith(JWT_ERROR.NOT_SUPPORTED)) return new CredentialError('unsupported-algorithm', message)
  return new CredentialError('malformed', `invalid credential: ${message}`)
}

function seconds (date: Date): number {
  const ms = date.getTime()
  if (!Number.isFinite(ms)) throw new TypeError('invalid date')
  return Math.floor(ms / 1000)
}

function iso (secs: number): string {
  return new Date(secs * 1000).toISOString()
}

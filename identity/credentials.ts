// Verifiable credentials as vc-jwt (W3C VC 1.1 JWT encoding, EdDSA), issued with a node's libp2p
// Ed25519 key: the issuer is that key's did:key. Verification gives a typed result or a
// CredentialError whose `reason` a caller can switch on; nothing a peer sends can crash it.
import { randomUUID } from 'node:crypto'
import { createVerifiableCredentialJwt, verifyCredential as verifyVcJwt } from 'did-jwt-vc'
import { JWT_ERROR } from 'did-jwt'
import { base64url } from 'multiformats/bases/base64'
import { didKeyFromEd25519 } from './did-key.ts'
import { didResolver } from './resolver.ts'
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
const offline = didResolver({ web: false })

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
  const { header, payload } = decodeJwt(jwt)
  // checked before did-jwt sees it: only EdDSA, so neither `none` nor an HMAC confusion can get through
  if (header.alg !== 'EdDSA' && header.alg !== 'Ed25519') {
    throw new CredentialError('unsupported-algorithm', `credential algorithm ${String(header.alg)} is not EdDSA`)
  }
  const iss = payload.iss
  const sub = payload.sub
  const vc = payload.vc as Record<string, unknown> | undefined
  if (typeof iss !== 'string' || typeof sub !== 'string' || typeof vc !== 'object' || vc === null) {
    throw new CredentialError('malformed', 'credential lacks iss, sub or vc')
  }
  for (const claim of ['iat', 'nbf', 'exp'] as const) {
    if (payload[claim] != null && !Number.isSafeInteger(payload[claim])) throw new CredentialError('malformed', `credential ${claim} is not a time in seconds`)
  }
  const types = Array.isArray(vc.type) ? vc.type : [vc.type]
  if (!types.every(t => typeof t === 'string')) throw new CredentialError('malformed', 'credential types are not strings')
  const subject = vc.credentialSubject
  if (typeof subject !== 'object' || subject === null || Array.isArray(subject)) throw new CredentialError('malformed', 'credential has no credentialSubject')

  try {
    // time checks are ours (below), so that `now` and the skew are one definition with clear reasons
    await verifyVcJwt(jwt, (options.resolver ?? offline) as Parameters<typeof verifyVcJwt>[1], {
      proofPurpose: 'assertionMethod',
      policies: { issuanceDate: false, expirationDate: false, aud: false }
    })
  } catch (err) {
    throw fromLibraryError(err)
  }

  const subjectId = (subject as { id?: unknown }).id
  if (subjectId != null && subjectId !== sub) throw new CredentialError('malformed', 'credential names two subjects (sub and credentialSubject.id differ)')

  const now = seconds(options.now ?? new Date())
  const skew = options.skewSeconds ?? 60
  const notBefore = (payload.nbf ?? payload.iat) as number | undefined
  if (notBefore != null && notBefore > now + skew) throw new CredentialError('not-yet-valid', `credential is not valid before ${iso(notBefore)}`)
  const exp = payload.exp as number | undefined
  if (exp != null && exp <= now - skew) throw new CredentialError('expired', `credential expired at ${iso(exp)}`)

  const { id: _subjectId, ...claims } = subject as Record<string, unknown>
  return {
    issuer: iss,
    subject: sub,
    types: types as string[],
    claims,
    id: typeof payload.jti === 'string' ? payload.jti : undefined,
    issuedAt: new Date(((payload.iat ?? payload.nbf) as number ?? 0) * 1000),
    expiresAt: exp == null ? undefined : new Date(exp * 1000),
    jwt
  }
}

/** Header and payload of a compact JWT, without verifying it; CredentialError('malformed') on garbage. */
export function decodeJwt (jwt: string): { header: Record<string, unknown>, payload: Record<string, unknown> } {
  const parts = typeof jwt === 'string' ? jwt.split('.') : []
  if (parts.length !== 3 || parts.some(p => !/^[A-Za-z0-9_-]*$/.test(p)) || parts[2] === '') {
    throw new CredentialError('malformed', 'not a compact JWT (three base64url parts)')
  }
  const header = jsonPart(parts[0], 'header')
  const payload = jsonPart(parts[1], 'payload')
  return { header, payload }
}

function jsonPart (part: string, what: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(base64url.baseDecode(part)))
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

// DID resolution for Mesh: did:key and did:jwk offline, did:web over HTTPS, plus whatever methods the
// node adds (e.g. resolution of network members). Built on did-resolver so the result is `Resolvable`
// and plugs straight into did-jwt.
//
// did:web is hand-written rather than taken from web-did-resolver: that package always fetches
// https, has no timeout and reads bodies of any size, and a node must bound all three.
import { Resolver } from 'did-resolver'
import { getResolver as keyDidResolver } from 'key-did-resolver'
import { base64url } from 'multiformats/bases/base64'
import { didKeyDocument, InvalidDidError } from './did-key.ts'
import { BoundedCache } from './verification-cache.ts'
import type { DIDDocument, DIDResolutionResult, DIDResolver, JsonWebKey, ParsedDID, ResolverRegistry, Resolvable } from 'did-resolver'

export type DidResolutionErrorCode =
  'invalid-did' | 'unsupported-method' | 'not-found' | 'network' | 'timeout' | 'insecure' | 'too-large' | 'invalid-document'

export class DidResolutionError extends Error {
  name = 'DidResolutionError'
  readonly code: DidResolutionErrorCode
  readonly did: string
  constructor (code: DidResolutionErrorCode, did: string, message: string) {
    super(message)
    this.code = code
    this.did = did
  }
}

export interface DidResolverInit {
  /** did:web may use plain http, but only for localhost, 127.0.0.1 and [::1] (tests, local demos). */
  allowInsecureLocalhost?: boolean
  /** Resolve did:web at all (default true); false keeps resolution fully offline. */
  web?: boolean
  /** Bound on one resolution, network included (default 10 s). */
  timeoutMs?: number
  /** Bound on a fetched DID document (default 64 KiB). */
  maxDocumentBytes?: number
  /** Extra methods, or overrides of ours, keyed by method name (did-resolver's DIDResolver). */
  methods?: ResolverRegistry
}

export interface DidResolver extends Resolvable {
  /** did-resolver semantics: never throws, errors are in didResolutionMetadata. */
  resolve (didUrl: string, options?: Record<string, unknown>): Promise<DIDResolutionResult>
  /** The DID document, or a DidResolutionError saying why not. */
  resolveDid (did: string): Promise<DIDDocument>
}

const MAX_DID_LENGTH = 4096
const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]'])

export function didResolver (init: DidResolverInit = {}): DidResolver {
  const timeoutMs = init.timeoutMs ?? 10_000
  const registry: ResolverRegistry = {
    key: didKeyMethod(),
    jwk: didJwkMethod(),
    ...(init.web === false ? {} : { web: didWebMethod(init.allowInsecureLocalhost === true, init.maxDocumentBytes ?? 65_536, timeoutMs) }),
    ...init.methods
  }
  // did-resolver's own cache never forgets; ours (did:key documents, below) is bounded
  const inner = new Resolver(registry, { cache: false })
  // Our offline methods answer at once: no timer for them, which costs more than the resolution.
  const local = (['key', 'jwk'] as const).filter(m => init.methods?.[m] == null).map(m => `did:${m}:`)

  async function resolve (didUrl: string, options: Record<string, unknown> = {}): Promise<DIDResolutionResult> {
    if (typeof didUrl !== 'string' || didUrl.length > MAX_DID_LENGTH) return failure('invalidDid', 'DID missing or too long')
    if (local.some(prefix => didUrl.startsWith(prefix))) {
      return await inner.resolve(didUrl, options).catch(err => failure('internalError', String(err?.message ?? err)))
    }
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<DIDResolutionResult>(resolve => {
      timer = setTimeout(() => resolve(failure('timeout', `no answer within ${timeoutMs} ms`)), timeoutMs)
    })
    try {
      // a method resolver that throws must not escape as a crash: report it as a resolution error
      return await Promise.race([inner.resolve(didUrl, options).catch(err => failure('internalError', String(err?.message ?? err))), timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  async function resolveDid (did: string): Promise<DIDDocument> {
    const { didDocument, didResolutionMetadata: meta } = await resolve(did)
    if (meta.error == null && didDocument != null) return didDocument
    const shown = typeof did === 'string' ? did.slice(0, 120) : String(did)
    // one line, whatever a server or TLS library put in the message
    const detail = typeof meta.message === 'string' ? `: ${meta.message.replace(/\s+/g, ' ').trim().slice(0, 300)}` : ''
    const code = CODES[meta.error ?? ''] ?? 'not-found'
    throw new DidResolutionError(code, shown, `cannot resolve ${shown}: ${DESCRIPTIONS[code]}${detail}`)
  }

  return { resolve, resolveDid }
}

const CODES: Record<string, DidResolutionErrorCode> = {
  invalidDid: 'invalid-did',
  unsupportedDidMethod: 'unsupported-method',
  methodNotSupported: 'unsupported-method',
  notFound: 'not-found',
  network: 'network',
  timeout: 'timeout',
  insecure: 'insecure',
  tooLarge: 'too-large',
  invalidDidDocument: 'invalid-document',
  internalError: 'not-found'
}

const DESCRIPTIONS: Record<DidResolutionErrorCode, string> = {
  'invalid-did': 'malformed DID',
  'unsupported-method': 'unsupported DID method',
  'not-found': 'DID document not found',
  network: 'network failure',
  timeout: 'timed out',
  insecure: 'refused insecure URL',
  'too-large': 'DID document too large',
  'invalid-document': 'invalid DID document'
}

function failure (error: string, message?: string): DIDResolutionResult {
  return { didResolutionMetadata: { error, ...(message == null ? {} : { message }) }, didDocument: null, didDocumentMetadata: {} }
}

function success (didDocument: DIDDocument): DIDResolutionResult {
  return { didResolutionMetadata: { contentType: 'application/did+json' }, didDocument, didDocumentMetadata: {} }
}

/**
 * Documents of Ed25519 did:keys, shared by every resolver: a did:key's document is a function of the
 * DID alone, so an entry is never stale, and deriving it (the X25519 key) is the costly part.
 * Frozen, because every caller gets the same object.
 */
const didKeyDocuments = new BoundedCache<string, DIDDocument>({ maxEntries: 4096 })

/** Ed25519 keys get the current spec's document; the other curves go to key-did-resolver. */
function didKeyMethod (): DIDResolver {
  const others = keyDidResolver().key as unknown as DIDResolver
  return async (did, parsed, resolver, options) => {
    if (!parsed.id.startsWith('z6Mk')) return others(did, parsed, resolver, options)
    const cached = didKeyDocuments.get(parsed.did)
    if (cached != null) return success(cached)
    try {
      const document = deepFreeze(didKeyDocument(parsed.did) as unknown as DIDDocument)
      didKeyDocuments.set(parsed.did, document)
      return success(document)
    } catch (err) {
      if (err instanceof InvalidDidError) return failure('invalidDid', err.message)
      throw err
    }
  }
}

function deepFreeze<T> (value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}

/** did:jwk (https://github.com/quartzjer/did-jwk/blob/main/spec.md): the DID is base64url(JWK JSON). */
function didJwkMethod (): DIDResolver {
  return async (_did, parsed) => {
    let jwk: unknown
    try {
      jwk = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(base64url.baseDecode(parsed.id)))
    } catch {
      return failure('invalidDid', 'did:jwk is not base64url-encoded JSON')
    }
    if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk) || typeof (jwk as { kty?: unknown }).kty !== 'string') {
      return failure('invalidDid', 'did:jwk does not hold a JWK')
    }
    if ('d' in jwk) return failure('invalidDid', 'did:jwk holds a private key')
    const did = parsed.did
    const vm = `${did}#0`
    const use = (jwk as { use?: unknown }).use
    const signing = use !== 'enc'
    const encryption = use !== 'sig'
    return success({
      '@context': ['https://www.w3.org/ns/did/v1', 'https://w3id.org/security/suites/jws-2020/v1'],
      id: did,
      verificationMethod: [{ id: vm, type: 'JsonWebKey2020', controller: did, publicKeyJwk: jwk as JsonWebKey }],
      ...(signing ? { assertionMethod: [vm], authentication: [vm], capabilityInvocation: [vm], capabilityDelegation: [vm] } : {}),
      ...(encryption ? { keyAgreement: [vm] } : {})
    })
  }
}

/** The did:web spec's DID -> URL transform; plain http only for loopback hosts and only when allowed. */
export function didWebUrl (did: string, allowInsecureLocalhost = false): URL {
  const parts = did.split(':')
  if (parts.length < 3 || parts[0] !== 'did' || parts[1] !== 'web' || parts.slice(2).some(p => p === '')) {
    throw new DidResolutionError('invalid-did', did, `malformed did:web: ${did}`)
  }
  let segments: string[]
  try {
    segments = parts.slice(2).map(decodeURIComponent)
  } catch {
    throw new DidResolutionError('invalid-did', did, `malformed did:web (bad percent-encoding): ${did}`)
  }
  const [host, ...path] = segments
  if (/[/?#@\\\s]/.test(host) || path.some(s => /[/?#\\]/.test(s) || s === '..' || s === '.')) {
    throw new DidResolutionError('invalid-did', did, `malformed did:web: ${did}`)
  }
  const hostname = host.replace(/:\d+$/, '')
  const scheme = allowInsecureLocalhost && LOOPBACK.has(hostname) ? 'http' : 'https'
  const url = new URL(`${scheme}://${host}/${path.length === 0 ? '.well-known' : path.join('/')}/did.json`)
  return url
}

function isAllowedUrl (url: URL, allowInsecureLocalhost: boolean): boolean {
  if (url.protocol === 'https:') return true
  return url.protocol === 'http:' && allowInsecureLocalhost && LOOPBACK.has(url.hostname)
}

function didWebMethod (allowInsecureLocalhost: boolean, maxBytes: number, timeoutMs: number): DIDResolver {
  return async (did) => {
    let url: URL
    try {
      url = didWebUrl(did, allowInsecureLocalhost)
    } catch (err) {
      return failure('invalidDid', (err as Error).message)
    }
    const signal = AbortSignal.timeout(timeoutMs)
    let response: Response
    // redirects are followed by hand so that none can lead to plain http off loopback
    for (let hops = 0; ; hops++) {
      if (!isAllowedUrl(url, allowInsecureLocalhost)) return failure('insecure', `${url.href} is not https`)
      try {
        response = await fetch(url, { redirect: 'manual', signal, headers: { accept: 'application/did+json, application/json' } })
      } catch (err) {
        if (signal.aborted) return failure('timeout', `${url.href} did not answer within ${timeoutMs} ms`)
        return failure('network', `${url.href}: ${(err as Error).cause instanceof Error ? ((err as Error).cause as Error).message : (err as Error).message}`)
      }
      const location = response.headers.get('location')
      if (response.status < 300 || response.status >= 400 || location == null) break
      await response.body?.cancel()
      if (hops >= 3) return failure('notFound', `${url.href}: too many redirects`)
      url = new URL(location, url)
    }
    if (response.status === 404 || response.status === 410) {
      await response.body?.cancel()
      return failure('notFound', `${url.href} answered ${response.status}`)
    }
    if (!response.ok) {
      await response.body?.cancel()
      return failure('network', `${url.href} answered ${response.status}`)
    }
    let text: string
    try {
      text = await readBounded(response, maxBytes)
    } catch (err) {
      if (err instanceof RangeError) return failure('tooLarge', `${url.href} sent more than ${maxBytes} bytes`)
      if (signal.aborted) return failure('timeout', `${url.href} did not answer within ${timeoutMs} ms`)
      return failure('network', `${url.href}: ${(err as Error).message}`)
    }
    let doc: unknown
    try {
      doc = JSON.parse(text)
    } catch {
      return failure('invalidDidDocument', `${url.href} is not JSON`)
    }
    if (typeof doc !== 'object' || doc === null || (doc as { id?: unknown }).id !== did) {
      return failure('invalidDidDocument', `the document at ${url.href} is not the document of ${did}`)
    }
    return success(doc as DIDDocument)
  }
}

async function readBounded (response: Response, maxBytes: number): Promise<string> {
  const declared = Number(response.headers.get('content-length'))
  if (declared > maxBytes) {
    await response.body?.cancel()
    throw new RangeError('too large')
  }
  const chunks: Uint8Array[] = []
  let size = 0
  for await (const chunk of response.body ?? []) {
    size += chunk.byteLength
    if (size > maxBytes) {
      await response.body?.cancel().catch(() => {})
      throw new RangeError('too large')
    }
    chunks.push(chunk)
  }
  return Buffer.concat(chunks).toString('utf8')
}

export type { DIDDocument, DIDResolutionResult, DIDResolver, ParsedDID, ResolverRegistry, Resolvable }

// The Wasm artifact manifest: what a publisher says about a module it put on IPFS (name, version,
// content CID, length, SHA-256, the WASI imports it needs, its default limits), signed with the
// publisher's libp2p Ed25519 key so that any node can check who published it before running it.
//
// Wire form: one dag-cbor block { manifest, signature }. The manifest links the module's UnixFS
// root as a real CID link, so pinning the manifest block pins the module with it. The detached
// signature covers SIGNING_DOMAIN ‖ dag-cbor(manifest): dag-cbor is canonical, so a verifier
// re-encodes the decoded manifest and gets back the signed bytes; the domain keeps an artifact
// signature from being valid for an END descriptor or anything else the same key signs.
import * as dagCbor from '@ipld/dag-cbor'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { didKeyFromEd25519, ed25519FromDidKey } from '../identity/did-key.ts'
import type { PrivateKey } from '@libp2p/interface'

export const ARTIFACT_TYPE = 'MeshWasmArtifact'
export const SIGNING_DOMAIN = 'mesh/artifact/v1\n'
/** Manifests travel over bitswap and the resolve protocol; anything bigger is refused unread. */
export const MAX_MANIFEST_BYTES = 32 * 1024
/**
 * The largest module the mesh publishes or fetches: 128 MiB, room for 64 MB modules and twice
 * that. A fetch holds one module-sized buffer, so this also bounds what a fetch may allocate.
 */
export const MAX_ARTIFACT_BYTES = 128 * 1024 * 1024
/** A membership credential is a JWT of a few hundred bytes; this bounds what a manifest may carry. */
const MAX_CREDENTIAL_CHARS = 8 * 1024

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
const VERSION = /^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$/

export interface ArtifactLimits {
  memoryBytes?: number
  timeoutMs?: number
  outputBytes?: number
}

export interface ArtifactManifest {
  type: typeof ARTIFACT_TYPE
  name: string
  version: string
  /** UnixFS root (CIDv1, raw leaves) of the module's bytes. */
  cid: CID
  size: number
  /** Hex SHA-256 of the whole module: checked after the fetch, independent of how it was chunked. */
  sha256: string
  /** The publisher's did:key; its key signs the manifest. */
  publisher: string
  /** The wasi_snapshot_preview1 functions the module imports. */
  wasi: string[]
  /** What the publisher suggests; a runtime only ever lowers its own limits with them. */
  limits: ArtifactLimits
  created: string
  /** In a community network: the publisher's membership credential, so others can check it. */
  credential?: string
}

export interface SignedManifest {
  manifest: ArtifactManifest
  signature: Uint8Array
}

export type ArtifactErrorReason = 'malformed' | 'too-large' | 'schema' | 'bad-signature' | 'wrong-content' | 'bad-ref'

export class ArtifactError extends Error {
  name = 'ArtifactError'
  readonly reason: ArtifactErrorReason
  constructor (reason: ArtifactErrorReason, message: string) {
    super(message)
    this.reason = reason
  }
}

export function checkName (name: unknown): string {
  if (typeof name !== 'string' || !NAME.test(name)) throw new ArtifactError('schema', `invalid artifact name ${JSON.stringify(name)}: 1-64 letters, digits, dots, dashes or underscores, starting with a letter or digit`)
  return name
}

export function checkVersion (version: unknown): string {
  if (typeof version !== 'string' || !VERSION.test(version)) throw new ArtifactError('schema', `invalid artifact version ${JSON.stringify(version)}: 1-64 letters, digits, dots, plus, dashes or underscores`)
  return version
}

const isLimit = (v: unknown): boolean => v === undefined || (typeof v === 'number' && Number.isSafeInteger(v) && v > 0)

/** Every field, type and bound; throws ArtifactError('schema'). */
export function validateManifest (value: unknown): asserts value is ArtifactManifest {
  const fail = (what: string): never => { throw new ArtifactError('schema', `invalid manifest: ${what}`) }
  if (value == null || typeof value !== 'object' || Array.isArray(value)) fail('not a map')
  const m = value as Record<string, any>
  const allowed = new Set(['type', 'name', 'version', 'cid', 'size', 'sha256', 'publisher', 'wasi', 'limits', 'created', 'credential'])
  for (const k of Object.keys(m)) if (!allowed.has(k)) fail(`unknown field ${k}`)
  if (m.type !== ARTIFACT_TYPE) fail(`type is not ${ARTIFACT_TYPE}`)
  checkName(m.name)
  checkVersion(m.version)
  if (CID.asCID(m.cid) == null) fail('cid is not a CID link')
  if (!Number.isSafeInteger(m.size) || m.size <= 0 || m.size > MAX_ARTIFACT_BYTES) fail(`size must be 1…${MAX_ARTIFACT_BYTES} bytes`)
  if (typeof m.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(m.sha256)) fail('sha256 is not 64 lowercase hex digits')
  if (typeof m.publisher !== 'string') fail('publisher is not a DID')
  if (!Array.isArray(m.wasi) || m.wasi.length > 64 || m.wasi.some((w: unknown) => typeof w !== 'string' || !/^[a-z_0-9]{1,64}$/.test(w))) fail('wasi is not a list of WASI function names')
  if (m.limits == null || typeof m.limits !== 'object' || Array.isArray(m.limits)) fail('limits is not a map')
  for (const k of Object.keys(m.limits)) {
    if (!['memoryBytes', 'timeoutMs', 'outputBytes'].includes(k)) fail(`unknown limit ${k}`)
    if (!isLimit(m.limits[k])) fail(`limits.${k} is not a positive whole number`)
  }
  if (typeof m.created !== 'string' || Number.isNaN(Date.parse(m.created))) fail('created is not a date')
  if (m.credential !== undefined && (typeof m.credential !== 'string' || m.credential.length > MAX_CREDENTIAL_CHARS)) fail('credential is not a JWT')
}

export interface ManifestFields {
  name: string
  version: string
  cid: CID
  bytes: Uint8Array
  wasi: string[]
  limits?: ArtifactLimits
  credential?: string
  now?: number
}

/** Signs a manifest for `bytes` with the publisher's key; returns the block and its CID. */
export async function signManifest (key: PrivateKey, fields: ManifestFields): Promise<{ cid: CID, block: Uint8Array, signed: SignedManifest }> {
  if (key.type !== 'Ed25519') throw new TypeError(`artifact manifests are signed with Ed25519 keys, got ${key.type}`)
  const manifest: ArtifactManifest = {
    type: ARTIFACT_TYPE,
    name: fields.name,
    version: fields.version,
    cid: fields.cid,
    size: fields.bytes.length,
    sha256: await sha256Hex(fields.bytes),
    publisher: didKeyFromEd25519(key.publicKey.raw),
    wasi: [...fields.wasi].sort(),
    limits: Object.fromEntries(Object.entries(fields.limits ?? {}).filter(([, v]) => v !== undefined)),
    created: new Date(fields.now ?? Date.now()).toISOString()
  }
  if (fields.credential != null) manifest.credential = fields.credential
  validateManifest(manifest)
  const signature = await key.sign(signingInput(manifest))
  const signed = { manifest, signature }
  const block = dagCbor.encode(signed)
  return { cid: await manifestCid(block), block, signed }
}

/**
 * Decodes a manifest block and checks it: size bound, strict dag-cbor, every field, and the
 * publisher's signature. Throws ArtifactError.
 */
export async function decodeManifest (block: Uint8Array, options: { maxBytes?: number } = {}): Promise<SignedManifest> {
  const maxBytes = options.maxBytes ?? MAX_MANIFEST_BYTES
  if (block.length > maxBytes) throw new ArtifactError('too-large', `manifest is ${block.length} bytes, over the ${maxBytes}-byte limit`)
  let value: any
  try {
    value = dagCbor.decode(block)
  } catch (err) {
    throw new ArtifactError('malformed', `manifest is not dag-cbor: ${(err as Error).message}`)
  }
  if (value == null || typeof value !== 'object' || !(value.signature instanceof Uint8Array) || Object.keys(value).length !== 2) {
    throw new ArtifactError('malformed', 'manifest block is not { manifest, signature }')
  }
  validateManifest(value.manifest)
  const manifest = value.manifest as ArtifactManifest
  let publicKey
  try {
    publicKey = publicKeyFromRaw(ed25519FromDidKey(manifest.publisher))
  } catch (err) {
    throw new ArtifactError('schema', `invalid manifest: publisher names no Ed25519 key (${(err as Error).message})`)
  }
  if (!await publicKey.verify(signingInput(manifest), value.signature)) {
    throw new ArtifactError('bad-signature', `manifest of ${manifest.name}@${manifest.version} is not signed by its publisher ${manifest.publisher}`)
  }
  return { manifest, signature: value.signature }
}

/** Checks fetched module bytes against the manifest: length, then SHA-256. Throws ArtifactError('wrong-content'). */
export async function checkContent (manifest: ArtifactManifest, bytes: Uint8Array): Promise<void> {
  if (bytes.length !== manifest.size) throw new ArtifactError('wrong-content', `module is ${bytes.length} bytes, the manifest says ${manifest.size}`)
  const digest = await sha256Hex(bytes)
  if (digest !== manifest.sha256) throw new ArtifactError('wrong-content', `module's SHA-256 is ${digest}, the manifest says ${manifest.sha256}`)
}

export async function manifestCid (block: Uint8Array): Promise<CID> {
  return CID.createV1(dagCbor.code, await sha256.digest(block))
}

export type ArtifactRef = { kind: 'cid', cid: CID } | { kind: 'name', name: string, version: string }

/** `name@version` or a manifest CID. Throws ArtifactError('bad-ref'). */
export function parseArtifactRef (text: string): ArtifactRef {
  const at = text.lastIndexOf('@')
  if (at > 0) {
    try {
      return { kind: 'name', name: checkName(text.slice(0, at)), version: checkVersion(text.slice(at + 1)) }
    } catch (err) {
      throw new ArtifactError('bad-ref', (err as Error).message)
    }
  }
  try {
    return { kind: 'cid', cid: CID.parse(text) }
  } catch {
    throw new ArtifactError('bad-ref', `not an artifact reference: ${JSON.stringify(text)} (give a manifest CID or name@version)`)
  }
}

/**
 * The DHT key under which holders of `name@version` announce themselves as providers: a raw CID
 * of a domain-separated hash of network and name, so it can never collide with real content.
 */
export async function nameKey (network: string, name: string, version: string): Promise<CID> {
  return CID.createV1(raw.code, await sha256.digest(new TextEncoder().encode(`mesh/artifact-name/v1\n${network}\n${name}@${version}`)))
}

function signingInput (manifest: ArtifactManifest): Uint8Array {
  const body = dagCbor.encode(manifest)
  const domain = new TextEncoder().encode(SIGNING_DOMAIN)
  const out = new Uint8Array(domain.length + body.length)
  out.set(domain)
  out.set(body, domain.length)
  return out
}

/** Hex SHA-256, as a manifest's `sha256` carries it. */
export async function sha256Hex (bytes: Uint8Array): Promise<string> {
  return Buffer.from((await sha256.digest(bytes)).digest).toString('hex')
}

// Community networks with zero-trust membership: everything a peer shows is checked offline against
// the genesis record, whose CID is the network ID.
//
// Genesis block (dag-cbor): { record: GenesisRecord, signature: bytes } where signature is the
// Ed25519 signature of roots[0], the creating root, over GENESIS_DOMAIN ‖ dag-cbor(record). The
// network ID is the CIDv1 (dag-cbor, sha2-256) of the whole block, so it commits to the roots.
//
// Membership credential: a vc-jwt of type MeshMembershipCredential with claims { network, role }.
// A root may issue any role. An admin (holder of an admin credential issued by a root) may issue
// `member` credentials only, and embeds its own admin credential as the claim `issuerCredential`:
// the chain travels inside the signed leaf, so one string proves membership offline. Chains are at
// most two long (root -> admin -> member): only roots appoint admins. Every link must be valid now.
//
// Open networks (`policy.open`): any peer is a `member` without a credential, because its DID is
// its key and the transport handshake already proved it holds that key. Revocations still apply:
// a revoked DID is refused. Credentials are still checked and are the only way to be an `admin`;
// on an open network an invalid or revoked credential only costs the role, not membership.
//
// Revocations: a JWT { type: 'MeshRevocation', network, target, iss: by, iat: at } signed by a
// root, or by an admin (admin credential embedded as `issuerCredential`, valid at `at`). The
// validity of a revocation does not depend on other revocations, so nodes that receive them in any
// order converge on the same list. They are permanent; roots cannot be revoked.
import { createJWT, verifyJWT } from 'did-jwt'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { base64url } from 'multiformats/bases/base64'
import { multiaddr } from '@multiformats/multiaddr'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { ed25519FromDidKey } from './did-key.ts'
import { CredentialError, decodeJwt, didOfKey, issueCredential, jwtSigner, verifyCredential } from './credentials.ts'
import { didResolver } from './resolver.ts'
import type { PrivateKey } from '@libp2p/interface'

export type Role = 'member' | 'admin'

export interface GenesisRecord {
  type: 'MeshNetworkGenesis'
  name: string
  roots: string[]
  policy: { open: boolean }
  /** Unix seconds. */
  created: number
}

export interface Genesis {
  record: GenesisRecord
  signature: Uint8Array
  /** The dag-cbor block the node stores in Helia. */
  bytes: Uint8Array
  cid: CID
  /** cid.toString(): the network ID. */
  id: string
}

export type NetworkErrorReason =
  'malformed' | 'too-large' | 'bad-signature' | 'expired' | 'not-yet-valid' | 'wrong-network' | 'untrusted-issuer' | 'not-allowed'

export class NetworkError extends Error {
  name = 'NetworkError'
  readonly reason: NetworkErrorReason
  constructor (reason: NetworkErrorReason, message: string) {
    super(message)
    this.reason = reason
  }
}

export const MEMBERSHIP_TYPE = 'MeshMembershipCredential'
const GENESIS_DOMAIN = new TextEncoder().encode('mesh-network-genesis-v1:')
const MAX_GENESIS_BYTES = 8 * 1024
const MAX_ROOTS = 16
const MAX_NAME = 128
const offline = didResolver({ web: false })

// --- genesis ----------------------------------------------------------------------------------

export interface CreateGenesisInit {
  /** The creating root's key; its DID is roots[0]. */
  key: PrivateKey
  name: string
  open?: boolean
  /** Further root DIDs (Ed25519 did:keys). */
  coRoots?: string[]
  created?: Date
}

export async function createGenesis (init: CreateGenesisInit): Promise<Genesis> {
  const record: GenesisRecord = {
    type: 'MeshNetworkGenesis',
    name: init.name,
    roots: [didOfKey(init.key), ...(init.coRoots ?? [])],
    policy: { open: init.open === true },
    created: Math.floor((init.created ?? new Date()).getTime() / 1000)
  }
  const problem = recordProblem(record)
  if (problem != null) throw new TypeError(problem)
  const signature = await init.key.sign(withDomain(dagCbor.encode(record)))
  const bytes = dagCbor.encode({ record, signature })
  const cid = await genesisCid(bytes)
  return { record, signature, bytes, cid, id: cid.toString() }
}

/** The network ID: CIDv1, dag-cbor, sha2-256 of the genesis block. */
export async function genesisCid (bytes: Uint8Array): Promise<CID> {
  return CID.create(1, dagCbor.code, await sha256.digest(bytes))
}

/** Decodes and verifies a genesis block from anywhere (an invite, Helia); NetworkError if it is not one. */
export async function decodeGenesis (bytes: Uint8Array, options: { maxBytes?: number } = {}): Promise<Genesis> {
  const maxBytes = options.maxBytes ?? MAX_GENESIS_BYTES
  if (!(bytes instanceof Uint8Array)) throw new NetworkError('malformed', 'genesis is not bytes')
  if (bytes.length > maxBytes) throw new NetworkError('too-large', `genesis is ${bytes.length} bytes, the limit is ${maxBytes}`)
  let block: unknown
  try {
    block = dagCbor.decode(bytes)
  } catch (err) {
    throw new NetworkError('malformed', `genesis is not dag-cbor: ${(err as Error).message}`)
  }
  if (!isPlainObject(block) || !sameKeys(block, ['record', 'signature']) || !(block.signature instanceof Uint8Array)) {
    throw new NetworkError('malformed', 'genesis block is not { record, signature }')
  }
  const problem = recordProblem(block.record)
  if (problem != null) throw new NetworkError('malformed', `bad genesis record: ${problem}`)
  const record = block.record as GenesisRecord
  const recordBytes = dagCbor.encode(record)
  // one record, one encoding: a re-encoded variant would be a second network ID for the same network
  if (!equalBytes(dagCbor.encode({ record, signature: block.signature }), bytes)) {
    throw new NetworkError('malformed', 'genesis block is not canonically encoded')
  }
  const creator = publicKeyFromRaw(ed25519FromDidKey(record.roots[0]))
  if (!(await creator.verify(withDomain(recordBytes), block.signature))) {
    throw new NetworkError('bad-signature', 'genesis is not signed by its first root')
  }
  const cid = await genesisCid(bytes)
  return { record, signature: block.signature, bytes, cid, id: cid.toString() }
}

function recordProblem (record: unknown): string | undefined {
  if (!isPlainObject(record) || !sameKeys(record, ['type', 'name', 'roots', 'policy', 'created'])) return 'fields are not type, name, roots, policy, created'
  if (record.type !== 'MeshNetworkGenesis') return 'type is not MeshNetworkGenesis'
  if (typeof record.name !== 'string' || record.name.length === 0 || record.name.length > MAX_NAME) return `name must be 1 to ${MAX_NAME} characters`
  if (!isPlainObject(record.policy) || !sameKeys(record.policy, ['open']) || typeof record.policy.open !== 'boolean') return 'policy must be { open: boolean }'
  if (!Number.isSafeInteger(record.created) || (record.created as number) < 0) return 'created must be unix seconds'
  const roots = record.roots
  if (!Array.isArray(roots) || roots.length === 0 || roots.length > MAX_ROOTS) return `roots must hold 1 to ${MAX_ROOTS} DIDs`
  if (new Set(roots).size !== roots.length) return 'roots repeat a DID'
  for (const root of roots) {
    if (!isDidKey(root)) return `root ${String(root).slice(0, 80)} is not an Ed25519 did:key`
  }
  return undefined
}

// --- membership credentials -------------------------------------------------------------------

export interface IssueMembershipInit {
  /** A root's key, or an admin's key together with `adminCredential`. */
  key: PrivateKey
  genesis: Genesis
  subject: string
  role: Role
  /** The issuer's own admin credential, required when the key is not a root's. */
  adminCredential?: string
  expiresIn?: number
  expiresAt?: Date
  issuedAt?: Date
  id?: string
}

export async function issueMembership (init: IssueMembershipInit): Promise<string> {
  const issuer = didOfKey(init.key)
  const isRoot = init.genesis.record.roots.includes(issuer)
  if (!isRoot) {
    if (init.adminCredential == null) throw new TypeError(`${issuer} is not a root of ${init.genesis.id}: pass its admin credential`)
    if (init.role !== 'member') throw new TypeError('only roots appoint admins')
    if (decodeJwt(init.adminCredential).payload.sub !== issuer) throw new TypeError('the admin credential belongs to another DID')
  }
  if (!isDidKey(init.subject)) throw new TypeError(`members are Ed25519 did:keys, got ${String(init.subject).slice(0, 80)}`)
  return await issueCredential({
    key: init.key,
    subject: init.subject,
    type: MEMBERSHIP_TYPE,
    claims: { network: init.genesis.id, role: init.role, ...(isRoot ? {} : { issuerCredential: init.adminCredential }) },
    expiresIn: init.expiresIn,
    expiresAt: init.expiresAt,
    issuedAt: init.issuedAt,
    id: init.id
  })
}

export type MembershipFailure =
  'no-credential' | 'malformed' | 'bad-signature' | 'expired' | 'not-yet-valid' | 'wrong-subject' | 'untrusted-issuer' | 'wrong-network' | 'revoked'

export type MembershipResult =
  | { ok: true, role: Role, via: 'credential' | 'open', credentialId: string | undefined, expiresAt: Date | undefined, issuer: string | undefined }
  | { ok: false, reason: MembershipFailure, message: string }

/** What checkMembership needs of a revocation list. */
export interface RevocationCheck {
  has (didOrCredentialId: string): boolean
}

export interface CheckMembershipInit {
  genesis: Genesis
  /** The credential(s) the peer presented; the best valid one wins. */
  credential?: string | string[]
  /** The DID of the key the transport authenticated. */
  remoteDid: string
  revoked?: RevocationCheck
  now?: Date
}

const MAX_PRESENTED = 8
const ROLE_RANK: Record<Role, number> = { member: 1, admin: 2 }

export async function checkMembership (init: CheckMembershipInit): Promise<MembershipResult> {
  const { genesis, remoteDid } = init
  const revoked = init.revoked ?? { has: () => false }
  const now = init.now ?? new Date()
  if (!isDidKey(remoteDid)) return fail('malformed', 'the remote peer has no Ed25519 did:key')
  const presented = init.credential == null ? [] : Array.isArray(init.credential) ? init.credential : [init.credential]
  if (presented.length > MAX_PRESENTED) return fail('malformed', `more than ${MAX_PRESENTED} credentials presented`)
  if (revoked.has(remoteDid)) return fail('revoked', `${remoteDid} is revoked in this network`)

  let best: MembershipResult | undefined
  let firstFailure: MembershipResult | undefined
  for (const jwt of presented) {
    const link = await verifyLink(genesis, jwt, now, revoked, 0)
    let result: MembershipResult
    if (!link.ok) result = link
    else if (link.subject !== remoteDid) result = fail('wrong-subject', `the credential was issued to ${link.subject}, not to ${remoteDid}`)
    else result = { ok: true, role: link.role, via: 'credential', credentialId: link.id, expiresAt: link.expiresAt, issuer: link.issuer }
    if (result.ok && (best == null || (best.ok && ROLE_RANK[result.role] > ROLE_RANK[best.role]))) best = result
    if (!result.ok) firstFailure ??= result
  }
  if (best != null) return best
  if (genesis.record.policy.open) return { ok: true, role: 'member', via: 'open', credentialId: undefined, expiresAt: undefined, issuer: undefined }
  return firstFailure ?? fail('no-credential', `${remoteDid} presented no membership credential`)
}

type Link =
  | { ok: true, subject: string, issuer: string, role: Role, id: string | undefined, expiresAt: Date | undefined }
  | { ok: false, reason: MembershipFailure, message: string }

/** One credential of a chain; depth 1 is the issuing admin's own credential, which must come from a root. */
async function verifyLink (genesis: Genesis, jwt: unknown, now: Date, revoked: RevocationCheck, depth: number): Promise<Link> {
  const whose = depth === 0 ? 'credential' : "issuer's admin credential"
  if (typeof jwt !== 'string') return fail('malformed', `${whose} is not a string`)
  let vc
  try {
    vc = await verifyCredential(jwt, { now, resolver: offline })
  } catch (err) {
    if (!(err instanceof CredentialError)) throw err
    return fail(CREDENTIAL_REASONS[err.reason], `${whose}: ${err.message}`)
  }
  const { network, role, issuerCredential } = vc.claims
  if (!vc.types.includes(MEMBERSHIP_TYPE)) return fail('malformed', `${whose} is not a ${MEMBERSHIP_TYPE}`)
  if (network !== genesis.id) return fail('wrong-network', `${whose} is for network ${String(network).slice(0, 80)}, not ${genesis.id}`)
  if (role !== 'member' && role !== 'admin') return fail('malformed', `${whose} has no valid role`)
  for (const id of [vc.id, vc.subject, vc.issuer]) {
    if (id != null && revoked.has(id)) return fail('revoked', `${whose}: ${id} is revoked`)
  }
  const ok: Link = { ok: true, subject: vc.subject, issuer: vc.issuer, role, id: vc.id, expiresAt: vc.expiresAt }
  if (genesis.record.roots.includes(vc.issuer)) return ok
  if (depth > 0 || issuerCredential == null) return fail('untrusted-issuer', `${whose} is signed by ${vc.issuer}, neither a root nor an admin`)
  if (role !== 'member') return fail('untrusted-issuer', 'only roots appoint admins')
  const parent = await verifyLink(genesis, issuerCredential, now, revoked, 1)
  if (!parent.ok) return parent
  if (parent.role !== 'admin' || parent.subject !== vc.issuer) return fail('untrusted-issuer', `${vc.issuer} holds no admin credential`)
  return ok
}

const CREDENTIAL_REASONS: Record<CredentialError['reason'], MembershipFailure> = {
  malformed: 'malformed',
  'too-large': 'malformed',
  'unsupported-algorithm': 'malformed',
  'bad-signature': 'bad-signature',
  expired: 'expired',
  'not-yet-valid': 'not-yet-valid',
  'unresolvable-issuer': 'untrusted-issuer'
}

function fail (reason: MembershipFailure, message: string): { ok: false, reason: MembershipFailure, message: string } {
  return { ok: false, reason, message }
}

// --- invites ----------------------------------------------------------------------------------

export interface Invite {
  genesis: Genesis
  /** Multiaddrs of members to dial first. */
  bootstrap: string[]
  /** The invitee's membership credential (its chain embedded), if the network is not open. */
  credential?: string
}

const INVITE_PREFIX = 'meshinvite1'
const MAX_INVITE_CHARS = 32 * 1024
const MAX_BOOTSTRAP = 16

/** `meshinvite1` + base64url(dag-cbor { genesis: bytes, bootstrap: [string], credential?: string }). */
export function createInvite (invite: { genesis: Genesis, bootstrap: string[], credential?: string }): string {
  const problem = bootstrapProblem(invite.bootstrap)
  if (problem != null) throw new TypeError(problem)
  const body = { genesis: invite.genesis.bytes, bootstrap: invite.bootstrap, ...(invite.credential == null ? {} : { credential: invite.credential }) }
  return INVITE_PREFIX + base64url.baseEncode(dagCbor.encode(body))
}

/** Parses and checks an invite (genesis signature included); NetworkError('malformed' | 'too-large' | …) otherwise. */
export async function parseInvite (text: string, options: { maxChars?: number } = {}): Promise<Invite> {
  const maxChars = options.maxChars ?? MAX_INVITE_CHARS
  if (typeof text !== 'string') throw new NetworkError('malformed', 'an invite is a string')
  text = text.trim()
  if (text.length > maxChars) throw new NetworkError('too-large', `invite is ${text.length} characters, the limit is ${maxChars}`)
  if (!text.startsWith(INVITE_PREFIX)) throw new NetworkError('malformed', `not a Mesh invite (it should start with ${INVITE_PREFIX})`)
  let body: unknown
  try {
    body = dagCbor.decode(base64url.baseDecode(text.slice(INVITE_PREFIX.length)))
  } catch {
    throw new NetworkError('malformed', 'invite is corrupted (not base64url dag-cbor)')
  }
  if (!isPlainObject(body) || !(body.genesis instanceof Uint8Array) || !Array.isArray(body.bootstrap) ||
      (body.credential != null && typeof body.credential !== 'string')) {
    throw new NetworkError('malformed', 'invite lacks genesis or bootstrap')
  }
  const problem = bootstrapProblem(body.bootstrap)
  if (problem != null) throw new NetworkError('malformed', `invite: ${problem}`)
  const genesis = await decodeGenesis(body.genesis)
  return { genesis, bootstrap: body.bootstrap as string[], ...(body.credential == null ? {} : { credential: body.credential }) }
}

function bootstrapProblem (bootstrap: unknown): string | undefined {
  if (!Array.isArray(bootstrap) || bootstrap.length > MAX_BOOTSTRAP) return `bootstrap must be a list of at most ${MAX_BOOTSTRAP} multiaddrs`
  for (const addr of bootstrap) {
    if (typeof addr !== 'string' || addr.length > 512) return 'bootstrap entries must be multiaddr strings'
    try {
      multiaddr(addr)
    } catch {
      return `bootstrap address ${addr.slice(0, 80)} is not a multiaddr`
    }
  }
  return undefined
}

// --- revocations ------------------------------------------------------------------------------

export interface Revocation {
  network: string
  /** A member DID or a credential ID (urn:uuid:…). */
  target: string
  by: string
  at: Date
  /** The signed form, for gossip and persistence. */
  token: string
}

export interface CreateRevocationInit {
  key: PrivateKey
  genesis: Genesis
  target: string
  /** Required when the key is an admin's rather than a root's. */
  adminCredential?: string
  at?: Date
}

export async function createRevocation (init: CreateRevocationInit): Promise<string> {
  const by = didOfKey(init.key)
  const isRoot = init.genesis.record.roots.includes(by)
  if (!isRoot && init.adminCredential == null) throw new TypeError(`${by} is not a root of ${init.genesis.id}: pass its admin credential`)
  const problem = targetProblem(init.genesis, init.target)
  if (problem != null) throw new TypeError(problem)
  return await createJWT({
    type: 'MeshRevocation',
    network: init.genesis.id,
    target: init.target,
    iat: Math.floor((init.at ?? new Date()).getTime() / 1000),
    ...(isRoot ? {} : { issuerCredential: init.adminCredential })
  }, { issuer: by, signer: jwtSigner(init.key) }, { alg: 'EdDSA' })
}

export interface VerifyRevocationOptions {
  /** The revoking admin's credential, when the token does not embed it. */
  adminCredential?: string
  now?: Date
}

/** Checks a revocation token against the genesis; NetworkError with a reason otherwise. */
export async function verifyRevocation (genesis: Genesis, token: string, options: VerifyRevocationOptions = {}): Promise<Revocation> {
  if (typeof token !== 'string') throw new NetworkError('malformed', 'a revocation is a JWT string')
  if (token.length > 16 * 1024) throw new NetworkError('too-large', 'revocation is larger than 16 KiB')
  let payload: Record<string, unknown>
  try {
    const { header, payload: p } = decodeJwt(token)
    if (header.alg !== 'EdDSA') throw new NetworkError('malformed', 'revocation is not EdDSA-signed')
    payload = p
  } catch (err) {
    if (err instanceof CredentialError) throw new NetworkError('malformed', `revocation: ${err.message}`)
    throw err
  }
  const { type, network, target, iss: by, iat: at, issuerCredential } = payload
  if (type !== 'MeshRevocation' || typeof target !== 'string' || typeof by !== 'string' || !Number.isSafeInteger(at) || !isDidKey(by)) {
    throw new NetworkError('malformed', 'revocation lacks type, target, iss or iat')
  }
  try {
    await verifyJWT(token, { resolver: offline as NonNullable<Parameters<typeof verifyJWT>[1]>['resolver'], policies: { nbf: false, iat: false, exp: false, aud: false } })
  } catch {
    throw new NetworkError('bad-signature', `revocation signature does not match ${by}`)
  }
  if (network !== genesis.id) throw new NetworkError('wrong-network', `revocation is for network ${String(network).slice(0, 80)}`)
  const problem = targetProblem(genesis, target)
  if (problem != null) throw new NetworkError('not-allowed', problem)
  const now = options.now ?? new Date()
  if ((at as number) > now.getTime() / 1000 + 60) throw new NetworkError('not-yet-valid', 'revocation is dated in the future')
  if (!genesis.record.roots.includes(by)) {
    const chain = issuerCredential ?? options.adminCredential
    if (chain == null) throw new NetworkError('untrusted-issuer', `revocation is signed by ${by}, neither a root nor an admin`)
    // the admin must have been one when it revoked; later revocations of the admin do not undo this
    const link = await verifyLink(genesis, chain, new Date((at as number) * 1000), { has: () => false }, 1)
    if (!link.ok) throw new NetworkError(link.reason === 'revoked' || link.reason === 'wrong-subject' || link.reason === 'no-credential' ? 'untrusted-issuer' : link.reason, `revoking admin: ${link.message}`)
    if (link.role !== 'admin' || link.subject !== by) throw new NetworkError('untrusted-issuer', `${by} holds no admin credential`)
  }
  return { network: genesis.id, target, by, at: new Date((at as number) * 1000), token }
}

function targetProblem (genesis: Genesis, target: unknown): string | undefined {
  if (typeof target !== 'string' || target.length > 512 || !(isDidKey(target) || /^urn:uuid:[0-9a-f-]{36}$/i.test(target))) {
    return 'a revocation target is an Ed25519 did:key or a urn:uuid: credential ID'
  }
  if (genesis.record.roots.includes(target)) return 'roots cannot be revoked'
  return undefined
}

/** The revocations of one network, in memory; every entry was verified on the way in. */
export class RevocationList implements RevocationCheck {
  readonly genesis: Genesis
  private readonly byTarget = new Map<string, Revocation>()

  constructor (genesis: Genesis) {
    this.genesis = genesis
  }

  /** Verifies and adds a revocation (idempotent); NetworkError if it is not valid for this network. */
  async add (token: string, options: VerifyRevocationOptions = {}): Promise<Revocation> {
    const revocation = await verifyRevocation(this.genesis, token, options)
    if (!this.byTarget.has(revocation.target)) this.byTarget.set(revocation.target, revocation)
    return this.byTarget.get(revocation.target) as Revocation
  }

  has (didOrCredentialId: string): boolean {
    return this.byTarget.has(didOrCredentialId)
  }

  get size (): number {
    return this.byTarget.size
  }

  /** Signed tokens, so what is loaded back is verified again rather than trusted. */
  toJSON (): string[] {
    return [...this.byTarget.values()].map(r => r.token)
  }

  static async fromJSON (genesis: Genesis, json: unknown): Promise<RevocationList> {
    if (!Array.isArray(json)) throw new NetworkError('malformed', 'a revocation list is a JSON array of tokens')
    const list = new RevocationList(genesis)
    for (const token of json) await list.add(token)
    return list
  }
}

// --- helpers ----------------------------------------------------------------------------------

function isDidKey (did: unknown): did is string {
  if (typeof did !== 'string' || did.length > 128) return false
  try {
    ed25519FromDidKey(did)
    return true
  } catch {
    return false
  }
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array)
}

function sameKeys (object: Record<string, unknown>, keys: string[]): boolean {
  const own = Object.keys(object)
  return own.length === keys.length && keys.every(k => Object.hasOwn(object, k))
}

function withDomain (bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(GENESIS_DOMAIN.length + bytes.length)
  out.set(GENESIS_DOMAIN)
  out.set(bytes, GENESIS_DOMAIN.length)
  return out
}

function equalBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i])
}

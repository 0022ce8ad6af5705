import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import * as dagCbor from '@ipld/dag-cbor'
import { createJWT } from 'did-jwt'
import { base64url } from 'multiformats/bases/base64'
import { sha256 } from 'multiformats/hashes/sha2'
import { didOfKey, issueCredential, jwtSigner } from '../../identity/credentials.ts'
import {
  checkMembership, createGenesis, createInvite, createRevocation, decodeGenesis, genesisCid, issueMembership,
  NetworkError, parseInvite, RevocationList, verifyRevocation, MEMBERSHIP_TYPE
} from '../../identity/network.ts'
import type { Genesis, MembershipResult, NetworkErrorReason } from '../../identity/network.ts'

const rootKey = await generateKeyPair('Ed25519')
const adminKey = await generateKeyPair('Ed25519')
const memberKey = await generateKeyPair('Ed25519')
const outsiderKey = await generateKeyPair('Ed25519')
const [root, admin, member, outsider] = [rootKey, adminKey, memberKey, outsiderKey].map(didOfKey)
// in the past, so revocations dated from it are not "in the future" for a list checking against the real clock
const T0 = new Date('2025-01-01T00:00:00Z')
const hours = (n: number): Date => new Date(T0.getTime() + n * 3600_000)
const DAY = 86_400

const genesis = await createGenesis({ key: rootKey, name: 'riverside', created: T0 })
const openGenesis = await createGenesis({ key: rootKey, name: 'commons', open: true, created: T0 })
const otherGenesis = await createGenesis({ key: outsiderKey, name: 'elsewhere', created: T0 })
const adminCredential = await issueMembership({ key: rootKey, genesis, subject: admin, role: 'admin', expiresIn: DAY, issuedAt: T0 })
const memberCredential = await issueMembership({ key: rootKey, genesis, subject: member, role: 'member', expiresIn: DAY, issuedAt: T0 })

function refused (result: MembershipResult, reason: string): void {
  assert.equal(result.ok, false, `expected ${reason}, got ${JSON.stringify(result)}`)
  if (!result.ok) {
    assert.equal(result.reason, reason, result.message)
    assert.ok(result.message.length > 0)
  }
}

async function rejects (promise: Promise<unknown>, reason: NetworkErrorReason): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof NetworkError, `expected NetworkError, got ${String(err)}`)
    assert.equal(err.reason, reason, err.message)
    return true
  })
}

const check = async (credential: string | string[] | undefined, remoteDid = member, extra: { genesis?: Genesis, revoked?: RevocationList, now?: Date } = {}): Promise<MembershipResult> =>
  await checkMembership({ genesis: extra.genesis ?? genesis, credential, remoteDid, revoked: extra.revoked, now: extra.now ?? hours(1) })

test('the genesis block round-trips, and its CIDv1 dag-cbor sha2-256 is the network ID', async () => {
  assert.deepEqual(genesis.record, { type: 'MeshNetworkGenesis', name: 'riverside', roots: [root], policy: { open: false }, created: T0.getTime() / 1000 })
  const decoded = await decodeGenesis(genesis.bytes)
  assert.deepEqual(decoded.record, genesis.record)
  assert.equal(decoded.id, genesis.id)
  const cid = await genesisCid(genesis.bytes)
  assert.equal(cid.version, 1)
  assert.equal(cid.code, dagCbor.code)
  assert.equal(cid.multihash.code, sha256.code)
  assert.deepEqual(cid.multihash.digest, (await sha256.digest(genesis.bytes)).digest)
  assert.equal(genesis.id, cid.toString())
  assert.notEqual(openGenesis.id, genesis.id)

  const coRooted = await createGenesis({ key: rootKey, name: 'two roots', coRoots: [admin], created: T0 })
  assert.deepEqual((await decodeGenesis(coRooted.bytes)).record.roots, [root, admin])
  await assert.rejects(createGenesis({ key: rootKey, name: '', created: T0 }), TypeError)
  await assert.rejects(createGenesis({ key: rootKey, name: 'x', coRoots: ['did:web:example.com'] }), TypeError)
})

test('a bad genesis block is refused with a reason', async () => {
  // same signature, another name
  const block = dagCbor.decode(genesis.bytes) as { record: Record<string, unknown>, signature: Uint8Array }
  await rejects(decodeGenesis(dagCbor.encode({ ...block, record: { ...block.record, name: 'hijacked' } })), 'bad-signature')
  // a record naming someone else as the creating root
  await rejects(decodeGenesis(dagCbor.encode({ ...block, record: { ...block.record, roots: [outsider] } })), 'bad-signature')
  await rejects(decodeGenesis(new Uint8Array([1, 2, 3])), 'malformed')
  await rejects(decodeGenesis(dagCbor.encode({ record: { ...block.record, type: 'Other' }, signature: block.signature })), 'malformed')
  await rejects(decodeGenesis(dagCbor.encode({ ...block, extra: 1 })), 'malformed')
  await rejects(decodeGenesis(new Uint8Array(100_000)), 'too-large')
  await rejects(decodeGenesis('bytes' as unknown as Uint8Array), 'malformed')
})

test('a root-issued credential admits its subject', async () => {
  const result = await check(memberCredential)
  assert.ok(result.ok)
  assert.equal(result.role, 'member')
  assert.equal(result.via, 'credential')
  assert.equal(result.issuer, root)
  assert.match(result.credentialId ?? '', /^urn:uuid:/)
  assert.deepEqual(result.expiresAt, new Date(T0.getTime() + DAY * 1000))
})

test('a node with no credential is refused from a closed network', async () => {
  refused(await check(undefined), 'no-credential')
  refused(await check([]), 'no-credential')
})

test('an expired credential is refused', async () => {
  refused(await check(memberCredential, member, { now: hours(48) }), 'expired')
})

test('a credential signed by a non-member is refused', async () => {
  const selfMade = await issueMembership({ key: outsiderKey, genesis: otherGenesis, subject: member, role: 'admin', issuedAt: T0 })
  refused(await check(selfMade), 'wrong-network')
  // a credential for this network from someone who is neither root nor admin
  const bogus = await issueCredential({ key: outsiderKey, subject: member, type: MEMBERSHIP_TYPE, claims: { network: genesis.id, role: 'member' }, issuedAt: T0 })
  refused(await check(bogus), 'untrusted-issuer')
})

test('a credential issued to another DID is refused', async () => {
  refused(await check(memberCredential, outsider), 'wrong-subject')
})

test('a tampered or garbage token is refused', async () => {
  const [h, p, s] = memberCredential.split('.')
  const payload = JSON.parse(new TextDecoder().decode(base64url.baseDecode(p)))
  payload.vc.credentialSubject.role = 'admin'
  const tampered = `${h}.${base64url.baseEncode(new TextEncoder().encode(JSON.stringify(payload)))}.${s}`
  refused(await check(tampered), 'bad-signature')
  refused(await check('not a jwt'), 'malformed')
  refused(await check(42 as unknown as string), 'malformed')
  refused(await check('x'.repeat(100_000)), 'malformed')
  refused(await check(new Array(9).fill(memberCredential)), 'malformed')
  refused(await check(memberCredential, 'did:web:example.com'), 'malformed')
  // a valid vc-jwt of another type
  const other = await issueCredential({ key: rootKey, subject: member, type: 'Other', claims: { network: genesis.id, role: 'member' }, issuedAt: T0 })
  refused(await check(other), 'malformed')
})

test('an admin-issued credential is valid, its chain checked offline', async () => {
  const credential = await issueMembership({ key: adminKey, genesis, subject: member, role: 'member', adminCredential, expiresIn: DAY, issuedAt: T0 })
  const result = await check(credential)
  assert.ok(result.ok, JSON.stringify(result))
  assert.equal(result.role, 'member')
  assert.equal(result.issuer, admin)
  // once the admin's own credential has expired, so has its authority
  const longLived = await issueMembership({ key: adminKey, genesis, subject: member, role: 'member', adminCredential, expiresIn: 30 * DAY, issuedAt: T0 })
  refused(await check(longLived, member, { now: hours(48) }), 'expired')
})

test('only roots appoint admins, and a member credential gives no authority', async () => {
  await assert.rejects(issueMembership({ key: adminKey, genesis, subject: member, role: 'admin', adminCredential }), TypeError)
  const escalated = await issueCredential({
    key: adminKey, subject: member, type: MEMBERSHIP_TYPE, issuedAt: T0, claims: { network: genesis.id, role: 'admin', issuerCredential: adminCredential }
  })
  refused(await check(escalated), 'untrusted-issuer')
  // a mere member signing with its member credential as "authority"
  const fromMember = await issueCredential({
    key: memberKey, subject: outsider, type: MEMBERSHIP_TYPE, issuedAt: T0, claims: { network: genesis.id, role: 'member', issuerCredential: memberCredential }
  })
  refused(await check(fromMember, outsider), 'untrusted-issuer')
  // someone else's admin credential does not make the signer an admin
  const borrowed = await issueCredential({
    key: outsiderKey, subject: member, type: MEMBERSHIP_TYPE, issuedAt: T0, claims: { network: genesis.id, role: 'member', issuerCredential: adminCredential }
  })
  refused(await check(borrowed), 'untrusted-issuer')
})

test('revoked credentials, DIDs and admins are refused', async () => {
  const credentialId = (await check(memberCredential)).ok ? ((await check(memberCredential)) as { credentialId: string }).credentialId : ''
  const byId = new RevocationList(genesis)
  await byId.add(await createRevocation({ key: rootKey, genesis, target: credentialId, at: T0 }))
  refused(await check(memberCredential, member, { revoked: byId }), 'revoked')

  const byDid = new RevocationList(genesis)
  await byDid.add(await createRevocation({ key: rootKey, genesis, target: member, at: T0 }))
  refused(await check(memberCredential, member, { revoked: byDid }), 'revoked')

  // revoking an admin voids what it issued
  const viaAdmin = await issueMembership({ key: adminKey, genesis, subject: member, role: 'member', adminCredential, expiresIn: DAY, issuedAt: T0 })
  const adminGone = new RevocationList(genesis)
  await adminGone.add(await createRevocation({ key: rootKey, genesis, target: admin, at: T0 }))
  refused(await check(viaAdmin, member, { revoked: adminGone }), 'revoked')
  assert.ok((await check(memberCredential, member, { revoked: adminGone })).ok)
})

test('with several credentials the best valid one wins', async () => {
  const promoted = await issueMembership({ key: rootKey, genesis, subject: member, role: 'admin', expiresIn: DAY, issuedAt: T0 })
  const result = await check(['garbage', memberCredential, promoted])
  assert.ok(result.ok)
  assert.equal(result.role, 'admin')
})

test('an open network admits anyone not revoked; credentials still decide the admin role', async () => {
  const result = await check(undefined, outsider, { genesis: openGenesis })
  assert.ok(result.ok)
  assert.equal(result.via, 'open')
  assert.equal(result.role, 'member')
  const openAdmin = await issueMembership({ key: rootKey, genesis: openGenesis, subject: admin, role: 'admin', issuedAt: T0 })
  const promoted = await check(openAdmin, admin, { genesis: openGenesis })
  assert.ok(promoted.ok && promoted.role === 'admin' && promoted.via === 'credential')
  // a credential that fails costs the role, not membership
  const demoted = await check(openAdmin, admin, { genesis: openGenesis, now: hours(-48) })
  assert.ok(demoted.ok && demoted.role === 'member' && demoted.via === 'open')
  const banned = new RevocationList(openGenesis)
  await banned.add(await createRevocation({ key: rootKey, genesis: openGenesis, target: outsider, at: T0 }))
  refused(await check(undefined, outsider, { genesis: openGenesis, revoked: banned }), 'revoked')
  refused(await check(undefined, 'not-a-did', { genesis: openGenesis }), 'malformed')
})

test('an invite round-trips and its credential admits the invitee', async () => {
  const bootstrap = ['/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo', '/dns4/mesh.example/tcp/443/wss']
  const text = createInvite({ genesis, bootstrap, credential: memberCredential })
  assert.match(text, /^meshinvite1[A-Za-z0-9_-]+$/)
  const invite = await parseInvite(`  ${text}\n`)
  assert.equal(invite.genesis.id, genesis.id)
  assert.deepEqual(invite.bootstrap, bootstrap)
  assert.equal(invite.credential, memberCredential)
  assert.ok((await check(invite.credential, member, { genesis: invite.genesis })).ok)
  const bare = await parseInvite(createInvite({ genesis: openGenesis, bootstrap: [] }))
  assert.equal(bare.credential, undefined)
  assert.throws(() => createInvite({ genesis, bootstrap: ['not a multiaddr'] }), TypeError)
})

test('a garbage invite gets a clear NetworkError', async () => {
  const encode = (body: unknown): string => 'meshinvite1' + base64url.baseEncode(dagCbor.encode(body))
  await rejects(parseInvite('hello'), 'malformed')
  await rejects(parseInvite('meshinvite1!!!'), 'malformed')
  await rejects(parseInvite('meshinvite1' + 'A'.repeat(40_000)), 'too-large')
  await rejects(parseInvite(encode({ bootstrap: [] })), 'malformed')
  await rejects(parseInvite(encode({ genesis: genesis.bytes, bootstrap: ['/nonsense/proto'] })), 'malformed')
  await rejects(parseInvite(encode({ genesis: genesis.bytes, bootstrap: [], credential: 7 })), 'malformed')
  await rejects(parseInvite(encode({ genesis: new Uint8Array([0xa0]), bootstrap: [] })), 'malformed')
  const block = dagCbor.decode(genesis.bytes) as { record: Record<string, unknown>, signature: Uint8Array }
  await rejects(parseInvite(encode({ genesis: dagCbor.encode({ ...block, record: { ...block.record, name: 'evil' } }), bootstrap: [] })), 'bad-signature')
  await rejects(parseInvite(undefined as unknown as string), 'malformed')
})

test('revocations by roots and admins verify; others do not', async () => {
  const byRoot = await verifyRevocation(genesis, await createRevocation({ key: rootKey, genesis, target: member, at: T0 }), { now: T0 })
  assert.deepEqual({ ...byRoot, token: undefined }, { network: genesis.id, target: member, by: root, at: T0, token: undefined })

  const byAdmin = await verifyRevocation(genesis, await createRevocation({ key: adminKey, genesis, target: member, adminCredential, at: hours(1) }), { now: hours(2) })
  assert.equal(byAdmin.by, admin)
  // the admin had to be one at the time it revoked
  await rejects(verifyRevocation(genesis, await createRevocation({ key: adminKey, genesis, target: member, adminCredential, at: hours(48) }), { now: hours(48) }), 'expired')
  // the admin credential may also travel beside the token
  const detached = await createJWT({ type: 'MeshRevocation', network: genesis.id, target: member, iat: T0.getTime() / 1000 }, { issuer: admin, signer: jwtSigner(adminKey) }, { alg: 'EdDSA' })
  assert.equal((await verifyRevocation(genesis, detached, { adminCredential, now: T0 })).by, admin)
  await rejects(verifyRevocation(genesis, detached, { now: T0 }), 'untrusted-issuer')

  await assert.rejects(createRevocation({ key: outsiderKey, genesis, target: member }), TypeError)
  const byOutsider = await createJWT({ type: 'MeshRevocation', network: genesis.id, target: member, iat: T0.getTime() / 1000 }, { issuer: outsider, signer: jwtSigner(outsiderKey) }, { alg: 'EdDSA' })
  await rejects(verifyRevocation(genesis, byOutsider, { now: T0 }), 'untrusted-issuer')
  const memberAsAdmin = await createRevocation({ key: memberKey, genesis, target: outsider, adminCredential: memberCredential, at: T0 })
  await rejects(verifyRevocation(genesis, memberAsAdmin, { now: T0 }), 'untrusted-issuer')
})

test('bad revocations are refused with a reason', async () => {
  const token = await createRevocation({ key: rootKey, genesis, target: member, at: T0 })
  await rejects(verifyRevocation(otherGenesis, token, { now: T0 }), 'wrong-network')
  const [h, p, s] = token.split('.')
  const payload = JSON.parse(new TextDecoder().decode(base64url.baseDecode(p)))
  const retargeted = `${h}.${base64url.baseEncode(new TextEncoder().encode(JSON.stringify({ ...payload, target: outsider })))}.${s}`
  await rejects(verifyRevocation(genesis, retargeted, { now: T0 }), 'bad-signature')
  await rejects(verifyRevocation(genesis, 'junk', { now: T0 }), 'malformed')
  await rejects(verifyRevocation(genesis, 'x'.repeat(20_000), { now: T0 }), 'too-large')
  await rejects(verifyRevocation(genesis, token, { now: hours(-1) }), 'not-yet-valid')
  await assert.rejects(createRevocation({ key: rootKey, genesis, target: root }), TypeError)
  const rootTarget = await createJWT({ type: 'MeshRevocation', network: genesis.id, target: root, iat: T0.getTime() / 1000 }, { issuer: root, signer: jwtSigner(rootKey) }, { alg: 'EdDSA' })
  await rejects(verifyRevocation(genesis, rootTarget, { now: T0 }), 'not-allowed')
  await assert.rejects(createRevocation({ key: rootKey, genesis, target: 'somebody' }), TypeError)
})

test('a RevocationList persists as JSON and verifies what it loads', async () => {
  const list = new RevocationList(genesis)
  const credentialId = 'urn:uuid:1b4e28ba-2fa1-41d2-883f-0016d3cca427'
  await list.add(await createRevocation({ key: rootKey, genesis, target: member }))
  await list.add(await createRevocation({ key: adminKey, genesis, target: credentialId, adminCredential, at: hours(1) }))
  await list.add(await createRevocation({ key: rootKey, genesis, target: member }))
  assert.equal(list.size, 2)
  assert.ok(list.has(member) && list.has(credentialId) && !list.has(outsider))

  const json = JSON.stringify(list)
  const loaded = await RevocationList.fromJSON(genesis, JSON.parse(json))
  assert.equal(loaded.size, 2)
  assert.ok(loaded.has(member) && loaded.has(credentialId))
  await rejects(RevocationList.fromJSON(genesis, { not: 'a list' }), 'malformed')
  await rejects(RevocationList.fromJSON(genesis, ['junk']), 'malformed')
  await rejects(RevocationList.fromJSON(otherGenesis, JSON.parse(json)), 'wrong-network')
  await rejects(list.add(await createRevocation({ key: outsiderKey, genesis: otherGenesis, target: member })), 'wrong-network')
  assert.equal(list.size, 2)
})

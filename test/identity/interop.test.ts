// Interop with independent libraries, both ways: what Mesh issues verifies with did-jwt-vc and a
// standard did:key resolver (key-did-resolver through did-resolver), and what did-jwt-vc issues
// with a did-jwt EdDSA signer verifies with Mesh — on Mesh's node:crypto fast path (did:key,
// did:jwk) and on its did-jwt path (any other method).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { EdDSASigner } from 'did-jwt'
import { createVerifiableCredentialJwt, verifyCredential as libraryVerify } from 'did-jwt-vc'
import { Resolver } from 'did-resolver'
import { getResolver as keyDidResolver } from 'key-did-resolver'
import { base58btc } from 'multiformats/bases/base58'
import { CredentialError, credentialCacheStats, didOfKey, issueCredential, verifyCredential } from '../../identity/credentials.ts'
import { createGenesis, issueMembership, MEMBERSHIP_TYPE } from '../../identity/network.ts'
import { didResolver } from '../../identity/resolver.ts'
import type { CredentialErrorReason } from '../../identity/credentials.ts'
import type { DIDDocument } from 'did-resolver'

// did-jwt-vc is typed against its own copy of did-resolver
type LibraryResolver = Parameters<typeof libraryVerify>[1]
const standard = new Resolver(keyDidResolver()) as unknown as LibraryResolver
const issuerKey = await generateKeyPair('Ed25519')
const issuer = didOfKey(issuerKey)
const subject = didOfKey(await generateKeyPair('Ed25519'))
const VC_CONTEXT = 'https://www.w3.org/2018/credentials/v1'
const now = (): number => Math.floor(Date.now() / 1000)

// A did-jwt signer over the key as bytes: did-jwt takes the 64-byte secret ‖ public form, which is
// what libp2p's raw Ed25519 private key is.
const libraryKey = await generateKeyPair('Ed25519')
const librarySigner = EdDSASigner(libraryKey.raw)
const libraryIssuer = didOfKey(libraryKey)

async function rejects (promise: Promise<unknown>, reason: CredentialErrorReason): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof CredentialError, `expected CredentialError, got ${String(err)}`)
    assert.equal(err.reason, reason, err.message)
    return true
  })
}

function tamper (jwt: string): string {
  const [h, p, s] = jwt.split('.')
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString())
  payload.vc.credentialSubject.role = 'admin'
  return `${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${s}`
}

test('a credential Mesh issues verifies with did-jwt-vc and key-did-resolver', async () => {
  const id = 'urn:uuid:0b9bbf1e-5e0d-4f5c-9d1e-2c1f4b6a7d10'
  const jwt = await issueCredential({ key: issuerKey, subject, type: 'NodeRoleCredential', claims: { region: 'eu-west', cpus: 8 }, expiresIn: 3600, id })
  const verified = await libraryVerify(jwt, standard)
  const vc = verified.verifiableCredential
  assert.equal(verified.issuer, issuer)
  assert.equal(vc.issuer.id, issuer)
  assert.equal(vc.id, id)
  assert.deepEqual(vc.type, ['VerifiableCredential', 'NodeRoleCredential'])
  assert.deepEqual(vc.credentialSubject, { id: subject, region: 'eu-west', cpus: 8 })
  assert.ok(vc['@context'].includes(VC_CONTEXT))
  assert.equal(typeof vc.expirationDate, 'string')
  // the signing key the library found is the one in our did:key
  assert.equal(verified.signer.id, `${issuer}#${issuer.slice('did:key:'.length)}`)
})

test('membership credentials, admin-issued chains included, verify with did-jwt-vc', async () => {
  const adminKey = await generateKeyPair('Ed25519')
  const genesis = await createGenesis({ key: issuerKey, name: 'interop' })
  const adminCredential = await issueMembership({ key: issuerKey, genesis, subject: didOfKey(adminKey), role: 'admin', expiresIn: 3600 })
  const leaf = await issueMembership({ key: adminKey, genesis, subject, role: 'member', expiresIn: 3600, adminCredential })
  for (const jwt of [adminCredential, leaf]) {
    const { verifiableCredential: vc } = await libraryVerify(jwt, standard)
    assert.ok(vc.type.includes(MEMBERSHIP_TYPE))
    assert.equal(vc.credentialSubject.network, genesis.id)
  }
  const { verifiableCredential: vc } = await libraryVerify(leaf, standard)
  assert.equal(vc.credentialSubject.issuerCredential, adminCredential)
})

test('did-jwt-vc refuses what Mesh refuses: tampered, expired, another key', async () => {
  const jwt = await issueCredential({ key: issuerKey, subject, claims: { role: 'member' }, expiresIn: 3600 })
  await assert.rejects(libraryVerify(tamper(jwt), standard), /invalid_signature/)
  await rejects(verifyCredential(tamper(jwt)), 'bad-signature')
  const expired = await issueCredential({ key: issuerKey, subject, issuedAt: new Date(Date.now() - 7200_000), expiresIn: 3600 })
  await assert.rejects(libraryVerify(expired, standard), /JWT has expired/)
  await rejects(verifyCredential(expired), 'expired')
  // the signature of one issuer under another's DID
  const [h, p, s] = jwt.split('.')
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString())
  const forged = `${h}.${Buffer.from(JSON.stringify({ ...payload, iss: libraryIssuer })).toString('base64url')}.${s}`
  await assert.rejects(libraryVerify(forged, standard), /invalid_signature/)
  await rejects(verifyCredential(forged), 'bad-signature')
})

test('Mesh verifies what did-jwt-vc issues with a did-jwt EdDSA signer (W3C input form)', async () => {
  const id = 'urn:uuid:7f1c3a52-9d43-4b8e-a0a6-5e2b7c9d1f03'
  const issued = new Date((now() - 60) * 1000)
  const expires = new Date((now() + 3600) * 1000)
  const jwt = await createVerifiableCredentialJwt({
    '@context': [VC_CONTEXT],
    id,
    type: ['VerifiableCredential', 'LibraryCredential'],
    issuer: libraryIssuer,
    issuanceDate: issued.toISOString(),
    expirationDate: expires.toISOString(),
    credentialSubject: { id: subject, name: 'Ada', nested: { level: 3 } }
  }, { did: libraryIssuer, signer: librarySigner, alg: 'EdDSA' })
  const vc = await verifyCredential(jwt)
  assert.equal(vc.issuer, libraryIssuer)
  assert.equal(vc.subject, subject)
  assert.equal(vc.id, id)
  assert.deepEqual(vc.types, ['VerifiableCredential', 'LibraryCredential'])
  assert.deepEqual(vc.claims, { name: 'Ada', nested: { level: 3 } })
  assert.deepEqual(vc.issuedAt, issued)
  assert.deepEqual(vc.expiresAt, expires)
  // and the library agrees with itself on it
  await libraryVerify(jwt, standard)
})

test('Mesh verifies did-jwt-vc credentials in the JWT form, with alg Ed25519, and refuses their forgeries', async () => {
  const payload = {
    sub: subject,
    nbf: now() - 10,
    vc: { '@context': [VC_CONTEXT], type: ['VerifiableCredential'], credentialSubject: { role: 'member' } }
  }
  for (const alg of ['EdDSA', 'Ed25519']) {
    const jwt = await createVerifiableCredentialJwt(payload, { did: libraryIssuer, signer: librarySigner, alg })
    const vc = await verifyCredential(jwt)
    assert.equal(vc.issuer, libraryIssuer)
    assert.deepEqual(vc.claims, { role: 'member' })
    assert.equal(vc.expiresAt, undefined)
    await rejects(verifyCredential(tamper(jwt)), 'bad-signature')
  }
  const expired = await createVerifiableCredentialJwt({ ...payload, nbf: now() - 7200, exp: now() - 3600 }, { did: libraryIssuer, signer: librarySigner, alg: 'EdDSA' })
  await rejects(verifyCredential(expired), 'expired')
  // signed by the library key, claiming to be our issuer
  const impostor = await createVerifiableCredentialJwt(payload, { did: issuer, signer: librarySigner, alg: 'EdDSA' })
  await rejects(verifyCredential(impostor), 'bad-signature')
  await assert.rejects(libraryVerify(impostor, standard), /invalid_signature/)
})

test('did:jwk issuers from did-jwt-vc verify on the fast path', async () => {
  const jwk = { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(libraryKey.publicKey.raw).toString('base64url') }
  const did = `did:jwk:${Buffer.from(JSON.stringify(jwk)).toString('base64url')}`
  const jwt = await createVerifiableCredentialJwt({
    sub: subject,
    vc: { '@context': [VC_CONTEXT], type: ['VerifiableCredential'], credentialSubject: { ok: true } }
  }, { did, signer: librarySigner, alg: 'EdDSA' })
  const before = credentialCacheStats()
  const vc = await verifyCredential(jwt)
  assert.equal(vc.issuer, did)
  assert.equal(credentialCacheStats().fast, before.fast + 1)
  await libraryVerify(jwt, didResolver({ web: false }) as unknown as LibraryResolver)
})

test('the did-jwt path (a method Mesh does not know by itself) agrees with the fast path', async () => {
  // a resolver for a made-up method whose document carries the library key the pre-2020 way
  const did = 'did:example:interop'
  const document: DIDDocument = {
    id: did,
    verificationMethod: [{ id: `${did}#key-1`, type: 'Ed25519VerificationKey2018', controller: did, publicKeyBase58: base58btc.baseEncode(libraryKey.publicKey.raw) }],
    assertionMethod: [`${did}#key-1`]
  }
  const resolver = didResolver({
    web: false,
    methods: { example: async () => ({ didDocument: document, didDocumentMetadata: {}, didResolutionMetadata: {} }) }
  })
  const payload = { sub: subject, vc: { '@context': [VC_CONTEXT], type: ['VerifiableCredential'], credentialSubject: { n: 1 } } }
  const jwt = await createVerifiableCredentialJwt(payload, { did, signer: librarySigner, alg: 'EdDSA' })
  const before = credentialCacheStats()
  const vc = await verifyCredential(jwt, { resolver })
  assert.equal(vc.issuer, did)
  assert.deepEqual(vc.claims, { n: 1 })
  assert.equal(credentialCacheStats().slow, before.slow + 1)
  await rejects(verifyCredential(tamper(jwt), { resolver }), 'bad-signature')
  // without that resolver the issuer is unknown
  await rejects(verifyCredential(jwt), 'unresolvable-issuer')
  const wrongKey = await createVerifiableCredentialJwt(payload, { did, signer: EdDSASigner(issuerKey.raw), alg: 'EdDSA' })
  await rejects(verifyCredential(wrongKey, { resolver }), 'bad-signature')
})

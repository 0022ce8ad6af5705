import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createJWT } from 'did-jwt'
import { createVerifiableCredentialJwt } from 'did-jwt-vc'
import { base64url } from 'multiformats/bases/base64'
import { CredentialError, didOfKey, issueCredential, jwtSigner, verifyCredential } from '../../identity/credentials.ts'
import type { CredentialErrorReason } from '../../identity/credentials.ts'

const issuerKey = await generateKeyPair('Ed25519')
const subjectKey = await generateKeyPair('Ed25519')
const issuer = didOfKey(issuerKey)
const subject = didOfKey(subjectKey)
const T0 = new Date('2030-01-01T00:00:00Z')
const hours = (n: number): Date => new Date(T0.getTime() + n * 3600_000)

async function rejects (promise: Promise<unknown>, reason: CredentialErrorReason): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof CredentialError, `expected CredentialError, got ${String(err)}`)
    assert.equal(err.reason, reason, err.message)
    return true
  })
}

function utf8 (part: string): Record<string, unknown> {
  return JSON.parse(new TextDecoder().decode(base64url.baseDecode(part)))
}

function part (value: unknown): string {
  return base64url.baseEncode(new TextEncoder().encode(JSON.stringify(value)))
}

test('issues a vc-jwt that verifies to a typed result', async () => {
  const jwt = await issueCredential({ key: issuerKey, subject, type: 'NodeRoleCredential', claims: { region: 'eu-west' }, expiresIn: 3600, issuedAt: T0 })
  const [header, payload] = jwt.split('.').slice(0, 2).map(utf8)
  assert.equal(header.alg, 'EdDSA')
  assert.equal(payload.iss, issuer)
  const vc = await verifyCredential(jwt, { now: hours(0.5) })
  assert.equal(vc.issuer, issuer)
  assert.equal(vc.subject, subject)
  assert.deepEqual(vc.types, ['VerifiableCredential', 'NodeRoleCredential'])
  assert.deepEqual(vc.claims, { region: 'eu-west' })
  assert.match(vc.id ?? '', /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
  assert.deepEqual(vc.issuedAt, T0)
  assert.deepEqual(vc.expiresAt, hours(1))
  assert.equal(vc.jwt, jwt)
})

test('takes an explicit id, expiresAt, several types, and no expiry', async () => {
  const id = 'urn:uuid:1b4e28ba-2fa1-41d2-883f-0016d3cca427'
  const jwt = await issueCredential({ key: issuerKey, subject, type: ['A', 'B'], id, expiresAt: hours(2), issuedAt: T0 })
  const vc = await verifyCredential(jwt, { now: hours(1) })
  assert.equal(vc.id, id)
  assert.deepEqual(vc.types, ['VerifiableCredential', 'A', 'B'])
  assert.deepEqual(vc.expiresAt, hours(2))
  const forever = await verifyCredential(await issueCredential({ key: issuerKey, subject, issuedAt: T0 }), { now: hours(1e5) })
  assert.equal(forever.expiresAt, undefined)
  await assert.rejects(issueCredential({ key: issuerKey, subject, expiresAt: hours(-1), issuedAt: T0 }), TypeError)
  await assert.rejects(issueCredential({ key: issuerKey, subject: 'alice' }), TypeError)
  await assert.rejects(issueCredential({ key: await generateKeyPair('secp256k1'), subject }), TypeError)
})

test('expired and not-yet-valid credentials are refused, within the clock skew', async () => {
  const jwt = await issueCredential({ key: issuerKey, subject, expiresIn: 3600, issuedAt: T0 })
  await rejects(verifyCredential(jwt, { now: hours(2) }), 'expired')
  await rejects(verifyCredential(jwt, { now: hours(-1) }), 'not-yet-valid')
  // 30 s either side is within the default 60 s skew
  await verifyCredential(jwt, { now: new Date(hours(1).getTime() + 30_000) })
  await verifyCredential(jwt, { now: new Date(T0.getTime() - 30_000) })
  await rejects(verifyCredential(jwt, { now: new Date(hours(1).getTime() + 30_000), skewSeconds: 0 }), 'expired')
})

test('a tampered credential fails its signature', async () => {
  const jwt = await issueCredential({ key: issuerKey, subject, claims: { role: 'member' }, issuedAt: T0 })
  const [h, p, s] = jwt.split('.')
  const payload = utf8(p)
  ;(payload.vc as { credentialSubject: Record<string, unknown> }).credentialSubject.role = 'admin'
  await rejects(verifyCredential(`${h}.${part(payload)}.${s}`, { now: T0 }), 'bad-signature')
  // another subject
  await rejects(verifyCredential(`${h}.${part({ ...utf8(p), sub: issuer })}.${s}`, { now: T0 }), 'bad-signature')
  // a flipped signature bit
  const sig = base64url.baseDecode(s)
  sig[0] ^= 1
  await rejects(verifyCredential(`${h}.${p}.${base64url.baseEncode(sig)}`, { now: T0 }), 'bad-signature')
})

test('a forged credential (issuer DID not the signing key) fails its signature', async () => {
  const forger = await generateKeyPair('Ed25519')
  const forged = await createVerifiableCredentialJwt({
    sub: subject,
    nbf: Math.floor(T0.getTime() / 1000),
    vc: { '@context': ['https://www.w3.org/2018/credentials/v1'], type: ['VerifiableCredential'], credentialSubject: { role: 'admin' } }
  }, { did: issuer, signer: jwtSigner(forger), alg: 'EdDSA' })
  await rejects(verifyCredential(forged, { now: T0 }), 'bad-signature')
})

test('garbage is malformed, never a crash', async () => {
  for (const bad of ['', 'garbage', 'a.b.c', 'a.b', '...', `${part({ alg: 'EdDSA' })}.${part([1])}.AAAA`, `${part({ alg: 'EdDSA' })}.${part({ iss: issuer })}.AAAA`, '€.€.€']) {
    await rejects(verifyCredential(bad), 'malformed')
  }
  await rejects(verifyCredential(42 as unknown as string), 'malformed')
  await rejects(verifyCredential(`${part({ alg: 'EdDSA' })}.${part({ iss: issuer, sub: subject, vc: { type: 'X', credentialSubject: {} }, exp: 'soon' })}.AAAA`), 'malformed')
  // well-signed but not a W3C credential (no VerifiableCredential type or context)
  const notVc = await createJWT({ sub: subject, vc: { type: ['Other'], credentialSubject: {} } }, { issuer, signer: jwtSigner(issuerKey) }, { alg: 'EdDSA' })
  await rejects(verifyCredential(notVc), 'malformed')
})

test('oversized input is refused before any parsing', async () => {
  await rejects(verifyCredential('a'.repeat(20_000)), 'too-large')
  const jwt = await issueCredential({ key: issuerKey, subject, claims: { blob: 'x'.repeat(2000) } })
  await rejects(verifyCredential(jwt, { maxBytes: 1000 }), 'too-large')
})

test('only EdDSA: alg none and HMAC are refused', async () => {
  const jwt = await issueCredential({ key: issuerKey, subject })
  const [, p, s] = jwt.split('.')
  await rejects(verifyCredential(`${part({ alg: 'none', typ: 'JWT' })}.${p}.${s}`), 'unsupported-algorithm')
  await rejects(verifyCredential(`${part({ alg: 'HS256', typ: 'JWT' })}.${p}.${s}`), 'unsupported-algorithm')
})

test('an issuer that cannot be resolved is reported as such', async () => {
  for (const iss of ['did:web:example.com', 'did:unknown:abc']) {
    const jwt = await createVerifiableCredentialJwt({
      sub: subject,
      vc: { '@context': ['https://www.w3.org/2018/credentials/v1'], type: ['VerifiableCredential'], credentialSubject: { x: 1 } }
    }, { did: iss, signer: jwtSigner(issuerKey), alg: 'EdDSA' })
    await rejects(verifyCredential(jwt), 'unresolvable-issuer')
  }
})

test('a did:jwk issuer verifies through the offline resolver', async () => {
  const jwk = { kty: 'OKP', crv: 'Ed25519', x: base64url.baseEncode(issuerKey.publicKey.raw) }
  const did = `did:jwk:${part(jwk)}`
  const jwt = await createVerifiableCredentialJwt({
    sub: subject,
    vc: { '@context': ['https://www.w3.org/2018/credentials/v1'], type: ['VerifiableCredential'], credentialSubject: { ok: true } }
  }, { did, signer: jwtSigner(issuerKey), alg: 'EdDSA' })
  const vc = await verifyCredential(jwt)
  assert.equal(vc.issuer, did)
  assert.deepEqual(vc.claims, { ok: true })
  // and another key under the same did:jwk does not
  const other = await createVerifiableCredentialJwt({
    sub: subject,
    vc: { '@context': ['https://www.w3.org/2018/credentials/v1'], type: ['VerifiableCredential'], credentialSubject: { x: 1 } }
  }, { did, signer: jwtSigner(subjectKey), alg: 'EdDSA' })
  await rejects(verifyCredential(other), 'bad-signature')
})

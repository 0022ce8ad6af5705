import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { clearCredentialCache, credentialCacheStats, CredentialError, didOfKey, issueCredential, verifyCredential } from '../../identity/credentials.ts'
import { checkMembership, createGenesis, createRevocation, issueMembership, RevocationList } from '../../identity/network.ts'
import { didResolver } from '../../identity/resolver.ts'
import { didKeyFromEd25519 } from '../../identity/did-key.ts'
import { BoundedCache } from '../../identity/verification-cache.ts'

const issuerKey = await generateKeyPair('Ed25519')
const subjectKey = await generateKeyPair('Ed25519')
const subject = didOfKey(subjectKey)
const T0 = new Date('2025-01-01T00:00:00Z')
const hours = (n: number): Date => new Date(T0.getTime() + n * 3600_000)

test('BoundedCache evicts the least recently used entry, by count and by weight', () => {
  const cache = new BoundedCache<string, string>({ maxEntries: 3 })
  for (const k of ['a', 'b', 'c']) cache.set(k, k.toUpperCase())
  assert.equal(cache.get('a'), 'A') // a is now the most recent
  cache.set('d', 'D')
  assert.equal(cache.has('b'), false)
  assert.deepEqual(['a', 'c', 'd'].map(k => cache.get(k)), ['A', 'C', 'D'])
  assert.equal(cache.size, 3)

  const weighed = new BoundedCache<string, string>({ maxEntries: 100, maxWeight: 10, weigh: v => v.length })
  weighed.set('x', '12345')
  weighed.set('y', '1234')
  weighed.set('z', '12')
  assert.equal(weighed.has('x'), false)
  assert.equal(weighed.size, 2)
  weighed.set('huge', '12345678901') // heavier than the whole cache: not kept, nothing evicted for it
  assert.equal(weighed.has('huge'), false)
  assert.equal(weighed.size, 2)
  weighed.set('y', '1') // replacing an entry gives its weight back
  weighed.set('w', '1234567')
  assert.deepEqual([weighed.has('y'), weighed.has('z'), weighed.has('w')], [true, true, true])
  assert.throws(() => new BoundedCache({ maxEntries: Number.NaN }), RangeError)
})

test('a verified credential is not verified again, but its validity is checked against now every time', async () => {
  clearCredentialCache()
  const jwt = await issueCredential({ key: issuerKey, subject, claims: { role: 'member' }, expiresIn: 3600, issuedAt: T0 })
  const first = await verifyCredential(jwt, { now: hours(0.5) })
  const before = credentialCacheStats()
  assert.equal(before.entries, 1)
  const second = await verifyCredential(jwt, { now: hours(0.5) })
  assert.equal(credentialCacheStats().hits, before.hits + 1)
  assert.equal(credentialCacheStats().fast, before.fast)
  assert.deepEqual(second, first)
  // cached, and still expired after its expiry (which also drops it) and not valid before its start
  await assert.rejects(verifyCredential(jwt, { now: hours(2) }), (err: unknown) => err instanceof CredentialError && err.reason === 'expired')
  assert.equal(credentialCacheStats().entries, 0)
  await verifyCredential(jwt, { now: hours(0.5) })
  assert.equal(credentialCacheStats().entries, 1)
  await assert.rejects(verifyCredential(jwt, { now: hours(-1) }), (err: unknown) => err instanceof CredentialError && err.reason === 'not-yet-valid')
  await verifyCredential(jwt, { now: new Date(hours(1).getTime() + 30_000) })
  await assert.rejects(verifyCredential(jwt, { now: new Date(hours(1).getTime() + 30_000), skewSeconds: 0 }), (err: unknown) => err instanceof CredentialError && err.reason === 'expired')
  // the size bound applies before the cache
  await assert.rejects(verifyCredential(jwt, { maxBytes: 100, now: hours(0.5) }), (err: unknown) => err instanceof CredentialError && err.reason === 'too-large')
  // cached claims cannot be changed by a caller
  assert.throws(() => { (second.claims as Record<string, unknown>).role = 'admin' }, TypeError)
  assert.equal((await verifyCredential(jwt, { now: hours(0.5) })).claims.role, 'member')
})

test('only exact strings hit the cache: a changed byte is verified (and refused) from scratch', async () => {
  const jwt = await issueCredential({ key: issuerKey, subject, issuedAt: T0 })
  await verifyCredential(jwt, { now: T0 })
  const [h, p, s] = jwt.split('.')
  const flipped = s[0] === 'A' ? 'B' + s.slice(1) : 'A' + s.slice(1)
  const before = credentialCacheStats()
  await assert.rejects(verifyCredential(`${h}.${p}.${flipped}`, { now: T0 }), (err: unknown) => err instanceof CredentialError && err.reason === 'bad-signature')
  assert.equal(credentialCacheStats().hits, before.hits)
  // a refused credential is not cached: it fails again
  await assert.rejects(verifyCredential(`${h}.${p}.${flipped}`, { now: T0 }), (err: unknown) => err instanceof CredentialError && err.reason === 'bad-signature')
  // cache: false verifies from scratch
  const fast = credentialCacheStats().fast
  await verifyCredential(jwt, { now: T0, cache: false })
  assert.equal(credentialCacheStats().fast, fast + 1)
})

test('the cache holds a bounded number of credentials', async () => {
  clearCredentialCache()
  const jwts = await Promise.all(Array.from({ length: 50 }, async () => await issueCredential({ key: issuerKey, subject, issuedAt: T0 })))
  for (const jwt of jwts) await verifyCredential(jwt, { now: T0 })
  assert.equal(credentialCacheStats().entries, 50)
  // the bound itself is 10,000 entries / 16 MiB; the BoundedCache test covers eviction
})

test('revocation stays outside the cache: checkMembership refuses a cached credential once it is revoked', async () => {
  const genesis = await createGenesis({ key: issuerKey, name: 'cache', created: T0 })
  const credential = await issueMembership({ key: issuerKey, genesis, subject, role: 'member', expiresIn: 86_400, issuedAt: T0 })
  const revoked = new RevocationList(genesis)
  const ok = await checkMembership({ genesis, credential, remoteDid: subject, revoked, now: hours(1) })
  assert.equal(ok.ok, true)
  const hits = credentialCacheStats().hits
  assert.equal((await checkMembership({ genesis, credential, remoteDid: subject, revoked, now: hours(1) })).ok, true)
  assert.ok(credentialCacheStats().hits > hits)
  // revoke the credential by its ID, then a second credential by its subject's DID
  assert.ok(ok.ok && ok.credentialId != null)
  await revoked.add(await createRevocation({ key: issuerKey, genesis, target: ok.ok ? ok.credentialId as string : '', at: hours(1) }))
  const refused = await checkMembership({ genesis, credential, remoteDid: subject, revoked, now: hours(2) })
  assert.equal(refused.ok, false)
  assert.equal(!refused.ok && refused.reason, 'revoked')
  const other = await issueMembership({ key: issuerKey, genesis, subject, role: 'member', expiresIn: 86_400, issuedAt: T0 })
  assert.equal((await checkMembership({ genesis, credential: other, remoteDid: subject, revoked, now: hours(2) })).ok, true)
  await revoked.add(await createRevocation({ key: issuerKey, genesis, target: subject, at: hours(2) }))
  const gone = await checkMembership({ genesis, credential: other, remoteDid: subject, revoked, now: hours(3) })
  assert.equal(!gone.ok && gone.reason, 'revoked')
  // and expiry through the cache: a day later the credential is expired
  const late = await checkMembership({ genesis, credential: other, remoteDid: subject, now: hours(48) })
  assert.equal(!late.ok && late.reason, 'expired')
})

test('did:key documents are shared and frozen; resolving one again is a cache hit with the same document', async () => {
  const resolver = didResolver({ web: false })
  const did = didOfKey(await generateKeyPair('Ed25519'))
  const a = await resolver.resolve(did)
  const b = await didResolver({ web: false }).resolve(did)
  assert.equal(a.didDocument, b.didDocument)
  assert.ok(Object.isFrozen(a.didDocument))
  assert.throws(() => { (a.didDocument as { id: string }).id = 'did:key:other' }, TypeError)
  // a fragment resolves to the same document
  assert.equal((await resolver.resolve(`${did}#${did.slice(8)}`)).didDocument, a.didDocument)
  // a did:key off the curve is refused, every time
  const offCurve = new Uint8Array(32)
  offCurve[0] = 2
  for (let i = 0; i < 2; i++) {
    const bad = await resolver.resolve(didKeyFromEd25519(offCurve))
    assert.equal(bad.didResolutionMetadata.error, 'invalidDid')
    assert.equal(bad.didDocument, null)
  }
  // and a credential from such an issuer is unresolvable on the fast path too
  const [h, , s] = (await issueCredential({ key: issuerKey, subject, issuedAt: T0 })).split('.')
  const payload = { iss: didKeyFromEd25519(offCurve), sub: subject, nbf: 1, vc: { '@context': ['https://www.w3.org/2018/credentials/v1'], type: ['VerifiableCredential'], credentialSubject: {} } }
  await assert.rejects(verifyCredential(`${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${s}`), (err: unknown) => err instanceof CredentialError && err.reason === 'unresolvable-issuer')
})

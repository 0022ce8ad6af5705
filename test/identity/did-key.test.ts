import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { base58btc } from 'multiformats/bases/base58'
import { Resolver } from 'did-resolver'
import { getResolver } from 'key-did-resolver'
import {
  didFromPeerId, didKeyDocument, didKeyFromEd25519, ed25519FromDidKey, InvalidDidError, parsePeerOrDid, peerIdFromDid, x25519FromEd25519
} from '../../identity/did-key.ts'

test('a node DID round-trips through its peer ID', async () => {
  const key = await generateKeyPair('Ed25519')
  const peerId = peerIdFromPrivateKey(key)
  const did = didFromPeerId(peerId)
  assert.match(did, /^did:key:z6Mk/)
  assert.equal(did, didKeyFromEd25519(key.publicKey.raw))
  assert.ok(peerIdFromDid(did).equals(peerId))
  assert.ok(parsePeerOrDid(peerId.toString()).equals(peerId))
  assert.deepEqual(ed25519FromDidKey(did), key.publicKey.raw)
})

test('the X25519 keyAgreement key matches published did:key vectors', () => {
  // w3c-ccg did:key spec example and the ed25519-x25519 test vector used by ACA-Py
  const vectors = [
    ['did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH', 'z6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc'],
    ['did:key:z6MkmjY8GnV5i9YTDtPETC2uUAW6ejw3nk5mXF5yci5ab7th', 'z6LShpNhGwSupbB7zjuivH156vhLJBDDzmQtA4BY9S94pe1K']
  ]
  for (const [did, x25519] of vectors) {
    const doc = didKeyDocument(did)
    assert.deepEqual(doc.keyAgreement, [{ id: `${did}#${x25519}`, type: 'Multikey', controller: did, publicKeyMultibase: x25519 }])
  }
  assert.deepEqual(
    base58btc.encode(x25519FromEd25519(ed25519FromDidKey(vectors[1][0]))).slice(1),
    '79CXkde3j8TNuMXxPdV7nLUrT2g7JAEjH5TreyVY7GEZ'
  )
})

test('the document has one signing key referenced from every signing relationship', () => {
  const did = 'did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH'
  const keyId = `${did}#z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH`
  const doc = didKeyDocument(did)
  assert.deepEqual(doc['@context'], ['https://www.w3.org/ns/did/v1', 'https://w3id.org/security/multikey/v1'])
  assert.equal(doc.id, did)
  assert.deepEqual(doc.verificationMethod, [{ id: keyId, type: 'Multikey', controller: did, publicKeyMultibase: 'z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH' }])
  for (const rel of ['authentication', 'assertionMethod', 'capabilityDelegation', 'capabilityInvocation'] as const) assert.deepEqual(doc[rel], [keyId])

  const legacy = didKeyDocument(did, 'Ed25519VerificationKey2020')
  assert.equal(legacy.verificationMethod[0].type, 'Ed25519VerificationKey2020')
  assert.equal(legacy.keyAgreement[0].type, 'X25519KeyAgreementKey2020')
  assert.ok(legacy['@context'].includes('https://w3id.org/security/suites/x25519-2020/v1'))
})

test('same key ids and key bytes as key-did-resolver, for random keys', async () => {
  const resolver = new Resolver(getResolver() as ConstructorParameters<typeof Resolver>[0])
  for (let i = 0; i < 5; i++) {
    const key = await generateKeyPair('Ed25519')
    const did = didKeyFromEd25519(key.publicKey.raw)
    const ours = didKeyDocument(did)
    const theirs = (await resolver.resolve(did)).didDocument
    assert.ok(theirs != null)
    assert.equal(ours.verificationMethod[0].id, theirs.verificationMethod?.[0].id)
    assert.deepEqual(ours.assertionMethod, theirs.assertionMethod)
    const theirAgreement = theirs.keyAgreement?.[0] as { id: string, publicKeyBase58: string }
    assert.equal(ours.keyAgreement[0].id, theirAgreement.id)
    assert.deepEqual(base58btc.decode(ours.keyAgreement[0].publicKeyMultibase).subarray(2), base58btc.baseDecode(theirAgreement.publicKeyBase58))
  }
})

test('bad did:keys are refused with InvalidDidError', () => {
  const notOnCurve = new Uint8Array(32)
  notOnCurve[0] = 2 // y = 2: (y²-1)/(dy²+1) is not a square mod p
  assert.throws(() => x25519FromEd25519(notOnCurve), InvalidDidError)
  assert.throws(() => didKeyDocument(didKeyFromEd25519(notOnCurve)), { name: 'InvalidDidError', message: /not a point on the Ed25519 curve/ })
  const identity = new Uint8Array(32)
  identity[0] = 1
  assert.throws(() => didKeyDocument(didKeyFromEd25519(identity)), InvalidDidError)
  assert.throws(() => didKeyDocument('did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme'), { name: 'InvalidDidError', message: /not an Ed25519 key/ })
  assert.throws(() => didKeyDocument('did:key:z0OIl'), { name: 'InvalidDidError', message: /bad base58btc/ })
  assert.throws(() => didKeyDocument('did:web:example.com'), InvalidDidError)
  assert.throws(() => parsePeerOrDid('hello'), InvalidDidError)
  assert.throws(() => didKeyFromEd25519(new Uint8Array(31)), InvalidDidError)
})

// node/ed25519-verify.ts: Ed25519 verification with remote keys imported once must answer exactly
// as @libp2p/crypto's own: true for a good signature, false for a changed message, signature or
// key, and the same errors for malformed input, including after its key cache has turned over.
import assert from 'node:assert/strict'
import { verify as nodeVerify, createPublicKey } from 'node:crypto'
import { generateKeyPair, publicKeyFromRaw } from '@libp2p/crypto/keys'
import { Uint8ArrayList } from 'uint8arraylist'
import { describe, it } from 'node:test'
import { cacheEd25519Verification } from '../../node/ed25519-verify.ts'

/** The verdict of node:crypto itself, with a freshly imported key: what the stock code computes. */
function reference (raw: Uint8Array, data: Uint8Array, sig: Uint8Array): boolean {
  const key = createPublicKey({ format: 'jwk', key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') } })
  return nodeVerify(null, data, key, sig)
}

describe('cached Ed25519 verification', () => {
  cacheEd25519Verification()
  cacheEd25519Verification() // idempotent: a second install must not wrap the wrapper

  it('accepts good signatures and refuses changed messages, signatures and keys', async () => {
    const keys = await Promise.all(Array.from({ length: 4 }, async () => generateKeyPair('Ed25519')))
    for (const [i, key] of keys.entries()) {
      const message = new Uint8Array(100 + i).fill(i)
      const sig = await key.sign(message)
      const pub = publicKeyFromRaw(key.publicKey.raw)
      for (let round = 0; round < 2; round++) { // the second round hits the cache
        assert.equal(await pub.verify(message, sig), true)
        assert.equal(await pub.verify(new Uint8ArrayList(message.subarray(0, 10), message.subarray(10)) as any, sig), true)
        const changed = message.slice(); changed[0] ^= 1
        assert.equal(await pub.verify(changed, sig), false)
        const badSig = Uint8Array.from(sig); badSig[5] ^= 1
        assert.equal(await pub.verify(message, badSig), reference(key.publicKey.raw, message, badSig))
        const otherKey = keys[(i + 1) % keys.length].publicKey
        assert.equal(await otherKey.verify(message, sig), false)
      }
    }
  })

  it('keeps the stock errors for malformed signatures', async () => {
    const key = await generateKeyPair('Ed25519')
    assert.throws(() => key.publicKey.verify(new Uint8Array(1), new Uint8Array(10)), /64 bytes/)
  })

  it('stays right after its cache turns over (more keys than it holds)', async () => {
    const first = await generateKeyPair('Ed25519')
    const message = new Uint8Array([1, 2, 3])
    const sig = await first.sign(message)
    assert.equal(await first.publicKey.verify(message, sig), true)
    // 4,100 distinct public keys (any 32 bytes that decode as a point): random keys push the first one out
    for (let i = 0; i < 4100; i++) {
      const other = (await generateKeyPair('Ed25519')).publicKey
      assert.equal(await other.verify(message, sig), false)
    }
    assert.equal(await first.publicKey.verify(message, sig), true)
    const forged = Uint8Array.from(sig); forged[63] ^= 0x10
    assert.equal(await first.publicKey.verify(message, forged), false)
  })
})

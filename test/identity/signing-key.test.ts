// identity/signing-key.ts: a node's key signing through one imported key object must give exactly
// the signatures @libp2p/crypto gives (Ed25519 is deterministic), still be the same key to every
// other use (type, raw bytes, public key, equality, protobuf), and leave other key types alone.
import assert from 'node:assert/strict'
import { generateKeyPair, privateKeyToProtobuf, publicKeyFromRaw } from '@libp2p/crypto/keys'
import { Uint8ArrayList } from 'uint8arraylist'
import { describe, it } from 'node:test'
import { signingKey } from '../../identity/signing-key.ts'

describe('signingKey', () => {
  it('signs exactly as @libp2p/crypto does, for arrays and lists', async () => {
    const stock = await generateKeyPair('Ed25519')
    const fast = signingKey(stock)
    for (const size of [0, 1, 64, 1000, 70_000]) {
      const message = new Uint8Array(size).map((_, i) => i * 7)
      const expected = await stock.sign(message)
      assert.deepEqual(new Uint8Array(await fast.sign(message)), new Uint8Array(expected))
      assert.deepEqual(new Uint8Array(await fast.sign(new Uint8ArrayList(message.subarray(0, size >> 1), message.subarray(size >> 1)) as any)), new Uint8Array(expected))
      assert.equal(await stock.publicKey.verify(message, await fast.sign(message)), true)
    }
  })

  it('is the same key to everything else, and wraps once', async () => {
    const stock = await generateKeyPair('Ed25519')
    const fast = signingKey(stock)
    assert.equal(fast.type, 'Ed25519')
    assert.deepEqual(fast.raw, stock.raw)
    assert.ok(fast.publicKey.equals(stock.publicKey))
    assert.ok(fast.equals(stock) && stock.equals(fast))
    assert.deepEqual(privateKeyToProtobuf(fast), privateKeyToProtobuf(stock))
    assert.equal(signingKey(fast), fast)
    // a signature of another key does not pass for this one
    const other = await generateKeyPair('Ed25519')
    assert.equal(await publicKeyFromRaw(fast.publicKey.raw).verify(new Uint8Array([1]), await other.sign(new Uint8Array([1]))), false)
  })

  it('honours an aborted signal, and leaves other key types alone', async () => {
    const fast = signingKey(await generateKeyPair('Ed25519'))
    assert.throws(() => fast.sign(new Uint8Array(1), { signal: AbortSignal.abort() }), { name: 'AbortError' })
    const secp = await generateKeyPair('secp256k1')
    assert.equal(signingKey(secp), secp)
  })
})

import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { didFromPeerId } from '../../identity/did-key.ts'
import { endRecordKey, endRecordSelector, endRecordValidator, peerIdOfRecordKey } from '../../registry/dht-record.ts'
import { buildDescriptor, encodeSigned, signDescriptor } from '../../registry/descriptor.ts'

async function signed (opts: { network?: string, seq?: number, now?: number, ttlMs?: number } = {}) {
  const key = await generateKeyPair('Ed25519')
  const peerId = peerIdFromPrivateKey(key)
  const make = async (o: typeof opts) => encodeSigned(await signDescriptor(buildDescriptor({
    did: didFromPeerId(peerId), network: o.network ?? 'net', region: 'eu-west', software: { name: 'mesh', version: '0' },
    ...(o.seq !== undefined ? { seq: o.seq } : {}), ...(o.now !== undefined ? { now: o.now } : {}), ...(o.ttlMs !== undefined ? { ttlMs: o.ttlMs } : {})
  }), key))
  return { peerId: peerId.toString(), bytes: await make(opts), make }
}

describe('descriptor records in the DHT', () => {
  it('keys are /mesh-end/<peerId>, and nothing else parses as one', async () => {
    const { peerId } = await signed()
    assert.equal(new TextDecoder().decode(endRecordKey(peerId)), `/mesh-end/${peerId}`)
    assert.equal(peerIdOfRecordKey(endRecordKey(peerId)), peerId)
    for (const k of ['/pk/abc', `/mesh-end/${peerId}/x`, '/mesh-end/', 'mesh-end/abc', '/mesh-end/0OIl']) {
      assert.throws(() => peerIdOfRecordKey(new TextEncoder().encode(k)), /mesh-end\/<peerId>/)
    }
  })

  it('the validator accepts the node\'s own live descriptor in its network only', async () => {
    const validate = endRecordValidator('net')
    const { peerId, bytes } = await signed()
    await validate(endRecordKey(peerId), bytes)
    const other = await signed()
    await assert.rejects(validate(endRecordKey(other.peerId), bytes), { reason: 'wrong-key' })
    await assert.rejects(endRecordValidator('elsewhere')(endRecordKey(peerId), bytes), { reason: 'schema' })
    const tampered = bytes.slice()
    tampered[tampered.length - 1] ^= 1
    await assert.rejects(validate(endRecordKey(peerId), tampered), { name: 'DescriptorError' })
    const expired = await other.make({ now: Date.now() - 3_600_000, ttlMs: 60_000 })
    await assert.rejects(validate(endRecordKey(other.peerId), expired), { reason: 'expired' })
    await assert.rejects(validate(endRecordKey(peerId), new Uint8Array(70_000)), { reason: 'too-large' })
    await assert.rejects(validate(endRecordKey(peerId), new Uint8Array([1, 2, 3])), { reason: 'malformed' })
  })

  it('the selector picks the highest seq, and garbage never wins', async () => {
    const s = await signed({ seq: 5 })
    const newer = await s.make({ seq: 9 })
    const older = await s.make({ seq: 2 })
    const key = endRecordKey(s.peerId)
    assert.equal(endRecordSelector(key, [s.bytes, newer, older]), 1)
    assert.equal(endRecordSelector(key, [new Uint8Array([0xff]), older]), 1)
    assert.equal(endRecordSelector(key, [older]), 0)
  })
})

import assert from 'node:assert/strict'
import { before, describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import * as dagJson from '@ipld/dag-json'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { didKeyFromEd25519, peerIdFromDid } from '../../identity/did-key.ts'
import {
  DescriptorError, END_CONTEXT, MAX_DESCRIPTOR_BYTES, buildDescriptor, contextDocument, decodeSigned, encodeSigned,
  signDescriptor, supersedes, verifySigned
} from '../../registry/descriptor.ts'
import type { DescriptorErrorReason, DescriptorFacts, EdgeNodeDescriptor, OsFacts } from '../../registry/descriptor.ts'
import type { PrivateKey } from '@libp2p/interface'

const NOW = Date.parse('2026-03-01T12:00:00.000Z')
const GiB = 1024 ** 3

const fakeOs: OsFacts = {
  cpus: () => Array.from({ length: 6 }, () => ({ model: '  Test CPU @ 3GHz ' })),
  totalmem: () => 16 * GiB,
  freemem: () => 5 * GiB,
  arch: () => 'arm64',
  loadavg: () => [3, 2, 1]
}

function facts (did: string, extra: Partial<DescriptorFacts> = {}): DescriptorFacts {
  return {
    did,
    network: 'testnet',
    region: 'eu-west',
    software: { name: 'mesh', version: '0.1.0' },
    now: NOW,
    os: fakeOs,
    ...extra
  }
}

async function rejects (p: Promise<unknown>, reason: DescriptorErrorReason): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof DescriptorError, `expected DescriptorError, got ${String(e)}`)
    assert.equal(e.reason, reason, e.message)
    return true
  })
}

function throwsReason (fn: () => unknown, reason: DescriptorErrorReason): void {
  assert.throws(fn, (e: unknown) => e instanceof DescriptorError && e.reason === reason)
}

describe('edge-node descriptor', () => {
  let key: PrivateKey
  let other: PrivateKey
  let did: string
  let otherDid: string
  let desc: EdgeNodeDescriptor

  before(async () => {
    key = await generateKeyPair('Ed25519')
    other = await generateKeyPair('Ed25519')
    did = didKeyFromEd25519(key.publicKey.raw)
    otherDid = didKeyFromEd25519(other.publicKey.raw)
    desc = buildDescriptor(facts(did, {
      addresses: ['/ip4/127.0.0.1/tcp/4001'],
      accelerators: [{ kind: 'gpu', model: 'RTX 4090', memoryMb: 24576 }],
      geo: { lat: 53.35, lon: -6.26 },
      zone: 'eu-west-1a'
    }))
  })

  describe('buildDescriptor', () => {
    it('reads the host facts and fills in configuration and defaults', () => {
      assert.equal(desc['@context'], END_CONTEXT)
      assert.equal(desc.type, 'EdgeNodeDescriptor')
      assert.equal(desc.id, did)
      assert.equal(desc.peerId, peerIdFromDid(did).toString())
      assert.deepEqual(desc.cpu, { cores: 6, arch: 'arm64', model: 'Test CPU @ 3GHz' })
      assert.deepEqual(desc.memory, { totalMb: 16384, freeMb: 5120 })
      assert.deepEqual(desc.accelerators, [{ kind: 'gpu', model: 'RTX 4090', memoryMb: 24576 }])
      assert.equal(desc.zone, 'eu-west-1a')
      assert.deepEqual(desc.geo, { lat: 53.35, lon: -6.26 })
      assert.deepEqual(desc.runtimes, ['wasi-preview1'])
      assert.deepEqual(desc.trust, { level: 'unverified' })
      assert.deepEqual(desc.load, { cpu: 0.5, invocations: 0 })
      assert.deepEqual(desc.capacity, { slots: 6, freeSlots: 6 })
      assert.equal(desc.issued, '2026-03-01T12:00:00.000Z')
      assert.equal(desc.expires, '2026-03-01T12:10:00.000Z')
      assert.equal(desc.seq, NOW)
      assert.equal(desc.latency.coordinate.vec.length, 8)
    })

    it('copes with a container that reports no CPUs and overloaded hosts', () => {
      const d = buildDescriptor(facts(did, { os: { ...fakeOs, cpus: () => [], loadavg: () => [40, 0, 0] } }))
      assert.equal(d.cpu.cores, 1)
      assert.equal(d.cpu.model, 'unknown')
      assert.equal(d.load.cpu, 1)
      assert.equal(d.zone, 'eu-west')
      assert.equal('geo' in d, false)
    })

    it('rejects bad facts with a schema error', () => {
      throwsReason(() => buildDescriptor(facts(did, { region: 'EU West' })), 'schema')
      throwsReason(() => buildDescriptor(facts(did, { capacity: { slots: 2, freeSlots: 3 } })), 'schema')
      throwsReason(() => buildDescriptor(facts(did, { accelerators: [{ kind: 'quantum' as 'gpu', model: 'x', memoryMb: 1 }] })), 'schema')
      throwsReason(() => buildDescriptor(facts(did, { ttlMs: 0 })), 'schema')
      throwsReason(() => buildDescriptor(facts(did, { geo: { lat: 91, lon: 0 } })), 'schema')
    })

    it('refuses a DID that is not an Ed25519 did:key', () => {
      throwsReason(() => buildDescriptor(facts('did:web:example.com')), 'wrong-key')
    })
  })

  describe('signing and the wire form', () => {
    it('round-trips through encodeSigned / decodeSigned', async () => {
      const signed = await signDescriptor(desc, key)
      assert.equal(signed.signer, did)
      assert.equal(signed.signature.length, 64)
      const bytes = encodeSigned(signed)
      assert.ok(bytes.length < MAX_DESCRIPTOR_BYTES)
      const back = await decodeSigned(bytes, { now: NOW + 1000 })
      assert.deepEqual(back.descriptor, desc)
      assert.equal(back.signer, did)
    })

    it('the signature is detached over a canonical encoding, so key order does not matter', async () => {
      const signed = await signDescriptor(desc, key)
      const shuffled = Object.fromEntries(Object.entries(signed.descriptor).reverse())
      const back = await verifySigned({ ...signed, descriptor: shuffled }, { now: NOW })
      assert.equal(back.descriptor.id, did)
    })

    it('also verifies an envelope that travelled as dag-json (the HTTP API)', async () => {
      const signed = await signDescriptor(desc, key)
      const viaJson = dagJson.decode(dagJson.encode(signed))
      const back = await verifySigned(viaJson, { now: NOW })
      assert.deepEqual(back.descriptor, desc)
    })

    it('signDescriptor refuses a key that is not the DID\'s', async () => {
      await rejects(signDescriptor(desc, other), 'wrong-key')
      await rejects(signDescriptor(desc, await generateKeyPair('secp256k1')), 'wrong-key')
    })

    it('signDescriptor refuses an invalid descriptor', async () => {
      await rejects(signDescriptor({ ...desc, load: { cpu: 1.5, invocations: 0 } }, key), 'schema')
      await rejects(signDescriptor({ ...desc, geo: undefined }, key), 'schema')
    })
  })

  describe('decodeSigned rejects bad input', () => {
    async function envelope (descriptor: unknown, signer = did, signWith: PrivateKey = key): Promise<Uint8Array> {
      // Sign whatever we are given, bypassing signDescriptor's checks, to reach decode's own.
      const body = dagCbor.encode(descriptor)
      const input = new Uint8Array([...new TextEncoder().encode('mesh/end/v1\n'), ...body])
      return dagCbor.encode({ descriptor, signer, signature: await signWith.sign(input) })
    }

    it('too-large: refused before decoding', async () => {
      const bytes = encodeSigned(await signDescriptor(desc, key))
      await rejects(decodeSigned(bytes, { now: NOW, maxBytes: bytes.length - 1 }), 'too-large')
      await rejects(decodeSigned(new Uint8Array(MAX_DESCRIPTOR_BYTES + 1), { now: NOW }), 'too-large')
    })

    it('malformed: garbage bytes, wrong shapes, bad signature field', async () => {
      await rejects(decodeSigned(Uint8Array.of(0xff, 0x00, 0x13, 0x37), { now: NOW }), 'malformed')
      await rejects(decodeSigned(new Uint8Array(0), { now: NOW }), 'malformed')
      await rejects(decodeSigned(dagCbor.encode([1, 2, 3]), { now: NOW }), 'malformed')
      await rejects(decodeSigned(dagCbor.encode('descriptor'), { now: NOW }), 'malformed')
      const signed = await signDescriptor(desc, key)
      await rejects(decodeSigned(dagCbor.encode({ descriptor: desc, signature: signed.signature }), { now: NOW }), 'malformed')
      await rejects(decodeSigned(dagCbor.encode({ ...signed, extra: 1 }), { now: NOW }), 'malformed')
      await rejects(decodeSigned(dagCbor.encode({ ...signed, signature: signed.signature.subarray(0, 63) }), { now: NOW }), 'malformed')
      await rejects(decodeSigned(dagCbor.encode({ ...signed, signer: 7 }), { now: NOW }), 'malformed')
      await rejects(decodeSigned('not bytes' as unknown as Uint8Array, { now: NOW }), 'malformed')
    })

    it('schema: violations are caught even when properly signed', async () => {
      await rejects(decodeSigned(await envelope({ ...desc, load: { cpu: 2, invocations: 0 } }), { now: NOW }), 'schema')
      await rejects(decodeSigned(await envelope({ ...desc, surprise: true }), { now: NOW }), 'schema')
      await rejects(decodeSigned(await envelope({ ...desc, seq: 2n ** 60n }), { now: NOW }), 'schema')
      await rejects(decodeSigned(await envelope({ ...desc, addresses: ['/a'.repeat(300)] }), { now: NOW }), 'schema')
      await rejects(decodeSigned(await envelope({ ...desc, issued: 'yesterday' }), { now: NOW }), 'schema')
      await rejects(decodeSigned(await envelope({ ...desc, '@context': 'https://evil.example/ctx' }), { now: NOW }), 'schema')
      const { adjustment: _adj, ...bareCoordinate } = desc.latency.coordinate
      await rejects(decodeSigned(await envelope({ ...desc, latency: { ...desc.latency, coordinate: bareCoordinate } }), { now: NOW }), 'schema')
      await rejects(decodeSigned(await envelope({ ...desc, capacity: { slots: 1, freeSlots: 2 } }), { now: NOW }), 'schema')
      await rejects(decodeSigned(await envelope({ ...desc, network: new Uint8Array(4) }), { now: NOW }), 'schema')
      const { region: _region, ...noRegion } = desc
      await rejects(decodeSigned(await envelope(noRegion), { now: NOW }), 'schema')
    })

    it('bad-signature: a tampered descriptor or signature', async () => {
      const signed = await signDescriptor(desc, key)
      const tampered = { ...signed, descriptor: { ...signed.descriptor, region: 'us-east' } }
      await rejects(decodeSigned(encodeSigned(tampered), { now: NOW }), 'bad-signature')
      const flipped = Uint8Array.from(signed.signature)
      flipped[10] ^= 1
      await rejects(decodeSigned(encodeSigned({ ...signed, signature: flipped }), { now: NOW }), 'bad-signature')
      // Claiming to be the DID but signing with another key is indistinguishable from tampering.
      await rejects(decodeSigned(await envelope(desc, did, other), { now: NOW }), 'bad-signature')
    })

    it('wrong-key: signed by someone else, or a peerId that is not the DID\'s', async () => {
      await rejects(decodeSigned(await envelope(desc, otherDid, other), { now: NOW }), 'wrong-key')
      const otherPeer = peerIdFromDid(otherDid).toString()
      await rejects(decodeSigned(await envelope({ ...desc, peerId: otherPeer }), { now: NOW }), 'wrong-key')
    })

    it('expired, and not yet valid', async () => {
      const bytes = encodeSigned(await signDescriptor(desc, key))
      await rejects(decodeSigned(bytes, { now: Date.parse(desc.expires) }), 'expired')
      await rejects(decodeSigned(bytes, { now: NOW + 24 * 3600_000 }), 'expired')
      await rejects(decodeSigned(bytes, { now: NOW - 10 * 60_000 }), 'not-yet-valid')
      // Within the allowed clock skew it is accepted.
      assert.equal((await decodeSigned(bytes, { now: NOW - 60_000 })).descriptor.id, did)
    })
  })

  it('supersedes: only a higher seq of the same node replaces', () => {
    const newer = { ...desc, seq: desc.seq + 1 }
    assert.equal(supersedes(newer, desc), true)
    assert.equal(supersedes(desc, newer), false)
    assert.equal(supersedes(desc, desc), false)
    assert.equal(supersedes(desc, undefined), true)
    assert.equal(supersedes({ ...newer, id: otherDid }, desc), false)
  })

  it('the shipped JSON-LD context defines a term for every field a descriptor uses', async () => {
    const doc = contextDocument() as { '@context': Record<string, unknown> }
    const terms = new Set(Object.keys(doc['@context']))
    const used = new Set<string>()
    const walk = (v: unknown): void => {
      if (Array.isArray(v)) v.forEach(walk)
      else if (v !== null && typeof v === 'object') {
        for (const [k, x] of Object.entries(v)) { used.add(k); walk(x) }
      }
    }
    walk({ ...desc, trust: { level: 'member', credential: 'eyJ...' }, latency: { ...desc.latency, neighbours: [{ did: otherDid, rttMs: 3 }] } })
    used.delete('@context')
    const missing = [...used].filter(k => !terms.has(k))
    assert.deepEqual(missing, [])
  })
})

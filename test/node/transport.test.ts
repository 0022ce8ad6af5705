// Mesh's Noise (node/noise.ts: session and X25519 keys imported once, frame lengths read without a
// throw, the handshake signed through identity/signing-key.ts)
// and yamux (node/yamux.ts: window updates at half the window) must stay wire-compatible with the
// stock libraries and move every byte intact: many small messages (one frame each, the case both
// changes are for) and large ones that span many frames, TCP chunks and receive windows (so flow
// control must keep granting credit), both ways.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { tcp } from '@libp2p/tcp'
import { lpStream } from '@libp2p/utils'
import { createLibp2p } from 'libp2p'
import { after, describe, it } from 'node:test'
import { defaultCrypto } from '@chainsafe/libp2p-noise/crypto'
import { signingKey } from '../../identity/signing-key.ts'
import { noiseCrypto } from '../../node/noise-crypto.ts'
import { meshNoise } from '../../node/noise.ts'
import { meshYamux } from '../../node/yamux.ts'
import type { Libp2p } from 'libp2p'

const ECHO = '/mesh-test/echo/1.0.0'

async function node (encrypter: any, muxer: any, mesh: boolean): Promise<Libp2p> {
  const key = await generateKeyPair('Ed25519')
  const libp2p = await createLibp2p({
    // Mesh's side signs its handshake through signingKey, as MeshNode does
    privateKey: mesh ? signingKey(key) : key,
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [encrypter],
    streamMuxers: [muxer]
  })
  await libp2p.handle(ECHO, async (stream) => {
    const lp = lpStream(stream, { maxDataLength: 4 * 2 ** 20 })
    try {
      for (;;) await lp.write(await lp.read())
    } catch {}
  })
  return libp2p
}

describe('Mesh Noise and yamux', () => {
  const nodes: Libp2p[] = []
  after(async () => { await Promise.all(nodes.map(async n => n.stop())) })

  for (const [name, dialer, listener] of [
    ['mesh dials stock', [meshNoise(), meshYamux()], [noise(), yamux()]],
    ['stock dials mesh', [noise(), yamux()], [meshNoise(), meshYamux()]],
    ['mesh dials mesh', [meshNoise(), meshYamux()], [meshNoise(), meshYamux()]]
  ] as const) {
    it(`${name}: small and large messages come back intact`, async () => {
      const a = await node(dialer[0], dialer[1], name.startsWith('mesh'))
      const b = await node(listener[0], listener[1], name.endsWith('mesh'))
      nodes.push(a, b)
      const stream = await a.dialProtocol(b.getMultiaddrs()[0], ECHO)
      const lp = lpStream(stream, { maxDataLength: 4 * 2 ** 20 })
      // 3 MiB twice over is more than a 256 KiB receive window can take without updates.
      const sizes = [...Array.from({ length: 300 }, (_, i) => 1 + (i * 37) % 300), 65_535, 65_536, 65_537, 200_000, 3 * 2 ** 20, 3 * 2 ** 20]
      for (const size of sizes) {
        const sent = randomBytes(size)
        await lp.write(sent)
        const got = (await lp.read()).subarray()
        assert.equal(got.byteLength, size)
        assert.ok(Buffer.from(got).equals(sent), `a ${size}-byte message changed in transit`)
      }
      await stream.close()
    })
  }

  it('X25519 with kept key objects agrees with the default, for its own keys and foreign ones', () => {
    const ours = [noiseCrypto.generateX25519KeyPair(), noiseCrypto.generateX25519KeyPair()]
    const theirs = [defaultCrypto.generateX25519KeyPair(), defaultCrypto.generateX25519KeyPair()]
    for (const a of [...ours, ...theirs]) {
      for (const b of [...ours, ...theirs]) {
        const expected = Buffer.from(defaultCrypto.generateX25519SharedKey(a.privateKey, b.publicKey))
        assert.ok(expected.equals(noiseCrypto.generateX25519SharedKey(a.privateKey, b.publicKey)))
      }
    }
    // both ends of a pair derive the same secret, and a different peer a different one
    const ab = Buffer.from(noiseCrypto.generateX25519SharedKey(ours[0].privateKey, ours[1].publicKey))
    assert.ok(ab.equals(noiseCrypto.generateX25519SharedKey(ours[1].privateKey, ours[0].publicKey)))
    assert.ok(!ab.equals(noiseCrypto.generateX25519SharedKey(ours[0].privateKey, theirs[0].publicKey)))
    // a copy of a private key (not the array Noise was given) takes the default path, same answer
    assert.ok(ab.equals(noiseCrypto.generateX25519SharedKey(Uint8Array.from(ours[0].privateKey), ours[1].publicKey)))
  })
})

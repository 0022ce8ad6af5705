// Mesh's Noise (node/noise.ts: session keys imported once, frame lengths read without a throw)
// must stay wire-compatible with stock @chainsafe/libp2p-noise and move every byte intact: many
// small messages (one frame each, the case the length reader was changed for) and large ones
// that span many 64 KiB frames and TCP chunks, both ways.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { tcp } from '@libp2p/tcp'
import { lpStream } from '@libp2p/utils'
import { createLibp2p } from 'libp2p'
import { after, describe, it } from 'node:test'
import { meshNoise } from '../../node/noise.ts'
import type { Libp2p } from 'libp2p'

const ECHO = '/mesh-test/echo/1.0.0'

async function node (encrypter: any): Promise<Libp2p> {
  const libp2p = await createLibp2p({
    privateKey: await generateKeyPair('Ed25519'),
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [encrypter],
    streamMuxers: [yamux()]
  })
  await libp2p.handle(ECHO, async (stream) => {
    const lp = lpStream(stream, { maxDataLength: 4 * 2 ** 20 })
    try {
      for (;;) await lp.write(await lp.read())
    } catch {}
  })
  return libp2p
}

describe('Mesh Noise', () => {
  const nodes: Libp2p[] = []
  after(async () => { await Promise.all(nodes.map(async n => n.stop())) })

  for (const [name, dialer, listener] of [
    ['mesh dials stock', meshNoise(), noise()],
    ['stock dials mesh', noise(), meshNoise()],
    ['mesh dials mesh', meshNoise(), meshNoise()]
  ] as const) {
    it(`${name}: small and large messages come back intact`, async () => {
      const a = await node(dialer)
      const b = await node(listener)
      nodes.push(a, b)
      const stream = await a.dialProtocol(b.getMultiaddrs()[0], ECHO)
      const lp = lpStream(stream, { maxDataLength: 4 * 2 ** 20 })
      const sizes = [...Array.from({ length: 300 }, (_, i) => 1 + (i * 37) % 300), 65_535, 65_536, 65_537, 200_000, 3 * 2 ** 20]
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
})

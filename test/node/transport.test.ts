// Mesh's Noise (node/noise.ts: session keys imported once, frame lengths read without a throw)
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
import { meshNoise } from '../../node/noise.ts'
import { meshYamux } from '../../node/yamux.ts'
import type { Libp2p } from 'libp2p'

const ECHO = '/mesh-test/echo/1.0.0'

async function node (encrypter: any, muxer: any): Promise<Libp2p> {
  const libp2p = await createLibp2p({
    privateKey: await generateKeyPair('Ed25519'),
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
      const a = await node(dialer[0], dialer[1])
      const b = await node(listener[0], listener[1])
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
})

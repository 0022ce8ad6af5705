// Noise as Mesh runs it: @chainsafe/libp2p-noise with session keys imported once (noise-crypto.ts),
// a frame-length reader that does not throw, and transport frames encrypted and decrypted without
// copying them (`tune` below).
//
// Noise reads each 2-byte frame length with a decoder that throws a RangeError when fewer than 2
// bytes are buffered, and its length-prefixed reader catches that to stop. A chunk that ends on a
// frame boundary (nearly every chunk: each message is its own frame) so costs one Error with its
// stack trace, and reading a length out of a chunk list copies it through a DataView. Profiled in a
// 100-node simulation, that decoder was the most expensive function in the process (5% of all
// CPU; 9.5% of a stream echoing 200-byte messages between two nodes). The reader also stops on a
// length whose frame is not all there yet, so answering 0 for "fewer than 2 bytes" (a frame of 2
// bytes needs more than are buffered) stops it the same way without an Error. The wire format and
// every check are unchanged.
//
// The copies: Noise joins each encrypted frame and its tag into one new buffer, and copies every
// frame that arrived across TCP chunks into one buffer before decrypting it. In a bulk transfer
// that is nearly every frame, so each byte sent and received was allocated once more, and V8
// starts a full collection for about every 64 MB of new ArrayBuffers (a 64 MB bitswap transfer
// between two nodes of one process ran ~7 mark-compacts; their helper threads used more CPU than
// the two event loops). Frames now leave as [ciphertext, tag] and arrive as the chunk list they
// came in (five such transfers: 32-34 mark-compacts, against 36-38 with the copies); bytes on the
// wire are unchanged.
import { noise } from '@chainsafe/libp2p-noise'
import { NODE_CRYPTO_FROM, noiseCrypto, withListOutput } from './noise-crypto.ts'
import type { ConnectionEncrypter } from '@libp2p/interface'

interface LengthList { length: number, bufs?: Uint8Array[], getUint16?: (offset: number) => number, [i: number]: number }

function frameLength (data: LengthList): number {
  if (data.length < 2) return 0
  if (data instanceof Uint8Array) return (data[0] << 8) | data[1]
  // The buffered chunks: the length is nearly always within the first (getUint16 copies it out).
  const first = data.bufs?.[0]
  return first != null && first.byteLength >= 2 ? (first[0] << 8) | first[1] : data.getUint16!(0)
}

/**
 * Swaps the throwing length decoder of a secured connection, if it has the one we know, and lets
 * its frames be encrypted and decrypted without copies (see below).
 */
function tune (connection: any): void {
  const decoder = connection?.decoder
  if (decoder != null && typeof decoder.lengthDecoder === 'function' && decoder.lengthDecoder.name === 'uint16BEDecode') {
    decoder.lengthDecoder = frameLength
  }
  const { encrypt, decrypt, handshake } = connection ?? {}
  if (typeof encrypt !== 'function' || typeof decrypt !== 'function' || typeof handshake?.decrypt !== 'function') return
  // Each frame's ciphertext and tag are appended to the outgoing list as they are (noise-crypto.ts).
  connection.encrypt = (chunk: unknown) => withListOutput(() => encrypt.call(connection, chunk))
  // A frame that arrived across TCP chunks is a chunk list. Noise copies it into one buffer to give
  // its WebAssembly cipher a place to decrypt in place; node:crypto, which decrypts frames from
  // NODE_CRYPTO_FROM bytes up, reads the list piece by piece and ignores that buffer. Bulk
  // transfers are nearly all such frames: the copy was one more allocation of every byte received.
  connection.decrypt = (chunk: { byteLength: number }) => {
    if (chunk instanceof Uint8Array || chunk.byteLength < NODE_CRYPTO_FROM || chunk.byteLength > NOISE_MAX_FRAME) return decrypt.call(connection, chunk)
    try {
      const plaintext = handshake.decrypt(chunk)
      connection.metrics?.decryptedPackets.increment()
      return plaintext
    } catch (err) {
      connection.metrics?.decryptErrors.increment()
      throw err
    }
  }
}

/** A Noise transport message's most bytes (frame length is 16 bits). */
const NOISE_MAX_FRAME = 65535

export function meshNoise (): (components: any) => ConnectionEncrypter {
  const factory = noise({ crypto: noiseCrypto })
  return (components) => {
    const encrypter = factory(components) as any
    for (const method of ['secureInbound', 'secureOutbound'] as const) {
      const secure = encrypter[method].bind(encrypter)
      encrypter[method] = async (...args: any[]) => {
        const result = await secure(...args)
        tune(result.connection)
        return result
      }
    }
    return encrypter
  }
}

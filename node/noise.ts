// Noise as Mesh runs it: @chainsafe/libp2p-noise with session keys imported once (noise-crypto.ts)
// and a frame-length reader that does not throw.
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
import { noise } from '@chainsafe/libp2p-noise'
import { noiseCrypto } from './noise-crypto.ts'
import type { ConnectionEncrypter } from '@libp2p/interface'

interface LengthList { length: number, bufs?: Uint8Array[], getUint16?: (offset: number) => number, [i: number]: number }

function frameLength (data: LengthList): number {
  if (data.length < 2) return 0
  if (data instanceof Uint8Array) return (data[0] << 8) | data[1]
  // The buffered chunks: the length is nearly always within the first (getUint16 copies it out).
  const first = data.bufs?.[0]
  return first != null && first.byteLength >= 2 ? (first[0] << 8) | first[1] : data.getUint16!(0)
}

/** Swaps the throwing length decoder of a secured connection, if it has the one we know. */
function quieten (connection: any): void {
  const decoder = connection?.decoder
  if (decoder != null && typeof decoder.lengthDecoder === 'function' && decoder.lengthDecoder.name === 'uint16BEDecode') {
    decoder.lengthDecoder = frameLength
  }
}

export function meshNoise (): (components: any) => ConnectionEncrypter {
  const factory = noise({ crypto: noiseCrypto })
  return (components) => {
    const encrypter = factory(components) as any
    for (const method of ['secureInbound', 'secureOutbound'] as const) {
      const secure = encrypter[method].bind(encrypter)
      encrypter[method] = async (...args: any[]) => {
        const result = await secure(...args)
        quieten(result.connection)
        return result
      }
    }
    return encrypter
  }
}

// Yamux as Mesh runs it: @chainsafe/libp2p-yamux, with window updates sent as go-yamux and the
// yamux spec's reference implementation send them, once half the receive window is used up, not
// after every data frame.
//
// js-yamux answers every data frame it receives with a window-update frame, so every message on
// every stream costs two frames each way, each one encrypted by Noise, written to the socket, read
// and decrypted at the far end. For the small messages a mesh lives on (gossip, DHT queries,
// probes, sync steps) that doubles the per-message cost: at 50 nodes one gossip message cost 359
// data frames and as many window updates (bench:docs). A sender only needs credit before its window
// runs out; with the update at half the window it always has at least half left, as with go-yamux
// (`delta < max/2` in sendWindowUpdate). Frames, flags and window sizes are unchanged, so peers
// running stock yamux interoperate: it only ever sees fewer, larger updates. Measured, A/B in one
// session: a 200-byte echo between two nodes 323-338 -> 236-280 µs CPU per round trip; at 50
// nodes (bench:docs) CPU per gossiped write 195 -> 126-155 ms, propagation p99 225 -> 164-202 ms,
// wire bytes per update per receiver 114 -> 101-107.
//
// The library offers no option for this, so the streams of Mesh's muxers get their own
// sendWindowUpdate; other yamux muxers in the process (benchmark baselines) keep the library's. If
// a future version renames what this relies on, the replacement steps aside and the library's own
// behaviour stays.
import { yamux } from '@chainsafe/libp2p-yamux'
import { StreamState } from '@chainsafe/libp2p-yamux/stream'

interface WindowState { state: StreamState, recvWindow?: number, recvWindowCapacity?: number, sendWindowUpdate?: () => void }

function updateAtHalfWindow (stream: WindowState): void {
  const send = stream.sendWindowUpdate
  if (typeof send !== 'function') return
  stream.sendWindowUpdate = function (this: WindowState) {
    // Only an established stream's plain credit update is deferred: one that carries a flag (SYN,
    // ACK) goes out as before, and a stream resumed with more than half its window left needs none.
    if (this.state === StreamState.Established && typeof this.recvWindow === 'number' &&
      typeof this.recvWindowCapacity === 'number' && this.recvWindowCapacity > this.recvWindow / 2) return
    send.call(this)
  }
}

export function meshYamux (): ReturnType<typeof yamux> {
  const factory = yamux()
  return () => {
    const muxerFactory = factory()
    const createStreamMuxer = muxerFactory.createStreamMuxer.bind(muxerFactory)
    muxerFactory.createStreamMuxer = (maConn) => {
      const muxer = createStreamMuxer(maConn) as any
      const newStream = muxer._newStream
      if (typeof newStream === 'function') {
        muxer._newStream = (...args: unknown[]) => {
          const stream = newStream.apply(muxer, args)
          updateAtHalfWindow(stream)
          return stream
        }
      }
      return muxer
    }
    return muxerFactory
  }
}

// TCP as Mesh runs it: @libp2p/tcp, with the writes a connection makes in one tick handed to the
// kernel together.
//
// @libp2p/tcp writes each buffer it is given with its own `socket.write`, and Node sends each to
// the kernel at once: one syscall per buffer. A Noise frame leaves as its length, ciphertext and
// tag (noise.ts), a yamux frame as header and body, and a node relaying one gossip message writes
// to several streams of one connection in the same tick, so a 200-byte message cost three to a
// dozen syscalls per connection. Profiled at 50 nodes replicating a document, the socket write
// itself (`writeBuffer`) was 10.5% of the process's CPU. The socket is now corked on a
// connection's first write of a tick and uncorked on the next tick (`process.nextTick`, before
// any I/O is polled): Node then writes everything queued with one `writev`. Nothing waits longer
// than the tick that queued it; back-pressure is unchanged (a corked socket still reports a full
// buffer, and libp2p waits for its drain).
import { Socket } from 'node:net'
import { tcp as libp2pTcp } from '@libp2p/tcp'
import type { TCPOptions } from '@libp2p/tcp'
import type { Transport, Upgrader } from '@libp2p/interface'

/** @libp2p/tcp with one writev per connection per tick. */
export function tcp (init?: TCPOptions): (components: any) => Transport {
  const factory = libp2pTcp(init)
  return (components) => {
    const transport = factory(components) as Transport
    const dial = transport.dial.bind(transport)
    const createListener = transport.createListener.bind(transport)
    transport.dial = async (ma, options) => await dial(ma, { ...options, upgrader: coalescing(options.upgrader) })
    transport.createListener = (options) => createListener({ ...options, upgrader: coalescing(options.upgrader) })
    return transport
  }
}

/** The upgrader, coalescing the writes of every connection it upgrades. */
function coalescing (upgrader: Upgrader): Upgrader {
  return new Proxy(upgrader, {
    get (target, key) {
      if (key === 'upgradeInbound' || key === 'upgradeOutbound') {
        return async (maConn: any, options: any) => {
          coalesceWrites(maConn)
          return await target[key](maConn, options)
        }
      }
      const value = (target as any)[key]
      return typeof value === 'function' ? value.bind(target) : value
    }
  })
}

/** Corks the connection's socket at its first write of a tick, uncorks it on the next. */
function coalesceWrites (maConn: { socket?: unknown, sendData?: (data: unknown) => unknown }): void {
  const socket = maConn.socket
  const sendData = maConn.sendData
  if (!(socket instanceof Socket) || typeof sendData !== 'function') return
  let corked = false
  const uncork = (): void => {
    corked = false
    socket.uncork()
  }
  maConn.sendData = function (data) {
    if (!corked) {
      corked = true
      socket.cork()
      process.nextTick(uncork)
    }
    return sendData.call(this, data)
  }
}

// Bytes on the wire: every TCP write of this thread (libp2p's TCP and ws both write to net.Socket).
import net from 'node:net'

let wireBytes = 0
let counting = false

/** Starts counting (once per thread) and returns a reader of the bytes written so far. */
export function countWireBytes (): () => number {
  if (!counting) {
    counting = true
    const socketWrite = net.Socket.prototype.write
    net.Socket.prototype.write = function (this: net.Socket, chunk: any, ...rest: any[]) {
      wireBytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length
      return (socketWrite as any).call(this, chunk, ...rest)
    } as any
  }
  return () => wireBytes
}

// Ed25519 verification with remote keys imported once.
//
// @libp2p/crypto's Ed25519PublicKey.verify imports the raw key into a new node:crypto KeyObject
// (from a JWK) on every call: ~170 of its ~230 µs on this machine. A node verifies the same few
// keys over and over: a peer's key in its Noise handshake and again in its identify record, and the
// author's key on every gossipsub message it receives (50 nodes: each write is verified 49 times,
// all with one key). Verification goes through the prototype because those calls happen inside
// libp2p, Noise and gossipsub, on key objects they build themselves; the result is unchanged
// (node:crypto's verify either way), only the import is cached.
import { verify } from 'node:crypto'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { ed25519KeyObject } from '../identity/did-key.ts'
import { BoundedCache } from '../identity/verification-cache.ts'
import type { KeyObject } from 'node:crypto'

/** Bounded (least recently used out): a busy node meets many keys. */
const keyObjects = new BoundedCache<string, KeyObject>({ maxEntries: 4096 })

function keyObject (raw: Uint8Array): KeyObject {
  const id = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('base64url')
  let key = keyObjects.get(id)
  if (key == null) {
    key = ed25519KeyObject(raw)
    keyObjects.set(id, key)
  }
  return key
}

let installed = false

/** Installs the cached verify on @libp2p/crypto's Ed25519 public keys, once per process. */
export function cacheEd25519Verification (): void {
  if (installed) return
  installed = true
  const proto = Object.getPrototypeOf(publicKeyFromRaw(new Uint8Array(32)))
  const stock = proto.verify
  proto.verify = function (this: { raw: Uint8Array }, data: Uint8Array | { subarray: () => Uint8Array }, sig: Uint8Array, options?: { signal?: AbortSignal }): boolean {
    options?.signal?.throwIfAborted()
    // Malformed input takes the stock path, which throws the errors callers expect.
    if (this.raw?.byteLength !== 32 || !(sig instanceof Uint8Array) || sig.byteLength !== 64) return stock.call(this, data, sig, options)
    return verify(null, data instanceof Uint8Array ? data : data.subarray(), keyObject(this.raw), sig)
  }
}

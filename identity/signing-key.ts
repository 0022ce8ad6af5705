// A node's own Ed25519 key, signing through one node:crypto key object.
//
// @libp2p/crypto imports the raw key into a new node:crypto KeyObject (from a JWK, base64url
// strings and all) for every signature, and a node signs a lot with the same key: its Noise
// handshake payload on every connection, its identify peer record on every identify and push, every
// gossipsub message, descriptors and manifests. Importing the key cost more than the signature
// itself (profiled on 100 connection setups: createPrivateKey was 75 of 178 ms of signing). The
// signatures are the same bytes (Ed25519 is deterministic); only the import is done once.
import { createPrivateKey, sign } from 'node:crypto'
import type { AbortOptions, PrivateKey } from '@libp2p/interface'
import type { KeyObject } from 'node:crypto'

const wrapped = new WeakSet<PrivateKey>()

/**
 * The same key, whose `sign` reuses one imported key object. Any other key type (RSA, secp256k1) is
 * returned as it is. Idempotent.
 */
export function signingKey<K extends PrivateKey> (key: K): K {
  if (key.type !== 'Ed25519' || wrapped.has(key)) return key
  let keyObject: KeyObject | undefined
  const fast = Object.create(key) as K
  // The raw Ed25519 private key of @libp2p/crypto is seed ‖ public key (64 bytes).
  fast.sign = ((message: Uint8Array | { subarray: () => Uint8Array }, options?: AbortOptions) => {
    options?.signal?.throwIfAborted()
    keyObject ??= createPrivateKey({
      format: 'jwk',
      key: {
        kty: 'OKP',
        crv: 'Ed25519',
        d: Buffer.from(key.raw.subarray(0, 32)).toString('base64url'),
        x: Buffer.from(key.publicKey.raw).toString('base64url')
      }
    })
    return sign(null, message instanceof Uint8Array ? message : message.subarray(), keyObject)
  }) as K['sign']
  wrapped.add(fast)
  return fast
}

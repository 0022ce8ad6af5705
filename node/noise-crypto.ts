// Noise's default crypto, with each session key turned into a node:crypto KeyObject once.
//
// @chainsafe/libp2p-noise encrypts every transport frame (up to 64 KiB) with a fresh
// createCipheriv(key, nonce), and passing the key as bytes makes node:crypto import it again for
// every frame. Bulk transfers move ~1000 frames per 64 MB each way; importing the key is then a
// measurable share of the cost of Noise (measured: ~25-40 µs per frame with raw key bytes, ~8-13
// µs with a KeyObject; a 64 MB transfer between two nodes of one process took ~10% less CPU on
// its thread). The cipher, nonces and framing are Noise's own, unchanged, so peers running stock
// Noise interoperate as before.
import { createSecretKey } from 'node:crypto'
import { defaultCrypto, nodeCrypto } from '@chainsafe/libp2p-noise/crypto'
import type { ICryptoInterface } from '@chainsafe/libp2p-noise'
import type { KeyObject } from 'node:crypto'

/** Below this, Noise's default uses its WebAssembly ChaCha20-Poly1305, which wants key bytes. */
const NODE_CRYPTO_FROM = 1200

// Noise derives each cipher key as a new array and never writes to it; the bytes are kept and
// compared anyway, so a key changed in place could never be served from here.
const keys = new WeakMap<Uint8Array, { bytes: Buffer, key: KeyObject }>()

function keyObject (k: Uint8Array): Uint8Array {
  let entry = keys.get(k)
  if (entry == null || !entry.bytes.equals(k)) {
    entry = { bytes: Buffer.from(k), key: createSecretKey(k) }
    keys.set(k, entry)
  }
  // nodeCrypto hands the key straight to createCipheriv, which takes a KeyObject as well.
  return entry.key as unknown as Uint8Array
}

export const noiseCrypto: ICryptoInterface = {
  ...defaultCrypto,
  chaCha20Poly1305Encrypt (plaintext, nonce, ad, k) {
    if (plaintext.byteLength < NODE_CRYPTO_FROM) return defaultCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k)
    return nodeCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, keyObject(k))
  },
  chaCha20Poly1305Decrypt (ciphertext, nonce, ad, k, dst) {
    if (ciphertext.byteLength < NODE_CRYPTO_FROM) return defaultCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst)
    return nodeCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, keyObject(k), dst)
  }
}

// Noise's default crypto, with each session key turned into a node:crypto KeyObject once.
//
// @chainsafe/libp2p-noise encrypts every transport frame (up to 64 KiB) with a fresh
// createCipheriv(key, nonce), and passing the key as bytes makes node:crypto import it again for
// every frame. Bulk transfers move ~1000 frames per 64 MB each way; importing the key is then a
// measurable share of the cost of Noise (measured: ~25-40 µs per frame with raw key bytes, ~8-13
// µs with a KeyObject; a 64 MB transfer between two nodes of one process took ~10% less CPU on
// its thread). The cipher, nonces and framing are Noise's own, unchanged, so peers running stock
// Noise interoperate as before.
//
// X25519 likewise: Noise hands raw key bytes to every Diffie-Hellman (three per side per handshake,
// two with the ephemeral key and one with the node's static key), and the default imports the
// private key from DER each time. Keys made here keep their KeyObject: a DH costs ~100 µs instead
// of ~230 µs (measured on this machine), about 0.8 ms less CPU per connection for its two ends.
import { createCipheriv, createPublicKey, createSecretKey, diffieHellman, generateKeyPairSync } from 'node:crypto'
import { defaultCrypto, nodeCrypto } from '@chainsafe/libp2p-noise/crypto'
import { Uint8ArrayList } from 'uint8arraylist'
import type { ICryptoInterface } from '@chainsafe/libp2p-noise'
import type { KeyObject } from 'node:crypto'

/** Below this, Noise's default uses its WebAssembly ChaCha20-Poly1305, which wants key bytes. */
export const NODE_CRYPTO_FROM = 1200

// Set while a secured connection encrypts its transport frames (noise.ts), whose caller appends
// each frame to a list: the ciphertext and its tag can then go out as they are, not copied into
// one buffer (Noise's default concatenates them, a copy of every byte sent).
let listOutput = false

/** Runs `fn` with frames encrypted as [ciphertext, tag] lists (for callers that take lists). */
export function withListOutput<T> (fn: () => T): T {
  listOutput = true
  try {
    return fn()
  } finally {
    listOutput = false
  }
}

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

// DER headers of an X25519 SubjectPublicKeyInfo and PKCS#8 private key: the raw key follows them.
const X25519_SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex')
const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex')

/** Private keys this module generated, by the very array Noise holds (it never copies or changes it). */
const x25519Keys = new WeakMap<Uint8Array, KeyObject>()

export const noiseCrypto: ICryptoInterface = {
  ...defaultCrypto,
  generateX25519KeyPair () {
    const { publicKey, privateKey } = generateKeyPairSync('x25519')
    const raw = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(X25519_PKCS8_PREFIX.length)
    x25519Keys.set(raw, privateKey)
    return { publicKey: publicKey.export({ format: 'der', type: 'spki' }).subarray(X25519_SPKI_PREFIX.length), privateKey: raw }
  },
  generateX25519SharedKey (privateKey, publicKey) {
    const key = privateKey instanceof Uint8Array ? x25519Keys.get(privateKey) : undefined
    if (key == null) return defaultCrypto.generateX25519SharedKey(privateKey, publicKey)
    const der = Buffer.concat([X25519_SPKI_PREFIX, publicKey instanceof Uint8Array ? publicKey : publicKey.subarray()])
    return diffieHellman({ privateKey: key, publicKey: createPublicKey({ key: der, format: 'der', type: 'spki' }) })
  },
  chaCha20Poly1305Encrypt (plaintext, nonce, ad, k) {
    if (plaintext.byteLength < NODE_CRYPTO_FROM) return defaultCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k)
    if (!listOutput || !(plaintext instanceof Uint8Array)) return nodeCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, keyObject(k))
    // As nodeCrypto does it, without joining the pieces (ChaCha20-Poly1305's final() is empty).
    const cipher = createCipheriv('chacha20-poly1305', keyObject(k) as unknown as KeyObject, nonce, { authTagLength: 16 })
    cipher.setAAD(ad, { plaintextLength: plaintext.byteLength })
    const out = new Uint8ArrayList(cipher.update(plaintext))
    const final = cipher.final()
    if (final.byteLength > 0) out.append(final)
    out.append(cipher.getAuthTag())
    return out as any
  },
  chaCha20Poly1305Decrypt (ciphertext, nonce, ad, k, dst) {
    if (ciphertext.byteLength < NODE_CRYPTO_FROM) return defaultCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst)
    return nodeCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, keyObject(k), dst)
  }
}

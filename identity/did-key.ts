// did:key for Ed25519 keys, and the mapping between a node's DID and its libp2p peer ID.
// A did:key is `did:key:z` + base58btc(multicodec ed25519-pub (0xed 0x01) ‖ 32-byte public key).
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey, peerIdFromString } from '@libp2p/peer-id'
import { base58btc } from 'multiformats/bases/base58'
import type { PeerId } from '@libp2p/interface'

const ED25519_PUB = Uint8Array.of(0xed, 0x01)

export class InvalidDidError extends Error {
  name = 'InvalidDidError'
}

export function didKeyFromEd25519 (publicKey: Uint8Array): string {
  if (publicKey.length !== 32) throw new InvalidDidError(`an Ed25519 public key is 32 bytes, got ${publicKey.length}`)
  const bytes = new Uint8Array(34)
  bytes.set(ED25519_PUB)
  bytes.set(publicKey, 2)
  return `did:key:${base58btc.encode(bytes)}`
}

/** The raw Ed25519 public key a `did:key` names; throws InvalidDidError for anything else. */
export function ed25519FromDidKey (did: string): Uint8Array {
  if (!did.startsWith('did:key:z')) throw new InvalidDidError(`not an Ed25519 did:key: ${did}`)
  let bytes: Uint8Array
  try {
    bytes = base58btc.decode(did.slice('did:key:'.length))
  } catch {
    throw new InvalidDidError(`malformed did:key (bad base58btc): ${did}`)
  }
  if (bytes.length !== 34 || bytes[0] !== ED25519_PUB[0] || bytes[1] !== ED25519_PUB[1]) {
    throw new InvalidDidError(`did:key is not an Ed25519 key: ${did}`)
  }
  return bytes.subarray(2)
}

export function didFromPeerId (peerId: PeerId): string {
  if (peerId.type !== 'Ed25519') throw new InvalidDidError(`peer ${peerId} has a ${peerId.type} key; Mesh DIDs need Ed25519`)
  return didKeyFromEd25519(peerId.publicKey.raw)
}

export function peerIdFromDid (did: string): PeerId {
  return peerIdFromPublicKey(publicKeyFromRaw(ed25519FromDidKey(did)))
}

/** Accepts a peer ID string or a did:key and returns the peer ID. */
export function parsePeerOrDid (text: string): PeerId {
  if (text.startsWith('did:')) return peerIdFromDid(text)
  try {
    return peerIdFromString(text)
  } catch {
    throw new InvalidDidError(`not a peer ID or did:key: ${text}`)
  }
}

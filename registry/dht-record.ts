// Descriptors in the DHT: one kad-dht record per node under `/mesh-end/<peerId>`, whose value is
// the node's signed descriptor envelope (the same bytes that travel in gossip). Any DHT server
// that is asked to store one checks it with `endRecordValidator` (signature, schema, validity
// window, network, and that the key names the descriptor's own peer), so nobody can park a
// forged or stale descriptor under another node's key; when a lookup returns several versions,
// `endRecordSelector` picks the highest seq.
import * as dagCbor from '@ipld/dag-cbor'
import { decodeSigned, DescriptorError, MAX_DESCRIPTOR_BYTES } from './descriptor.ts'

export const END_RECORD_NAMESPACE = 'mesh-end'

const encoder = new TextEncoder()
const decoder = new TextDecoder()

export function endRecordKey (peerId: string): Uint8Array {
  return encoder.encode(`/${END_RECORD_NAMESPACE}/${peerId}`)
}

/** The peer ID a record key names; throws DescriptorError('malformed') for any other key. */
export function peerIdOfRecordKey (key: Uint8Array): string {
  const parts = decoder.decode(key).split('/')
  if (parts.length !== 3 || parts[0] !== '' || parts[1] !== END_RECORD_NAMESPACE || !/^[1-9A-HJ-NP-Za-km-z]{40,60}$/.test(parts[2])) {
    throw new DescriptorError('malformed', 'a descriptor record key is /mesh-end/<peerId>')
  }
  return parts[2]
}

/** kad-dht validator: throws unless `value` is a live, signed descriptor of the key's peer in `network`. */
export function endRecordValidator (network: string): (key: Uint8Array, value: Uint8Array) => Promise<void> {
  return async (key, value) => {
    const peerId = peerIdOfRecordKey(key)
    const { descriptor } = await decodeSigned(value, { maxBytes: MAX_DESCRIPTOR_BYTES })
    if (descriptor.peerId !== peerId) throw new DescriptorError('wrong-key', `record under ${peerId} holds the descriptor of ${descriptor.peerId}`)
    if (descriptor.network !== network) throw new DescriptorError('schema', `descriptor of network ${descriptor.network}, not ${network}`)
  }
}

function seqOf (value: Uint8Array): number {
  try {
    const seq = (dagCbor.decode(value) as any)?.descriptor?.seq
    return typeof seq === 'number' && Number.isFinite(seq) ? seq : -1
  } catch {
    return -1
  }
}

/** kad-dht selector: the index of the record with the highest seq (records were validated already). */
export function endRecordSelector (_key: Uint8Array, records: Uint8Array[]): number {
  let best = 0
  for (let i = 1; i < records.length; i++) if (seqOf(records[i]) > seqOf(records[best])) best = i
  return best
}

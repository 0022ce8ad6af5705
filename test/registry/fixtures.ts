// Unsigned descriptors for matching and allocation tests (signing is descriptor.test.ts's business).
import { didKeyFromEd25519, peerIdFromDid } from '../../identity/did-key.ts'
import { createCoordinate } from '../../registry/vivaldi.ts'
import type { EdgeNodeDescriptor } from '../../registry/descriptor.ts'

let counter = 0

/** A distinct, well-formed did:key per call (the key bytes need not be a real curve point here). */
export function freshDid (): string {
  const bytes = new Uint8Array(32)
  new DataView(bytes.buffer).setUint32(0, ++counter)
  bytes[31] = 7
  return didKeyFromEd25519(bytes)
}

export interface NodeShape {
  did?: string
  region?: string
  zone?: string
  cores?: number
  totalMb?: number
  freeMb?: number
  gpus?: number
  accelerators?: EdgeNodeDescriptor['accelerators']
  runtimes?: string[]
  trust?: EdgeNodeDescriptor['trust']['level']
  slots?: number
  freeSlots?: number
  seq?: number
  expires?: string
}

export function node (shape: NodeShape = {}): EdgeNodeDescriptor {
  const did = shape.did ?? freshDid()
  const slots = shape.slots ?? 4
  return {
    '@context': 'https://mesh.dev/ns/end/v1',
    type: 'EdgeNodeDescriptor',
    id: did,
    peerId: peerIdFromDid(did).toString(),
    addresses: [],
    network: 'testnet',
    cpu: { cores: shape.cores ?? 4, arch: 'x64', model: 'test' },
    memory: { totalMb: shape.totalMb ?? 8192, freeMb: shape.freeMb ?? 4096 },
    accelerators: shape.accelerators ?? Array.from({ length: shape.gpus ?? 0 }, () => ({ kind: 'gpu' as const, model: 'g', memoryMb: 8192 })),
    region: shape.region ?? 'eu-west',
    zone: shape.zone ?? `${shape.region ?? 'eu-west'}-1a`,
    runtimes: shape.runtimes ?? ['wasi-preview1'],
    latency: { coordinate: createCoordinate(), neighbours: [] },
    trust: { level: shape.trust ?? 'member' },
    load: { cpu: 0.1, invocations: 0 },
    capacity: { slots, freeSlots: shape.freeSlots ?? slots },
    software: { name: 'mesh', version: '0.1.0' },
    issued: '2026-03-01T12:00:00.000Z',
    expires: shape.expires ?? '2026-03-01T12:10:00.000Z',
    seq: shape.seq ?? 1
  }
}

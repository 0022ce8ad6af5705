// The simulated mesh: MeshNodes in one process on `@libp2p/memory`, each with its own injected
// latency, that leave (stop), come back (restart with the same key and repo) or join anew, and a
// partition switch. A partition is enforced in the transport: every node's memory transport is
// wrapped so a dial to a node on the other side fails, and the cluster hangs up every connection
// across the split; healing just lifts the dial ban (the nodes reconnect on their own).
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { ConnectionFailedError } from '@libp2p/interface'
import { memory } from '@libp2p/memory'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { descriptorsFeature } from '../../node/descriptors.ts'
import { documents } from '../../node/documents.ts'
import { MeshNode } from '../../node/mesh-node.ts'
import type { FeatureList } from '../../node/feature.ts'
import type { PrivateKey, Transport } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'

export const NETWORK = 'sim'

export interface SimNodeSlot {
  /** Stable index: a restarted node keeps it (and its key, address and repo). */
  index: number
  name: string
  address: string
  key: PrivateKey
  peerId: string
  latencyMs: number
  region: string
  repoPath: string
  node?: MeshNode
  /** performance.now() when the current incarnation finished starting; undefined while down. */
  upSince?: number
  /** Bumped on every start and stop, so an operation can tell its node or target changed under it. */
  incarnation: number
  starting: boolean
  /** Its node is stopping: it cannot start again until its memory address is free. */
  stopping: boolean
  /** Times this slot was started (1 = first start). */
  starts: number
}

export interface ClusterInit {
  runId: string
  dir: string
  features: string[]
  regions: string[]
  minPeers?: number
  descriptorPingMs?: number
  slots?: number
}

export class Cluster {
  readonly slots: SimNodeSlot[] = []
  private readonly byAddress = new Map<string, SimNodeSlot>()
  /** Side of each slot index while split; empty when whole. */
  private sides = new Map<number, number>()
  partitionEpoch = 0
  readonly init: ClusterInit
  dialsRefused = 0

  constructor (init: ClusterInit) {
    this.init = init
  }

  get split (): boolean {
    return this.sides.size > 0
  }

  sideOf (slot: SimNodeSlot): number {
    return this.sides.get(slot.index) ?? 0
  }

  live (): SimNodeSlot[] {
    return this.slots.filter(s => s.node != null && s.upSince != null)
  }

  /** Live nodes up for at least `ms`. */
  settled (ms: number): SimNodeSlot[] {
    const now = performance.now()
    return this.live().filter(s => now - s.upSince! >= ms)
  }

  down (): SimNodeSlot[] {
    return this.slots.filter(s => s.node == null && !s.starting && !s.stopping)
  }

  async addSlot (latencyMs: number, region: string): Promise<SimNodeSlot> {
    const key = await generateKeyPair('Ed25519')
    // The index is taken after the last await: two slots added at once must not share it (nor
    // its name, memory address and repo).
    const index = this.slots.length
    const name = `${this.init.runId}-${index}`
    const repoPath = join(this.init.dir, String(index))
    const slot: SimNodeSlot = {
      index, name, address: `/memory/${name}`, key, peerId: peerIdFromPrivateKey(key).toString(),
      latencyMs, region, repoPath, incarnation: 0, starting: false, stopping: false, starts: 0
    }
    this.slots.push(slot)
    this.byAddress.set(slot.address, slot)
    await mkdir(repoPath, { recursive: true })
    return slot
  }

  /**
   * The memory transport of one node, refusing dials across the partition, with the node's latency
   * added to every buffer it sends. `memory({ latency })` delays buffers one after another (each
   * waits for the one before it), which caps a connection at 1000/latency buffers a second: at
   * 40 ms, 25 a second for DHT, gossip, pings and documents together, so queues grow without end.
   * Here every buffer leaves `latencyMs` after it was sent, in order (equal timeouts fire in order):
   * a link with a delay, not a throttle. RTT between two nodes is the sum of their latencies.
   */
  private transport (slot: SimNodeSlot): (components: any) => Transport {
    const factory = memory()
    const delayed = (maConn: any): any => {
      const latency = slot.latencyMs
      if (latency <= 0) return maConn
      const sendData = maConn.sendData.bind(maConn)
      const sendClose = maConn.sendClose.bind(maConn)
      const sendReset = maConn.sendReset.bind(maConn)
      maConn.sendData = (data: any) => {
        setTimeout(() => { try { sendData(data) } catch {} }, latency)
        return { sentBytes: data.byteLength, canSendMore: true }
      }
      maConn.sendClose = async (options: any) => {
        await new Promise(resolve => setTimeout(resolve, latency))
        await sendClose(options)
      }
      maConn.sendReset = (err: any) => { setTimeout(() => { try { sendReset(err) } catch {} }, latency) }
      return maConn
    }
    const wrapUpgrader = (upgrader: any): any => ({
      ...upgrader,
      upgradeInbound: async (maConn: any, opts: any) => upgrader.upgradeInbound(delayed(maConn), opts),
      upgradeOutbound: async (maConn: any, opts: any) => upgrader.upgradeOutbound(delayed(maConn), opts)
    })
    return (components: any) => {
      const t = factory(components)
      const dial = t.dial.bind(t)
      const createListener = t.createListener.bind(t)
      t.dial = async (ma: Multiaddr, options: any) => {
        const target = this.byAddress.get(ma.toString().replace(/\/p2p\/.*$/, ''))
        if (target != null && this.sides.size > 0 && this.sideOf(target) !== this.sideOf(slot)) {
          this.dialsRefused++
          throw new ConnectionFailedError(`partitioned: ${slot.name} cannot reach ${target.name}`)
        }
        return await dial(ma, { ...options, upgrader: wrapUpgrader(options.upgrader) })
      }
      t.createListener = (options: any) => createListener({ ...options, upgrader: wrapUpgrader(options.upgrader) })
      return t
    }
  }

  private features (): FeatureList {
    const list: FeatureList = []
    if (this.init.features.includes('descriptors')) list.push(['descriptors', descriptorsFeature])
    if (this.init.features.includes('docs')) list.push(['docs', documents])
    return list
  }

  /** Starts (or restarts) a slot, bootstrapping from the given addresses. */
  async start (slot: SimNodeSlot, bootstrap: string[]): Promise<void> {
    if (slot.node != null || slot.starting || slot.stopping) throw new Error(`${slot.name} is already running`)
    slot.starting = true
    slot.incarnation++
    try {
      const node = new MeshNode({
        privateKey: slot.key,
        network: NETWORK,
        listen: [slot.address],
        bootstrap,
        region: slot.region,
        transports: [this.transport(slot)],
        features: this.features(),
        repoPath: slot.repoPath,
        minPeers: this.init.minPeers,
        config: { descriptors: { pingIntervalMs: this.init.descriptorPingMs ?? 5_000, slots: this.init.slots ?? 4 } }
      })
      slot.node = node
      await node.start()
      slot.starts++
      slot.upSince = performance.now()
    } catch (err) {
      const node = slot.node
      slot.node = undefined
      slot.upSince = undefined
      await node?.stop().catch(() => {})
      throw err
    } finally {
      slot.starting = false
    }
  }

  async stop (slot: SimNodeSlot): Promise<void> {
    const node = slot.node
    if (node == null) return
    slot.upSince = undefined
    slot.incarnation++
    slot.node = undefined
    slot.stopping = true
    try {
      await node.stop()
    } finally {
      slot.stopping = false
    }
  }

  /**
   * Splits the mesh: `sideOf` gives each slot its side; cross connections break (aborted with an
   * error, as a failed link is seen, not closed as a peer hanging up would).
   */
  async partition (sideOf: (slot: SimNodeSlot) => number): Promise<void> {
    this.sides = new Map(this.slots.map(s => [s.index, sideOf(s)]))
    this.partitionEpoch++
    const bySide = new Map(this.slots.map(s => [s.peerId, this.sideOf(s)]))
    for (const slot of this.live()) {
      const mine = this.sideOf(slot)
      for (const c of slot.node!.libp2p.getConnections()) {
        if (bySide.get(c.remotePeer.toString()) !== mine) c.abort(new Error('partitioned'))
      }
    }
  }

  /** Puts a slot that (re)joins during a split on a side. */
  assignSide (slot: SimNodeSlot, side: number): void {
    if (this.sides.size > 0) this.sides.set(slot.index, side)
  }

  heal (): void {
    this.sides = new Map()
    this.partitionEpoch++
  }

  /** Connections that cross the current split (should be none shortly after a split). */
  crossConnections (): number {
    if (!this.split) return 0
    const side = new Map(this.slots.map(s => [s.peerId, this.sideOf(s)]))
    let n = 0
    for (const slot of this.live()) {
      for (const c of slot.node!.libp2p.getConnections()) if (side.get(c.remotePeer.toString()) !== this.sideOf(slot)) n++
    }
    return n
  }

  async stopAll (): Promise<void> {
    await Promise.all(this.slots.map(async s => this.stop(s).catch(() => {})))
    await rm(this.init.dir, { recursive: true, force: true })
  }
}

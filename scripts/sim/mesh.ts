// The simulated mesh as the coordinator sees it: which nodes exist, which run, which side of a
// split each is on, and the commands to the worker threads that host them (`shard.ts`,
// `cluster.ts`). Node i lives in thread i % threads. With one thread the nodes talk over
// `@libp2p/memory`; with more, over TCP on 127.0.0.1 (ports basePort + i), as the nodes of one
// thread cannot reach another's memory transport.
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { WorkerClient } from '../bench/lib/worker-client.ts'
import type { ClusterInit, ClusterStats, DocViews, OpResult } from './cluster.ts'

export interface SimNodeSlot {
  /** Stable index: a restarted node keeps it (and its key, address and repo). */
  index: number
  address: string
  peerId: string
  latencyMs: number
  region: string
  /** The thread that hosts it. */
  thread: number
  /** performance.now() when the current incarnation finished starting; undefined while down. */
  upSince?: number
  /** Bumped on every start and stop, so an operation can tell its node or target changed under it. */
  incarnation: number
  starting: boolean
  /** Its node is stopping: it cannot start again until its address is free. */
  stopping: boolean
  /** Times this slot was started (1 = first start). */
  starts: number
}

export interface SimMeshInit {
  runId: string
  dir: string
  features: string[]
  threads: number
  docIds: string[]
  minPeers?: number
}

export interface Lag { p50: number, p99: number, max: number }

/** TCP ports for node i are BASE + i: below the kernel's ephemeral range (32768+), so no outbound connection holds one. */
const PORT_RANGE: [number, number] = [20_000, 28_000]

export class SimMesh {
  readonly slots: SimNodeSlot[] = []
  readonly threads: number
  readonly transport: 'memory' | 'tcp'
  partitionEpoch = 0
  private sides = new Map<number, number>()
  private nextIndex = 0
  private readonly workers: WorkerClient[]
  private readonly dir: string

  constructor (init: SimMeshInit) {
    this.threads = Math.max(1, init.threads)
    this.transport = this.threads === 1 ? 'memory' : 'tcp'
    this.dir = init.dir
    const basePort = PORT_RANGE[0] + Math.floor(Math.random() * (PORT_RANGE[1] - PORT_RANGE[0] - 4_000))
    this.workers = Array.from({ length: this.threads }, (_, t) => {
      const data: ClusterInit = {
        runId: init.runId,
        dir: join(init.dir, `t${t}`),
        features: init.features,
        transport: this.transport,
        basePort,
        docIds: init.docIds,
        minPeers: init.minPeers
      }
      return new WorkerClient(new URL('./shard.ts', import.meta.url), data)
    })
  }

  private async call<T> (thread: number, op: string, ...args: unknown[]): Promise<T> {
    return await this.workers[thread].call<T>(op, args)
  }

  private async everywhere<T> (op: string, ...args: unknown[]): Promise<T[]> {
    return await Promise.all(this.workers.map(async (_, t) => this.call<T>(t, op, ...args)))
  }

  get split (): boolean {
    return this.sides.size > 0
  }

  sideOf (slot: SimNodeSlot): number {
    return this.sides.get(slot.index) ?? 0
  }

  live (): SimNodeSlot[] {
    return this.slots.filter(s => s.upSince != null)
  }

  /** Live nodes up for at least `ms`. */
  settled (ms: number): SimNodeSlot[] {
    const now = performance.now()
    return this.live().filter(s => now - s.upSince! >= ms)
  }

  down (): SimNodeSlot[] {
    return this.slots.filter(s => s.upSince == null && !s.starting && !s.stopping)
  }

  /** A new node slot (not started); `describe` gives the latency and region of index i. */
  async addSlot (describe: (index: number) => { latencyMs: number, region: string }): Promise<SimNodeSlot> {
    // The index is taken before the first await: two slots added at once must not share it (nor
    // its address and repo).
    const index = this.nextIndex++
    const { latencyMs, region } = describe(index)
    const thread = index % this.threads
    const { peerId, address } = await this.call<{ peerId: string, address: string }>(thread, 'add', index, latencyMs, region)
    const slot: SimNodeSlot = { index, address, peerId, latencyMs, region, thread, incarnation: 0, starting: false, stopping: false, starts: 0 }
    this.slots.push(slot)
    return slot
  }

  /** Starts (or restarts) a slot, bootstrapping from the given addresses, and opens the documents. */
  async start (slot: SimNodeSlot, bootstrap: string[]): Promise<void> {
    if (slot.upSince != null || slot.starting || slot.stopping) throw new Error(`node ${slot.index} is already running`)
    slot.starting = true
    slot.incarnation++
    try {
      await this.call(slot.thread, 'start', slot.index, bootstrap)
      slot.starts++
      slot.upSince = performance.now()
    } finally {
      slot.starting = false
    }
  }

  async stop (slot: SimNodeSlot): Promise<void> {
    if (slot.upSince == null) return
    slot.upSince = undefined
    slot.incarnation++
    slot.stopping = true
    try {
      await this.call(slot.thread, 'stop', slot.index)
    } finally {
      slot.stopping = false
    }
  }

  private async publishSides (): Promise<void> {
    const sides = this.split ? this.slots.map(s => [s.index, s.peerId, this.sideOf(s)]) : null
    await this.everywhere('setSides', sides)
  }

  /** Splits the mesh: dials across fail, and connections across are aborted. */
  async partition (sideOf: (slot: SimNodeSlot) => number): Promise<void> {
    this.sides = new Map(this.slots.map(s => [s.index, sideOf(s)]))
    this.partitionEpoch++
    await this.publishSides()
  }

  /** Puts a slot that (re)joins during a split on a side. */
  async assignSide (slot: SimNodeSlot, side: number): Promise<void> {
    if (!this.split) return
    this.sides.set(slot.index, side)
    await this.publishSides()
  }

  async heal (): Promise<void> {
    this.sides = new Map()
    this.partitionEpoch++
    await this.publishSides()
  }

  /** Connections of each running node, by index. */
  async connections (): Promise<Map<number, number>> {
    return new Map((await this.everywhere<Array<[number, number]>>('connections')).flat())
  }

  /** Connections that cross the current split (should be none shortly after a split). */
  async crossConnections (): Promise<number> {
    return (await this.everywhere<number>('crossConnections')).reduce((a, b) => a + b, 0)
  }

  async lookup (from: SimNodeSlot, to: SimNodeSlot, timeoutMs: number): Promise<OpResult> {
    return await this.call(from.thread, 'lookup', from.index, to.peerId, timeoutMs)
  }

  /** The live nodes connected to a peer, and how many hold its addresses. */
  async knowledgeOf (peerId: string): Promise<{ connected: number[], known: number }> {
    const all = await this.everywhere<{ connected: number[], known: number }>('knowledgeOf', peerId)
    return { connected: all.flatMap(a => a.connected), known: all.reduce((a, b) => a + b.known, 0) }
  }

  async allocate (from: SimNodeSlot, region: string, timeoutMs: number): Promise<OpResult> {
    return await this.call(from.thread, 'allocate', from.index, region, timeoutMs)
  }

  async write (from: SimNodeSlot, doc: string, key: string, value: number, timeoutMs: number): Promise<OpResult> {
    return await this.call(from.thread, 'write', from.index, doc, key, value, timeoutMs)
  }

  async views (docIds: string[]): Promise<Map<number, DocViews[number][1]>> {
    return new Map((await this.everywhere<DocViews>('views', docIds)).flat())
  }

  async stats (): Promise<ClusterStats> {
    const all = await this.everywhere<ClusterStats>('stats')
    const sum: ClusterStats = { dialsRefused: 0, descriptorsPublished: 0, publishedBy: {}, descriptorsReceived: 0, docGossip: 0 }
    for (const s of all) {
      sum.dialsRefused += s.dialsRefused
      sum.descriptorsPublished += s.descriptorsPublished
      sum.descriptorsReceived += s.descriptorsReceived
      sum.docGossip += s.docGossip
      for (const [why, n] of Object.entries(s.publishedBy)) sum.publishedBy[why] = (sum.publishedBy[why] ?? 0) + n
    }
    return sum
  }

  async loadStart (): Promise<void> {
    await this.everywhere('loadStart')
  }

  /** Each thread's event-loop lag since `loadStart`. */
  async loadStop (): Promise<Lag[]> {
    return await this.everywhere<Lag>('loadStop')
  }

  async noise (): Promise<{ warnings: number, stray: number, firstStray?: string }> {
    const all = await this.everywhere<{ warnings: number, stray: number, firstStray?: string }>('noise')
    return { warnings: all.reduce((a, b) => a + b.warnings, 0), stray: all.reduce((a, b) => a + b.stray, 0), firstStray: all.find(a => a.firstStray != null)?.firstStray }
  }

  async stopAll (): Promise<void> {
    await Promise.race([this.everywhere('stopAll'), new Promise(resolve => setTimeout(resolve, 60_000).unref())]).catch(() => {})
    await Promise.all(this.workers.map(async w => w.terminate()))
    await rm(this.dir, { recursive: true, force: true })
  }
}

// The node's shared documents: a doc store in `<repo>/docs` and doc-sync on the node's libp2p.
// Routes, the y-websocket endpoint and the CLI reach it through `documentsOf(node)`.
//
// A document's user content is its top-level map `data`. Its policy lives in the same document,
// in the reserved top-level map `meta`: `writers` (DIDs) and `zones` (regions). Keeping the policy
// inside the document means it replicates, persists and converges with the content, with no
// second store to keep in step. Who may change it follows from doc-sync's writer check: once a
// node knows a writer list, updates from anyone else (policy edits included) are dropped, so only
// writers can change the policy. The limit of that choice: a node that has never seen the
// document knows no policy yet and accepts its first state from whichever peer serves it.
// Zones must be known before a document is opened (a zone-bound document never goes on gossip),
// so the policy is read from the stored state before doc-sync opens it; a live policy change
// that adds or changes zones reopens the document under the new rule. Zones are regions: this
// node's `--region`, and a peer's the region of its signed descriptor (descriptors feature); a
// peer whose descriptor this node has not seen gets no zone-bound document.
//
// Cold start: every compaction also puts the snapshot into Helia's blockstore, as raw blocks of
// at most 1 MiB (bitswap's block size) under one dag-cbor root `{bytes, chunks}`, and doc-sync
// offers the root CID to replicas that start from nothing; they fetch it over bitswap (each block
// checked against its CID) and sync only what came after. A new snapshot replaces the blocks of
// the one before it (blocks of snapshots taken before a restart stay until a blockstore GC).
//
// A node replicates the documents it has open: those in its store (opened on start), and any
// that an API call or a WebSocket client asks for (the first open catches up from peers).
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as dagCbor from '@ipld/dag-cbor'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import * as Y from 'yjs'
import { didFromPeerId, peerIdFromDid } from '../identity/did-key.ts'
import { docSync } from '../protocols/doc-sync.ts'
import { descriptorsOf } from './descriptors.ts'
import { assertDocId, openDocStore } from './doc-store.ts'
import { protocolPrefix } from './libp2p.ts'
import type { DocStore } from './doc-store.ts'
import type { Feature, FeatureFactory } from './feature.ts'
import type { MeshNode } from './mesh-node.ts'
import type { DocSync } from '../protocols/doc-sync.ts'
import type { PeerId } from '@libp2p/interface'

export const DATA_MAP = 'data'
export const META_MAP = 'meta'

export interface DocPolicy {
  /** DIDs allowed to write; undefined: every member. */
  writers?: string[]
  /** Regions the document may live in; undefined: anywhere. */
  zones?: string[]
}

export interface DocSummary { docId: string, bytes: number, open: boolean, policy: DocPolicy }

export interface Documents extends Feature {
  readonly sync: DocSync
  readonly store: DocStore
  /** Aborted when the feature stops (the node stops or switches network): live clients hang up. */
  readonly signal: AbortSignal
  /** Opens a document; the first open waits (bounded by `signal`) for a catch-up with a few peers. */
  open: (docId: string, options?: { signal?: AbortSignal }) => Promise<Y.Doc>
  list: () => Promise<DocSummary[]>
  policyOf: (docId: string) => DocPolicy
  /** Whether this node may write the document under its policy. */
  mayWrite: (docId: string) => boolean
  /** Sets `data[key] = value`; resolves once the write is on disk (and published). */
  set: (docId: string, key: string, value: unknown, options?: { signal?: AbortSignal }) => Promise<void>
  /** Sets a document's policy (`mesh doc create`); resolves once it is on disk. */
  setPolicy: (docId: string, policy: DocPolicy, options?: { signal?: AbortSignal }) => Promise<void>
}

const CATCH_UP_PEERS = 3
const SNAPSHOT_CHUNK = 1024 * 1024
const SNAPSHOT_ROOT_MAX = 64 * 1024

interface SnapshotRoot { type: 'mesh-doc-snapshot', bytes: number, chunks: CID[] }

async function readBlock (node: MeshNode, cid: CID, signal: AbortSignal, maxBytes: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = []
  let size = 0
  for await (const chunk of node.helia.blockstore.get(cid, { signal })) {
    size += chunk.length
    if (size > maxBytes) throw new Error(`block ${cid} is larger than ${maxBytes} bytes`)
    chunks.push(chunk)
  }
  return chunks.length === 1 ? chunks[0] : new Uint8Array(Buffer.concat(chunks))
}

/** Stores a snapshot as raw chunks under a dag-cbor root; returns the root and every block's CID. */
async function putSnapshot (node: MeshNode, state: Uint8Array): Promise<{ root: CID, blocks: CID[] }> {
  const chunks: CID[] = []
  for (let at = 0; at < state.length || (at === 0 && chunks.length === 0); at += SNAPSHOT_CHUNK) {
    const bytes = state.subarray(at, at + SNAPSHOT_CHUNK)
    const cid = CID.createV1(raw.code, await sha256.digest(bytes))
    await node.helia.blockstore.put(cid, bytes)
    chunks.push(cid)
    if (state.length === 0) break
  }
  const rootBytes = dagCbor.encode({ type: 'mesh-doc-snapshot', bytes: state.length, chunks } satisfies SnapshotRoot)
  const root = CID.createV1(dagCbor.code, await sha256.digest(rootBytes))
  await node.helia.blockstore.put(root, rootBytes)
  return { root, blocks: [root, ...chunks] }
}

/** Fetches a snapshot by its root CID: from the blockstore, else over bitswap; every block is verified. */
async function fetchSnapshot (node: MeshNode, text: string, signal: AbortSignal, maxBytes: number): Promise<Uint8Array> {
  const root = CID.parse(text)
  if (root.code !== dagCbor.code) throw new Error('a snapshot root is dag-cbor')
  const value = dagCbor.decode(await readBlock(node, root, signal, SNAPSHOT_ROOT_MAX)) as Partial<SnapshotRoot>
  if (value?.type !== 'mesh-doc-snapshot' || !Number.isSafeInteger(value.bytes) || !Array.isArray(value.chunks) ||
    value.chunks.some(c => CID.asCID(c) == null || c.code !== raw.code)) throw new Error('not a document snapshot')
  const bytes = value.bytes!
  if (bytes > maxBytes || value.chunks.length !== Math.max(1, Math.ceil(bytes / SNAPSHOT_CHUNK))) throw new Error('snapshot size does not match its chunks')
  const parts = await Promise.all(value.chunks.map(async c => readBlock(node, c, signal, SNAPSHOT_CHUNK)))
  const state = new Uint8Array(bytes)
  let at = 0
  for (const p of parts) {
    if (at + p.length > bytes) throw new Error('snapshot longer than it says')
    state.set(p, at)
    at += p.length
  }
  if (at !== bytes) throw new Error('snapshot shorter than it says')
  return state
}

export const documents: FeatureFactory = (node, init) => {
  const protocol = `${protocolPrefix(node.network)}/doc-sync/1.0.0`
  const policies = new Map<string, DocPolicy>()
  /** Writer peer IDs per document, derived from the policy's DIDs. */
  const writerIds = new Map<string, string[] | undefined>()
  /** States read ahead of doc-sync's open (to learn the policy first), handed over once. */
  const primed = new Map<string, Y.Doc | undefined>()
  const observed = new Set<string>()
  const stopper = new AbortController()
  let store: DocStore | undefined
  let sync: DocSync | undefined
  let tempDir: string | undefined
  /** Blocks of each document's current snapshot, to delete once a newer one replaces it. */
  const snapshotBlocks = new Map<string, CID[]>()
  /** Snapshot publications in order per document, so an older one never lands after a newer one. */
  const snapshotChain = new Map<string, Promise<void>>()

  function offerSnapshot (docId: string, state: Uint8Array): Promise<void> {
    const next = (snapshotChain.get(docId) ?? Promise.resolve()).then(async () => {
      if (stopper.signal.aborted) return
      const { root, blocks } = await putSnapshot(node, state)
      sync?.setSnapshot(docId, { cid: root.toString(), stateVector: Y.encodeStateVectorFromUpdate(state), bytes: state.length })
      const keep = new Set(blocks.map(String))
      for (const old of snapshotBlocks.get(docId) ?? []) {
        if (keep.has(old.toString())) continue
        try { await node.helia.blockstore.delete(old) } catch {}
      }
      snapshotBlocks.set(docId, blocks)
    })
    const settled = next.catch(() => {})
    snapshotChain.set(docId, settled)
    return next
  }

  function setPolicyCache (docId: string, policy: DocPolicy): boolean {
    const before = JSON.stringify(policies.get(docId) ?? {})
    policies.set(docId, policy)
    writerIds.set(docId, policy.writers?.flatMap(did => {
      try { return [peerIdFromDid(did).toString()] } catch { return [] }
    }))
    return before !== JSON.stringify(policy)
  }

  function readPolicy (doc: Y.Doc): DocPolicy {
    const meta = doc.getMap(META_MAP)
    const strings = (v: unknown): string[] | undefined =>
      Array.isArray(v) && v.every(x => typeof x === 'string') ? v as string[] : undefined
    return { writers: strings(meta.get('writers')), zones: strings(meta.get('zones')) }
  }

  function authorize (peer: PeerId): boolean {
    // The membership gate already keeps non-members off the protocol and the topics; this is
    // the same rule again, for whatever reaches doc-sync some other way.
    if (node.community == null) return true
    const id = peer.toString()
    return node.peers().some(p => p.peerId === id && p.authenticated)
  }

  /** A peer's region from its signed descriptor: zone-bound documents go only where it matches. */
  function peerZone (peer: PeerId): string | undefined {
    try {
      return descriptorsOf(node).get(didFromPeerId(peer))?.region
    } catch {
      return undefined
    }
  }

  /** Watches a document's policy once it is open, and reopens it when its zones change. */
  function watchPolicy (docId: string, doc: Y.Doc): void {
    if (observed.has(docId)) return
    observed.add(docId)
    const meta = doc.getMap(META_MAP)
    meta.observe(() => {
      const before = policies.get(docId)?.zones
      const policy = readPolicy(doc)
      setPolicyCache(docId, policy)
      if (JSON.stringify(before) === JSON.stringify(policy.zones) || sync == null) return
      const s = sync
      void (async () => {
        observed.delete(docId)
        await s.close(docId)
        const reopened = await s.open(docId)
        watchPolicy(docId, reopened)
      })().catch((err: Error) => { process.emitWarning(`document ${docId} closed: ${err.message}`) })
    })
  }

  async function openDoc (docId: string, signal?: AbortSignal): Promise<Y.Doc> {
    assertDocId(docId)
    const s = running()
    if (s.docs().includes(docId)) return s.open(docId)
    if (!primed.has(docId)) {
      const stored = await store!.load(docId)
      primed.set(docId, stored)
      if (stored != null) setPolicyCache(docId, readPolicy(stored))
    }
    const doc = await s.open(docId)
    watchPolicy(docId, doc)
    // doc-sync asks a few peers on open without waiting; an API caller wants the answer to
    // include what they hold, so wait for those sessions (as long as the caller allows).
    const peers = node.libp2p.getConnections().map(c => c.remotePeer)
      .filter((p, i, all) => all.findIndex(q => q.equals(p)) === i)
      .sort(() => Math.random() - 0.5).slice(0, CATCH_UP_PEERS)
    const caughtUp = Promise.all(peers.map(async p => s.syncWith(p, [docId]).catch(() => {})))
    if (signal != null) {
      await Promise.race([caughtUp, new Promise(resolve => signal.addEventListener('abort', resolve, { once: true }))])
    } else {
      await caughtUp
    }
    return doc
  }

  function running (): DocSync {
    if (sync == null || stopper.signal.aborted) throw new Error('documents are not running on this node')
    return sync
  }

  const feature: Documents = {
    get sync () { return running() },
    get store () {
      if (store == null) throw new Error('documents are not running on this node')
      return store
    },
    signal: stopper.signal,
    gatedProtocols: () => [protocol],
    async start () {
      const dir = init.repoPath != null ? join(init.repoPath, 'docs') : (tempDir = await mkdtemp(join(tmpdir(), 'mesh-docs-')))
      // An in-memory node throws its documents away on stop, so fsync would buy nothing.
      store = await openDocStore(dir, {
        fsync: init.repoPath != null,
        compactEvery: typeof init.config?.docsCompactEvery === 'number' ? init.config.docsCompactEvery : undefined,
        onCompacted: async (docId, state) => offerSnapshot(docId, state),
        liveDoc: (docId) => sync?.opened(docId)
      })
      const docStore = store
      sync = docSync({
        libp2p: node.libp2p,
        snapshots: { fetch: async (cid, { signal, maxBytes }) => fetchSnapshot(node, cid, signal, maxBytes) },
        store: {
          load: async (docId) => {
            if (primed.has(docId)) {
              const doc = primed.get(docId)
              primed.delete(docId)
              return doc
            }
            const doc = await docStore.load(docId)
            if (doc != null) setPolicyCache(docId, readPolicy(doc))
            return doc
          },
          append: async (docId, update) => docStore.append(docId, update),
          list: async () => docStore.list()
        }
      }, {
        network: node.network,
        nodeZone: node.region,
        peerZone,
        openStored: true,
        authorize,
        writers: (docId) => writerIds.get(docId),
        allowedZones: (docId) => policies.get(docId)?.zones
      })
      await sync.start()
      for (const docId of sync.docs()) watchPolicy(docId, await sync.open(docId))
      // Offer the snapshots taken before this start too (putting blocks that are there is cheap).
      for (const docId of sync.docs()) {
        const state = await docStore.snapshot(docId).catch(() => undefined)
        if (state != null) void offerSnapshot(docId, state).catch(() => {})
      }
    },
    async stop () {
      stopper.abort()
      // Blocks must be written (or given up) before Helia's blockstore closes.
      await Promise.all([...snapshotChain.values()])
      await sync?.stop()
      await store?.close()
      if (tempDir != null) await rm(tempDir, { recursive: true, force: true })
    },
    open: async (docId, options) => openDoc(docId, options?.signal),
    async list () {
      const open = new Set(running().docs())
      const stored = await store!.list()
      const all = new Map(stored.map(e => [e.docId, e.bytes]))
      for (const id of open) if (!all.has(id)) all.set(id, 0)
      return [...all].sort((a, b) => a[0].localeCompare(b[0]))
        .map(([docId, bytes]) => ({ docId, bytes, open: open.has(docId), policy: policies.get(docId) ?? {} }))
    },
    policyOf: (docId) => policies.get(docId) ?? {},
    mayWrite (docId) {
      const writers = writerIds.get(docId)
      return writers == null || writers.includes(node.peerId.toString())
    },
    async set (docId, key, value, options) {
      await openDoc(docId, options?.signal)
      await running().transact(docId, (doc) => { doc.getMap(DATA_MAP).set(key, value) })
    },
    async setPolicy (docId, policy, options) {
      assertDocId(docId)
      const s = running()
      if (policy.zones != null && (node.region == null || !policy.zones.includes(node.region))) {
        throw new Error(`this node is in ${node.region == null ? 'no zone' : `zone ${node.region}`}, so it cannot hold a document bound to ${policy.zones.join(', ')}`)
      }
      if (policy.zones != null) {
        // The rule must hold before the first byte is shared: close any gossip-shared replica,
        // and open it again as zone-bound.
        setPolicyCache(docId, { ...policies.get(docId), zones: policy.zones })
        if (s.docs().includes(docId)) {
          observed.delete(docId)
          await s.close(docId)
        }
      }
      await openDoc(docId, options?.signal)
      if (!feature.mayWrite(docId)) throw new Error(`this node is not a writer of ${docId}`)
      await s.transact(docId, (doc) => {
        const meta = doc.getMap(META_MAP)
        if (policy.writers != null) meta.set('writers', policy.writers)
        if (policy.zones != null) meta.set('zones', policy.zones)
      })
    }
  }
  return feature
}

/** The documents feature of a node; throws if the node does not run it. */
export function documentsOf (node: MeshNode): Documents {
  const feature = node.features.get('docs')
  if (feature == null) throw new Error('this node does not run the documents feature')
  return feature as Documents
}

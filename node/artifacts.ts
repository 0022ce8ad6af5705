// Wasm artifacts on IPFS: publish a module with a signed manifest, find and fetch one from anywhere
// in the mesh, verify it, keep it and serve it from then on.
//
// Where things live:
// - the module's bytes: a UnixFS file (profile unixfs-v1-2025: CIDv1, raw leaves, 1 MiB chunks)
//   in the node's Helia blockstore;
// - the manifest: one dag-cbor block (registry/artifact.ts) that links the file, so pinning the
//   manifest pins the module too;
// - the index `manifest CID -> entry` (and so `name@version -> manifest CID`): `artifacts.json` in
//   the repo, written atomically.
//
// How `name@version` resolves anywhere (the decision): a node holding an artifact provides, in the
// DHT, a key derived from network + name@version (`nameKey`), next to the manifest and module CIDs.
// A resolver asks its connected peers first, then the DHT's providers of that key, over a small
// request protocol (`<prefix>/artifacts/resolve/1.0.0`: "which manifest do you hold for
// name@version?"), and accepts the first answer that is a validly signed manifest of that exact
// name@version by an acceptable publisher. We chose provider records over DHT value records because
// kad-dht only stores values under namespaces it has validators for (`/pk`, `/ipns`), and provider
// records already do the hard part (finding holders) while the answer itself is self-verifying.
// Names are not exclusive: two publishers may both sign `x@1.0.0`; a resolver takes the first valid
// answer, so callers that care about who published should pin the manifest CID instead.
import { unixfs } from '@helia/unixfs'
import { lpStream } from '@libp2p/utils'
import { CID } from 'multiformats/cid'
import * as dagCbor from '@ipld/dag-cbor'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { peerIdFromDid } from '../identity/did-key.ts'
import {
  ArtifactError, MAX_ARTIFACT_BYTES, MAX_MANIFEST_BYTES, checkContent, checkName, checkVersion, decodeManifest,
  manifestCid, nameKey, parseArtifactRef, sha256Hex, signManifest
} from '../registry/artifact.ts'
import { UserError } from './errors.ts'
import { protocolPrefix } from './libp2p.ts'
import { Repo, writeAtomic } from './repo.ts'
import { createWasmRuntime, WasmModuleError } from './wasm/runtime.ts'
import type { ArtifactLimits, ArtifactManifest, SignedManifest } from '../registry/artifact.ts'
import type { Feature, FeatureFactory } from './feature.ts'
import type { MeshNode } from './mesh-node.ts'
import type { Connection, PeerId, PrivateKey, Stream } from '@libp2p/interface'

const INDEX_FILE = 'artifacts.json'
const MAX_RESOLVE_REQUEST = 1024
/** Peers asked at once when resolving a name. */
const RESOLVE_FANOUT = 8
const REPROVIDE_MS = 10 * 60_000
/** Verified modules kept in memory, so a warm invocation neither re-reads nor re-hashes them. */
const VERIFIED_CACHE_BYTES = 64 * 1024 * 1024
/**
 * How a module's bytes are stored: the IPIP-499 `unixfs-v1-2025` profile (CIDv1, raw leaves,
 * 1 MiB chunks, up to 1024 links a node). Against 256 KiB chunks this moves a quarter of the
 * blocks (each one a want, a hash, a message entry and an event on both sides), a module of up to
 * 1 GiB is one root over its leaves, so a reader asks for all leaves without a second round of
 * wants, and a 1 MB module is one block: one round trip.
 */
const MODULE_LAYOUT = { profile: 'unixfs-v1-2025' } as const
/**
 * Blocks a reader asks for at once (8 MiB with 1 MiB chunks). Asking for every leaf at once makes
 * the holder read them all and send them as one bitswap message, which must arrive within
 * bitswap's 10 s send timeout and comes after the holder has read it all. Measured on loopback
 * (64 MB): MB/s within the noise of asking for all, first byte ~3x sooner.
 */
const READ_CONCURRENCY = 8

type UnixFS = ReturnType<typeof unixfs>

/** Stores a module's bytes as Mesh does (MODULE_LAYOUT); returns the UnixFS CID. */
export async function storeModule (fs: UnixFS, bytes: Uint8Array, options: { signal?: AbortSignal } = {}): Promise<CID> {
  return fs.addBytes(bytes, { ...MODULE_LAYOUT, signal: options.signal })
}

/** A module's bytes as they arrive, fetched over bitswap when not local, READ_CONCURRENCY blocks at a time. */
export function readModuleChunks (fs: UnixFS, cid: CID, options: { signal?: AbortSignal } = {}): AsyncIterable<Uint8Array> {
  // @helia/unixfs hands its options on to the UnixFS exporter, which bounds blocks in flight.
  return fs.cat(cid, { signal: options.signal, blockReadConcurrency: READ_CONCURRENCY } as Parameters<UnixFS['cat']>[1])
}

export interface ArtifactEntry {
  name: string
  version: string
  /** The manifest's CID: what to fetch or invoke by. */
  manifest: string
  /** The module's UnixFS CID. */
  cid: string
  size: number
  sha256: string
  publisher: string
  created: string
  wasi: string[]
  limits: ArtifactLimits
  origin: 'published' | 'fetched'
}

export interface Resolved {
  manifestCid: CID
  manifest: ArtifactManifest
}

export interface Artifacts extends Feature {
  publish: (bytes: Uint8Array, meta: { name: string, version: string, limits?: ArtifactLimits }) => Promise<ArtifactEntry>
  /** Finds the manifest a reference names (locally, then in the mesh) and verifies it. */
  resolve: (ref: string, options?: { signal?: AbortSignal }) => Promise<Resolved>
  /** Resolves, fetches, verifies, pins and from then on provides an artifact. */
  fetch: (ref: string, options?: { signal?: AbortSignal }) => Promise<{ entry: ArtifactEntry, bytes: Uint8Array }>
  ls: () => ArtifactEntry[]
  rm: (ref: string) => Promise<ArtifactEntry>
}

/** The artifacts feature of a node; throws when the node does not run it. */
export function artifactsOf (node: MeshNode): Artifacts {
  const feature = node.features.get('artifacts')
  if (feature == null) throw new UserError('this node does not run the artifacts feature')
  return feature as Artifacts
}

/**
 * Refuses a CID that cannot name an artifact manifest (manifests are dag-cbor blocks), such as
 * the module's own raw/UnixFS CID. One line, at once, without asking the mesh.
 */
export function requireManifestCid (ref: string, cid: CID): void {
  if (cid.code !== dagCbor.code) {
    throw new UserError(`${ref} is not an artifact manifest CID (manifests are dag-cbor, bafyrei…); use the manifest CID that publish printed, or name@version`)
  }
}

export const artifacts: FeatureFactory = (node, init) => {
  const resolveProtocol = `${protocolPrefix(node.network)}/artifacts/resolve/1.0.0`
  const fs = unixfs(node.helia)
  const index = new Map<string, ArtifactEntry>()
  const indexFile = init.repoPath != null ? join(init.repoPath, INDEX_FILE) : undefined
  // Only `validate` is used: it compiles nothing in a worker, so no pool is ever started.
  const validator = createWasmRuntime({ maxMemoryBytes: 4 * 1024 * 1024 * 1024, timeoutMs: 1000, maxOutputBytes: 1024, maxConcurrent: 1 })
  let key: PrivateKey | undefined
  let saving: Promise<void> = Promise.resolve()
  let reprovider: ReturnType<typeof setInterval> | undefined
  let stopped = false
  const pending = new Set<Promise<unknown>>()
  // manifest CID -> what fetch() verified for an indexed artifact; insertion order is recency.
  // Entries go when the artifact leaves the index (rm), so nothing unindexed is served from here.
  const verified = new Map<string, { bytes: Uint8Array }>()
  let verifiedBytes = 0
  const remember = (key: string, bytes: Uint8Array): void => {
    if (verified.has(key) || bytes.length > VERIFIED_CACHE_BYTES) return
    verified.set(key, { bytes })
    verifiedBytes += bytes.length
    for (const [k, v] of verified) {
      if (verifiedBytes <= VERIFIED_CACHE_BYTES) break
      verified.delete(k)
      verifiedBytes -= v.bytes.length
    }
  }
  const forgetVerified = (manifest: string): void => {
    const v = verified.get(manifest)
    if (v == null) return
    verified.delete(manifest)
    verifiedBytes -= v.bytes.length
  }

  async function save (): Promise<void> {
    if (indexFile == null) return
    const text = JSON.stringify({ version: 1, artifacts: [...index.values()] }, null, 2) + '\n'
    saving = saving.catch(() => {}).then(async () => writeAtomic(indexFile, text, 0o644))
    await saving
  }

  function entryOf (cid: CID, m: ArtifactManifest, origin: ArtifactEntry['origin']): ArtifactEntry {
    return {
      name: m.name,
      version: m.version,
      manifest: cid.toString(),
      cid: m.cid.toString(),
      size: m.size,
      sha256: m.sha256,
      publisher: m.publisher,
      created: m.created,
      wasi: m.wasi,
      limits: m.limits,
      origin
    }
  }

  /** Local entries a reference names: manifest CID, module CID or name@version. */
  function localMatches (ref: string): ArtifactEntry[] {
    const parsed = parseArtifactRef(ref)
    if (parsed.kind === 'cid') {
      const text = parsed.cid.toString()
      return [...index.values()].filter(e => e.manifest === text || e.cid === text)
    }
    const mine = [...index.values()].filter(e => e.name === parsed.name && e.version === parsed.version)
    // Our own publication wins over one we fetched, then the newest.
    return mine.sort((a, b) => (a.origin === b.origin ? b.created.localeCompare(a.created) : a.origin === 'published' ? -1 : 1))
  }

  /** In a community network, only members publish: the manifest's publisher must pass membership. */
  async function checkPublisher (m: ArtifactManifest): Promise<void> {
    const community = node.community
    if (community == null) return
    let peer: PeerId
    try {
      peer = peerIdFromDid(m.publisher)
    } catch {
      throw new ArtifactError('schema', `publisher ${m.publisher} is not a node DID`)
    }
    const verdict = await community.verify(peer, new TextEncoder().encode(m.credential ?? ''))
    if (!verdict.ok) throw new UserError(`refusing ${m.name}@${m.version}: its publisher ${m.publisher} is not a member of ${community.name} (${verdict.reason})`)
  }

  async function getBlock (cid: CID, signal?: AbortSignal): Promise<Uint8Array> {
    const chunks: Uint8Array[] = []
    let length = 0
    for await (const chunk of node.helia.blockstore.get(cid, { signal })) {
      length += chunk.length
      if (length > MAX_MANIFEST_BYTES) throw new ArtifactError('too-large', `block ${cid} is over the ${MAX_MANIFEST_BYTES}-byte manifest limit`)
      chunks.push(chunk)
    }
    return Buffer.concat(chunks)
  }

  async function readModule (m: ArtifactManifest, signal?: AbortSignal): Promise<Uint8Array> {
    // One buffer of the signed size (at most MAX_ARTIFACT_BYTES), filled as blocks arrive: no
    // list of chunks to join afterwards, which held the module twice.
    const bytes = new Uint8Array(m.size)
    let length = 0
    for await (const chunk of readModuleChunks(fs, m.cid, { signal })) {
      if (length + chunk.length > m.size) throw new ArtifactError('wrong-content', `module ${m.cid} is longer than the ${m.size} bytes its manifest says`)
      bytes.set(chunk, length)
      length += chunk.length
    }
    await checkContent(m, bytes.subarray(0, length))
    return bytes
  }

  function background (work: Promise<unknown>): void {
    const p = work.catch(() => {}).finally(() => pending.delete(p))
    pending.add(p)
  }

  /** Tells the DHT we hold an artifact: manifest, module and name key. Best effort, bounded. */
  async function announce (e: ArtifactEntry): Promise<void> {
    const cids = [CID.parse(e.manifest), CID.parse(e.cid), await nameKey(node.network, e.name, e.version)]
    for (const cid of cids) {
      if (stopped) return
      await node.libp2p.contentRouting.provide(cid, { signal: AbortSignal.timeout(60_000) }).catch(() => {})
    }
  }

  function announceAll (): void {
    for (const e of index.values()) background(announce(e))
  }

  async function askPeer (peer: PeerId, name: string, version: string, signal?: AbortSignal): Promise<Uint8Array | undefined> {
    const stream = await node.libp2p.dialProtocol(peer, resolveProtocol, { signal })
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_MANIFEST_BYTES })
      await lp.write(new TextEncoder().encode(JSON.stringify({ name, version })), { signal })
      const answer = (await lp.read({ signal })).subarray()
      await stream.close({ signal }).catch(() => {})
      return answer.length === 0 ? undefined : answer
    } catch (err: any) {
      stream.abort(err)
      throw err
    }
  }

  /** Checks an answer to a name query; undefined when it does not qualify. */
  async function acceptAnswer (block: Uint8Array, name: string, version: string): Promise<Resolved | undefined> {
    try {
      const { manifest } = await decodeManifest(block)
      if (manifest.name !== name || manifest.version !== version) return undefined
      await checkPublisher(manifest)
      const cid = await manifestCid(block)
      await node.helia.blockstore.put(cid, block)
      return { manifestCid: cid, manifest }
    } catch {
      return undefined
    }
  }

  async function resolveName (name: string, version: string, signal?: AbortSignal): Promise<Resolved> {
    const asked = new Set<string>([node.peerId.toString()])
    const tryPeers = async (peers: PeerId[]): Promise<Resolved | undefined> => {
      const fresh = peers.filter(p => !asked.has(p.toString()))
      fresh.forEach(p => asked.add(p.toString()))
      for (let i = 0; i < fresh.length; i += RESOLVE_FANOUT) {
        const answers = await Promise.all(fresh.slice(i, i + RESOLVE_FANOUT).map(async peer => {
          const block = await askPeer(peer, name, version, signal).catch(() => undefined)
          return block == null ? undefined : acceptAnswer(block, name, version)
        }))
        const found = answers.find(a => a != null)
        if (found != null) return found
      }
      return undefined
    }
    const connected = [...new Map(node.libp2p.getConnections().map(c => [c.remotePeer.toString(), c.remotePeer])).values()]
    const near = await tryPeers(connected)
    if (near != null) return near
    const key = await nameKey(node.network, name, version)
    const batch: PeerId[] = []
    try {
      for await (const provider of node.libp2p.contentRouting.findProviders(key, { signal })) {
        if (provider.multiaddrs.length > 0) await node.libp2p.peerStore.merge(provider.id, { multiaddrs: provider.multiaddrs }).catch(() => {})
        batch.push(provider.id)
        if (batch.length >= RESOLVE_FANOUT) {
          const found = await tryPeers(batch.splice(0))
          if (found != null) return found
        }
      }
    } catch (err) {
      if (signal?.aborted === true) throw err
    }
    const found = await tryPeers(batch)
    if (found != null) return found
    if (signal?.aborted === true) throw signal.reason
    throw new UserError(`no node in the mesh has ${name}@${version} (asked ${asked.size - 1} peers)`)
  }

  async function resolve (ref: string, options: { signal?: AbortSignal } = {}): Promise<Resolved> {
    const parsed = parseArtifactRef(ref)
    // Checked before the local index: a module CID names no manifest (two manifests may share one
    // module), so it is refused whether or not this node happens to hold that module.
    if (parsed.kind === 'cid') requireManifestCid(ref, parsed.cid)
    const local = localMatches(ref)[0]
    if (local != null) {
      const { manifest } = await decodeManifest(await getBlock(CID.parse(local.manifest), options.signal))
      return { manifestCid: CID.parse(local.manifest), manifest }
    }
    if (parsed.kind === 'name') return resolveName(parsed.name, parsed.version, options.signal)
    const block = await getBlock(parsed.cid, options.signal)
    const { manifest } = await decodeManifest(block)
    await checkPublisher(manifest)
    return { manifestCid: parsed.cid, manifest }
  }

  async function keep (cid: CID, signal?: AbortSignal): Promise<void> {
    if (await node.helia.pins.isPinned(cid, { signal })) return
    for await (const _ of node.helia.pins.add(cid, { signal })) { /* walks the DAG, all local by now */ }
  }

  const self: Artifacts = {
    async start () {
      if (indexFile != null) {
        try {
          const data = JSON.parse(await readFile(indexFile, 'utf8')) as { artifacts: ArtifactEntry[] }
          for (const e of data.artifacts) index.set(e.manifest, e)
        } catch (err: any) {
          if (err.code !== 'ENOENT') throw new UserError(`${indexFile} is damaged (${err.message}); move it away to start with no artifacts`)
        }
        key = await new Repo(init.repoPath!).loadKey()
      }
      await node.libp2p.handle(resolveProtocol, handleResolve, { maxInboundStreams: 32, maxOutboundStreams: 32 })
      // Features start before the node dials its bootstrap peers: announce once the first peer is in.
      const onFirstPeer = (): void => {
        node.libp2p.removeEventListener('peer:identify', onFirstPeer)
        announceAll()
      }
      node.libp2p.addEventListener('peer:identify', onFirstPeer)
      reprovider = setInterval(announceAll, REPROVIDE_MS)
      reprovider.unref()
    },

    async stop () {
      stopped = true
      if (reprovider != null) clearInterval(reprovider)
      await node.libp2p.unhandle(resolveProtocol).catch(() => {})
      await validator.close()
      await Promise.race([Promise.all(pending), new Promise(resolve => setTimeout(resolve, 1000).unref())])
      await saving.catch(() => {})
    },

    gatedProtocols: () => [resolveProtocol],

    async publish (bytes, meta) {
      if (key == null) throw new UserError('publishing needs a node with a repo (its identity key signs the manifest)')
      const name = checkName(meta.name)
      const version = checkVersion(meta.version)
      if (bytes.length === 0) throw new UserError('the module is empty')
      if (bytes.length > MAX_ARTIFACT_BYTES) throw new UserError(`the module is ${bytes.length} bytes, over the ${MAX_ARTIFACT_BYTES}-byte limit`)
      let wasi: string[]
      try {
        wasi = validator.validate(bytes).imports
      } catch (err) {
        if (err instanceof WasmModuleError) throw new UserError(`not a runnable WASI module: ${err.message}`)
        throw err
      }
      const content = await storeModule(fs, bytes)
      const existing = [...index.values()].find(e => e.name === name && e.version === version && e.origin === 'published')
      if (existing != null) {
        // By digest: the same bytes stored with an earlier layout have another CID.
        if (existing.cid === content.toString() || existing.sha256 === await sha256Hex(bytes)) return existing
        throw new UserError(`${name}@${version} is already published here with other content (${existing.manifest}); publish a new version`)
      }
      const { cid, block } = await signManifest(key, { name, version, cid: content, bytes, wasi, limits: meta.limits, credential: node.community?.credential })
      await node.helia.blockstore.put(cid, block)
      await keep(cid)
      const entry = entryOf(cid, (await decodeManifest(block)).manifest, 'published')
      index.set(entry.manifest, entry)
      await save()
      background(announce(entry))
      return entry
    },

    resolve,

    async fetch (ref, options = {}) {
      const hit = verified.get(ref)
      const hitEntry = index.get(ref)
      if (hit != null && hitEntry != null) {
        verified.delete(ref)
        verified.set(ref, hit)
        return { entry: hitEntry, bytes: hit.bytes }
      }
      const { manifestCid: cid, manifest } = await resolve(ref, options)
      const known = index.get(cid.toString())
      if (manifest.size > MAX_ARTIFACT_BYTES) throw new UserError(`${manifest.name}@${manifest.version} is ${manifest.size} bytes, over the ${MAX_ARTIFACT_BYTES}-byte limit`)
      const bytes = await readModule(manifest, options.signal)
      if (known != null) {
        remember(cid.toString(), bytes)
        return { entry: known, bytes }
      }
      await keep(cid, options.signal)
      const entry = entryOf(cid, manifest, 'fetched')
      index.set(entry.manifest, entry)
      await save()
      background(announce(entry))
      return { entry, bytes }
    },

    ls: () => [...index.values()].sort((a, b) => a.name.localeCompare(b.name) || a.version.localeCompare(b.version)),

    async rm (ref) {
      const matches = localMatches(ref)
      if (matches.length === 0) throw new UserError(`no artifact ${ref} on this node`)
      if (matches.length > 1 && parseArtifactRef(ref).kind === 'cid') throw new UserError(`${ref} names ${matches.length} artifacts here; remove them by manifest CID`)
      const entry = matches[0]
      index.delete(entry.manifest)
      forgetVerified(entry.manifest)
      await save()
      // Unpinned blocks stay until a GC; we do not GC here, as other features keep unpinned blocks.
      const cid = CID.parse(entry.manifest)
      if (await node.helia.pins.isPinned(cid)) for await (const _ of node.helia.pins.rm(cid)) { /* drain */ }
      return entry
    }
  }

  /** Answers "which manifest do you hold for name@version?" with the manifest block, or nothing. */
  async function handleResolve (stream: Stream, _connection: Connection): Promise<void> {
    const signal = AbortSignal.timeout(10_000)
    try {
      // One framing for both directions; the request itself is bounded far lower.
      const lp = lpStream(stream, { maxDataLength: MAX_MANIFEST_BYTES })
      const request = (await lp.read({ signal })).subarray()
      if (request.length > MAX_RESOLVE_REQUEST) throw new Error('resolve request too large')
      const { name, version } = JSON.parse(new TextDecoder().decode(request))
      checkName(name)
      checkVersion(version)
      const entry = localMatches(`${name}@${version}`)[0]
      const block = entry == null ? new Uint8Array(0) : await getBlock(CID.parse(entry.manifest), signal)
      await lp.write(block, { signal })
      await stream.close({ signal })
    } catch (err: any) {
      stream.abort(err instanceof Error ? err : new Error('bad resolve request'))
    }
  }

  return self
}

export type { SignedManifest }

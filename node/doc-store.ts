// Where a node keeps its Yjs documents: per document, a snapshot plus an append-only log of
// updates. An acknowledged append is on disk (fsync); a crash mid-write leaves at most a torn last
// record, which the length + CRC framing detects and drops before anything is read or appended.
//
// Files, for a document `notes`:
//   notes.snap  "MESHSNAP" | u32 length | u32 crc32 | Yjs update (the whole state); replaced atomically
//   notes.log   records: u32 length | u32 crc32 | Yjs update      (little endian)
// A crash between writing a snapshot and truncating the log only leaves updates that the snapshot
// already contains; Yjs updates are idempotent, so replaying them is harmless.
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import * as Y from 'yjs'

/**
 * Lowercase so that two IDs never name the same file on a case-insensitive file system; no `/`
 * and no leading `.`, so an ID is always one plain file name inside the store's folder.
 */
const DOC_ID = /^[a-z0-9][a-z0-9._-]{0,127}$/
const SNAP_MAGIC = Buffer.from('MESHSNAP')
const HEADER = 8
/**
 * Logs kept open between appends (the least recently appended is closed first): opening and
 * closing the log for every batch was a third of an append's CPU.
 */
const OPEN_LOGS = 64
/** A record longer than this is corruption, not an update: refuse to allocate for it. */
const MAX_RECORD = 256 * 1024 * 1024

export class DocIdError extends Error {
  constructor (docId: string) {
    super(`invalid document ID ${JSON.stringify(docId.slice(0, 140))}: use 1-128 characters of a-z 0-9 . _ - starting with a letter or digit`)
    this.name = 'DocIdError'
  }
}

export function isValidDocId (docId: unknown): docId is string {
  return typeof docId === 'string' && DOC_ID.test(docId)
}

export function assertDocId (docId: string): void {
  if (!isValidDocId(docId)) throw new DocIdError(String(docId))
}

export interface DocStoreOptions {
  /**
   * Fold the log into the snapshot once it holds this many records, and at least half as many
   * bytes as the snapshot. Default 500; 0 never. The byte condition keeps compaction's cost (it
   * rewrites the whole state) in proportion to what was appended: a growing document compacted
   * every 500 small records rewrote its whole state for each 15 KB of new updates.
   * Each document's count is drawn anew after every compaction, between this and 1.5 times it:
   * replicas that receive the same updates in the same order otherwise all compact at the same
   * update, which costs nothing on separate machines but stalls every node that shares a machine
   * or a process (50 replicas in two threads: the slowest writes 100-330 ms instead of 50-70).
   */
  compactEvery?: number
  /** Default true. Only simulations that throw the disk away should turn it off. */
  fsync?: boolean
  /**
   * Called with a document's new snapshot (the whole state as one Yjs update) once it is durable,
   * so the node can also offer it by CID (cold start of new replicas). Not awaited by writes; a
   * failure is counted and does not undo the compaction.
   */
  onCompacted?: (docId: string, state: Uint8Array) => Promise<void> | void
  /**
   * The document as its owner holds it, if it holds it: loaded from this store and kept up to date
   * by every update appended since (doc-sync's open documents). A compaction then writes its state
   * as it is, instead of reading the snapshot and the log back and replaying them, which costs as
   * much as loading the document again and holds the event loop while it runs (in the documents
   * benchmark, 50 replicas of a 1 MB document compacting together: propagation p99 60 -> 200-560
   * ms in the rounds where they did).
   */
  liveDoc?: (docId: string) => Y.Doc | undefined
}

export interface DocStoreEntry { docId: string, bytes: number }

export interface DocStoreStats {
  appends: number
  compactions: number
  /** onCompacted hooks that threw. */
  snapshotHookFailed: number
  /** Bytes of torn or corrupt log tails dropped when a log was first opened. */
  droppedTailBytes: number
}

export interface DocStore {
  /** The stored state (snapshot + log), or undefined when nothing was ever stored for the ID. */
  load: (docId: string) => Promise<Y.Doc | undefined>
  /** Resolves once the update is on disk (fsynced). Concurrent appends share one write + fsync. */
  append: (docId: string, update: Uint8Array) => Promise<void>
  /** Writes a snapshot of the stored state (merged with `doc`'s, if given) and empties the log. */
  compact: (docId: string, doc?: Y.Doc) => Promise<void>
  list: () => Promise<DocStoreEntry[]>
  /** The document's current snapshot (whole state as one update), or undefined if never compacted. */
  snapshot: (docId: string) => Promise<Uint8Array | undefined>
  remove: (docId: string) => Promise<void>
  readonly stats: DocStoreStats
  close: () => Promise<void>
}

interface DocFiles {
  docId: string
  /** Serializes every file operation on the document. */
  tail: Promise<void>
  pending: Array<{ record: Buffer, resolve: () => void, reject: (err: Error) => void }>
  flushScheduled: boolean
  /** The log was scanned (and a torn tail cut) in this process. */
  checked: boolean
  records: number
  /** Records after which the log is compacted (compactEvery, drawn with jitter). */
  compactAt: number
  /** Bytes of the log (with its framing) and of the snapshot's update, once checked. */
  logBytes: number
  snapBytes: number
  /** The log, open for appending (O_APPEND: every write lands at its end, even after a truncate). */
  log?: FileHandle
}

export async function openDocStore (dir: string, options: DocStoreOptions = {}): Promise<DocStore> {
  const compactEvery = options.compactEvery ?? 500
  const fsync = options.fsync ?? true
  await mkdir(dir, { recursive: true })
  const docs = new Map<string, DocFiles>()
  /** Documents whose log is open, least recently appended first. */
  const openLogs = new Set<DocFiles>()
  const stats: DocStoreStats = { appends: 0, compactions: 0, snapshotHookFailed: 0, droppedTailBytes: 0 }
  let closed = false

  const nextCompactAt = (): number => Math.round(compactEvery * (1 + 0.5 * Math.random()))
  const snapPath = (docId: string): string => join(dir, `${docId}.snap`)
  const logPath = (docId: string): string => join(dir, `${docId}.log`)

  function files (docId: string): DocFiles {
    assertDocId(docId)
    if (closed) throw new Error('document store is closed')
    let f = docs.get(docId)
    if (f == null) {
      f = { docId, tail: Promise.resolve(), pending: [], flushScheduled: false, checked: false, records: 0, compactAt: nextCompactAt(), logBytes: 0, snapBytes: 0 }
      docs.set(docId, f)
    }
    return f
  }

  async function run<T> (f: DocFiles, op: () => Promise<T>): Promise<T> {
    const result = f.tail.then(async () => {
      if (!f.checked) await check(f, f.docId)
      return op()
    })
    f.tail = result.then(() => {}, () => {})
    return result
  }

  async function syncDir (): Promise<void> {
    if (!fsync) return
    const fh = await open(dir, 'r')
    try { await fh.sync() } finally { await fh.close() }
  }

  /** Counts the valid records and cuts anything after the last one, so appends land after it. */
  async function check (f: DocFiles, docId: string): Promise<void> {
    const bytes = await readFile(logPath(docId)).catch((err) => { if (err.code === 'ENOENT') return undefined; throw err })
    f.checked = true
    f.snapBytes = Math.max(0, ((await stat(snapPath(docId)).catch(() => undefined))?.size ?? 0) - SNAP_MAGIC.length - HEADER)
    if (bytes == null) return
    const { records, validBytes } = parseLog(bytes)
    f.records = records.length
    f.logBytes = validBytes
    if (validBytes < bytes.length) {
      stats.droppedTailBytes += bytes.length - validBytes
      const fh = await open(logPath(docId), 'r+')
      try {
        await fh.truncate(validBytes)
        if (fsync) await fh.sync()
      } finally { await fh.close() }
    }
  }

  async function readState (docId: string): Promise<{ updates: Uint8Array[], found: boolean }> {
    const updates: Uint8Array[] = []
    let found = false
    const snap = await readFile(snapPath(docId)).catch((err) => { if (err.code === 'ENOENT') return undefined; throw err })
    if (snap != null) {
      found = true
      updates.push(parseSnapshot(snap, docId))
    }
    const log = await readFile(logPath(docId)).catch((err) => { if (err.code === 'ENOENT') return undefined; throw err })
    if (log != null) {
      found = true
      updates.push(...parseLog(log).records)
    }
    return { updates, found }
  }

  async function flush (f: DocFiles, docId: string): Promise<void> {
    f.flushScheduled = false
    const batch = f.pending.splice(0)
    if (batch.length === 0) return
    try {
      let created = false
      if (f.log == null) {
        created = !(await exists(logPath(docId)))
        f.log = await open(logPath(docId), 'a')
      }
      openLogs.delete(f)
      openLogs.add(f)
      for (const old of openLogs) {
        if (openLogs.size <= OPEN_LOGS) break
        // Only a log with no operation running may be closed: this one runs on f's queue.
        if (old !== f) void run(old, async () => closeLog(old))
        openLogs.delete(old)
      }
      try {
        await f.log.writeFile(Buffer.concat(batch.map(b => b.record)))
        // Data and the file's size, not its times: what a reader after a crash needs.
        if (fsync) await f.log.datasync()
      } catch (err) {
        await closeLog(f)
        throw err
      }
      // The new file's name must survive a power cut too, not only its bytes.
      if (created) await syncDir()
      f.records += batch.length
      for (const b of batch) f.logBytes += b.record.length
      stats.appends += batch.length
      for (const b of batch) b.resolve()
    } catch (err: any) {
      for (const b of batch) b.reject(err)
      return
    }
    if (compactEvery > 0 && f.records >= f.compactAt && f.logBytes >= f.snapBytes / 2) await compactNow(docId)
  }

  async function closeLog (f: DocFiles): Promise<void> {
    const fh = f.log
    f.log = undefined
    openLogs.delete(f)
    await fh?.close().catch(() => {})
  }

  async function compactNow (docId: string, doc?: Y.Doc): Promise<void> {
    const f = docs.get(docId)!
    const live = doc == null ? options.liveDoc?.(docId) : undefined
    let state: Uint8Array
    if (live != null) {
      state = Y.encodeStateAsUpdate(live)
    } else {
      const { updates, found } = await readState(docId)
      if (!found && doc == null) return
      const merged = new Y.Doc({ gc: true })
      applyAll(merged, updates)
      if (doc != null) Y.applyUpdate(merged, Y.encodeStateAsUpdate(doc))
      state = Y.encodeStateAsUpdate(merged)
      merged.destroy()
    }
    const body = Buffer.alloc(SNAP_MAGIC.length + HEADER + state.length)
    SNAP_MAGIC.copy(body, 0)
    body.writeUInt32LE(state.length, SNAP_MAGIC.length)
    body.writeUInt32LE(crc32(state), SNAP_MAGIC.length + 4)
    body.set(state, SNAP_MAGIC.length + HEADER)
    const tmp = `${snapPath(docId)}.tmp`
    const fh = await open(tmp, 'w')
    try {
      await fh.writeFile(body)
      if (fsync) await fh.sync()
    } finally { await fh.close() }
    await rename(tmp, snapPath(docId))
    await syncDir()
    // Only now is the log redundant: the snapshot holding its updates is durable.
    const log = await open(logPath(docId), 'a').catch(() => undefined)
    if (log != null) {
      try {
        await log.truncate(0)
        if (fsync) await log.sync()
      } finally { await log.close() }
    }
    f.records = 0
    f.compactAt = nextCompactAt()
    f.logBytes = 0
    f.snapBytes = state.length
    stats.compactions++
    // Outside the document's operation chain: publishing a large snapshot must not hold up writes.
    if (options.onCompacted != null) {
      const hook = options.onCompacted
      void Promise.resolve().then(async () => hook(docId, state)).catch((err: any) => {
        stats.snapshotHookFailed++
        process.emitWarning(`document ${docId}: snapshot hook failed: ${err.message}`)
      })
    }
  }

  return {
    stats,
    async load (docId) {
      const f = files(docId)
      return run(f, async () => {
        const { updates, found } = await readState(docId)
        if (!found) return undefined
        const doc = new Y.Doc()
        applyAll(doc, updates)
        return doc
      })
    },
    async append (docId, update) {
      const f = files(docId)
      if (!(update instanceof Uint8Array)) throw new TypeError('update must be a Uint8Array')
      const record = Buffer.alloc(HEADER + update.length)
      record.writeUInt32LE(update.length, 0)
      record.writeUInt32LE(crc32(update), 4)
      record.set(update, HEADER)
      const done = new Promise<void>((resolve, reject) => f.pending.push({ record, resolve, reject }))
      if (!f.flushScheduled) {
        f.flushScheduled = true
        void run(f, async () => flush(f, docId)).catch(() => {})
      }
      return done
    },
    async compact (docId, doc) {
      const f = files(docId)
      await run(f, async () => compactNow(docId, doc))
    },
    async list () {
      const sizes = new Map<string, number>()
      for (const name of await readdir(dir)) {
        const m = /^(.+)\.(snap|log)$/.exec(name)
        if (m == null || !isValidDocId(m[1])) continue
        const size = (await stat(join(dir, name)).catch(() => undefined))?.size
        if (size == null) continue
        sizes.set(m[1], (sizes.get(m[1]) ?? 0) + size)
      }
      return [...sizes].map(([docId, bytes]) => ({ docId, bytes })).sort((a, b) => a.docId.localeCompare(b.docId))
    },
    async snapshot (docId) {
      const f = files(docId)
      return run(f, async () => {
        const snap = await readFile(snapPath(docId)).catch((err) => { if (err.code === 'ENOENT') return undefined; throw err })
        return snap == null ? undefined : parseSnapshot(snap, docId)
      })
    },
    async remove (docId) {
      const f = files(docId)
      await run(f, async () => {
        // An open handle would go on appending to the removed file.
        await closeLog(f)
        await rm(snapPath(docId), { force: true })
        await rm(logPath(docId), { force: true })
        f.records = 0
        f.logBytes = 0
        f.snapBytes = 0
        await syncDir()
      })
    },
    async close () {
      if (closed) return
      await Promise.all([...docs.values()].map(async f => f.tail))
      await Promise.all([...docs.values()].map(closeLog))
      closed = true
    }
  }
}

/** Splits a log into its valid records; `validBytes` ends at the first torn or corrupt one. */
export function parseLog (bytes: Uint8Array): { records: Uint8Array[], validBytes: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const records: Uint8Array[] = []
  let pos = 0
  while (pos + HEADER <= bytes.length) {
    const len = view.getUint32(pos, true)
    const sum = view.getUint32(pos + 4, true)
    if (len > MAX_RECORD || pos + HEADER + len > bytes.length) break
    const body = bytes.subarray(pos + HEADER, pos + HEADER + len)
    if (crc32(body) !== sum) break
    records.push(body)
    pos += HEADER + len
  }
  return { records, validBytes: pos }
}

function parseSnapshot (bytes: Buffer, docId: string): Uint8Array {
  // Snapshots are renamed into place whole, so a bad one is damage, not a crash: say so rather
  // than silently start from an empty document.
  const bad = (): Error => new Error(`snapshot of document ${docId} is corrupt`)
  if (bytes.length < SNAP_MAGIC.length + HEADER || !bytes.subarray(0, SNAP_MAGIC.length).equals(SNAP_MAGIC)) throw bad()
  const len = bytes.readUInt32LE(SNAP_MAGIC.length)
  const sum = bytes.readUInt32LE(SNAP_MAGIC.length + 4)
  const body = bytes.subarray(SNAP_MAGIC.length + HEADER)
  if (body.length !== len || crc32(body) !== sum) throw bad()
  return body
}

/** One transaction for the whole log: a transaction per record spent more on cleanup than on applying. */
function applyAll (doc: Y.Doc, updates: Uint8Array[]): void {
  doc.transact(() => { for (const u of updates) applyStored(doc, u) })
}

function applyStored (doc: Y.Doc, update: Uint8Array): void {
  // A record passed its checksum, so it is what was written; a Yjs failure here is a bug elsewhere,
  // and one bad update must not hide the rest of the document.
  try {
    Y.applyUpdate(doc, update)
  } catch (err: any) {
    process.emitWarning(`skipping an unreadable stored update: ${err.message}`)
  }
}

async function exists (path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false)
}

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { appendFile, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { after, before, describe, it } from 'node:test'
import * as Y from 'yjs'
import { openDocStore, parseLog } from '../../node/doc-store.ts'
import { tempDirs } from '../helpers/process.ts'

/** Appends `n` edits made on one document, each as its own update, and returns that document. */
async function appendEdits (store: Awaited<ReturnType<typeof openDocStore>>, docId: string, n: number, doc = new Y.Doc()): Promise<Y.Doc> {
  const updates: Uint8Array[] = []
  doc.on('update', (u: Uint8Array) => updates.push(u))
  for (let i = 0; i < n; i++) {
    doc.getMap('m').set(`k${i % 20}`, `value ${i}`)
    doc.getArray('log').push([i])
  }
  for (const u of updates) await store.append(docId, u)
  return doc
}

function sameState (a: Y.Doc, b: Y.Doc): void {
  assert.deepEqual(Y.encodeStateVector(a), Y.encodeStateVector(b))
  assert.deepEqual(a.getMap('m').toJSON(), b.getMap('m').toJSON())
  assert.deepEqual(a.getArray('log').toJSON(), b.getArray('log').toJSON())
}

describe('document store', () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  before(async () => { dirs = await tempDirs() })
  after(async () => { await dirs.cleanup() })

  it('reopened, it holds every appended update', async () => {
    const dir = await dirs.make('doc-store-')
    const store = await openDocStore(dir, { compactEvery: 0 })
    assert.equal(await store.load('notes'), undefined)
    const doc = await appendEdits(store, 'notes', 100)
    await store.close()
    const again = await openDocStore(dir)
    const loaded = await again.load('notes')
    assert.ok(loaded != null)
    sameState(loaded, doc)
    const list = await again.list()
    assert.deepEqual(list.map(e => e.docId), ['notes'])
    assert.ok(list[0].bytes > 0)
    await again.close()
  })

  it('concurrent appends are all durable (they share a write)', async () => {
    const dir = await dirs.make('doc-store-')
    const store = await openDocStore(dir, { compactEvery: 0 })
    const doc = new Y.Doc()
    const updates: Uint8Array[] = []
    doc.on('update', (u: Uint8Array) => updates.push(u))
    for (let i = 0; i < 200; i++) doc.getArray('log').push([i])
    await Promise.all(updates.map(async u => store.append('many', u)))
    await store.close()
    const loaded = await (await openDocStore(dir)).load('many')
    assert.deepEqual(loaded!.getArray('log').toJSON(), doc.getArray('log').toJSON())
  })

  it('drops a torn or corrupt last record, and appends after it stay readable', async () => {
    const dir = await dirs.make('doc-store-')
    let store = await openDocStore(dir, { compactEvery: 0 })
    const doc = await appendEdits(store, 'torn', 30)
    await store.close()
    const log = join(dir, 'torn.log')
    const good = (await stat(log)).size
    // A header that promises more bytes than were written: the crash hit mid-record.
    const torn = Buffer.alloc(8 + 10)
    torn.writeUInt32LE(1000, 0)
    await appendFile(log, torn)
    store = await openDocStore(dir, { compactEvery: 0 })
    sameState((await store.load('torn'))!, doc)
    assert.equal((await stat(log)).size, good, 'the torn tail is cut')
    assert.equal(store.stats.droppedTailBytes, torn.length)
    await appendEdits(store, 'torn', 5, doc)
    await store.close()

    // A whole record whose checksum does not match.
    const bytes = await readFile(log)
    const last = parseLog(bytes)
    const bad = Buffer.from(Y.encodeStateAsUpdate(new Y.Doc()))
    const record = Buffer.alloc(8 + bad.length)
    record.writeUInt32LE(bad.length, 0)
    record.writeUInt32LE(12345, 4)
    bad.copy(record, 8)
    await appendFile(log, record)
    store = await openDocStore(dir, { compactEvery: 0 })
    sameState((await store.load('torn'))!, doc)
    assert.equal((await stat(log)).size, last.validBytes)
    await store.close()
  })

  it('compaction bounds the size on disk', async () => {
    const dir = await dirs.make('doc-store-')
    const store = await openDocStore(dir, { compactEvery: 10 })
    const doc = new Y.Doc()
    const updates: Uint8Array[] = []
    doc.on('update', (u: Uint8Array) => updates.push(u))
    let written = 0
    for (let i = 0; i < 100; i++) {
      doc.getMap('m').set('big', randomBytes(2000).toString('hex'))
      const u = updates.shift()!
      written += u.length
      await store.append('big', u)
    }
    const [entry] = await store.list()
    // Every 10 to 15 records (the count has jitter): at least 6 times in 100.
    assert.ok(store.stats.compactions >= 6, `compacted ${store.stats.compactions} times`)
    assert.ok(entry.bytes < written / 5, `${entry.bytes} bytes on disk for ${written} bytes of updates`)
    await store.compact('big', doc)
    await store.close()
    const loaded = (await (await openDocStore(dir)).load('big'))!
    assert.equal(loaded.getMap('m').get('big'), doc.getMap('m').get('big'))
    assert.deepEqual(Y.encodeStateVector(loaded), Y.encodeStateVector(doc))
  })

  it('compacts a large document only once its log holds half as many bytes as its snapshot', async () => {
    const dir = await dirs.make('doc-store-')
    const store = await openDocStore(dir, { compactEvery: 10 })
    const doc = new Y.Doc()
    const updates: Uint8Array[] = []
    doc.on('update', (u: Uint8Array) => updates.push(u))
    doc.getText('t').insert(0, randomBytes(20_000).toString('hex'))
    await store.compact('big', doc)
    updates.length = 0
    const snapBytes = (await store.snapshot('big'))!.length
    let logged = 0
    // Tiny edits: 10 records of a few bytes each are far from half the 40 KB snapshot.
    while (logged < snapBytes / 2) {
      doc.getMap('m').set('n', logged)
      const u = updates.shift()!
      await store.append('big', u)
      // A compaction runs after the append resolves, on the document's queue: wait for it.
      await store.snapshot('big')
      logged += u.length + 8
      if (logged < snapBytes / 2) assert.equal(store.stats.compactions, 1, `compacted with ${logged} log bytes against a ${snapBytes}-byte snapshot`)
    }
    assert.equal(store.stats.compactions, 2, 'compacted once the log reached half the snapshot')
    await store.close()
    const loaded = (await (await openDocStore(dir)).load('big'))!
    assert.deepEqual(Y.encodeStateVector(loaded), Y.encodeStateVector(doc))
    assert.equal(loaded.getMap('m').get('n'), doc.getMap('m').get('n'))
  })

  it('compacts from the live document when its owner holds one', async () => {
    const dir = await dirs.make('doc-store-')
    const live = new Y.Doc()
    let store = await openDocStore(dir, { compactEvery: 10, liveDoc: (id) => id === 'live' ? live : undefined })
    await appendEdits(store, 'live', 30, live)
    // An edit the live document holds that was never appended (its append still on the way): only
    // a snapshot taken from the live document has it.
    live.getMap('m').set('in-flight', true)
    await appendEdits(store, 'live', 10, live)
    await store.snapshot('live')
    assert.ok(store.stats.compactions >= 1)
    const snap = new Y.Doc()
    Y.applyUpdate(snap, (await store.snapshot('live'))!)
    assert.equal(snap.getMap('m').get('in-flight'), true, 'the snapshot is the live document\'s state')
    await store.close()
    store = await openDocStore(dir)
    sameState((await store.load('live'))!, live)
    await store.close()
  })

  it('appends to more documents than it keeps logs open for, and to a removed one afresh', async () => {
    const dir = await dirs.make('doc-store-')
    let store = await openDocStore(dir)
    const docs = new Map<string, Y.Doc>()
    // Two rounds over 80 documents: the second reopens the logs the first had to close.
    for (let round = 0; round < 2; round++) {
      await Promise.all(Array.from({ length: 80 }, async (_, i) => {
        const id = `d${i}`
        const doc = docs.get(id) ?? new Y.Doc()
        docs.set(id, doc)
        await appendEdits(store, id, 2, doc)
      }))
    }
    await store.remove('d0')
    const fresh = await appendEdits(store, 'd0', 1)
    await store.close()
    store = await openDocStore(dir)
    for (const [id, doc] of docs) {
      if (id !== 'd0') sameState((await store.load(id))!, doc)
    }
    sameState((await store.load('d0'))!, fresh)
    await store.close()
  })

  it('refuses document IDs that are not one plain file name', async () => {
    const dir = await dirs.make('doc-store-')
    const store = await openDocStore(dir)
    for (const id of ['', '../escape', 'a/b', '.hidden', 'UPPER', 'x'.repeat(129), 'a\0b', 'é']) {
      await assert.rejects(store.append(id, new Uint8Array([0, 0])), /invalid document ID/)
      await assert.rejects(store.load(id), /invalid document ID/)
    }
    await store.close()
  })

  it('every update acknowledged before a kill -9 is there after it', async () => {
    const dir = await dirs.make('doc-store-')
    const storeDir = join(dir, 'docs')
    const script = join(dir, 'child.mjs')
    const storeUrl = new URL('../../node/doc-store.ts', import.meta.url).href
    // Four writers share the document, so kills land in the middle of multi-record batches too.
    await writeFile(script, `
      import * as Y from ${JSON.stringify(import.meta.resolve('yjs'))}
      import { openDocStore } from ${JSON.stringify(storeUrl)}
      const store = await openDocStore(${JSON.stringify(storeDir)}, { compactEvery: 40 })
      const doc = new Y.Doc()
      let n = 0
      doc.on('update', (u) => {
        const i = n++
        store.append('crash', u).then(() => process.stdout.write('ack ' + i + '\\n'))
      })
      const pad = 'x'.repeat(20000)
      const loop = async () => { for (;;) { doc.getArray('a').push([{ i: n, pad }]); await new Promise(r => setImmediate(r)) } }
      for (let w = 0; w < 4; w++) loop()
    `)
    const child = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'] })
    let err = ''
    child.stderr.on('data', (d) => { err += String(d) })
    const exited = new Promise(resolve => child.on('exit', resolve))
    const acked = new Set<number>()
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`child made no progress: ${err}`)), 30_000)
      createInterface({ input: child.stdout }).on('line', (line) => {
        const m = /^ack (\d+)$/.exec(line)
        if (m != null) acked.add(Number(m[1]))
        if (acked.size === 150) {
          clearTimeout(timer)
          child.kill('SIGKILL')
          resolve()
        }
      })
      void exited.then(() => { clearTimeout(timer); resolve() })
    })
    await exited
    assert.equal(child.signalCode, 'SIGKILL', `the child was killed, not crashed: ${err}`)
    const store = await openDocStore(storeDir)
    const doc = (await store.load('crash'))!
    const items = doc.getArray<{ i: number }>('a').toArray()
    for (const i of acked) assert.equal(items[i]?.i, i, `acknowledged update ${i} survived (${items.length} items on disk)`)
    await store.close()
  })
})

// Integration: Wasm artifacts and functions across real `mesh start` processes, driven by the CLI.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { FsBlockstore } from 'blockstore-fs'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { buildWasmFixtures } from '../../scripts/build-wasm-fixtures.ts'
import { MESH_BIN, mesh, meshJson, startNode, stopNode, tempDirs, waitFor } from '../helpers/process.ts'
import type { NodeProcess } from '../helpers/process.ts'

function assertOneLineError (r: { code: number | null, stderr: string }, pattern: RegExp): void {
  assert.notEqual(r.code, 0, `expected failure, got exit ${r.code}`)
  const lines = r.stderr.split('\n').filter(l => l !== '' && !l.includes('ExperimentalWarning') && !l.startsWith('(node:') && !l.includes('--trace-warnings'))
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${r.stderr}`)
  assert.match(lines[0], pattern)
}

/** Like `mesh`, but keeps stdout as raw bytes: `mesh` decodes it as UTF-8, which mangles binary output. */
async function meshBytes (args: string[], timeoutMs = 60_000): Promise<{ code: number | null, stdout: Uint8Array, stderr: string }> {
  const env = { ...process.env }
  delete env.MESH_REPO
  delete env.NODE_TEST_CONTEXT
  return new Promise((resolve) => {
    execFile(process.execPath, [MESH_BIN, ...args], { timeout: timeoutMs, env, encoding: 'buffer', maxBuffer: 64 * 1024 * 1024 }, (err: any, stdout, stderr) => {
      resolve({ code: err == null ? 0 : (typeof err.code === 'number' ? err.code : null), stdout: new Uint8Array(stdout), stderr: stderr.toString() })
    })
  })
}

describe('artifacts and functions across nodes', () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  let fixtures: string
  let wasm: Record<string, Uint8Array>
  let a: NodeProcess
  let b: NodeProcess
  const nodes: NodeProcess[] = []
  let echo: { manifest: string, cid: string, name: string, version: string }

  before(async () => {
    dirs = await tempDirs()
    fixtures = await dirs.make('mesh-wasm-')
    wasm = await buildWasmFixtures(fixtures, ['echo', 'loop'])
    a = await startNode(join(await dirs.make(), 'a'), ['--region', 'eu-west'])
    nodes.push(a)
    b = await startNode(join(await dirs.make(), 'b'), ['--bootstrap', a.info.addresses[0], '--region', 'us-east'])
    nodes.push(b)
    await waitFor('B to see A', async () => (await meshJson(['peers', '--repo', b.repo])).some((p: any) => p.peerId === a.info.peerId))
  })

  after(async () => {
    await Promise.all(nodes.map(stopNode))
    await dirs.cleanup()
  })

  it('refuses to publish a file that is not a WASI module, in one line', async () => {
    const file = join(fixtures, 'not.wasm')
    await writeFile(file, 'this is not wasm')
    assertOneLineError(await mesh(['artifact', 'publish', file, '--repo', a.repo]), /not a runnable WASI module/)
  })

  it('publishes a module and prints the manifest and module CIDs', async () => {
    const r = await mesh(['artifact', 'publish', join(fixtures, 'echo.wasm'), '--name', 'echo', '--version', '1.0.0', '--repo', a.repo])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /^published echo@1\.0\.0/)
    echo = await meshJson(['artifact', 'publish', join(fixtures, 'echo.wasm'), '--name', 'echo', '--version', '1.0.0', '--repo', a.repo])
    assert.match(echo.manifest, /^bafyrei/, 'the manifest is a dag-cbor CIDv1')
    assert.match(echo.cid, /^bafk/, 'a one-block module is a raw-leaf CIDv1')
    assert.ok(r.stdout.includes(echo.manifest) && r.stdout.includes(echo.cid), 'publishing the same bytes again gives the same artifact')
    const ls = await meshJson(['artifact', 'ls', '--repo', a.repo])
    assert.deepEqual(ls.map((e: any) => [e.name, e.version, e.origin]), [['echo', '1.0.0', 'published']])
  })

  it('fetches on another node by manifest CID and by name@version: the exact bytes', async () => {
    const out = join(fixtures, 'by-cid.wasm')
    const r = await mesh(['artifact', 'fetch', echo.manifest, '-o', out, '--repo', b.repo])
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(new Uint8Array(await readFile(out)), wasm.echo)
    const ls = await meshJson(['artifact', 'ls', '--repo', b.repo])
    assert.deepEqual(ls.map((e: any) => [e.manifest, e.origin]), [[echo.manifest, 'fetched']])

    const removed = await meshJson(['artifact', 'rm', 'echo@1.0.0', '--repo', b.repo])
    assert.equal(removed.manifest, echo.manifest)
    assert.deepEqual(await meshJson(['artifact', 'ls', '--repo', b.repo]), [])

    const byName = join(fixtures, 'by-name.wasm')
    const again = await mesh(['artifact', 'fetch', 'echo@1.0.0', '-o', byName, '--repo', b.repo])
    assert.equal(again.code, 0, again.stderr)
    assert.deepEqual(new Uint8Array(await readFile(byName)), wasm.echo)
    // With no -o, the exact bytes go to stdout (and nothing else does).
    const bytesOut = await meshBytes(['artifact', 'fetch', 'echo@1.0.0', '--repo', b.repo])
    assert.equal(bytesOut.code, 0, bytesOut.stderr)
    assert.deepEqual(bytesOut.stdout, wasm.echo)
  })

  it('moves a module of several blocks (1 MiB chunks) to another node: the exact bytes', async () => {
    // echo.wasm with a custom section that pads it to 2.5 MiB: a UnixFS root over three leaves.
    const pad = new Uint8Array(2.5 * 1024 * 1024 - wasm.echo.length - 9)
    for (let i = 0; i < pad.length; i++) pad[i] = (i * 7) & 0xff
    const body = [3, ...new TextEncoder().encode('pad')]
    const leb = (n: number): number[] => { const o: number[] = []; do { let x = n & 0x7f; n >>>= 7; if (n !== 0) x |= 0x80; o.push(x) } while (n !== 0); return o }
    const big = new Uint8Array([...wasm.echo, 0, ...leb(body.length + pad.length), ...body, ...pad])
    const file = join(fixtures, 'big.wasm')
    await writeFile(file, big)
    const published = await meshJson(['artifact', 'publish', file, '--name', 'big', '--version', '1', '--repo', a.repo])
    assert.match(published.cid, /^bafybei/, 'a module over one chunk is a dag-pb root')
    const out = join(fixtures, 'big-fetched.wasm')
    const r = await mesh(['artifact', 'fetch', 'big@1', '-o', out, '--repo', b.repo])
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(new Uint8Array(await readFile(out)), big)
  })

  it('invokes on a remote node with args, env and stdin: exact stdout, stderr and exit code', async () => {
    const stdin = join(fixtures, 'stdin.txt')
    await writeFile(stdin, 'from a file')
    const r = await mesh(['fn', 'invoke', 'echo@1.0.0', '--node', a.info.did, '--stdin', stdin,
      '--env', 'GREETING=hi there', '--env', 'EXIT_CODE=3', '--repo', b.repo, '--', 'one', 'two words'])
    assert.equal(r.stdout, 'args:one,two words\nenv:EXIT_CODE=3\nenv:GREETING=hi there\nstdin:from a file\n')
    assert.equal(r.stderr, 'argc 3 on stderr\n')
    assert.equal(r.code, 3)
    const json = await meshJson(['fn', 'invoke', echo.manifest, '--node', a.info.peerId, '--repo', b.repo])
    assert.equal(json.node, a.info.peerId)
    assert.equal(json.outcome, 'ok')
    assert.equal(Buffer.from(json.stdout, 'base64').toString(), 'args:\nstdin:\n')
  })

  it('places an invocation by region through the registry, and says why when nothing matches', async () => {
    await waitFor('B to know A\'s descriptor', async () => (await meshJson(['nodes', '--region', 'eu-west', '--repo', b.repo])).length > 0)
    const r = await mesh(['fn', 'invoke', 'echo@1.0.0', '--region', 'eu-west', '--repo', b.repo, '--json', '--', 'placed'])
    assert.equal(r.code, 0, r.stderr)
    const placed = JSON.parse(r.stdout)
    assert.equal(placed.node, a.info.peerId, 'the only eu-west node ran it')
    assert.equal(Buffer.from(placed.stdout, 'base64').toString(), 'args:placed\nstdin:\n')
    assertOneLineError(await mesh(['fn', 'invoke', 'echo@1.0.0', '--region', 'mars', '--repo', b.repo]), /no node to run echo@1\.0\.0 on: region = mars/)
  })

  it('invokes locally, fetching the artifact first if needed', async () => {
    const r = await mesh(['fn', 'invoke', echo.manifest, '--repo', a.repo, '--', 'here'])
    assert.equal(r.code, 0, r.stderr)
    assert.equal(r.stdout, 'args:here\nstdin:\n')
    assert.equal(r.stderr, 'argc 2 on stderr\n')
  })

  it('stops a function that runs too long with outcome timeout, and keeps serving', async () => {
    const loop = await meshJson(['artifact', 'publish', join(fixtures, 'loop.wasm'), '--name', 'loop', '--version', '1', '--repo', a.repo])
    const r = await mesh(['fn', 'invoke', loop.manifest, '--node', a.info.peerId, '--time-limit', '1000', '--repo', b.repo])
    assert.equal(r.code, 124)
    assert.equal(r.stdout, 'looping\n')
    assert.match(r.stderr, /^mesh: function timeout/m)
    const json = await meshJson(['fn', 'invoke', 'loop@1', '--time-limit', '500', '--repo', a.repo])
    assert.equal(json.outcome, 'timeout')
    const after = await mesh(['fn', 'invoke', 'echo@1.0.0', '--node', a.info.peerId, '--repo', b.repo, '--', 'still'])
    assert.equal(after.code, 0, after.stderr)
    assert.equal(after.stdout, 'args:still\nstdin:\n')
  })

  it('an unknown CID times out with one clear line, a bad reference errors at once', async () => {
    const unknown = CID.createV1(dagCbor.code, await sha256.digest(new TextEncoder().encode('no such manifest')))
    assertOneLineError(await mesh(['artifact', 'fetch', unknown.toString(), '--timeout', '3s', '--repo', b.repo]), /timed out after 3s waiting for artifact/)
    assertOneLineError(await mesh(['artifact', 'fetch', 'not-a-cid', '--repo', b.repo]), /not an artifact reference/)
    // B holds echo by now, module included: a module CID is still no manifest, wherever it is held.
    assertOneLineError(await mesh(['artifact', 'fetch', echo.cid, '--repo', b.repo]), /not an artifact manifest CID/)
    assertOneLineError(await mesh(['fn', 'invoke', echo.cid, '--node', a.info.peerId, '--repo', b.repo]), /not an artifact manifest CID/)
    assertOneLineError(await mesh(['fn', 'invoke', 'nothing@9', '--timeout', '5s', '--repo', b.repo]), /no node in the mesh has nothing@9|timed out/)
  })

  it('refuses a manifest whose signature does not match its content', async () => {
    // A's published manifest, changed after signing (it now claims another version), stored in
    // A's blockstore under the changed block's own CID: the hash checks out, the signature cannot.
    const value = dagCbor.decode(await (await fetch(`${a.info.api}/v1/blocks/${echo.manifest}`)).arrayBuffer().then(b => new Uint8Array(b))) as any
    value.manifest.version = '6.6.6'
    const forged = dagCbor.encode(value)
    const cid = CID.createV1(dagCbor.code, await sha256.digest(forged))
    const store = new FsBlockstore(join(a.repo, 'blocks'))
    await store.open()
    await store.put(cid, forged)
    await store.close()
    assertOneLineError(await mesh(['artifact', 'fetch', cid.toString(), '--timeout', '20s', '--repo', b.repo]), /not signed by its publisher/)
    assert.ok(!(await meshJson(['artifact', 'ls', '--repo', b.repo])).some((e: any) => e.manifest === cid.toString()), 'nothing was kept')
  })
})

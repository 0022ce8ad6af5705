import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import * as dagCbor from '@ipld/dag-cbor'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { didKeyFromEd25519 } from '../../identity/did-key.ts'
import {
  ArtifactError, MAX_ARTIFACT_BYTES, MAX_MANIFEST_BYTES, checkContent, decodeManifest, manifestCid, nameKey, parseArtifactRef,
  signManifest, validateManifest
} from '../../registry/artifact.ts'

const bytes = new TextEncoder().encode('\0asm pretend module bytes')
const contentCid = CID.createV1(raw.code, await sha256.digest(bytes))

async function signed (overrides: Partial<Parameters<typeof signManifest>[1]> = {}) {
  const key = await generateKeyPair('Ed25519')
  const out = await signManifest(key, { name: 'echo', version: '1.0.0', cid: contentCid, bytes, wasi: ['fd_write', 'args_get'], limits: { timeoutMs: 5000 }, ...overrides })
  return { key, ...out }
}

async function rejects (block: Uint8Array, reason: string, pattern?: RegExp): Promise<void> {
  await assert.rejects(decodeManifest(block), (err: any) => {
    assert.ok(err instanceof ArtifactError, `ArtifactError, got ${err}`)
    assert.equal(err.reason, reason, err.message)
    if (pattern != null) assert.match(err.message, pattern)
    return true
  })
}

describe('artifact manifest', () => {
  it('signs and verifies: fields, publisher, link to the module, CID of the block', async () => {
    const { key, cid, block } = await signed()
    const { manifest } = await decodeManifest(block)
    assert.equal(manifest.name, 'echo')
    assert.equal(manifest.version, '1.0.0')
    assert.ok(manifest.cid.equals(contentCid), 'links the module')
    assert.equal(manifest.size, bytes.length)
    assert.equal(manifest.publisher, didKeyFromEd25519(key.publicKey.raw))
    assert.deepEqual(manifest.wasi, ['args_get', 'fd_write'])
    assert.deepEqual(manifest.limits, { timeoutMs: 5000 })
    assert.ok(cid.equals(await manifestCid(block)))
    assert.equal(cid.code, dagCbor.code)
    await checkContent(manifest, bytes)
  })

  it('refuses a manifest whose fields were changed after signing', async () => {
    const { block } = await signed()
    const value = dagCbor.decode(block) as any
    value.manifest.size = value.manifest.size + 1
    await rejects(dagCbor.encode(value), 'bad-signature', /not signed by its publisher/)
  })

  it('refuses a manifest re-signed by another key under the original publisher', async () => {
    const { block } = await signed()
    const other = await signed()
    const value = dagCbor.decode(block) as any
    value.signature = (dagCbor.decode(other.block) as any).signature
    await rejects(dagCbor.encode(value), 'bad-signature')
  })

  it('refuses oversized, non-cbor and ill-shaped blocks', async () => {
    await rejects(new Uint8Array(MAX_MANIFEST_BYTES + 1), 'too-large', /over the/)
    await rejects(new TextEncoder().encode('{"not":"cbor"}'), 'malformed')
    await rejects(dagCbor.encode({ manifest: {}, signature: new Uint8Array(64), extra: 1 }), 'malformed')
    await rejects(dagCbor.encode({ manifest: { type: 'MeshWasmArtifact' }, signature: new Uint8Array(64) }), 'schema')
    const { block } = await signed()
    const value = dagCbor.decode(block) as any
    value.manifest.evil = true
    await rejects(dagCbor.encode(value), 'schema', /unknown field evil/)
  })

  it('checks the module bytes against length and SHA-256', async () => {
    const { signed: { manifest } } = await signed()
    await assert.rejects(checkContent(manifest, bytes.subarray(1)), /bytes, the manifest says/)
    const flipped = new Uint8Array(bytes)
    flipped[3] ^= 1
    await assert.rejects(checkContent(manifest, flipped), /SHA-256/)
  })

  it('admits modules of 64 MB and up to MAX_ARTIFACT_BYTES, refuses larger ones', async () => {
    const { signed: { manifest } } = await signed()
    assert.ok(MAX_ARTIFACT_BYTES >= 64 * 1024 * 1024, 'a 64 MB module is within the limit')
    validateManifest({ ...manifest, size: 64 * 1024 * 1024 })
    validateManifest({ ...manifest, size: MAX_ARTIFACT_BYTES })
    assert.throws(() => validateManifest({ ...manifest, size: MAX_ARTIFACT_BYTES + 1 }), (err: any) => err instanceof ArtifactError && err.reason === 'schema' && /size must be/.test(err.message))
    // A signed manifest that claims more is refused when decoded, before anything is fetched.
    const { block } = await signed()
    const value = dagCbor.decode(block) as any
    value.manifest.size = MAX_ARTIFACT_BYTES + 1
    await rejects(dagCbor.encode(value), 'schema', /size must be/)
  })

  it('refuses bad names and versions when signing', async () => {
    await assert.rejects(signed({ name: 'has space' }), /invalid artifact name/)
    await assert.rejects(signed({ version: '' }), /invalid artifact version/)
  })

  it('parses references: name@version or a CID, and says what is wrong otherwise', async () => {
    assert.deepEqual(parseArtifactRef('echo@1.2.3'), { kind: 'name', name: 'echo', version: '1.2.3' })
    const { cid } = await signed()
    const r = parseArtifactRef(cid.toString())
    assert.equal(r.kind, 'cid')
    assert.throws(() => parseArtifactRef('not-a-cid'), /not an artifact reference/)
    assert.throws(() => parseArtifactRef('bad name@1'), /invalid artifact name/)
  })

  it('derives distinct name keys per network and name@version', async () => {
    const a = await nameKey('n1', 'echo', '1.0.0')
    assert.ok(a.equals(await nameKey('n1', 'echo', '1.0.0')))
    assert.ok(!a.equals(await nameKey('n2', 'echo', '1.0.0')))
    assert.ok(!a.equals(await nameKey('n1', 'echo', '1.0.1')))
  })
})

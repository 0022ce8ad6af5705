import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { once } from 'node:events'
import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { base64url } from 'multiformats/bases/base64'
import { didKeyDocument } from '../../identity/did-key.ts'
import { DidResolutionError, didResolver, didWebUrl } from '../../identity/resolver.ts'

const KEY_DID = 'did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH'

// A loopback did:web host; each route is a handler so each test can shape the answer it needs.
let server: Server
let host: string
const routes = new Map<string, (req: IncomingMessage, res: ServerResponse) => void>()
const hanging = new Set<ServerResponse>()

before(async () => {
  server = createServer((req, res) => {
    const route = routes.get(req.url ?? '')
    if (route == null) {
      res.writeHead(404).end()
      return
    }
    route(req, res)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  host = `127.0.0.1%3A${(server.address() as AddressInfo).port}`
  const did = `did:web:${host}`
  routes.set('/.well-known/did.json', (_req, res) => json(res, { id: did, verificationMethod: [] }))
  routes.set('/users/alice/did.json', (_req, res) => json(res, { id: `${did}:users:alice` }))
  routes.set('/wrong/did.json', (_req, res) => json(res, { id: 'did:web:evil.example' }))
  routes.set('/huge/did.json', (_req, res) => json(res, { id: `${did}:huge`, pad: 'x'.repeat(100_000) }))
  routes.set('/notjson/did.json', (_req, res) => { res.writeHead(200).end('<html>') })
  routes.set('/hang/did.json', (_req, res) => { hanging.add(res) })
  routes.set('/hop/did.json', (_req, res) => { res.writeHead(302, { location: '/moved/did.json' }).end() })
  routes.set('/moved/did.json', (_req, res) => json(res, { id: `${did}:hop` }))
  routes.set('/downgrade/did.json', (_req, res) => { res.writeHead(302, { location: 'http://example.com/did.json' }).end() })
})

after(async () => {
  for (const res of hanging) res.destroy()
  server.closeAllConnections()
  server.close()
  await once(server, 'close')
})

function json (res: ServerResponse, body: unknown): void {
  res.writeHead(200, { 'content-type': 'application/did+json' }).end(JSON.stringify(body))
}

async function rejects (promise: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof DidResolutionError, `expected DidResolutionError, got ${String(err)}`)
    assert.equal(err.code, code, err.message)
    if (message != null) assert.match(err.message, message)
    assert.doesNotMatch(err.message, /\n/)
    return true
  })
}

test('did:key resolves offline to the spec document', async () => {
  const resolver = didResolver({ web: false })
  assert.deepEqual(await resolver.resolveDid(KEY_DID), didKeyDocument(KEY_DID))
  // other curves are left to key-did-resolver
  const secp = await resolver.resolveDid('did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme')
  assert.equal(secp.verificationMethod?.[0].type, 'Secp256k1VerificationKey2018')
})

test('did:jwk expands the spec way', async () => {
  const resolver = didResolver({ web: false })
  // the P-256 example of the did:jwk spec
  const did = 'did:jwk:eyJjcnYiOiJQLTI1NiIsImt0eSI6IkVDIiwieCI6ImFjYklRaXVNczNpOF91c3pFakoydHBUdFJNNEVVM3l6OTFQSDZDZEgyVjAiLCJ5IjoiX0tjeUxqOXZXTXB0bm1LdG00NkdxRHo4d2Y3NEk1TEtncmwyR3pIM25TRSJ9'
  const doc = await resolver.resolveDid(did)
  assert.deepEqual(doc, {
    '@context': ['https://www.w3.org/ns/did/v1', 'https://w3id.org/security/suites/jws-2020/v1'],
    id: did,
    verificationMethod: [{
      id: `${did}#0`,
      type: 'JsonWebKey2020',
      controller: did,
      publicKeyJwk: { crv: 'P-256', kty: 'EC', x: 'acbIQiuMs3i8_uszEjJ2tpTtRM4EU3yz91PH6CdH2V0', y: '_KcyLj9vWMptnmKtm46GqDz8wf74I5LKgrl2GzH3nSE' }
    }],
    assertionMethod: [`${did}#0`],
    authentication: [`${did}#0`],
    capabilityInvocation: [`${did}#0`],
    capabilityDelegation: [`${did}#0`],
    keyAgreement: [`${did}#0`]
  })
  // `use: enc` keys only agree keys, and never sign
  const enc = 'did:jwk:' + base64url.baseEncode(new TextEncoder().encode(JSON.stringify({ kty: 'OKP', crv: 'X25519', use: 'enc', x: '3p7bfXt9wbTTW2HC7OQ1Nz-DQ8hbeGdNrfx-FG-IK08' })))
  const encDoc = await resolver.resolveDid(enc)
  assert.deepEqual(encDoc.keyAgreement, [`${enc}#0`])
  assert.equal(encDoc.assertionMethod, undefined)
})

test('bad DIDs get a one-line DidResolutionError with a code', async () => {
  const resolver = didResolver({ web: false })
  await rejects(resolver.resolveDid('not-a-did'), 'invalid-did', /malformed DID/)
  await rejects(resolver.resolveDid(`did:key:z${'1'.repeat(5000)}`), 'invalid-did')
  await rejects(resolver.resolveDid('did:key:z0OIl'), 'invalid-did')
  await rejects(resolver.resolveDid('did:nope:abc'), 'unsupported-method', /unsupported DID method/)
  await rejects(resolver.resolveDid(`did:web:${'example.com'}`), 'unsupported-method') // web disabled
  await rejects(resolver.resolveDid('did:jwk:bm90IGpzb24'), 'invalid-did', /not base64url-encoded JSON/)
  await rejects(resolver.resolveDid('did:jwk:' + base64url.baseEncode(new TextEncoder().encode('[1]'))), 'invalid-did')
  const secret = base64url.baseEncode(new TextEncoder().encode(JSON.stringify({ kty: 'OKP', crv: 'Ed25519', x: 'AA', d: 'AA' })))
  await rejects(resolver.resolveDid(`did:jwk:${secret}`), 'invalid-did', /private key/)
  // the Resolvable face never throws
  const result = await resolver.resolve('did:nope:abc')
  assert.equal(result.didResolutionMetadata.error, 'unsupportedDidMethod')
})

test('did:web maps to the spec URLs, and to http only on loopback when allowed', () => {
  assert.equal(didWebUrl('did:web:example.com').href, 'https://example.com/.well-known/did.json')
  assert.equal(didWebUrl('did:web:example.com:user:alice', true).href, 'https://example.com/user/alice/did.json')
  assert.equal(didWebUrl('did:web:example.com%3A8443', true).href, 'https://example.com:8443/.well-known/did.json')
  assert.equal(didWebUrl('did:web:localhost%3A8080').protocol, 'https:')
  assert.equal(didWebUrl('did:web:localhost%3A8080', true).href, 'http://localhost:8080/.well-known/did.json')
  assert.equal(didWebUrl('did:web:%5B%3A%3A1%5D%3A8080', true).href, 'http://[::1]:8080/.well-known/did.json')
  assert.throws(() => didWebUrl('did:web:evil.com%2F..%2Fx'), DidResolutionError)
  assert.throws(() => didWebUrl('did:web:a:..:b'), DidResolutionError)
  assert.throws(() => didWebUrl('did:web:user%40evil.com'), DidResolutionError)
})

test('did:web resolves from a loopback server with allowInsecureLocalhost', async () => {
  const resolver = didResolver({ allowInsecureLocalhost: true })
  assert.deepEqual(await resolver.resolveDid(`did:web:${host}`), { id: `did:web:${host}`, verificationMethod: [] })
  assert.equal((await resolver.resolveDid(`did:web:${host}:users:alice`)).id, `did:web:${host}:users:alice`)
  // a same-origin redirect is followed
  assert.equal((await resolver.resolveDid(`did:web:${host}:hop`)).id, `did:web:${host}:hop`)
})

test('did:web failures: not found, wrong id, not JSON, too large, timeout', async () => {
  const resolver = didResolver({ allowInsecureLocalhost: true, maxDocumentBytes: 4096 })
  await rejects(resolver.resolveDid(`did:web:${host}:nobody`), 'not-found', /404/)
  await rejects(resolver.resolveDid(`did:web:${host}:wrong`), 'invalid-document', /not the document of/)
  await rejects(resolver.resolveDid(`did:web:${host}:notjson`), 'invalid-document', /not JSON/)
  await rejects(resolver.resolveDid(`did:web:${host}:huge`), 'too-large')
  const impatient = didResolver({ allowInsecureLocalhost: true, timeoutMs: 200 })
  await rejects(impatient.resolveDid(`did:web:${host}:hang`), 'timeout')
})

test('did:web refuses plain http off loopback, and without the option', async () => {
  const resolver = didResolver({ allowInsecureLocalhost: true })
  // a loopback host may not bounce the resolver to a non-loopback http URL
  await rejects(resolver.resolveDid(`did:web:${host}:downgrade`), 'insecure', /http:\/\/example\.com\/did\.json is not https/)
  // without the option the loopback host is fetched over https, which this http server cannot speak
  await rejects(didResolver({ timeoutMs: 5000 }).resolveDid(`did:web:${host}`), 'network')
})

test('network failure is a DidResolutionError', async () => {
  const probe = createServer()
  probe.listen(0, '127.0.0.1')
  await once(probe, 'listening')
  const port = (probe.address() as AddressInfo).port
  probe.close()
  await once(probe, 'close')
  await rejects(didResolver({ allowInsecureLocalhost: true }).resolveDid(`did:web:127.0.0.1%3A${port}`), 'network', /ECONNREFUSED/)
})

test('extra methods plug in, may override ours, and cannot crash or hang resolution', async () => {
  const memberDoc = { id: 'did:mesh:alice' }
  const resolver = didResolver({
    web: false,
    timeoutMs: 200,
    methods: {
      mesh: async (did) => did === 'did:mesh:alice'
        ? { didDocument: memberDoc, didDocumentMetadata: {}, didResolutionMetadata: {} }
        : { didDocument: null, didDocumentMetadata: {}, didResolutionMetadata: { error: 'notFound' } },
      broken: async () => { throw new Error('boom') },
      slow: async () => await new Promise(() => {})
    }
  })
  assert.deepEqual(await resolver.resolveDid('did:mesh:alice'), memberDoc)
  await rejects(resolver.resolveDid('did:mesh:bob'), 'not-found')
  await rejects(resolver.resolveDid('did:broken:x'), 'not-found', /boom/)
  await rejects(resolver.resolveDid('did:slow:x'), 'timeout')

  const overridden = didResolver({ methods: { key: async () => ({ didDocument: { id: 'override' }, didDocumentMetadata: {}, didResolutionMetadata: {} }) } })
  assert.equal((await overridden.resolveDid(KEY_DID)).id, 'override')
})

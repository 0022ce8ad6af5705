// The dashboard a node serves at / on its API address, in headless Chromium (playwright-core and
// Debian's chromium): it loads from a 2-node mesh, shows the peer live, and its screenshot is a
// picture, not a blank page.
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { inflateSync } from 'node:zlib'
import { after, before, describe, it } from 'node:test'
import { chromium } from 'playwright-core'
import { meshJson, startNode, stopNode, tempDirs, waitFor } from '../helpers/process.ts'
import type { NodeProcess } from '../helpers/process.ts'
import type { Browser } from 'playwright-core'

const CHROMIUM = '/usr/bin/chromium'

/** Distinct colours in an 8-bit RGB(A) non-interlaced PNG (what Chromium's screenshots are). */
function pngColours (png: Buffer): number {
  assert.equal(png.subarray(1, 4).toString('latin1'), 'PNG')
  let offset = 8
  let width = 0; let height = 0; let colourType = 0
  const idat: Buffer[] = []
  while (offset < png.length) {
    const length = png.readUInt32BE(offset)
    const type = png.subarray(offset + 4, offset + 8).toString('latin1')
    const data = png.subarray(offset + 8, offset + 8 + length)
    if (type === 'IHDR') { width = data.readUInt32BE(0); height = data.readUInt32BE(4); colourType = data[9]; assert.equal(data[8], 8, '8-bit PNG') }
    if (type === 'IDAT') idat.push(data)
    offset += 12 + length
  }
  const bpp = colourType === 6 ? 4 : 3
  const raw = inflateSync(Buffer.concat(idat))
  const stride = width * bpp
  const prev = Buffer.alloc(stride); const cur = Buffer.alloc(stride)
  const colours = new Set<number>()
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1))
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? cur[x - bpp] : 0; const b = prev[x]; const c = x >= bpp ? prev[x - bpp] : 0
      let v = line[x]
      if (filter === 1) v += a
      else if (filter === 2) v += b
      else if (filter === 3) v += (a + b) >> 1
      else if (filter === 4) { const p = a + b - c; const pa = Math.abs(p - a); const pb = Math.abs(p - b); const pc = Math.abs(p - c); v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c }
      cur[x] = v & 0xff
    }
    for (let x = 0; x < stride; x += bpp) colours.add((cur[x] << 16) | (cur[x + 1] << 8) | cur[x + 2])
    cur.copy(prev)
  }
  return colours.size
}

describe('dashboard', { timeout: 180_000, skip: existsSync(CHROMIUM) ? false : `no ${CHROMIUM}` }, () => {
  let dirs: Awaited<ReturnType<typeof tempDirs>>
  let a: NodeProcess
  let b: NodeProcess
  let browser: Browser | undefined

  before(async () => {
    dirs = await tempDirs()
    a = await startNode(join(await dirs.make(), 'a'), ['--region', 'eu-west'])
    b = await startNode(join(await dirs.make(), 'b'), ['--bootstrap', a.info.addresses[0], '--region', 'us-east'])
    await waitFor('A to see B', async () => (await meshJson(['peers', '--repo', a.repo])).some((p: any) => p.peerId === b.info.peerId), 30_000)
    await meshJson(['doc', 'set', 'board', 'hello', '"world"', '--repo', a.repo])
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
    })
  })

  after(async () => {
    await browser?.close()
    await Promise.all([a, b].filter(n => n != null).map(stopNode))
    await dirs.cleanup()
  })

  it('draws the mesh live: the peer, its trust, its region, the documents', async () => {
    const page = await browser!.newPage({ viewport: { width: 1280, height: 800 } })
    const errors: string[] = []
    page.on('pageerror', (err) => errors.push(err.message))
    const res = await page.goto(`${a.info.api}/`)
    assert.equal(res?.status(), 200)
    assert.equal(await page.title(), 'Mesh node')
    // Live: the page polls, and shows B once the node knows it (and B's region once its descriptor is in).
    await page.waitForFunction(() => document.body.dataset.peers === '1', undefined, { timeout: 60_000 })
    await page.waitForSelector(`#map g.node[data-did="${b.info.did}"]`, { timeout: 60_000 })
    await page.waitForFunction(() => document.querySelector('#map')!.textContent!.includes('us-east'), undefined, { timeout: 60_000 })
    const peers = await page.locator('#peers tbody').innerText()
    assert.ok(peers.includes(b.info.peerId.slice(0, 8)), peers)
    assert.match(peers, /unauthenticated/, 'an open network authenticates no one')
    assert.ok((await page.locator('#docs tbody').innerText()).includes('board'))
    assert.equal(await page.locator('#map g.node.self').count(), 1)
    assert.deepEqual(errors, [])

    const shot = await page.screenshot({ fullPage: true })
    await writeFile(join(await dirs.make('mesh-shot-'), 'dashboard.png'), shot)
    if (process.env.MESH_DASHBOARD_SHOT != null) await writeFile(process.env.MESH_DASHBOARD_SHOT, shot)
    const blank = await browser!.newPage({ viewport: { width: 1280, height: 800 } })
    await blank.setContent('<html><body style="background:#0f1419"></body></html>')
    const empty = await blank.screenshot({ fullPage: true })
    assert.ok(pngColours(empty) <= 2, 'a blank page has one colour')
    const colours = pngColours(shot)
    assert.ok(colours > 50, `the dashboard is a picture (${colours} colours)`)
    await blank.close()
    await page.close()
  })
})

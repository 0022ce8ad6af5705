// The dashboard a node serves at / on its API address, in headless Chromium (playwright-core and
// Debian's chromium): it loads from a 2-node mesh, shows the peer live, and its screenshot is a
// picture, not a blank page.
import assert from 'node:assert/strict'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { chromium } from 'playwright-core'
import { meshJson, startNode, stopNode, tempDirs, waitFor } from '../helpers/process.ts'
import type { NodeProcess } from '../helpers/process.ts'
import type { Browser } from 'playwright-core'

const CHROMIUM = '/usr/bin/chromium'

/** Distinct colours in a PNG, decoded by the browser itself (a canvas) rather than by hand. */
async function pngColours (browser: Browser, png: Buffer): Promise<number> {
  const page = await browser.newPage()
  try {
    return await page.evaluate(async (b64) => {
      const img = new Image()
      img.src = `data:image/png;base64,${b64}`
      await img.decode()
      const canvas = document.createElement('canvas')
      canvas.width = img.width; canvas.height = img.height
      const ctx = canvas.getContext('2d')!
      ctx.drawImage(img, 0, 0)
      const px = ctx.getImageData(0, 0, img.width, img.height).data
      const colours = new Set<number>()
      for (let i = 0; i < px.length; i += 4) colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2])
      return colours.size
    }, png.toString('base64'))
  } finally {
    await page.close()
  }
}

// `npm test`'s pretest step installs Chromium (or stops with how to): no silent skip here.
describe('dashboard', { timeout: 180_000 }, () => {
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
    assert.ok(await pngColours(browser!, empty) <= 2, 'a blank page has one colour')
    const colours = await pngColours(browser!, shot)
    assert.ok(colours > 50, `the dashboard is a picture (${colours} colours)`)
    await blank.close()
    await page.close()
  })
})

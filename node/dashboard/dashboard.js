// The node's dashboard: polls /v1/status and /v1/nodes and draws the mesh as this node sees it.
// Plain JS and SVG, no build step; served by the node at / on its API address.
const SVG = 'http://www.w3.org/2000/svg'
const POLL_MS = 2000
const $ = (sel) => document.querySelector(sel)
const short = (id) => id == null ? '' : id.length > 18 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id

function el (name, attrs = {}, text) {
  const e = document.createElementNS(SVG, name)
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v))
  if (text != null) e.textContent = text
  return e
}

function row (cells) {
  const tr = document.createElement('tr')
  for (const c of cells) {
    const td = document.createElement('td')
    if (c instanceof Node) td.append(c)
    else td.textContent = c
    tr.append(td)
  }
  return tr
}

function fill (table, rows, empty) {
  const body = $(`${table} tbody`)
  body.replaceChildren(...(rows.length > 0 ? rows : [row([empty])]))
}

async function getJson (path) {
  const res = await fetch(path, { cache: 'no-store' })
  if (!res.ok) throw new Error(`${path}: ${res.status}`)
  return res.json()
}

/** Every node to draw, keyed by DID: this node, connected peers, nodes known by descriptor. */
function meshNodes (status, nodes) {
  const all = new Map()
  const self = status.node
  all.set(self.did, { did: self.did, peerId: self.peerId, region: self.region ?? 'unknown', kind: 'self', latency: 0 })
  for (const n of nodes) {
    if (n.did === self.did) { all.get(self.did).region = n.region ?? all.get(self.did).region; continue }
    all.set(n.did, { did: n.did, region: n.region ?? 'unknown', kind: 'known', latency: n.latencyMs, trust: n.trust })
  }
  for (const p of status.peers.list) {
    const known = all.get(p.did) ?? { did: p.did, region: 'unknown', latency: undefined }
    all.set(p.did, { ...known, peerId: p.peerId, kind: p.authenticated ? 'auth' : 'open', rtt: p.rttMs, role: p.role, latency: known.latency ?? p.rttMs })
  }
  return [...all.values()]
}

function drawMap (list, status) {
  const svg = $('#map')
  const W = 720; const H = 520; const cx = W / 2; const cy = H / 2
  const regions = [...new Set(list.map(n => n.region))].sort()
  const selfRegion = list.find(n => n.kind === 'self').region
  // This node's region in the middle, the others on a ring around it.
  const others = regions.filter(r => r !== selfRegion)
  const centers = new Map([[selfRegion, { x: cx, y: cy }]])
  others.forEach((r, i) => {
    const a = (2 * Math.PI * i) / Math.max(others.length, 1) - Math.PI / 2
    centers.set(r, { x: cx + Math.cos(a) * 230, y: cy + Math.sin(a) * 170 })
  })
  const pos = new Map()
  const groups = []
  for (const r of regions) {
    const members = list.filter(n => n.region === r).sort((a, b) => (a.kind === 'self' ? -1 : b.kind === 'self' ? 1 : 0))
    const c = centers.get(r)
    const radius = members.length <= 1 ? 0 : Math.min(70, 18 + members.length * 9)
    members.forEach((n, i) => {
      const isSelfCenter = r === selfRegion && n.kind === 'self'
      const k = r === selfRegion ? i - 1 : i
      const count = r === selfRegion ? members.length - 1 : members.length
      const a = (2 * Math.PI * k) / Math.max(count, 1)
      const rr = r === selfRegion && count > 0 ? Math.max(radius, 60) : radius
      pos.set(n.did, isSelfCenter ? { x: c.x, y: c.y } : { x: c.x + Math.cos(a) * rr, y: c.y + Math.sin(a) * rr })
    })
    groups.push({ region: r, c, r: (r === selfRegion && members.length > 1 ? Math.max(radius, 60) : radius) + 28, n: members.length })
  }
  const parts = []
  for (const g of groups) {
    parts.push(el('circle', { cx: g.c.x, cy: g.c.y, r: g.r, fill: '#1b2430', stroke: '#2f3c4b', 'stroke-dasharray': '4 3' }))
    parts.push(el('text', { x: g.c.x, y: g.c.y - g.r - 6, 'text-anchor': 'middle', fill: '#7d8b99', 'font-size': 12 }, `${g.region} (${g.n})`))
  }
  const self = list.find(n => n.kind === 'self')
  const sp = pos.get(self.did)
  for (const n of list) {
    if (n.kind !== 'auth' && n.kind !== 'open') continue
    const p = pos.get(n.did)
    parts.push(el('line', { x1: sp.x, y1: sp.y, x2: p.x, y2: p.y, stroke: n.kind === 'auth' ? '#3ecf8e' : '#f5a524', 'stroke-width': 2, 'stroke-opacity': 0.7 }))
    const ms = n.rtt ?? n.latency
    if (ms != null) {
      parts.push(el('text', { x: sp.x + (p.x - sp.x) * 0.55 + 6, y: sp.y + (p.y - sp.y) * 0.55, 'text-anchor': 'start', fill: '#dce3ea', 'font-size': 11 }, `${Math.round(ms * 10) / 10} ms`))
    }
  }
  const colour = { self: '#4fa3ff', auth: '#3ecf8e', open: '#f5a524', known: '#6b7785' }
  for (const n of list) {
    const p = pos.get(n.did)
    const g = el('g', { class: `node ${n.kind}`, 'data-did': n.did })
    g.append(el('circle', { cx: p.x, cy: p.y, r: n.kind === 'self' ? 16 : 11, fill: colour[n.kind], stroke: '#0f1419', 'stroke-width': 2 }))
    g.append(el('text', { x: p.x, y: p.y + (n.kind === 'self' ? 30 : 24), 'text-anchor': 'middle', fill: '#dce3ea', 'font-size': 10, 'font-family': 'monospace' }, short(n.peerId ?? n.did.replace('did:key:', ''))))
    const title = el('title', {}, `${n.did}\n${n.kind}${n.role != null ? ` (${n.role})` : ''}${n.latency != null ? `\n${n.latency} ms` : ''}`)
    g.append(title)
    parts.push(g)
  }
  // Documents this node replicates, as small tiles along the bottom.
  const docs = status.documents.list.slice(0, 12)
  docs.forEach((d, i) => {
    const x = 20 + i * 58; const y = H - 36
    parts.push(el('rect', { x, y, width: 52, height: 26, rx: 4, fill: d.open ? '#24364a' : '#1b2430', stroke: '#4fa3ff', 'stroke-opacity': 0.6 }))
    parts.push(el('text', { x: x + 26, y: y + 11, 'text-anchor': 'middle', fill: '#dce3ea', 'font-size': 9 }, d.docId.slice(0, 9)))
    parts.push(el('text', { x: x + 26, y: y + 22, 'text-anchor': 'middle', fill: '#7d8b99', 'font-size': 9 }, `×${d.replicas.length + 1}`))
  })
  svg.replaceChildren(...parts)
}

function render (status, nodes) {
  const list = meshNodes(status, nodes)
  $('#self').textContent = `${short(status.node.peerId)}${status.node.region != null ? ` · ${status.node.region}` : ''}`
  $('#network').textContent = status.network.community ? `network ${status.network.name} (${status.network.role})` : `network ${status.network.name}`
  const ready = $('#ready')
  ready.textContent = status.ready.ready ? 'ready' : 'not ready'
  ready.className = `badge ${status.ready.ready ? 'ok' : 'no'}`
  ready.title = Object.values(status.ready.checks).map(c => c.detail).join('\n')
  $('#updated').textContent = `updated ${new Date().toLocaleTimeString()}`
  drawMap(list, status)

  const byDid = new Map(list.map(n => [n.did, n]))
  $('#peer-count').textContent = `${status.peers.connected} connected, ${status.peers.authenticated} authenticated`
  fill('#peers', status.peers.list.map(p => {
    const trust = document.createElement('span')
    trust.textContent = p.authenticated ? `authenticated ${p.role ?? ''}` : 'unauthenticated'
    trust.className = p.authenticated ? 'outcome-ok' : ''
    return row([short(p.peerId), trust, byDid.get(p.did)?.region ?? '?', p.rttMs != null ? `${p.rttMs} ms` : '-'])
  }), 'no peers')
  document.body.dataset.peers = String(status.peers.connected)

  $('#doc-count').textContent = `${status.documents.count}`
  fill('#docs', status.documents.list.map(d => row([d.docId, `${d.bytes} B`, d.open ? `${d.replicas.length} peer(s)${d.replicas.length > 0 ? ': ' + d.replicas.map(short).join(', ') : ''}` : 'closed'])), 'no documents')

  const recent = (status.functions?.recent ?? []).slice(-10).reverse()
  fill('#calls', recent.map(r => {
    const o = document.createElement('span')
    o.textContent = r.outcome
    o.className = r.outcome === 'ok' ? 'outcome-ok' : 'outcome-bad'
    return row([r.time.slice(11, 19), short(r.artifact), r.from === 'local' ? 'local' : short(r.from), o, r.ms.toFixed(1)])
  }), 'none yet')

  const errors = $('#errors')
  errors.replaceChildren(...(status.recentErrors.length === 0
    ? [Object.assign(document.createElement('li'), { textContent: 'none', className: 'muted' })]
    : status.recentErrors.slice(-8).reverse().map(e => Object.assign(document.createElement('li'), { textContent: `${e.time.slice(11, 19)} ${e.level}: ${e.msg}` }))))
}

async function poll () {
  try {
    const [status, nodes] = await Promise.all([getJson('/v1/status'), getJson('/v1/nodes').then(r => r.nodes, () => [])])
    render(status, nodes)
    document.body.dataset.state = 'live'
  } catch (err) {
    $('#updated').textContent = `node unreachable: ${err.message}`
    document.body.dataset.state = 'error'
  } finally {
    setTimeout(poll, POLL_MS)
  }
}

void poll()

// `mesh status`: one screen with the node's network, peers, documents, artifacts, functions and
// recent errors; `--json` prints the whole `/v1/status` object.
import { client, globals, print } from '../cli-kit.ts'
import type { CommandModule } from '../cli-kit.ts'

const short = (id: string): string => id.length > 20 ? `${id.slice(0, 12)}…${id.slice(-6)}` : id

function kib (n: number): string {
  return n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`
}

export function renderStatus (s: any): string {
  const lines: string[] = []
  const ready = s.ready?.ready === true
  lines.push(`node      ${s.node.peerId}${s.node.region != null ? `  (${s.node.region})` : ''}`)
  lines.push(`DID       ${s.node.did}`)
  lines.push(`network   ${s.network.community === true ? `${s.network.name} (${s.network.id}), ${s.network.role}` : s.network.name}`)
  lines.push(`ready     ${ready ? 'yes' : 'no'}${ready ? '' : ': ' + Object.entries(s.ready?.checks ?? {}).filter(([, c]: any) => !c.ok).map(([, c]: any) => c.detail).join('; ')}`)
  const rejected = Object.entries(s.peers.rejected ?? {}).map(([r, n]) => `${r} ${String(n)}`).join(', ')
  lines.push('', `peers     ${s.peers.connected} connected, ${s.peers.authenticated} authenticated${rejected !== '' ? `; rejected: ${rejected}` : ''}`)
  for (const p of s.peers.list.slice(0, 10)) {
    lines.push(`  ${short(p.peerId)}  ${p.authenticated === true ? `authenticated ${p.role ?? ''}`.trim() : 'unauthenticated'}  ${p.rttMs != null ? `${p.rttMs} ms` : '-'}  ${p.address}`)
  }
  if (s.peers.list.length > 10) lines.push(`  … and ${s.peers.list.length - 10} more`)
  lines.push('', `documents ${s.documents.count} (${s.documents.open} open), ${s.documents.updatesApplied} updates applied from peers`)
  for (const d of s.documents.list.slice(0, 10)) lines.push(`  ${d.docId}  ${kib(d.bytes)}  ${d.open === true ? `replicated with ${d.replicas.length} peer(s)` : 'closed'}`)
  lines.push('', `artifacts ${s.artifacts.count}`)
  for (const a of s.artifacts.list.slice(0, 10)) lines.push(`  ${a.name}@${a.version}  ${kib(a.size)}  ${a.origin}  ${a.manifest}`)
  if (s.functions != null) {
    const outcomes = Object.entries(s.functions.outcomes ?? {}).filter(([, n]) => Number(n) > 0).map(([o, n]) => `${o} ${String(n)}`).join(', ')
    lines.push('', `functions ${s.functions.invocations} run here${outcomes !== '' ? ` (${outcomes})` : ''}, ${s.functions.inFlight} in flight, ${s.functions.busy} refused busy`)
    for (const r of (s.functions.recent ?? []).slice(-5)) lines.push(`  ${r.time.slice(11, 19)}  ${short(r.artifact)}  from ${r.from === 'local' ? 'local' : short(r.from)}  ${r.outcome}  ${r.ms.toFixed(1)} ms`)
  }
  lines.push('', `errors    ${s.recentErrors.length === 0 ? 'none recently' : `${s.recentErrors.length} recent`}`)
  for (const e of s.recentErrors.slice(-5)) lines.push(`  ${e.time.slice(11, 19)}  ${e.level}  ${e.msg}`)
  return lines.join('\n')
}

export const statusCommands: CommandModule = (program) => {
  program.command('status')
    .description('one screen: network, peers, documents, artifacts, functions, recent errors')
    .action(async (_o, cmd) => {
      const s = await (await client(cmd)).get('/v1/status')
      print(globals(cmd), s, () => renderStatus(s))
    })
}

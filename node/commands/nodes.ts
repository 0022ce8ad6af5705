// `mesh nodes` (query the registry of Edge-Node Descriptors) and `mesh alloc` (choose nodes for a
// workload and reserve a slot on each). Both take the same constraint flags.
import { UserError } from '../errors.ts'
import { client, collect, globals, print } from '../cli-kit.ts'
import type { CommandModule } from '../cli-kit.ts'
import type { Command } from 'commander'

function withConstraintFlags (cmd: Command): Command {
  return cmd
    .option('--region <region>', 'only this region (repeatable: any of them)', collect)
    .option('--max-latency <ms>', 'at most this RTT from this node, in ms')
    .option('--min-cpus <n>', 'at least this many cores')
    .option('--min-memory <mb>', 'at least this much memory, in MB')
    .option('--accelerator <kind>', 'has this accelerator (gpu, tpu, npu, fpga)')
    .option('--trust <level>', 'at least this trust level (unverified, member, admin, root)')
    .option('--constraint <expr>', 'a constraint such as \'region in {eu-west, eu-central}\' (repeatable)', collect)
}

function numeric (value: unknown, flag: string): string | undefined {
  if (value === undefined) return undefined
  if (!/^\d+(\.\d+)?$/.test(String(value))) throw new UserError(`${flag} wants a non-negative number, got ${String(value)}`)
  return String(value)
}

function query (o: Record<string, any>): string {
  const q = new URLSearchParams()
  for (const r of o.region ?? []) q.append('region', r)
  const pairs: Array<[string, string | undefined]> = [
    ['maxLatency', numeric(o.maxLatency, '--max-latency')],
    ['minCpus', numeric(o.minCpus, '--min-cpus')],
    ['minMemory', numeric(o.minMemory, '--min-memory')],
    ['accelerator', o.accelerator],
    ['trust', o.trust]
  ]
  for (const [k, v] of pairs) if (v !== undefined) q.set(k, v)
  for (const c of o.constraint ?? []) q.append('constraint', c)
  return q.toString()
}

function latencyText (n: any): string {
  if (n.latencySource === 'self') return 'self'
  if (n.latencyMs == null) return '-'
  return `${Number(n.latencyMs).toFixed(1)} ms${n.latencySource === 'estimated' ? ' (est.)' : ''}`
}

function rowText (n: any): string {
  return `${n.region.padEnd(12)} ${latencyText(n).padEnd(16)} ${String(n.cpus).padStart(3)} cpu ${String(n.memoryMb).padStart(7)} MB  ${n.freeSlots}/${n.slots} free  ${n.trust.padEnd(10)} ${n.did}`
}

export const nodeCommands: CommandModule = (program) => {
  withConstraintFlags(program.command('nodes'))
    .description('nodes known from their signed descriptors, nearest first')
    .action(async (o, cmd) => {
      const qs = query(o)
      const { nodes } = await (await client(cmd)).get(`/v1/nodes${qs === '' ? '' : `?${qs}`}`)
      print(globals(cmd), nodes, () => nodes.length === 0 ? 'no nodes match' : nodes.map(rowText).join('\n'))
    })

  withConstraintFlags(program.command('alloc'))
    .description('choose node(s) for a workload and reserve a slot on each')
    .option('--count <n>', 'how many distinct nodes', '1')
    .option('--slots <n>', 'slots to reserve on each node', '1')
    .option('--ttl <ms>', 'how long the leases last, in ms', '60000')
    .action(async (o, cmd) => {
      const ints: Record<string, number> = {}
      for (const [flag, key] of [['--count', 'count'], ['--slots', 'slots'], ['--ttl', 'ttl']] as const) {
        const v = String(o[key])
        if (!/^[1-9]\d*$/.test(v)) throw new UserError(`${flag} wants a positive integer, got ${v}`)
        ints[key] = Number(v)
      }
      const constraints: string[] = [...(o.constraint ?? [])]
      const regions: string[] = o.region ?? []
      if (regions.length === 1) constraints.push(`region = ${regions[0]}`)
      if (regions.length > 1) constraints.push(`region in {${regions.join(', ')}}`)
      const num = (v: unknown, flag: string): number | undefined => { const s = numeric(v, flag); return s === undefined ? undefined : Number(s) }
      const maxLatency = num(o.maxLatency, '--max-latency')
      const minCpus = num(o.minCpus, '--min-cpus')
      const minMemory = num(o.minMemory, '--min-memory')
      if (maxLatency !== undefined) constraints.push(`latency <= ${maxLatency}`)
      if (minCpus !== undefined) constraints.push(`cpus >= ${minCpus}`)
      if (minMemory !== undefined) constraints.push(`memory >= ${minMemory}`)
      if (o.accelerator !== undefined) constraints.push(`accelerator = ${o.accelerator}`)
      if (o.trust !== undefined) constraints.push(`trust >= ${o.trust}`)
      const result = await (await client(cmd)).post('/v1/allocations', { constraints, count: ints.count, slots: ints.slots, ttlMs: ints.ttl })
      print(globals(cmd), result, () => result.chosen.map((n: any) => `${rowText(n)}\n  lease ${n.lease.id} until ${n.lease.expiresAt}`).join('\n'))
    })
}

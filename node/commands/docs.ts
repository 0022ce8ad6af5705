// `mesh doc …`: shared Yjs documents through the running node. Values are JSON; a document's
// content is its map `data`, and its policy (writers, zones) is set once with `mesh doc create`.
import { client, globals, print } from '../cli-kit.ts'
import { UserError } from '../errors.ts'
import { Repo } from '../repo.ts'
import type { CommandModule } from '../cli-kit.ts'

const list = (text: string): string[] => text.split(',').map(s => s.trim()).filter(s => s !== '')

export const docCommands: CommandModule = (program) => {
  const doc = program.command('doc').description('shared documents (Yjs CRDTs replicated across the mesh)')

  doc.command('ls')
    .description('documents this node holds or replicates')
    .action(async (_o, cmd) => {
      const { docs } = await (await client(cmd)).get('/v1/docs')
      print(globals(cmd), docs, () => docs.length === 0
        ? 'no documents'
        : docs.map((d: any) => `${d.docId}  ${d.bytes} bytes${d.open ? '' : '  (closed)'}${d.policy.writers != null ? `  writers ${d.policy.writers.length}` : ''}${d.policy.zones != null ? `  zones ${d.policy.zones.join(',')}` : ''}`).join('\n'))
    })

  doc.command('get')
    .description('print a document\'s data (or one key of it) as JSON')
    .argument('<docId>')
    .option('--key <key>', 'only this key')
    .action(async (docId, o, cmd) => {
      const c = await client(cmd)
      if (o.key != null) {
        const r = await c.get(`/v1/docs/${encodeURIComponent(docId)}?key=${encodeURIComponent(o.key)}`)
        print(globals(cmd), r, () => JSON.stringify(r.value, null, 2))
      } else {
        const r = await c.get(`/v1/docs/${encodeURIComponent(docId)}`)
        print(globals(cmd), r, () => JSON.stringify(r.data, null, 2))
      }
    })

  doc.command('set')
    .description('set a key of a document to a JSON value; returns once the write is on the node\'s disk')
    .argument('<docId>')
    .argument('<key>')
    .argument('<json>', 'the value, as JSON (a bare word is taken as a string)')
    .action(async (docId, key, text, _o, cmd) => {
      let value: unknown
      try {
        value = JSON.parse(text)
      } catch {
        // `mesh doc set notes title hello` means the string; anything JSON-looking must parse.
        if (/^[[{"]/.test(text.trim())) throw new UserError(`the value is not valid JSON: ${text.slice(0, 80)}`)
        value = text
      }
      const r = await (await client(cmd)).post(`/v1/docs/${encodeURIComponent(docId)}`, { key, value })
      print(globals(cmd), r, () => `${docId}.${key} = ${JSON.stringify(r.value)}`)
    })

  doc.command('create')
    .description('set a document\'s policy: who may write it, which zones it may live in')
    .argument('<docId>')
    .option('--writers <dids>', 'comma-separated DIDs allowed to write (default: every member)', list)
    .option('--zones <zones>', 'comma-separated regions the document may live in (default: anywhere)', list)
    .action(async (docId, o, cmd) => {
      const r = await (await client(cmd)).post(`/v1/docs/${encodeURIComponent(docId)}/policy`, { writers: o.writers, zones: o.zones })
      print(globals(cmd), r, () => `${docId}: writers ${r.policy.writers?.join(', ') ?? 'every member'}; zones ${r.policy.zones?.join(', ') ?? 'anywhere'}`)
    })

  doc.command('watch')
    .description('print changes to a document as they happen, until Ctrl-C (one JSON object a line with --json)')
    .argument('<docId>')
    .option('--presence', 'also print who is present (awareness)')
    .action(async (docId, o, cmd) => {
      const opts = globals(cmd)
      const repo = new Repo(opts.repo)
      const running = await repo.running()
      if (running == null || running.api === '') throw new UserError(`no node is running on ${repo.path} (start one with \`mesh start --repo ${repo.path}\`)`)
      const controller = new AbortController()
      process.once('SIGINT', () => { controller.abort() })
      process.once('SIGTERM', () => { controller.abort() })
      const url = `http://${running.api}/v1/docs/${encodeURIComponent(docId)}/events?timeout=${opts.timeout}${o.presence === true ? '&presence=1' : ''}`
      let res: Response
      try {
        res = await fetch(url, { signal: controller.signal })
      } catch (err: any) {
        if (controller.signal.aborted) return
        throw new UserError(`cannot reach the node at ${running.api}: ${err.cause?.code ?? err.message}`)
      }
      if (!res.ok || res.body == null) {
        let message = `${res.status} ${res.statusText}`
        try { message = (await res.json()).error ?? message } catch {}
        throw new UserError(message)
      }
      let buffered = ''
      try {
        for await (const chunk of res.body.pipeThrough(new TextDecoderStream())) {
          buffered += chunk
          let end: number
          while ((end = buffered.indexOf('\n\n')) >= 0) {
            const event = buffered.slice(0, end)
            buffered = buffered.slice(end + 2)
            const line = event.split('\n').find(l => l.startsWith('data: '))
            if (line == null) continue
            const e = JSON.parse(line.slice(6))
            process.stdout.write(opts.json === true ? JSON.stringify(e) + '\n' : human(e) + '\n')
          }
        }
      } catch (err: any) {
        if (!controller.signal.aborted) throw new UserError(`the node closed the stream: ${err.message}`)
        return
      }
      if (!controller.signal.aborted) throw new UserError('the node closed the stream (it stopped or restarted)')
    })
}

function human (e: any): string {
  if (e.type === 'snapshot') return JSON.stringify(e.data)
  if (e.type === 'set') return `${e.key} = ${JSON.stringify(e.value)}`
  if (e.type === 'delete') return `${e.key} deleted`
  if (e.type === 'presence') return `present: ${Object.values(e.states).map(s => JSON.stringify(s)).join(' ')}`
  return JSON.stringify(e)
}

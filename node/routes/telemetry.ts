// Observability over HTTP: GET /metrics (Prometheus text), GET /readyz (503 until ready, with the
// checks), GET /v1/status (what `mesh status` and the dashboard show), and the dashboard itself:
// GET / and its static files under /dashboard/ (node/dashboard/, plain JS, no build step).
import { readFile } from 'node:fs/promises'
import { HttpError } from '../http-kit.ts'
import { metricsText, readiness, status } from '../telemetry.ts'
import type { RouteModule } from './index.ts'

const DASHBOARD = new URL('../dashboard/', import.meta.url)
const STATIC: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'dashboard.js': 'text/javascript; charset=utf-8',
  'dashboard.css': 'text/css; charset=utf-8'
}

export const telemetryRoutes: RouteModule = (app, { current }) => {
  app.get('/metrics', async (_req, reply) => {
    const { contentType, text } = await metricsText(current())
    return reply.type(contentType).send(text)
  })

  app.get('/readyz', async (_req, reply) => {
    const r = readiness(current())
    return reply.code(r.ready ? 200 : 503).send(r)
  })

  app.get('/v1/status', async () => status(current()))

  const serve = async (file: string, reply: any): Promise<unknown> => {
    const type = STATIC[file]
    if (type == null) throw new HttpError(404, `no dashboard file ${file}`)
    return reply.type(type).header('cache-control', 'no-cache').send(await readFile(new URL(file, DASHBOARD)))
  }
  app.get('/', async (_req, reply) => serve('index.html', reply))
  app.get('/dashboard/:file', async (req, reply) => serve((req.params as { file: string }).file, reply))
}

// The CLI's side of the HTTP API: finds the node running on a repo and calls it.
import { UserError } from './errors.ts'
import type { Repo } from './repo.ts'

export interface ApiClient {
  get: <T = any>(path: string) => Promise<T>
  post: <T = any>(path: string, body?: unknown) => Promise<T>
  getBytes: (path: string) => Promise<Uint8Array>
  postBytes: <T = any>(path: string, body: Uint8Array) => Promise<T>
}

/**
 * A client of the node on `repo`. `timeoutMs` bounds every call: the node is told the same
 * timeout (`?timeout=`) so it gives up first and says what it was waiting for.
 */
export async function connectClient (repo: Repo, timeoutMs: number): Promise<ApiClient> {
  const running = await repo.running()
  if (running == null || running.api === '') {
    throw new UserError(`no node is running on ${repo.path} (start one with \`mesh start --repo ${repo.path}\`)`)
  }
  const base = `http://${running.api}`
  const token = await repo.readToken()

  async function call (method: string, path: string, body?: BodyInit, type?: string): Promise<Response> {
    const url = `${base}${path}${path.includes('?') ? '&' : '?'}timeout=${timeoutMs}`
    const headers: Record<string, string> = {}
    if (type != null) headers['content-type'] = type
    if (method !== 'GET' && token != null) headers.authorization = `Bearer ${token}`
    let res: Response
    try {
      res = await fetch(url, { method, body, headers, signal: AbortSignal.timeout(timeoutMs + 5_000) })
    } catch (err: any) {
      if (err.name === 'TimeoutError') throw new UserError(`the node at ${running!.api} did not answer within ${timeoutMs / 1000}s`)
      throw new UserError(`cannot reach the node on ${repo.path} at ${running!.api}: ${err.cause?.code ?? err.message}`)
    }
    if (!res.ok) {
      let message = `${res.status} ${res.statusText}`
      try { message = (await res.json()).error ?? message } catch {}
      throw new UserError(message)
    }
    return res
  }

  return {
    get: async (path) => (await call('GET', path)).json(),
    post: async (path, body) => (await call('POST', path, JSON.stringify(body ?? {}), 'application/json')).json(),
    getBytes: async (path) => new Uint8Array(await (await call('GET', path)).arrayBuffer()),
    postBytes: async (path, body) => (await call('POST', path, body as BodyInit, 'application/octet-stream')).json()
  }
}

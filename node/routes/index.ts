// Every route module of the HTTP API. A capability adds its routes in a module of its own and
// lists it here; a module gets the Fastify app and the daemon (whose node can change when the
// node joins a network, so take `current()` per request, never once).
import type { Daemon } from '../daemon.ts'
import type { MeshNode } from '../mesh-node.ts'
import type { FastifyInstance } from 'fastify'
import { artifactRoutes } from './artifacts.ts'
import { nodeRoutes } from './nodes.ts'
import { docRoutes } from './docs.ts'
import { telemetryRoutes } from './telemetry.ts'

export interface RouteContext {
  daemon: Daemon
  current: () => MeshNode
}

export type RouteModule = (app: FastifyInstance, ctx: RouteContext) => void

export const routeModules: RouteModule[] = [
  artifactRoutes,
  nodeRoutes,
  docRoutes,
  telemetryRoutes,
]

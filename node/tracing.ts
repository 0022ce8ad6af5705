// OpenTelemetry traces: API requests, allocations, artifact fetches and function invocations.
// Off unless OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set: then spans go out over
// OTLP/HTTP (JSON) in batches. Instrumented code calls the OTel API only (`trace.getTracer`), which
// costs next to nothing while no provider is registered.
//
// A remote invocation is one trace across both nodes: the caller puts a W3C `traceparent` in the
// invoke request (protocols/invoke.ts carries it as an opaque string) and the serving node starts
// its span as a child of it.
import { context, trace, SpanKind, SpanStatusCode, ROOT_CONTEXT, TraceFlags } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { BatchSpanProcessor, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace'
import { resourceFromAttributes } from '@opentelemetry/resources'
import type { Attributes, Context, Span } from '@opentelemetry/api'
import type { SpanExporter, SpanProcessor } from '@opentelemetry/sdk-trace'
import type { FastifyInstance } from 'fastify'

const TRACER = 'mesh'

export interface Tracing {
  /** Whether spans are recorded and exported. */
  readonly enabled: boolean
  /** Sets attributes every later span carries (the node's peer ID once it is known). */
  setNodeAttributes: (attrs: Attributes) => void
  /** Exports what is pending and stops. */
  shutdown: () => Promise<void>
}

export interface TracingInit {
  serviceName?: string
  /** Use this exporter (tests, benchmarks) instead of OTLP from the environment. */
  exporter?: SpanExporter
  /** Export each span at once (tests) instead of in batches. */
  simple?: boolean
  env?: NodeJS.ProcessEnv
}

let active: TracerProvider | undefined

/** Starts tracing for this process when the environment (or `init.exporter`) asks for it. */
export async function startTracing (init: TracingInit = {}): Promise<Tracing> {
  const env = init.env ?? process.env
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? env.OTEL_EXPORTER_OTLP_ENDPOINT
  const off = env.OTEL_SDK_DISABLED === 'true' || env.OTEL_TRACES_EXPORTER === 'none'
  if (init.exporter == null && (endpoint == null || endpoint === '' || off)) {
    return { enabled: false, setNodeAttributes: () => {}, shutdown: async () => {} }
  }
  let exporter = init.exporter
  if (exporter == null) {
    // Loaded only when wanted: the exporter pulls in a fair amount of code.
    const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http')
    exporter = new OTLPTraceExporter()
  }
  const nodeAttrs: Attributes = {}
  const tagger: SpanProcessor = {
    onStart: (span) => { (span as unknown as Span).setAttributes(nodeAttrs) },
    onEnd: () => {},
    forceFlush: async () => {},
    shutdown: async () => {}
  }
  const delay = Number(env.OTEL_BSP_SCHEDULE_DELAY)
  const provider = new TracerProvider({
    resource: resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME ?? init.serviceName ?? 'mesh' }),
    spanProcessors: [tagger, init.simple === true
      ? new SimpleSpanProcessor({ exporter })
      : new BatchSpanProcessor({ exporter, scheduledDelayMillis: Number.isFinite(delay) && delay > 0 ? delay : 1000 })]
  })
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())
  trace.setGlobalTracerProvider(provider)
  active = provider
  return {
    enabled: true,
    setNodeAttributes: (attrs) => { Object.assign(nodeAttrs, attrs) },
    shutdown: async () => {
      if (active === provider) {
        trace.disable()
        context.disable()
        active = undefined
      }
      await provider.forceFlush({ timeoutMillis: 3000 }).catch(() => {})
      await provider.shutdown().catch(() => {})
    }
  }
}

/** Runs `fn` in a span (a child of the active one); records a throw as the span's error. */
export async function inSpan<T> (name: string, attributes: Attributes, fn: (span: Span) => Promise<T>, options: { kind?: SpanKind, parent?: Context } = {}): Promise<T> {
  const tracer = trace.getTracer(TRACER)
  return tracer.startActiveSpan(name, { attributes, kind: options.kind }, options.parent ?? context.active(), async (span) => {
    try {
      return await fn(span)
    } catch (err: any) {
      span.recordException(err)
      span.setStatus({ code: SpanStatusCode.ERROR, message: err?.message })
      throw err
    } finally {
      span.end()
    }
  })
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/

/** The active span as a W3C traceparent, or undefined when nothing is being traced. */
export function currentTraceparent (): string | undefined {
  const sc = trace.getSpanContext(context.active())
  if (sc == null || !trace.isSpanContextValid(sc)) return undefined
  return `00-${sc.traceId}-${sc.spanId}-0${(sc.traceFlags & TraceFlags.SAMPLED).toString(16)}`
}

/** A context whose parent is the remote span a traceparent names (ROOT when it names none). */
export function contextFromTraceparent (traceparent: unknown): Context {
  if (typeof traceparent !== 'string') return ROOT_CONTEXT
  const m = TRACEPARENT.exec(traceparent)
  if (m == null || /^0+$/.test(m[1]) || /^0+$/.test(m[2])) return ROOT_CONTEXT
  return trace.setSpanContext(ROOT_CONTEXT, { traceId: m[1], spanId: m[2], traceFlags: parseInt(m[3], 16) & 1, isRemote: true })
}

/** Checks a traceparent's shape, for protocols that carry one from a peer. */
export function isTraceparent (value: unknown): value is string {
  return typeof value === 'string' && TRACEPARENT.test(value)
}

/**
 * One span per API request, active while its handler runs (so the node's own spans are its
 * children): `GET /v1/nodes`, `POST /v1/functions/:ref`. A `traceparent` header continues the
 * caller's trace. Must be called before any route is added.
 */
export function traceRequests (app: FastifyInstance): void {
  app.addHook('onRoute', (route) => {
    const handler = route.handler
    const url = route.url
    const name = `${Array.isArray(route.method) ? route.method.join(',') : route.method} ${url}`
    route.handler = function (this: unknown, req, reply) {
      if (active == null) return handler.call(this as any, req, reply)
      const header = req.headers.traceparent
      const parent = isTraceparent(header) ? contextFromTraceparent(header) : context.active()
      return inSpan(name, { 'http.request.method': req.method, 'http.route': url }, async (span) => {
        const result = await handler.call(this as any, req, reply)
        span.setAttribute('http.response.status_code', reply.statusCode)
        if (reply.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR })
        return result
      }, { kind: SpanKind.SERVER, parent })
    }
  })
}

export { SpanKind }

/** A call to a peer in a client span; `send` gets the request with the span's traceparent in it. */
export async function tracedCall<R extends { traceparent?: string }, T> (peer: string, request: R, send: (request: R) => Promise<T>): Promise<T> {
  if (active == null) return send(request)
  return inSpan('mesh.function.call', { 'mesh.peer': peer }, async (span) => {
    const traceparent = currentTraceparent()
    const result = await send(traceparent != null ? { ...request, traceparent } : request)
    const outcome = (result as { outcome?: unknown }).outcome
    if (typeof outcome === 'string') span.setAttribute('mesh.function.outcome', outcome)
    return result
  }, { kind: SpanKind.CLIENT })
}

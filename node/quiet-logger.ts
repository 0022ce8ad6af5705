// libp2p's and Helia's debug loggers, left out unless DEBUG asks for them.
//
// Every libp2p component, and every stream and connection, builds its loggers through
// @libp2p/logger, which makes two `debug` instances per scope and asks whether stderr is a TTY for
// each, even when nothing will ever be printed: 2.2% of the CPU of setting up a connection
// (profiled, 100 connections). With DEBUG unset those loggers print nothing anyway, so they are
// replaced by one silent logger; with DEBUG set (`DEBUG=libp2p:* mesh start`), libp2p's own are used
// as usual.
import type { ComponentLogger, Logger } from '@libp2p/interface'

const noop = (): void => {}
const silent: Logger = Object.assign(noop.bind(null), { error: noop, trace: noop, enabled: false, newScope: () => silent })

/** The logger to hand libp2p and Helia: undefined (their default) when DEBUG is set. */
export function componentLogger (): ComponentLogger | undefined {
  if (process.env.DEBUG != null && process.env.DEBUG !== '') return undefined
  return { forComponent: () => silent }
}

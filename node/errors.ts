// An error meant for the person at the terminal: its message is the one line the CLI prints.
export class UserError extends Error {
  name = 'UserError'
  readonly exitCode: number

  constructor (message: string, exitCode = 1) {
    super(message)
    this.exitCode = exitCode
  }
}

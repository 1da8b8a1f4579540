/**
 * Calling code that is not socksgate's own (a library user's collaborators
 * and event listeners) without letting its failures disturb the server.
 */

/**
 * Calls a collaborator that answers with a promise (an authenticator, a
 * dialer, a resolver: the library's user may supply each). A synchronous
 * throw becomes a rejection, as from an async function, so that the caller's
 * rejection handler deals with it instead of it escaping into whatever event
 * the caller was serving; a plain value is taken as a resolved promise.
 */
export function promiseFrom<T>(call: () => T | Promise<T>): Promise<T> {
  try {
    return Promise.resolve(call());
  } catch (error) {
    return Promise.reject(error);
  }
}

/**
 * Throws `error` again on the next tick, where it reaches 'uncaughtException'
 * as any uncaught error does: for an error caught so that the work in hand
 * (the server's bookkeeping, the rest of an addon's batch) could finish first.
 */
export function throwLater(error: unknown): void {
  process.nextTick(() => { throw error; });
}

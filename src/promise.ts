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

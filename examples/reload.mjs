// Reloading a running server's configuration, as SIGHUP does for the daemon.
// Run from the project root after `npm install`: node examples/reload.mjs
import { ConfigError, UsersFileError, createServer } from 'socksgate';

let settings = { listen: [{ address: '127.0.0.1', port: 0 }] };
const proxy = createServer(settings);
await proxy.listen();

/** Applies `change` to new sessions; a mistake leaves the running configuration as it was. */
function reload(change) {
  const next = { ...settings, ...change };
  try {
    const { changed, needsRestart } = proxy.reload(next);
    settings = next;
    console.log(`changed: ${changed.join(', ') || 'nothing'}; needs a restart: ${needsRestart.join(', ') || 'nothing'}`);
  } catch (err) {
    // Anything else (e.g. a reload during close()) is the caller's mistake.
    if (!(err instanceof ConfigError || err instanceof UsersFileError)) throw err;
    console.log(`refused: ${err instanceof ConfigError ? err.problems.join('; ') : err.message}`);
  }
}

reload({ rules: [{ name: 'no-smtp', deny: { to: { ports: [25] } } }, { name: 'rest', allow: {} }] });
reload({ rules: [{ name: 'bad', deny: { to: { ports: ['20-10'] } } }] });
reload({ auth: { methods: ['userpass'], usersFile: '/nonexistent/users' } });
reload({ listen: [{ address: '127.0.0.1', port: 1080 }] });
await proxy.close();

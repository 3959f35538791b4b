'use strict';
// Harness for the Node client suite: starts target/release/pushi on ephemeral
// loopback ports, builds pusher-js clients whose channel authorization and user
// authentication run in-process through the `pusher` server SDK, and gives
// bounded waits (every wait is capped at MAX_WAIT_MS) so a broken server fails
// the tests quickly instead of hanging them.
//
// PUSHI_BIN overrides the binary; PUSHI_TEST_DEBUG=1 echoes the server's log
// and pusher-js's log to stderr.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const PusherJS = require('pusher-js');
const PusherSDK = require('pusher');
const WebSocket = require('ws');

const ROOT = path.resolve(__dirname, '..', '..');
const BINARY = process.env.PUSHI_BIN || path.join(ROOT, 'target', 'release', 'pushi');
const DEBUG = Boolean(process.env.PUSHI_TEST_DEBUG);
const MAX_WAIT_MS = 5000;
const START_TIMEOUT_MS = 20000;
const SOCKET_ID = /^\d+\.\d+$/;

const APP = Object.freeze({ id: '4321', key: 'node-key', secret: 'node-secret' });

// pusher-js logs nothing unless Pusher.log is set; keep its last lines so a
// failing test can show them, and echo them when debugging.
const pusherJsLog = [];
PusherJS.log = (message) => {
  pusherJsLog.push(message);
  if (pusherJsLog.length > 200) pusherJsLog.shift();
  if (DEBUG) process.stderr.write(`[pusher-js] ${message}\n`);
};

// pusher-js's Node transport (faye-websocket, bundled) arms a 30 s close
// timer in close() even when the socket is already closed, which pusher-js
// does whenever the server closes with a 40xx code (4001, 4009): the stray
// timer then holds the test process open for 30 s. Unref it: it changes
// nothing while a test runs, it only stops delaying the exit.
const FayeClient = PusherJS.Runtime.getWebSocketAPI();
const fayeClose = FayeClient.prototype.close;
FayeClient.prototype.close = function close(...args) {
  const result = fayeClose.apply(this, args);
  if (this._closeTimer && typeof this._closeTimer.unref === 'function') this._closeTimer.unref();
  return result;
};

// Every child and data dir made here, so nothing outlives the test process.
const liveChildren = new Set();
const liveDataDirs = new Set();
function killChildren() {
  for (const child of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch (_) {
      // already gone
    }
  }
  for (const dir of liveDataDirs) fs.rmSync(dir, { recursive: true, force: true });
}
process.on('exit', killChildren);
// The test runner cancels a file by signalling it; take the servers along.
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.once(signal, () => {
    killChildren();
    process.exit(1);
  });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function capped(ms) {
  return Math.min(ms === undefined ? MAX_WAIT_MS : ms, MAX_WAIT_MS);
}

// "127.0.0.1:4567" or "[::1]:4567" -> { host, port }
function parseAddress(token) {
  const cut = token.lastIndexOf(':');
  const host = token.slice(0, cut).replace(/^\[|\]$/g, '');
  const port = Number(token.slice(cut + 1).replace(/[^0-9].*$/, ''));
  if (!host || !Number.isInteger(port) || port <= 0) {
    throw new Error(`cannot parse listener address ${JSON.stringify(token)}`);
  }
  return { host, port };
}

/**
 * Starts pushi with the app from PUSHI_APP_* and ephemeral ports; resolves
 * once both listeners are reported on stderr (at most 20 s).
 * `env` adds or overrides environment variables.
 */
let startTimedOut = null; // after one start timed out, later starts fail at once

async function startServer(env = {}) {
  if (startTimedOut) {
    throw new Error(`not started: an earlier start failed the same way (${startTimedOut})`);
  }
  if (!fs.existsSync(BINARY)) {
    throw new Error(`${BINARY} does not exist: run \`cargo build --release\` first`);
  }
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pushi-node-'));
  liveDataDirs.add(dataDir);
  const app = { ...APP };
  const child = spawn(BINARY, [], {
    cwd: dataDir,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: {
      PATH: process.env.PATH || '/usr/bin:/bin',
      SERVER_HOST: '127.0.0.1',
      SERVER_PORT: '0',
      APP_HOST: '127.0.0.1',
      APP_PORT: '0',
      PUSHI_DATA_DIR: dataDir,
      PUSHI_APP_ID: app.id,
      PUSHI_APP_KEY: app.key,
      PUSHI_APP_SECRET: app.secret,
      RUST_LOG: 'info',
      ...env,
    },
  });
  liveChildren.add(child);

  const server = new Server(child, app, dataDir);
  child.on('exit', (code, signal) => {
    server.exited = { code, signal };
    liveChildren.delete(child);
  });

  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        startTimedOut = `no listener lines within ${START_TIMEOUT_MS / 1000} s`;
        reject(new Error(`pushi did not report its listeners within ${START_TIMEOUT_MS / 1000} s:\n${server.logTail()}`));
      }, START_TIMEOUT_MS);
      const done = (err) => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      readline.createInterface({ input: child.stderr }).on('line', (line) => {
        server.log.push(line);
        if (server.log.length > 500) server.log.shift();
        if (DEBUG) process.stderr.write(`[pushi] ${line}\n`);
        const clean = line.replace(/\x1b\[[0-9;]*m/g, '');
        let m = /WebSocket listener on ws:\/\/(\S+)/.exec(clean);
        if (m && !server.ws) server.ws = parseAddress(m[1]);
        m = /REST listener on http:\/\/(\S+)/.exec(clean);
        if (m && !server.api) server.api = parseAddress(m[1]);
        if (server.ws && server.api) done();
      });
      child.on('error', (err) => done(new Error(`cannot start ${BINARY}: ${err.message}`)));
      child.on('exit', (code, signal) => {
        if (!(server.ws && server.api)) {
          done(new Error(`pushi exited before listening (code ${code}, signal ${signal}):\n${server.logTail()}`));
        }
      });
    });
  } catch (err) {
    await server.stop();
    throw err;
  }
  return server;
}

class Server {
  constructor(child, app, dataDir) {
    this.child = child;
    this.app = app;
    this.dataDir = dataDir;
    this.log = [];
    this.ws = null; // { host, port } of the WebSocket listener
    this.api = null; // { host, port } of the REST listener
    this.exited = null;
    this.clients = new Set(); // pusher-js clients and raw sockets to close
  }

  logTail(lines = 40) {
    return this.log.slice(-lines).join('\n');
  }

  /** The `pusher` server SDK pointed at the REST listener (or `port`). */
  sdk(options = {}) {
    return new PusherSDK({
      appId: this.app.id,
      key: this.app.key,
      secret: this.app.secret,
      host: this.api.host,
      port: this.api.port,
      useTLS: false,
      timeout: MAX_WAIT_MS,
      ...options,
    });
  }

  /** Disconnects every client made through the helpers for this server. */
  async disconnectClients() {
    for (const client of this.clients) {
      try {
        if (client instanceof RawClient) client.terminate();
        else client.disconnect();
      } catch (_) {
        // ignore: the point is that it is closed
      }
    }
    this.clients.clear();
  }

  /** Closes the clients, SIGKILLs the server, waits (≤ 5 s) and removes its data dir. */
  async stop() {
    await this.disconnectClients();
    if (!this.exited) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      try {
        this.child.kill('SIGKILL');
      } catch (_) {
        // already gone
      }
      let timer;
      await Promise.race([exited, new Promise((resolve) => (timer = setTimeout(resolve, MAX_WAIT_MS)))]);
      clearTimeout(timer);
    }
    liveChildren.delete(this.child);
    fs.rmSync(this.dataDir, { recursive: true, force: true });
    liveDataDirs.delete(this.dataDir);
  }
}

/**
 * A pusher-js client on the server's WebSocket listener (ws only, no TLS, no
 * stats). Authorization runs in-process:
 * - channels: `authorize(params)` if given, else
 *   `sdk.authorizeChannel(socketId, channelName, presence)` where `presence`
 *   (an object `{user_id, user_info}` or a function of the channel name) is
 *   only passed for presence- channels and may be null (signed-in presence);
 * - user sign-in: `sdk.authenticateUser(socketId, user)`.
 * `sdk` defaults to server.sdk() (the right secret).
 */
function createClient(server, options = {}) {
  const {
    key = server.app.key,
    sdk = server.sdk(),
    presence = null,
    user = null,
    authorize = null,
    pusherOptions = {},
  } = options;
  const client = new PusherJS(key, {
    cluster: 'mt1', // required by pusher-js 8; unused since wsHost is set
    wsHost: server.ws.host,
    wsPort: server.ws.port,
    wssPort: server.ws.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    enableStats: false,
    channelAuthorization: {
      customHandler: (params, callback) => {
        let auth;
        try {
          if (authorize) {
            auth = authorize(params);
          } else {
            const data = params.channelName.startsWith('presence-')
              ? typeof presence === 'function'
                ? presence(params.channelName)
                : presence
              : undefined;
            auth = sdk.authorizeChannel(params.socketId, params.channelName, data || undefined);
          }
        } catch (err) {
          callback(err, null);
          return;
        }
        callback(null, auth);
      },
    },
    userAuthentication: {
      customHandler: (params, callback) => {
        let auth;
        try {
          if (!user) throw new Error('this test client has no user to sign in');
          auth = sdk.authenticateUser(params.socketId, user);
        } catch (err) {
          callback(err, null);
          return;
        }
        callback(null, auth);
      },
    },
    ...pusherOptions,
  });
  server.clients.add(client);
  return client;
}

/** createClient, then wait until it is connected. */
async function connectClient(server, options = {}) {
  const client = createClient(server, options);
  await waitForState(client, 'connected');
  return client;
}

function bindOnce(emitter, event, handler) {
  if (typeof emitter.bind === 'function') {
    // pusher-js EventsDispatcher (connection manager, channel, user facade, client)
    emitter.bind(event, handler);
    return () => emitter.unbind(event, handler);
  }
  emitter.on(event, handler);
  return () => emitter.off(event, handler);
}

/**
 * Resolves with the arguments of the next `event` on `emitter` (a pusher-js
 * object or a Node EventEmitter) for which `filter(...args)` is true; rejects
 * after `timeout` ms (capped at 5 s).
 */
function waitForArgs(emitter, event, { timeout, filter, label } = {}) {
  const ms = capped(timeout);
  return new Promise((resolve, reject) => {
    let unbind = () => {};
    const timer = setTimeout(() => {
      unbind();
      reject(new Error(`timed out after ${ms} ms waiting for ${label || event}`));
    }, ms);
    unbind = bindOnce(emitter, event, (...args) => {
      if (filter && !filter(...args)) return;
      clearTimeout(timer);
      unbind();
      resolve(args);
    });
  });
}

/** Like waitForArgs, resolving with the first argument only. */
async function waitFor(emitter, event, options = {}) {
  const [first] = await waitForArgs(emitter, event, options);
  return first;
}

/** Resolves when `client.connection.state === state` (now or within the timeout). */
function waitForState(client, state, { timeout } = {}) {
  if (client.connection.state === state) return Promise.resolve();
  return waitFor(client.connection, 'state_change', {
    timeout,
    filter: (change) => change.current === state,
    label: `pusher-js state "${state}" (now "${client.connection.state}")`,
  });
}

/** Polls `predicate` every 20 ms until it returns a truthy value (≤ 5 s). */
async function waitUntil(predicate, { timeout, label = 'condition' } = {}) {
  const deadline = Date.now() + capped(timeout);
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() >= deadline) throw new Error(`timed out waiting for ${label}`);
    await sleep(20);
  }
}

/**
 * Subscribes and resolves with the subscription_succeeded payload (the
 * Members object on presence channels); rejects on pusher:subscription_error
 * (the error carries `.data`) or after the timeout.
 */
function subscribe(client, channelName, { timeout } = {}) {
  const channel = client.subscribe(channelName);
  return subscribed(channel, { timeout });
}

function subscribed(channel, { timeout } = {}) {
  if (channel.subscribed) return Promise.resolve(channel.name.startsWith('presence-') ? channel.members : {});
  const ms = capped(timeout);
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      clearTimeout(timer);
      channel.unbind('pusher:subscription_succeeded', ok);
      channel.unbind('pusher:subscription_error', failed);
    };
    const ok = (data) => {
      cleanup();
      resolve(data);
    };
    const failed = (data) => {
      cleanup();
      const err = new Error(`subscription to ${channel.name} failed: ${JSON.stringify(data)}`);
      err.data = data;
      reject(err);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out after ${ms} ms subscribing to ${channel.name}`));
    }, ms);
    channel.bind('pusher:subscription_succeeded', ok);
    channel.bind('pusher:subscription_error', failed);
  });
}

/** Records every `event` (or every event, with '*') emitted by a pusher-js object. */
function record(emitter, event = '*') {
  const events = [];
  let stop;
  if (event === '*') {
    const handler = (name, data) => events.push({ event: name, data });
    emitter.bind_global(handler);
    stop = () => emitter.unbind_global(handler);
  } else {
    const handler = (data, metadata) => events.push({ event, data, metadata });
    emitter.bind(event, handler);
    stop = () => emitter.unbind(event, handler);
  }
  // Not enumerable, so the array still deep-equals a plain list of events.
  Object.defineProperty(events, 'stop', { value: stop, enumerable: false });
  return events;
}

let barrierCount = 0;

/**
 * Ordering barrier: triggers a fresh event on `channelName` through the SDK
 * and waits until every given client has received it there. Whatever the
 * server sent a client before the barrier has been processed by then, so
 * "did not receive X" can be checked without sleeping.
 */
async function barrier(sdk, channelName, clients) {
  const name = `barrier-${++barrierCount}`;
  const arrivals = clients.map((client) => {
    const channel = client.channel(channelName);
    if (!channel) throw new Error(`barrier: client is not subscribed to ${channelName}`);
    return waitFor(channel, name, { label: `barrier event ${name} on ${channelName}` });
  });
  const res = await sdk.trigger(channelName, name, { barrier: barrierCount });
  if (res.status !== 200) throw new Error(`barrier trigger answered ${res.status}`);
  await Promise.all(arrivals);
}

/** Reads a node-fetch Response from the SDK: { status, body (parsed JSON), text }. */
async function readResponse(res) {
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch (_) {
    body = undefined;
  }
  return { status: res.status, body, text };
}

/**
 * A bare WebSocket client (the `ws` package) for wire-level checks that
 * pusher-js hides: exact frames, `data` encoding and close codes.
 */
class RawClient {
  constructor(socket) {
    this.socket = socket;
    this.queue = [];
    this.waiters = [];
    this.closeInfo = null;
    this.closeWaiters = [];
    socket.on('message', (data, isBinary) => {
      const text = data.toString('utf8');
      let message;
      try {
        message = JSON.parse(text);
      } catch (_) {
        message = { unparsable: text };
      }
      message = { ...message, raw: text, binary: isBinary };
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(message);
      else this.queue.push(message);
    });
    socket.on('close', (code, reason) => {
      this.closeInfo = { code, reason: reason.toString('utf8') };
      for (const w of this.closeWaiters.splice(0)) w(this.closeInfo);
      for (const w of this.waiters.splice(0)) w.reject(new Error(`socket closed (${code}) while waiting for a message`));
    });
    socket.on('error', () => {
      // surfaced through 'close' or the connect promise
    });
  }

  /** Opens `/app/<key>?<query>` on the WebSocket listener. */
  static connect(server, { key = server.app.key, query = 'protocol=7&client=node-raw&version=1.0.0&flash=false', timeout } = {}) {
    const url = `ws://${server.ws.host}:${server.ws.port}/app/${key}${query === null ? '' : `?${query}`}`;
    const ms = capped(timeout);
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url, { handshakeTimeout: ms });
      const client = new RawClient(socket);
      server.clients.add(client);
      const timer = setTimeout(() => {
        socket.terminate();
        reject(new Error(`timed out opening ${url}`));
      }, ms);
      socket.once('open', () => {
        clearTimeout(timer);
        resolve(client);
      });
      socket.once('unexpected-response', (_req, res) => {
        clearTimeout(timer);
        socket.terminate();
        reject(new Error(`WebSocket upgrade to ${url} answered HTTP ${res.statusCode}`));
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`WebSocket to ${url} failed: ${err.message}`));
      });
    });
  }

  /** Connects and reads pusher:connection_established; resolves with the client and its socket_id. */
  static async established(server, options) {
    const client = await RawClient.connect(server, options);
    const hello = await client.next();
    if (hello.event !== 'pusher:connection_established') {
      throw new Error(`expected pusher:connection_established, got ${hello.raw}`);
    }
    client.socketId = JSON.parse(hello.data).socket_id;
    return client;
  }

  send(message) {
    this.socket.send(typeof message === 'string' ? message : JSON.stringify(message));
  }

  /** The next message, parsed, with `raw` (the frame's text). */
  next({ timeout } = {}) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    if (this.closeInfo) return Promise.reject(new Error(`socket closed (${this.closeInfo.code}) before another message`));
    const ms = capped(timeout);
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        const at = this.waiters.indexOf(waiter);
        if (at !== -1) this.waiters.splice(at, 1);
        reject(new Error(`timed out after ${ms} ms waiting for a message`));
      }, ms);
      this.waiters.push(waiter);
    });
  }

  /** Resolves with { code, reason } when the server closes the socket (≤ 5 s). */
  closed({ timeout } = {}) {
    if (this.closeInfo) return Promise.resolve(this.closeInfo);
    const ms = capped(timeout);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms);
      this.closeWaiters.push((info) => {
        clearTimeout(timer);
        resolve(info);
      });
    });
  }

  /** Subscribes and returns the reply frame (whatever it is). */
  async subscribe(channel, extra = {}) {
    this.send({ event: 'pusher:subscribe', data: { auth: '', ...extra, channel } });
    return this.next();
  }

  terminate() {
    this.socket.terminate();
  }
}

module.exports = {
  APP,
  BINARY,
  MAX_WAIT_MS,
  SOCKET_ID,
  PusherJS,
  PusherSDK,
  RawClient,
  barrier,
  connectClient,
  createClient,
  pusherJsLog,
  readResponse,
  record,
  sleep,
  startServer,
  subscribe,
  subscribed,
  waitFor,
  waitForArgs,
  waitForState,
  waitUntil,
};

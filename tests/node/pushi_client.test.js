'use strict';
// Pushi's own browser client (pushi.js 0.6.10), unmodified, loaded from
// ../shared/clients/pushi.js beside the repository, in Node with the `ws`
// package as the global WebSocket and a small XMLHttpRequest over node:http
// (the client asks its auth endpoint with a GET). It connects on Pushi's URL
// `/<app_key>`, so the server speaks Pushi's dialect: member events as
// `pusher:member_added`/`removed` with a `member`, `{name, members, alias,
// events}` subscription answers, WebSocket pings (never `pusher:ping` JSON)
// and a `channel` on every message (pushi.js throws on a message without one,
// which fails the test as an uncaught exception).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const crypto = require('node:crypto');

const h = require('./helpers');

const PUSHI_JS = path.resolve(__dirname, '..', '..', '..', 'shared', 'clients', 'pushi.js');
const MISSING = fs.existsSync(PUSHI_JS) ? false : `${PUSHI_JS} is absent (Pushi's client is loaded from beside the repository, never copied into it)`;

const TEST = { timeout: 15000 };
const HOOK = { timeout: 25000 };

/**
 * The browser's XMLHttpRequest, as far as pushi.js uses it: open, send,
 * readyState 4, status, responseText, onreadystatechange.
 */
class NodeXMLHttpRequest {
  open(method, url) {
    this.method = method.toUpperCase();
    this.url = url;
    this.readyState = 1;
  }

  setRequestHeader() {}

  send(body) {
    const req = http.request(this.url, { method: this.method }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        this.status = res.statusCode;
        this.responseText = Buffer.concat(chunks).toString('utf8');
        this.readyState = 4;
        if (this.onreadystatechange) this.onreadystatechange();
      });
    });
    req.on('error', () => {
      this.status = 0;
      this.responseText = '';
      this.readyState = 4;
      if (this.onreadystatechange) this.onreadystatechange();
    });
    req.end(body);
  }
}

global.WebSocket = require('ws');
global.XMLHttpRequest = NodeXMLHttpRequest;

/**
 * A fresh copy of pushi.js (its connection cache is per module, and two
 * clients of one app key in one page would share a socket).
 */
function loadPushi() {
  // require caches by real path (shared/ may be a symlink).
  delete require.cache[fs.realpathSync(PUSHI_JS)];
  return require(PUSHI_JS).Pushi;
}

const sign = (secret, text) => crypto.createHmac('sha256', secret).update(text).digest('hex');

/**
 * The app's auth endpoint (what a site serving pushi.js runs): signs
 * `socket_id:channel` (Pushi's rule) or, with `signedData`, Pusher's
 * `socket_id:channel:channel_data`; `member(socketId)` gives presence channel_data.
 */
async function authEndpoint(app, { member = null, signedData = true } = {}) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const socketId = url.searchParams.get('socket_id');
    const channel = url.searchParams.get('channel');
    const body = {};
    let text = `${socketId}:${channel}`;
    if (channel.startsWith('presence-') && member) {
      body.channel_data = member(socketId);
      if (signedData) text += `:${JSON.stringify(body.channel_data)}`;
    }
    body.auth = `${app.key}:${sign(app.secret, text)}`;
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify(body));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}/auth`, close: () => server.close() };
}

const opened = new Set();

/** A connected pushi.js client; reconnection is switched off when the test closes it. */
async function connectPushi(server, options = {}) {
  const Pushi = loadPushi();
  const pushi = new Pushi(server.app.key, { baseUrl: `ws://${server.ws.host}:${server.ws.port}/`, ...options });
  opened.add(pushi);
  const disconnects = [];
  pushi.bind('disconnect', () => disconnects.push(Date.now()));
  pushi.disconnects = disconnects;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('pushi.js did not connect within 5 s')), 5000);
    pushi.bind('connect', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  return pushi;
}

function closePushi(pushi) {
  pushi.retry = () => {}; // no reconnect after the test
  if (pushi.state === 'connected') pushi.close();
  opened.delete(pushi);
}

/** Resolves with the arguments of the next `event` on a pushi.js object (≤ 5 s). */
function next(target, event, { filter = () => true, label = event } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      target.unbind(event, handler);
      reject(new Error(`timed out waiting for ${label}`));
    }, 5000);
    function handler(...args) {
      if (!filter(...args)) return;
      clearTimeout(timer);
      target.unbind(event, handler);
      resolve(args);
    }
    target.bind(event, handler);
  });
}

/** Subscribes and resolves with the channel and its subscription info. */
async function subscribe(pushi, name) {
  const subscribed = next(pushi, 'subscribe', { filter: (_e, channel) => channel === name, label: `subscribe ${name}` });
  const channel = pushi.subscribe(name);
  const [, , info] = await subscribed;
  return { channel, info };
}

/** Pushi's REST API with a session from /login. */
async function pushiApi(server) {
  const base = `http://${server.api.host}:${server.api.port}`;
  const app = server.app;
  const q = new URLSearchParams({ app_id: app.id, app_key: app.key, app_secret: app.secret });
  const login = await fetch(`${base}/login?${q}`);
  assert.equal(login.status, 200);
  const { token } = await login.json();
  return async (method, route, body) => {
    const res = await fetch(`${base}${route}${route.includes('?') ? '&' : '?'}sid=${token}`, {
      method,
      headers: { 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    assert.ok(res.status === 200, `${method} ${route}: ${res.status} ${text}`);
    return JSON.parse(text);
  };
}

describe('Pushi browser client (pushi.js)', { skip: MISSING }, () => {
  let server;
  let auth;
  before(async () => {
    server = await h.startServer();
    // Pushi-style publishing from sockets is an opt-in per app (off by default).
    const api = await pushiApi(server);
    await api('PUT', `/apps/${server.app.id}`, { client_publish: true });
    auth = await authEndpoint(server.app, { member: (socketId) => ({ user_id: Number(socketId.split('.')[0]) + 1000, user_info: { name: `u-${socketId}` } }) });
  }, HOOK);
  after(async () => {
    for (const p of [...opened]) closePushi(p);
    if (auth) auth.close();
    if (server) await server.stop();
  }, HOOK);

  it('connects on /<app_key> and receives public events with mid and timestamp', TEST, async () => {
    const pushi = await connectPushi(server);
    assert.match(pushi.socketId, /^\d+\.\d+$/);
    const { channel, info } = await subscribe(pushi, 'news');
    assert.deepEqual(info, { name: 'news', members: {}, alias: [], events: [] }, "Pushi's subscription answer");
    const got = next(channel, 'flash');
    const res = await server.sdk().trigger('news', 'flash', { n: 1 });
    assert.equal(res.status, 200);
    const [event, data] = await got;
    assert.equal(event, 'flash');
    assert.deepEqual(JSON.parse(data), { n: 1 });
    closePushi(pushi);
  });

  it('private channels through the auth endpoint; sockets publish Pushi-style to each other', TEST, async () => {
    const [a, b] = [await connectPushi(server, { authEndpoint: auth.url }), await connectPushi(server, { authEndpoint: auth.url })];
    const { channel: ca } = await subscribe(a, 'private-room');
    const { channel: cb } = await subscribe(b, 'private-room');
    const heard = next(cb, 'chat');
    ca.send('chat', 'hello from a', false, false);
    const [, data] = await heard;
    assert.equal(data, 'hello from a');
    closePushi(a);
    closePushi(b);
  });

  it('presence: member_added / member_removed with the member, numeric ids kept as numbers', TEST, async () => {
    const a = await connectPushi(server, { authEndpoint: auth.url });
    const { info: first } = await subscribe(a, 'presence-lobby');
    const idA = Number(a.socketId.split('.')[0]) + 1000;
    assert.deepEqual(Object.keys(first.members), [String(idA)]);
    assert.equal(first.members[idA].user_id, idA, 'members hold channel_data with the id as sent');

    const b = await connectPushi(server, { authEndpoint: auth.url });
    const idB = Number(b.socketId.split('.')[0]) + 1000;
    const added = next(a, 'member_added');
    const { info: second } = await subscribe(b, 'presence-lobby');
    assert.deepEqual(Object.keys(second.members).sort(), [String(idA), String(idB)].sort());
    const [, channel, member] = await added;
    assert.equal(channel, 'presence-lobby');
    assert.equal(member.user_id, idB, 'a number stays a number');
    assert.deepEqual(member.user_info, { name: `u-${b.socketId}` });

    const removed = next(a, 'member_removed');
    closePushi(b);
    const [, removedChannel, gone] = await removed;
    assert.equal(removedChannel, 'presence-lobby');
    assert.equal(gone.user_id, idB);
    closePushi(a);
  });

  it('personal channel: history in the subscription answer, then live events on its channels', TEST, async () => {
    const api = await pushiApi(server);
    await api('POST', '/subscriptions', { user_id: 'alice', event: 'alerts' });
    await api('POST', '/events', { channel: 'alerts', event: 'alert', data: 'first' });
    await api('POST', '/events', { channel: 'alerts', event: 'alert', data: 'second' });

    const pushi = await connectPushi(server, { authEndpoint: auth.url });
    const { info } = await subscribe(pushi, 'personal-alice');
    assert.deepEqual(info.alias, ['alerts']);
    assert.deepEqual(info.events.map((e) => e.data.data), ['second', 'first'], 'newest first');
    // pushi.js made a channel for the alias; live events arrive on it.
    const live = next(pushi, 'alert', { filter: (_e, data) => data === 'live' });
    await api('POST', '/events', { channel: 'alerts', event: 'alert', data: 'live' });
    const [, data, channel, mid] = await live;
    assert.equal(data, 'live');
    assert.equal(channel, 'alerts');
    assert.ok(mid, 'persisted events carry a mid');
    closePushi(pushi);
  });

  it('an error after an oversized publish carries the channel; the page keeps working', TEST, async () => {
    const pushi = await connectPushi(server);
    const { channel } = await subscribe(pushi, 'big');
    const error = next(channel, 'pusher:error');
    channel.send('huge', 'x'.repeat(11 * 1024), false, false);
    const [, data] = await error;
    assert.match(data.message, /larger than 10 KB/);
    const got = next(channel, 'after');
    await server.sdk().trigger('big', 'after', 'still here');
    await got;
    assert.deepEqual(pushi.disconnects, []);
    closePushi(pushi);
  });
});

describe('Pushi browser client across activity timeouts', { skip: MISSING }, () => {
  let server;
  before(async () => {
    // 1 s of silence before the server checks the connection, 1 s for the answer.
    server = await h.startServer({ PUSHI_ACTIVITY_TIMEOUT: '1', PUSHI_PONG_TIMEOUT: '1' });
  }, HOOK);
  after(async () => {
    for (const p of [...opened]) closePushi(p);
    if (server) await server.stop();
  }, HOOK);

  it('a receive-only page stays subscribed and gets every event over 3 timeouts', TEST, async () => {
    const pushi = await connectPushi(server);
    const { channel } = await subscribe(pushi, 'ticker');
    const got = [];
    channel.bind('tick', (_event, data) => got.push(JSON.parse(data).n));
    const sdk = server.sdk();
    const total = 9; // one every 400 ms: 3.6 s, over three 1 s activity timeouts (plus pong waits)
    for (let n = 1; n <= total; n++) {
      await h.sleep(400);
      const res = await sdk.trigger('ticker', 'tick', { n });
      assert.equal(res.status, 200);
    }
    await h.waitUntil(() => got.length === total, { label: `${total} ticks (got ${got.length})` });
    assert.deepEqual(got, Array.from({ length: total }, (_, i) => i + 1));
    assert.deepEqual(pushi.disconnects, [], 'never disconnected');
    assert.equal(pushi.state, 'connected');
    closePushi(pushi);
  });
});

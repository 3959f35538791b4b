'use strict';
// Three pushi nodes joined by a real redis-server (Debian's, started here on
// a free loopback port) and sharing one MongoDB store (nx-27017: the one
// tests/run.sh started, PUSHI_TEST_MONGO_URL, else one started here), with
// pusher-js clients and the `pusher` SDK spread over the nodes: REST and
// batch publishes with socket_id exclusion on another node, client events,
// sendToUser and terminateUserConnections across nodes, distinct socket ids,
// and Redis going away (each node keeps delivering locally, /health says
// degraded) and coming back (cross-node delivery resumes, presence is
// registered again). Presence is the cluster's: members listed from every
// node, one member_added per user however many nodes hold its connections,
// member_removed on its last connection anywhere, the HTTP API cluster-wide,
// and web hooks (counted at a receiver here) exactly once; `kill -9` of a
// node removes its users within 6 s and sends their hooks once within 9 s.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const crypto = require('node:crypto');

const http = require('node:http');

const WebSocket = require('ws');

const h = require('./helpers');

/** An app with a connection quota, on every node (beside h.APP). */
const QUOTA_APP = Object.freeze({ id: 'quota-app', key: 'quota-key', secret: 'quota-secret', max_connections: 10 });

/** An app whose subscribers are told the channel's subscription count. */
const COUNT_APP = Object.freeze({ id: 'count-app', key: 'count-key', secret: 'count-secret', subscription_count: true });

/** A raw WebSocket to `node` for app `key`: resolves with its first message (and the socket). */
function firstMessage(node, key) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${node.ws.host}:${node.ws.port}/app/${key}?protocol=7`);
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('no first message within 5 s')); }, 5000);
    ws.once('message', (data) => { clearTimeout(timer); resolve({ ws, message: JSON.parse(data.toString()) }); });
    ws.once('error', (err) => { clearTimeout(timer); reject(err); });
  });
}

const ROOT = path.resolve(__dirname, '..', '..');
const TEST = { timeout: 30000 };
const HOOK = { timeout: 60000 };

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function portAnswers(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/** A redis-server on 127.0.0.1:port (no persistence), stopped by its pid. */
async function startRedis(port) {
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  await h.waitUntil(() => portAnswers(port), { label: `redis-server on ${port}` });
  return child;
}

/** A nats-server on 127.0.0.1:port, stopped by its pid. */
async function startNats(port) {
  // Debian installs it in /usr/sbin, which a non-root PATH may lack.
  const bin = fs.existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : 'nats-server';
  const child = spawn(bin, ['-a', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
  await h.waitUntil(() => portAnswers(port), { label: `nats-server on ${port}` });
  return child;
}

/** The tests' MongoDB (PUSHI_TEST_MONGO_URL, else an nx-27017 started here) with a fresh database. */
function sharedStore(prefix) {
  let dir = null;
  let url = process.env.PUSHI_TEST_MONGO_URL;
  return {
    async start() {
      if (!url) {
        const port = await freePort();
        dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pushi-cluster-mongo-'));
        execFileSync('bash', [path.join(ROOT, 'tests', 'mongo.sh'), 'start', String(port), dir], { stdio: 'ignore' });
        url = `mongodb://127.0.0.1:${port}/pushi_test`;
      }
      const db = `${prefix}_${crypto.randomBytes(4).toString('hex')}`;
      return { db, url: url.replace(/\/[^/?]*(\?|$)/, `/${db}$1`) };
    },
    stop() {
      if (dir) execFileSync('bash', [path.join(ROOT, 'tests', 'mongo.sh'), 'stop', dir], { stdio: 'ignore' });
    },
  };
}

async function stopRedis(child) {
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

async function getJson(node, route) {
  const res = await fetch(`http://${node.api.host}:${node.api.port}${route}`);
  return { status: res.status, body: await res.json() };
}

/** An HTTP receiver of Pusher web hooks on 127.0.0.1: every event, in arrival order. */
async function hookReceiver() {
  const events = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      try {
        for (const e of JSON.parse(body).events || []) events.push(e);
      } catch (err) {
        events.push({ name: 'unparsable', body });
      }
      res.writeHead(200).end('{}');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { events, url: `http://127.0.0.1:${server.address().port}/hook`, close: () => server.close() };
}

/** Web hook events for one channel (and one name, and one user, when given). */
function hooksOf(receiver, channel, name, userId) {
  return receiver.events.filter((e) => e.channel === channel && (!name || e.name === name)
    && (userId === undefined || e.user_id === userId));
}

/** Waits for a condition up to `ms` (beyond the helpers' 5 s cap: the fault deadlines are 6 s and 9 s). */
async function within(ms, label, predicate) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() >= deadline) throw new Error(`not within ${ms} ms: ${label}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A pusher-js client on `node` subscribed to presence `channel` as `user`; the client, its channel, and its member events. */
async function member(node, channel, user) {
  const client = await h.connectClient(node, { presence: { user_id: user, user_info: { name: user } } });
  const members = await h.subscribe(client, channel);
  const ch = client.channel(channel);
  return { client, members, added: h.record(ch, 'pusher:member_added'), removed: h.record(ch, 'pusher:member_removed') };
}

function ids(list) {
  return list.map((e) => e.data.id).sort();
}

/** Waits until every node's /health says ok (connected to Redis and the bus). */
async function allHealthy(nodes, label) {
  await h.waitUntil(async () => {
    const states = await Promise.all(nodes.map((n) => getJson(n, '/health')));
    return states.every((st) => st.body.status === 'ok');
  }, { label });
}

async function assertEmptyOk(promise) {
  const res = await h.readResponse(await promise);
  assert.equal(res.status, 200, `status, body ${res.text}`);
  assert.deepEqual(res.body, {}, `body ${res.text}`);
}

async function signedIn(node, user) {
  const client = await h.connectClient(node, { user });
  const success = h.waitFor(client, 'pusher:signin_success');
  client.signin();
  await success;
  const channel = await h.waitUntil(() => client.user.serverToUserChannel, { label: '#server-to-user- channel' });
  await h.subscribed(channel);
  return client;
}

/** Resolves when every client has `channel` subscribed and an event sent now reaches all of them. */
async function crossNodeBarrier(sdk, channel, clients) {
  const name = `barrier-${crypto.randomUUID()}`;
  const seen = clients.map((c) => h.waitFor(c.channel(channel), name));
  await sdk.trigger(channel, name, {});
  await Promise.all(seen);
}

describe('cluster of three nodes over Redis', () => {
  let redis;
  let redisPort;
  let mongo = null;
  let nodes = [];
  let sdks = [];
  let hooks;
  let nodeEnv;

  before(async () => {
    hooks = await hookReceiver();
    redisPort = await freePort();
    redis = await startRedis(redisPort);
    let mongoUrl = process.env.PUSHI_TEST_MONGO_URL;
    if (!mongoUrl) {
      const port = await freePort();
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pushi-cluster-mongo-'));
      execFileSync('bash', [path.join(ROOT, 'tests', 'mongo.sh'), 'start', String(port), dir], { stdio: 'ignore' });
      mongo = dir;
      mongoUrl = `mongodb://127.0.0.1:${port}/pushi_test`;
    }
    // One database per run: the nodes share it, other tests do not.
    const db = `pushi_cluster_${crypto.randomBytes(4).toString('hex')}`;
    const shared = mongoUrl.replace(/\/[^/?]*(\?|$)/, `/${db}$1`);
    // The same app on every node, with web hooks to the receiver here.
    const appsFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pushi-cluster-apps-')), 'apps.json');
    fs.writeFileSync(appsFile, JSON.stringify([{ ...h.APP, webhooks: [hooks.url] }, QUOTA_APP, COUNT_APP]));
    nodeEnv = (name) => ({
      PUSHI_CLUSTER_URL: `redis://127.0.0.1:${redisPort}/0`,
      PUSHI_CLUSTER_PREFIX: `pushi-test-${db}`,
      PUSHI_NODE_ID: `node-${name}`,
      PUSHI_MONGO_URL: shared,
      PUSHI_APPS_FILE: appsFile,
      PUSHI_APP_ID: '',
      PUSHI_APP_KEY: '',
      PUSHI_APP_SECRET: '',
      PUSHI_OUTBOUND_ALLOW: '127.0.0.1/32',
    });
    for (const name of ['a', 'b', 'c']) {
      nodes.push(await h.startServer(nodeEnv(name)));
    }
    sdks = nodes.map((n) => n.sdk());
    // A node receives what others publish once it is healthy (subscribed to the bus).
    await allHealthy(nodes, 'every node connected');
  }, HOOK);

  after(async () => {
    for (const n of nodes) await n.stop();
    await stopRedis(redis);
    if (hooks) hooks.close();
    if (mongo) execFileSync('bash', [path.join(ROOT, 'tests', 'mongo.sh'), 'stop', mongo], { stdio: 'ignore' });
  }, HOOK);

  it('gives socket ids that differ across nodes and reports the cluster in /health', TEST, async () => {
    const ids = [];
    for (const node of nodes) {
      const client = await h.connectClient(node);
      assert.match(client.connection.socket_id, h.SOCKET_ID);
      ids.push(client.connection.socket_id.split('.')[1]);
      client.disconnect();
    }
    // The random half starts with the node's prefix (1-9999), then 9 random digits.
    const prefixes = new Set(ids.map((id) => id.slice(0, -9)));
    assert.equal(prefixes.size, 3, `prefixes ${[...prefixes]}`);
    for (const node of nodes) {
      const { body } = await getJson(node, '/health');
      assert.equal(body.status, 'ok');
      assert.deepEqual(body.cluster, { status: 'ok' });
    }
  });

  it('a REST publish on one node reaches clients on every node, except the socket_id given', TEST, async () => {
    const clients = [];
    for (const node of nodes) {
      const c = await h.connectClient(node);
      await h.subscribe(c, 'news');
      clients.push(c);
    }
    await crossNodeBarrier(sdks[0], 'news', clients);
    const got = clients.map((c) => h.record(c.channel('news'), 'headline'));
    // Published on node a, excluding the client on node b.
    await assertEmptyOk(sdks[0].trigger('news', 'headline', { n: 1 }, { socket_id: clients[1].connection.socket_id }));
    await assertEmptyOk(sdks[2].triggerBatch([{ channel: 'news', name: 'headline', data: { n: 2 } }]));
    await crossNodeBarrier(sdks[1], 'news', clients);
    // Two publishers on two nodes: each node delivers its own publish at once,
    // so the order of the two may differ per node (README: ordered per publisher).
    const data = (list) => list.map((r) => r.data).sort((x, y) => x.n - y.n);
    assert.deepEqual(data(got[0]), [{ n: 1 }, { n: 2 }]);
    assert.deepEqual(data(got[1]), [{ n: 2 }], 'the excluded socket on another node gets only the second');
    assert.deepEqual(data(got[2]), [{ n: 1 }, { n: 2 }]);

    const metric = async (node, name) => {
      const text = await (await fetch(`http://${node.api.host}:${node.api.port}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(`pushi_${name} `));
      return Number(line.split(' ')[1]);
    };
    assert.equal(await metric(nodes[0], 'cluster_connected'), 1);
    assert.ok((await metric(nodes[0], 'cluster_sent_total')) >= 1);
    assert.ok((await metric(nodes[1], 'cluster_received_total')) >= 2);
    assert.equal(await metric(nodes[1], 'cluster_dropped_total'), 0);
  });

  it('a cache- channel published on one node serves its last event to a new subscriber on another', TEST, async () => {
    await assertEmptyOk(sdks[0].trigger('cache-scores', 'score', { home: 1 }));
    // Wait until the event has crossed to node b (where the late subscriber goes): a subscriber there gets it live.
    const watcher = await h.connectClient(nodes[1]);
    await h.subscribe(watcher, 'cache-scores');
    const live = h.waitFor(watcher.channel('cache-scores'), 'score');
    await assertEmptyOk(sdks[0].trigger('cache-scores', 'score', { home: 2 }));
    assert.deepEqual(await live, { home: 2 });
    const late = await h.connectClient(nodes[1]);
    const channel = late.subscribe('cache-scores');
    const cached = h.waitFor(channel, 'score');
    await h.subscribed(channel);
    assert.deepEqual(await cached, { home: 2 }, 'the last event, published on node a, from node b');
  });

  it('client events cross nodes and do not come back to their sender', TEST, async () => {
    const a = await h.connectClient(nodes[0]);
    const c = await h.connectClient(nodes[2]);
    await h.subscribe(a, 'private-chat');
    await h.subscribe(c, 'private-chat');
    await crossNodeBarrier(sdks[1], 'private-chat', [a, c]);
    const echoed = h.record(a.channel('private-chat'), 'client-typing');
    const got = h.waitFor(c.channel('private-chat'), 'client-typing');
    assert.equal(a.channel('private-chat').trigger('client-typing', { who: 'a' }), true);
    assert.deepEqual(await got, { who: 'a' });
    await crossNodeBarrier(sdks[0], 'private-chat', [a, c]);
    assert.deepEqual(echoed, []);
  });

  it('sendToUser and terminateUserConnections reach the user on other nodes', TEST, async () => {
    const onB = await signedIn(nodes[1], { id: 'roamer' });
    const onC = await signedIn(nodes[2], { id: 'roamer' });
    const bystander = await signedIn(nodes[2], { id: 'bystander' });
    const gotB = h.waitFor(onB.user, 'notice');
    const gotC = h.waitFor(onC.user, 'notice');
    await assertEmptyOk(sdks[0].sendToUser('roamer', 'notice', { text: 'from a' }));
    assert.deepEqual(await gotB, { text: 'from a' });
    assert.deepEqual(await gotC, { text: 'from a' });

    const errors = [onB, onC].map((cl) =>
      h.waitFor(cl.connection, 'error', { filter: (e) => e && e.type === 'WebSocketError' }));
    await assertEmptyOk(sdks[0].terminateUserConnections('roamer'));
    for (const err of await Promise.all(errors)) assert.equal(err.error.data.code, 4009);
    assert.equal(bystander.connection.state, 'connected');
  });

  it("Pushi's REST subscriptions (personal- aliases) take effect on every node", TEST, async () => {
    // Pushi's API on node a, the user's personal socket on node b, the publish on node c.
    const base = `http://${nodes[0].api.host}:${nodes[0].api.port}`;
    const app = nodes[0].app;
    const q = new URLSearchParams({ app_id: app.id, app_key: app.key, app_secret: app.secret });
    const { token } = await (await fetch(`${base}/login?${q}`)).json();
    const api = async (method, route, body) => {
      const res = await fetch(`${base}${route}?sid=${token}`, {
        method, headers: { 'Content-Type': 'application/json' }, body: body && JSON.stringify(body),
      });
      assert.equal(res.status, 200, `${method} ${route}: ${await res.text()}`);
    };
    const alice = await h.RawClient.established(nodes[1]);
    const { auth } = sdks[1].authorizeChannel(alice.socketId, 'personal-alice');
    const ok = await alice.subscribe('personal-alice', { auth });
    assert.equal(ok.event, 'pusher_internal:subscription_succeeded', ok.raw);
    await alice.subscribe('barrier');

    await api('POST', '/subscriptions', { user_id: 'alice', event: 'deals' });
    const update = await alice.next();
    assert.equal(update.event, 'pusher_internal:subscription_succeeded', 'the new alias list, on node b');
    assert.equal(update.channel, 'personal-alice');
    await assertEmptyOk(sdks[2].trigger('deals', 'deal', { off: 10 }));
    const deal = await alice.next();
    assert.equal(deal.event, 'deal');
    assert.equal(deal.channel, 'deals');

    await api('DELETE', '/subscriptions/alice/deals');
    // Wait until node b has applied the removal: a publish on deals no longer
    // reaches alice, while one on barrier (sent after it) does.
    await h.sleep(200);
    await assertEmptyOk(sdks[2].trigger('deals', 'deal', { off: 20 }));
    await assertEmptyOk(sdks[2].trigger('barrier', 'done', {}));
    const next = await alice.next();
    assert.equal(next.event, 'done', `expected only the barrier, got ${next.raw}`);
  });

  it('lists presence members from every node, adds a user once and removes it with its last connection', TEST, async () => {
    const room = `presence-room-${crypto.randomUUID()}`;
    const alice = await member(nodes[0], room, 'alice');
    assert.deepEqual(Object.keys(alice.members.members), ['alice']);
    const bob1 = await member(nodes[1], room, 'bob');
    assert.deepEqual(Object.keys(bob1.members.members).sort(), ['alice', 'bob'], 'members of both nodes');
    assert.equal(bob1.members.count, 2);
    await within(5000, 'alice told of bob', () => alice.added.length === 1);
    assert.deepEqual(ids(alice.added), ['bob']);
    assert.deepEqual(alice.added[0].data.info, { name: 'bob' });

    // Bob's second connection, on a third node: no second member_added.
    const bob2 = await member(nodes[2], room, 'bob');
    assert.deepEqual(Object.keys(bob2.members.members).sort(), ['alice', 'bob']);
    const users = await sdks[2].get({ path: `/channels/${room}/users` });
    assert.deepEqual((await users.json()).users.map((u) => u.id).sort(), ['alice', 'bob'], 'users from any node');
    const info = await sdks[2].get({ path: `/channels/${room}`, params: { info: 'user_count,subscription_count' } });
    assert.deepEqual(await info.json(), { occupied: true, user_count: 2, subscription_count: 3 });
    const list = await sdks[1].get({ path: '/channels', params: { filter_by_prefix: room, info: 'user_count' } });
    assert.deepEqual((await list.json()).channels, { [room]: { user_count: 2 } });

    // Bob leaves one node: still connected on the other, nobody is told.
    bob1.client.disconnect();
    const probe = await member(nodes[0], room, 'probe');
    await within(5000, 'probe seen by bob2', () => bob2.added.some((e) => e.data.id === 'probe'));
    assert.deepEqual(ids(alice.removed), [], 'bob is still connected on node c');
    assert.deepEqual(Object.keys(probe.members.members).sort(), ['alice', 'bob', 'probe']);
    // His last connection leaves: removed everywhere, once.
    bob2.client.disconnect();
    await within(5000, 'alice told bob left', () => alice.removed.length === 1);
    await within(5000, 'probe told bob left', () => probe.removed.length === 1);
    assert.deepEqual(ids(alice.removed), ['bob']);
    const after = await sdks[1].get({ path: `/channels/${room}/users` });
    assert.deepEqual((await after.json()).users.map((u) => u.id).sort(), ['alice', 'probe']);

    await within(5000, 'hooks', () => hooksOf(hooks, room, 'member_removed').length === 1);
    assert.equal(hooksOf(hooks, room, 'channel_occupied').length, 1, 'occupied once for the cluster');
    for (const user of ['alice', 'bob', 'probe']) {
      assert.equal(hooksOf(hooks, room, 'member_added', user).length, 1, `member_added ${user} once`);
    }
    assert.deepEqual(hooksOf(hooks, room, 'member_removed').map((e) => e.user_id), ['bob']);
    alice.client.disconnect();
    probe.client.disconnect();
    await within(5000, 'vacated', () => hooksOf(hooks, room, 'channel_vacated').length === 1);
    const gone = await sdks[0].get({ path: `/channels/${room}`, params: { info: 'subscription_count' } });
    assert.deepEqual(await gone.json(), { occupied: false, subscription_count: 0 });
  });

  it('gives one member_added for 50 concurrent joins of one user over three nodes, and one member_removed', TEST, async () => {
    const room = `presence-crowd-${crypto.randomUUID()}`;
    const watcher = await member(nodes[0], room, 'watcher');
    const joins = [];
    for (let i = 0; i < 50; i += 1) {
      joins.push(h.connectClient(nodes[i % 3], { presence: { user_id: 'zed', user_info: { n: i } } })
        .then((c) => h.subscribe(c, room).then((m) => ({ client: c, members: m }))));
    }
    const zeds = await Promise.all(joins);
    for (const z of zeds) assert.deepEqual(Object.keys(z.members.members).sort(), ['watcher', 'zed']);
    await within(5000, 'hook', () => hooksOf(hooks, room, 'member_added', 'zed').length >= 1);
    const sdk = sdks[1];
    const users = await (await sdk.get({ path: `/channels/${room}/users` })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['watcher', 'zed']);
    const info = await (await sdk.get({ path: `/channels/${room}`, params: { info: 'subscription_count' } })).json();
    assert.equal(info.subscription_count, 51);
    for (const z of zeds) z.client.disconnect();
    await within(5000, 'zed removed', () => watcher.removed.length === 1);
    assert.deepEqual(ids(watcher.added), ['zed'], 'exactly one member_added');
    assert.deepEqual(ids(watcher.removed), ['zed'], 'exactly one member_removed');
    await within(5000, 'removed hook', () => hooksOf(hooks, room, 'member_removed', 'zed').length === 1);
    assert.equal(hooksOf(hooks, room, 'member_added', 'zed').length, 1, 'member_added hook once');
    watcher.client.disconnect();
  });

  it('after kill -9 of a node, removes its users within 6 s and sends their hooks once within 9 s', { timeout: 45000 }, async () => {
    const room = `presence-fault-${crypto.randomUUID()}`;
    const lonely = `lonely-${crypto.randomUUID()}`;
    const doomed = await h.startServer(nodeEnv('d'));
    try {
      await allHealthy([doomed], 'node d connected');
      const watcher = await member(nodes[1], room, 'watcher');
      const dora = await member(doomed, room, 'dora'); // only on the doomed node
      await member(doomed, room, 'eve');
      await member(nodes[0], room, 'eve'); // eve is also connected elsewhere
      const alone = await h.connectClient(doomed);
      await h.subscribe(alone, lonely);
      assert.deepEqual(Object.keys(dora.members.members).sort(), ['dora', 'eve', 'watcher']);
      await within(5000, 'occupied hooks', () => hooksOf(hooks, lonely, 'channel_occupied').length === 1);
      await within(5000, 'watcher sees dora', () => watcher.added.some((e) => e.data.id === 'dora'));

      const killed = Date.now();
      doomed.child.kill('SIGKILL');
      await within(6000, 'member_removed for dora', () => watcher.removed.length >= 1);
      const removedAfter = Date.now() - killed;
      const users = await (await sdks[2].get({ path: `/channels/${room}/users` })).json();
      assert.deepEqual(users.users.map((u) => u.id).sort(), ['eve', 'watcher'], 'the API no longer lists dora');
      const channels = await (await sdks[0].get({ path: '/channels', params: { filter_by_prefix: 'lonely-' } })).json();
      assert.equal(channels.channels[lonely], undefined, 'the dead node\'s channel is not listed');
      await within(9000 - (Date.now() - killed), 'hooks of the dead node', () =>
        hooksOf(hooks, room, 'member_removed', 'dora').length >= 1 && hooksOf(hooks, lonely, 'channel_vacated').length >= 1);
      // Let any duplicate arrive before counting.
      await new Promise((r) => setTimeout(r, 1500));
      assert.deepEqual(ids(watcher.removed), ['dora'], 'none for eve, connected elsewhere');
      assert.equal(hooksOf(hooks, room, 'member_removed', 'dora').length, 1, 'member_removed hook once');
      assert.equal(hooksOf(hooks, room, 'member_removed', 'eve').length, 0);
      assert.equal(hooksOf(hooks, lonely, 'channel_vacated').length, 1, 'channel_vacated hook once');
      console.log(`# kill -9: member_removed after ${removedAfter} ms`);
    } finally {
      await doomed.stop();
    }
  });

  it("pairs Pushi's peer members across nodes, who talk on their pair channel", TEST, async () => {
    const base = `chat${crypto.randomBytes(4).toString('hex')}`;
    const peer = (id) => ({ user_id: id, user_info: { name: id }, peer: true });
    const alice = await h.connectClient(nodes[0], { presence: peer('alice') });
    const bob = await h.connectClient(nodes[1], { presence: peer('bob') });
    await h.subscribe(alice, `presence-${base}`);
    await h.subscribe(bob, `presence-${base}`);
    const pair = `peer-${base}:alice&bob`;
    const listed = async () => {
      const res = await sdks[2].get({ path: '/channels', params: { filter_by_prefix: `peer-${base}` } });
      return Object.keys((await res.json()).channels);
    };
    // Each node put its own member on the pair channel: occupied for the cluster.
    assert.deepEqual(await within(5000, 'pair channel occupied', async () => {
      const l = await listed();
      return l.length === 1 && l;
    }), [pair]);
    await h.subscribe(alice, pair);
    const bobPair = bob.subscribe(pair);
    await h.subscribed(bobPair);
    const got = h.waitFor(bobPair, 'client-hello');
    alice.channel(pair).trigger('client-hello', { text: 'hi bob' });
    assert.deepEqual(await got, { text: 'hi bob' });
    bob.disconnect();
    await within(5000, 'the pair ends with bob', async () => (await listed()).length === 0);
    alice.disconnect();
  });

  it('counts the connection quota for the cluster: 30 concurrent connects with a quota of 10 give exactly 10', TEST, async () => {
    const tries = [];
    for (let i = 0; i < 30; i += 1) tries.push(firstMessage(nodes[i % 3], QUOTA_APP.key));
    const results = await Promise.all(tries);
    const admitted = results.filter((r) => r.message.event === 'pusher:connection_established');
    const refused = results.filter((r) => r.message.event === 'pusher:error');
    assert.equal(admitted.length, 10, 'exactly the quota, over three nodes');
    assert.equal(refused.length, 20);
    for (const r of refused) assert.equal(r.message.data.code, 4004);
    // A closed connection frees its place, whichever node it was on.
    const closed = new Promise((resolve) => admitted[0].ws.once('close', resolve));
    admitted[0].ws.close();
    await closed;
    const again = await within(5000, 'a place freed', async () => {
      const r = await firstMessage(nodes[2], QUOTA_APP.key);
      if (r.message.event === 'pusher:connection_established') return r;
      r.ws.terminate();
      return null;
    });
    const over = await firstMessage(nodes[0], QUOTA_APP.key);
    assert.equal(over.message.event, 'pusher:error', 'full again');
    for (const r of [...results, again, over]) r.ws.terminate();
  });

  it('sends subscription_count for the whole cluster to subscribers on every node', TEST, async () => {
    const channel = `counted-${crypto.randomUUID()}`;
    const options = { key: COUNT_APP.key, sdk: nodes[0].sdk({ appId: COUNT_APP.id, key: COUNT_APP.key, secret: COUNT_APP.secret }) };
    const clients = [];
    const counts = [];
    for (const node of nodes) {
      const client = await h.connectClient(node, options);
      const seen = [];
      client.channel(channel) || client.subscribe(channel);
      client.channel(channel).bind('pusher:subscription_count', (d) => seen.push(d.subscription_count));
      await h.subscribed(client.channel(channel));
      clients.push(client);
      counts.push(seen);
    }
    await within(5000, 'every node told of 3', () => counts.every((seen) => seen[seen.length - 1] === 3));
    clients[2].disconnect();
    await within(5000, 'the others told of 2', () => counts.slice(0, 2).every((seen) => seen[seen.length - 1] === 2));
  });

  it('keeps the REST rate limit for the cluster, not per node', { timeout: 20000 }, async () => {
    const limited = [];
    try {
      for (const name of ['r1', 'r2']) limited.push(await h.startServer({ ...nodeEnv(name), PUSHI_API_RATE: '10' }));
      const sdks2 = limited.map((n) => n.sdk());
      const accepted = new Map(); // wall-clock second -> calls accepted
      let refused = 0;
      const end = Date.now() + 2500;
      for (let i = 0; Date.now() < end; i += 1) {
        let status;
        try {
          status = (await sdks2[i % 2].trigger('rated', 'e', {})).status;
        } catch (err) {
          status = err.status; // the SDK rejects on 4xx (RequestError)
        }
        if (status === 200) {
          const second = Math.floor(Date.now() / 1000);
          accepted.set(second, (accepted.get(second) || 0) + 1);
        } else {
          assert.equal(status, 429);
          refused += 1;
        }
      }
      const most = Math.max(...accepted.values());
      assert.ok(refused > 0, 'some calls refused');
      // One node alone allows 10 a second; two per-node limits would allow 20.
      assert.ok(most <= 14, `at most ~10 a second for both nodes together, got ${[...accepted.values()]}`);
    } finally {
      for (const n of limited) await n.stop();
    }
  });

  it('tells watchers on every node when a user comes online and goes offline anywhere', TEST, async () => {
    const early = await signedIn(nodes[1], { id: 'friend-x' });
    const watcher = await h.connectClient(nodes[0], { user: { id: 'watcher-x', watchlist: ['friend-x', 'friend-y'] } });
    const online = h.record(watcher.user.watchlist, 'online');
    const offline = h.record(watcher.user.watchlist, 'offline');
    watcher.signin();
    await within(5000, 'friend-x already online elsewhere', () => online.length === 1);
    assert.deepEqual(online[0].data.user_ids, ['friend-x']);
    const y1 = await signedIn(nodes[2], { id: 'friend-y' });
    await within(5000, 'friend-y online', () => online.length === 2);
    assert.deepEqual(online[1].data.user_ids, ['friend-y']);
    const y2 = await signedIn(nodes[1], { id: 'friend-y' });
    y1.disconnect(); // still connected on node b: no offline
    early.disconnect();
    await within(5000, 'friend-x offline', () => offline.length === 1);
    assert.deepEqual(offline[0].data.user_ids, ['friend-x']);
    y2.disconnect();
    await within(5000, 'friend-y offline', () => offline.length === 2);
    assert.deepEqual(offline[1].data.user_ids, ['friend-y'], 'offline once, with the last connection');
    assert.equal(online.length, 2, 'online once per user');
  });

  it('loses no acknowledged publish when the publishing node stops gracefully', { timeout: 30000 }, async () => {
    const leaving = await h.startServer(nodeEnv('e'));
    const channel = `graceful-${crypto.randomUUID()}`;
    const sub = await h.connectClient(nodes[1]);
    await h.subscribe(sub, channel);
    const got = h.record(sub.channel(channel), 'n');
    try {
      await allHealthy([leaving], 'node e connected');
      const sdk = leaving.sdk();
      const acknowledged = [];
      const sends = [];
      for (let i = 0; i < 300; i += 1) {
        sends.push(sdk.trigger(channel, 'n', { i }).then((r) => { if (r.status === 200) acknowledged.push(i); }, () => {}));
        if (i === 150) leaving.child.kill('SIGTERM'); // drains: answers what it took, then stops
        if (i % 10 === 0) await new Promise((r) => setImmediate(r));
      }
      await Promise.all(sends);
      assert.ok(acknowledged.length > 0, 'some publishes were acknowledged');
      await within(5000, 'every acknowledged publish delivered on another node', () => {
        const seen = new Set(got.map((e) => e.data.i));
        return acknowledged.every((i) => seen.has(i));
      });
      console.log(`# graceful stop: ${acknowledged.length} of 300 acknowledged, all delivered`);
    } finally {
      await leaving.stop();
      sub.disconnect();
    }
  });

  it('keeps delivering locally while Redis is down, says degraded, and joins up again', TEST, async () => {
    const a = await h.connectClient(nodes[0]);
    const b = await h.connectClient(nodes[1]);
    await h.subscribe(a, 'weather');
    await h.subscribe(b, 'weather');
    await crossNodeBarrier(sdks[0], 'weather', [a, b]);

    await stopRedis(redis);
    await h.waitUntil(async () => (await getJson(nodes[0], '/health')).body.status === 'degraded', {
      label: '/health degraded',
    });
    assert.deepEqual((await getJson(nodes[0], '/health')).body.cluster, { status: 'disconnected' });
    const local = h.waitFor(a.channel('weather'), 'storm');
    await assertEmptyOk(sdks[0].trigger('weather', 'storm', { local: true }));
    assert.deepEqual(await local, { local: true }, 'the node still serves its own clients');

    redis = await startRedis(redisPort);
    await allHealthy(nodes, 'every node back to ok');
    const remote = h.waitFor(b.channel('weather'), 'clear');
    await assertEmptyOk(sdks[0].trigger('weather', 'clear', { back: true }));
    assert.deepEqual(await remote, { back: true }, 'cross-node delivery resumed');
  });

  it('registers presence again after Redis lost its data', TEST, async () => {
    const room = `presence-restart-${crypto.randomUUID()}`;
    const ann = await member(nodes[0], room, 'ann');
    const ben = await member(nodes[1], room, 'ben');
    await within(5000, 'ann sees ben', () => ann.added.length === 1);
    await stopRedis(redis);
    redis = await startRedis(redisPort); // empty: no persistence
    await allHealthy(nodes, 'every node back to ok');
    const users = await within(5000, 'both registered again', async () => {
      const list = (await (await sdks[2].get({ path: `/channels/${room}/users` })).json()).users.map((u) => u.id).sort();
      return list.length === 2 && list;
    });
    assert.deepEqual(users, ['ann', 'ben']);
    const cid = await member(nodes[2], room, 'cid');
    assert.deepEqual(Object.keys(cid.members.members).sort(), ['ann', 'ben', 'cid']);
    await within(5000, 'ben sees cid', () => ben.added.some((e) => e.data.id === 'cid'));
    assert.deepEqual(ids(ann.removed), [], 'no one was removed by the repair');
  });
});

describe('cluster of three nodes with NATS as the bus (state in Redis)', () => {
  let redis;
  let nats;
  let natsPort;
  const store = sharedStore('pushi_nats');
  const nodes = [];
  let sdks = [];

  before(async () => {
    const redisPort = await freePort();
    redis = await startRedis(redisPort);
    natsPort = await freePort();
    nats = await startNats(natsPort);
    const { db, url } = await store.start();
    for (const name of ['n1', 'n2', 'n3']) {
      nodes.push(await h.startServer({
        PUSHI_CLUSTER_URL: `nats://127.0.0.1:${natsPort}`,
        PUSHI_CLUSTER_REDIS: `redis://127.0.0.1:${redisPort}/0`,
        PUSHI_CLUSTER_PREFIX: `pushi-nats-${db}`,
        PUSHI_NODE_ID: `nats-${name}`,
        PUSHI_MONGO_URL: url,
      }));
    }
    sdks = nodes.map((n) => n.sdk());
    await allHealthy(nodes, 'both nodes connected');
  }, HOOK);

  after(async () => {
    for (const n of nodes) await n.stop();
    await stopRedis(redis);
    await stopRedis(nats);
    store.stop();
  }, HOOK);

  it('carries publishes across nodes over NATS, with socket_id exclusion on the other node', TEST, async () => {
    const a = await h.connectClient(nodes[0]);
    const b = await h.connectClient(nodes[1]);
    const skipped = await h.connectClient(nodes[1]);
    for (const c of [a, b, skipped]) await h.subscribe(c, 'over-nats');
    await crossNodeBarrier(sdks[0], 'over-nats', [a, b, skipped]);
    const got = [a, b].map((c) => h.waitFor(c.channel('over-nats'), 'news'));
    const notSkipped = h.record(skipped.channel('over-nats'), 'news');
    await assertEmptyOk(sdks[0].trigger('over-nats', 'news', { n: 1 }, { socket_id: skipped.connection.socket_id }));
    assert.deepEqual(await Promise.all(got), [{ n: 1 }, { n: 1 }]);
    await crossNodeBarrier(sdks[0], 'over-nats', [skipped]);
    assert.equal(notSkipped.length, 0, 'the excluded socket on the other node got nothing');
  });

  it('keeps presence for the cluster with NATS carrying the messages', TEST, async () => {
    const room = `presence-nats-${crypto.randomUUID()}`;
    const ann = await member(nodes[0], room, 'ann');
    const bob = await member(nodes[1], room, 'bob');
    const cid = await member(nodes[2], room, 'cid');
    assert.deepEqual(Object.keys(cid.members.members).sort(), ['ann', 'bob', 'cid']);
    await within(5000, 'ann sees bob and cid', () => ann.added.length === 2);
    bob.client.disconnect();
    await within(5000, 'ann and cid see bob leave', () => ann.removed.length === 1 && cid.removed.length === 1);
    const text = h.waitFor(cid.client.channel(room), 'hello');
    await assertEmptyOk(sdks[0].trigger(room, 'hello', { over: 'nats' }));
    assert.deepEqual(await text, { over: 'nats' });
  });

  it('says degraded while NATS is down, delivers locally, and resumes when it is back', TEST, async () => {
    const a = await h.connectClient(nodes[0]);
    const b = await h.connectClient(nodes[1]);
    await h.subscribe(a, 'nats-weather');
    await h.subscribe(b, 'nats-weather');
    await crossNodeBarrier(sdks[0], 'nats-weather', [a, b]);
    await stopRedis(nats);
    await h.waitUntil(async () => (await getJson(nodes[1], '/health')).body.status === 'degraded', {
      label: '/health degraded',
    });
    const local = h.waitFor(a.channel('nats-weather'), 'storm');
    await assertEmptyOk(sdks[0].trigger('nats-weather', 'storm', { local: true }));
    assert.deepEqual(await local, { local: true });
    nats = await startNats(natsPort);
    await allHealthy(nodes, 'both nodes back to ok');
    const remote = h.waitFor(b.channel('nats-weather'), 'clear');
    await h.waitUntil(async () => {
      await assertEmptyOk(sdks[0].trigger('nats-weather', 'clear', { back: true }));
      return Promise.race([remote.then(() => true), new Promise((r) => setTimeout(() => r(false), 300))]);
    }, { label: 'cross-node delivery resumed' });
  });
});

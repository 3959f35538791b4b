'use strict';
// pushi against the official JavaScript clients: pusher-js 8 (WebSocket
// client) and `pusher` 5 (server SDK), plus a bare `ws` socket where the wire
// format matters. One server per describe block, every wait bounded (≤ 5 s),
// every test ≤ 15 s. Run with tests/node/run.sh.

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');

const h = require('./helpers');

const TEST = { timeout: 15000 };
const HOOK = { timeout: 25000 };

/**
 * Starts a fresh server for the enclosing describe block and stops it after.
 * Clients made through the helpers are closed after each test unless
 * keepClients is set.
 */
function useServer({ env = {}, keepClients = false } = {}) {
  const ctx = { server: null, sdk: null };
  before(async () => {
    ctx.server = await h.startServer(env);
    ctx.sdk = ctx.server.sdk();
    // Fail the whole block at once when the server does not speak the
    // protocol at all, rather than letting every test wait out its timeouts.
    const probe = await h.RawClient.established(ctx.server);
    probe.terminate();
  }, HOOK);
  if (!keepClients) {
    afterEach(async () => {
      if (ctx.server) await ctx.server.disconnectClients();
    });
  }
  after(async () => {
    if (ctx.server) await ctx.server.stop();
  }, HOOK);
  return ctx;
}

/** Asserts the SDK call answered 200 with exactly `{}`. */
async function assertEmptyOk(promise) {
  const res = await h.readResponse(await promise);
  assert.equal(res.status, 200, `status, body ${res.text}`);
  assert.deepEqual(res.body, {}, `body ${res.text}`);
}

/** The parsed JSON body of a successful SDK GET. */
async function getJson(sdk, path, params) {
  const res = await h.readResponse(await sdk.get(params ? { path, params } : { path }));
  assert.equal(res.status, 200, `GET ${path}: ${res.text}`);
  return res.body;
}

/** Validator for assert.rejects: a RequestError with this HTTP status. */
function requestError(status) {
  return (err) => {
    assert.ok(err instanceof h.PusherSDK.RequestError, `expected a RequestError, got ${err}`);
    assert.equal(err.status, status, `status (body ${err.body})`);
    return true;
  };
}

/** The data of a raw frame: parsed when it is a JSON string. */
function rawData(message) {
  return typeof message.data === 'string' ? JSON.parse(message.data) : message.data;
}

/** A raw frame without the helper's bookkeeping fields. */
function frame(message) {
  const { raw, binary, ...rest } = message;
  return rest;
}

function memberIds(members) {
  const ids = [];
  members.each((m) => ids.push(String(m.id)));
  return ids.sort();
}

describe('connection', () => {
  const ctx = useServer();

  it('pusher-js connects; socket_id is digits.digits', TEST, async () => {
    const client = h.createClient(ctx.server);
    const [connected] = await h.waitForArgs(client.connection, 'connected');
    assert.equal(client.connection.state, 'connected');
    assert.match(client.connection.socket_id, h.SOCKET_ID);
    assert.equal(connected.socket_id, client.connection.socket_id);
  });

  it('pusher:connection_established on the wire: text frame, data a JSON string with socket_id and activity_timeout', TEST, async () => {
    const raw = await h.RawClient.connect(ctx.server);
    const hello = await raw.next();
    assert.equal(hello.binary, false);
    assert.equal(hello.event, 'pusher:connection_established');
    assert.equal(hello.channel, undefined);
    assert.equal(typeof hello.data, 'string', 'data is double-encoded');
    const data = JSON.parse(hello.data);
    assert.match(data.socket_id, h.SOCKET_ID);
    assert.ok(Number.isInteger(data.activity_timeout) && data.activity_timeout > 0, `activity_timeout ${data.activity_timeout}`);
  });

  it('every connection gets its own socket_id', TEST, async () => {
    const a = await h.RawClient.established(ctx.server);
    const b = await h.RawClient.established(ctx.server);
    assert.notEqual(a.socketId, b.socketId);
  });

  it('unknown app key: pusher-js gets error 4001 and gives up (disconnected, never connected)', TEST, async () => {
    const client = h.createClient(ctx.server, { key: 'no-such-key' });
    const states = [];
    client.connection.bind('state_change', (s) => states.push(s.current));
    const err = await h.waitFor(client.connection, 'error');
    assert.equal(err.type, 'WebSocketError', JSON.stringify(err));
    assert.equal(err.error.type, 'PusherError', JSON.stringify(err));
    assert.equal(err.error.data.code, 4001, JSON.stringify(err));
    await h.waitForState(client, 'disconnected');
    assert.ok(!states.includes('connected'), `states: ${states}`);
  });

  it('unknown app key on the wire: pusher:error {code: 4001, message} then close 4001', TEST, async () => {
    const raw = await h.RawClient.connect(ctx.server, { key: 'no-such-key' });
    const err = await raw.next();
    assert.equal(err.event, 'pusher:error');
    assert.equal(typeof err.data, 'object', 'pusher:error data is an object');
    assert.equal(err.data.code, 4001);
    assert.equal(typeof err.data.message, 'string');
    assert.equal((await raw.closed()).code, 4001);
  });

  it('missing protocol closes with 4008, unsupported protocol with 4007', TEST, async () => {
    for (const [query, code] of [
      ['client=node-raw&version=1.0.0', 4008],
      ['protocol=2&client=node-raw&version=1.0.0', 4007],
    ]) {
      const raw = await h.RawClient.connect(ctx.server, { query });
      const err = await raw.next();
      assert.equal(err.event, 'pusher:error', query);
      assert.equal(err.data.code, code, query);
      assert.equal((await raw.closed()).code, code, query);
    }
  });

  it('pusher:ping is answered with pusher:pong', TEST, async () => {
    const raw = await h.RawClient.established(ctx.server);
    raw.send({ event: 'pusher:ping', data: {} });
    assert.deepEqual(frame(await raw.next()), { event: 'pusher:pong', data: '{}' });
  });

  it('the WebSocket listener also serves the HTTP API', TEST, async () => {
    const client = await h.connectClient(ctx.server);
    const channel = client.subscribe('ws-port-api');
    await h.subscribed(channel);
    const got = h.waitFor(channel, 'hello');
    const viaWsPort = ctx.server.sdk({ host: ctx.server.ws.host, port: ctx.server.ws.port });
    await assertEmptyOk(viaWsPort.trigger('ws-port-api', 'hello', { via: 'ws port' }));
    assert.deepEqual(await got, { via: 'ws port' });
  });
});

describe('public channels', () => {
  const ctx = useServer();

  it('subscribe gives pusher:subscription_succeeded; an SDK trigger delivers the object', TEST, async () => {
    const client = await h.connectClient(ctx.server);
    assert.deepEqual(await h.subscribe(client, 'orders'), {});
    const payload = { id: 7, items: ['a', 'b'], nested: { ok: true, n: null }, text: 'é ✓' };
    const got = h.waitForArgs(client.channel('orders'), 'order-created');
    await assertEmptyOk(ctx.sdk.trigger('orders', 'order-created', payload));
    const [data, metadata] = await got;
    assert.deepEqual(data, payload);
    assert.deepEqual(metadata, {});
  });

  it('string data arrives unchanged', TEST, async () => {
    const client = await h.connectClient(ctx.server);
    await h.subscribe(client, 'plain');
    const got = h.waitFor(client.channel('plain'), 'note');
    await assertEmptyOk(ctx.sdk.trigger('plain', 'note', 'just text'));
    assert.equal(await got, 'just text');
  });

  it('one trigger to several channels reaches each', TEST, async () => {
    const client = await h.connectClient(ctx.server);
    await h.subscribe(client, 'multi-a');
    await h.subscribe(client, 'multi-b');
    const a = h.waitFor(client.channel('multi-a'), 'both');
    const b = h.waitFor(client.channel('multi-b'), 'both');
    await assertEmptyOk(ctx.sdk.trigger(['multi-a', 'multi-b'], 'both', { n: 2 }));
    assert.deepEqual(await a, { n: 2 });
    assert.deepEqual(await b, { n: 2 });
  });

  it('wire format: subscription_succeeded data "{}", event data passed through as a string, unsubscribe is silent and stops delivery', TEST, async () => {
    const raw = await h.RawClient.established(ctx.server);
    const reply = await raw.subscribe('raw-public');
    assert.deepEqual(frame(reply), {
      event: 'pusher_internal:subscription_succeeded',
      channel: 'raw-public',
      data: '{}',
    });
    await assertEmptyOk(ctx.sdk.trigger('raw-public', 'tick', { x: [1, 2] }));
    assert.deepEqual(frame(await raw.next()), { event: 'tick', channel: 'raw-public', data: '{"x":[1,2]}' });

    raw.send({ event: 'pusher:unsubscribe', data: { channel: 'raw-public' } });
    // The next subscription's reply doubles as a barrier: nothing may come before it.
    await assertEmptyOk(ctx.sdk.trigger('raw-public', 'tick', { after: 'unsubscribe' }));
    const next = await raw.subscribe('raw-after');
    assert.deepEqual(frame(next), { event: 'pusher_internal:subscription_succeeded', channel: 'raw-after', data: '{}' });
  });
});

describe('private channels', () => {
  const ctx = useServer();

  it('authorizeChannel signature subscribes', TEST, async () => {
    const client = await h.connectClient(ctx.server);
    assert.deepEqual(await h.subscribe(client, 'private-orders'), {});
    const got = h.waitFor(client.channel('private-orders'), 'secret-news');
    await assertEmptyOk(ctx.sdk.trigger('private-orders', 'secret-news', { ok: 1 }));
    assert.deepEqual(await got, { ok: 1 });
  });

  it('wrong-secret signature: pusher:subscription_error {type AuthError, status 401}; the connection stays usable', TEST, async () => {
    const bad = ctx.server.sdk({ secret: 'not-the-secret' });
    const client = await h.connectClient(ctx.server, {
      authorize: ({ socketId, channelName }) =>
        (channelName === 'private-bad' ? bad : ctx.sdk).authorizeChannel(socketId, channelName),
    });
    const socketId = client.connection.socket_id;
    await assert.rejects(h.subscribe(client, 'private-bad'), (err) => {
      assert.ok(err.data, String(err));
      assert.equal(err.data.type, 'AuthError');
      assert.equal(err.data.status, 401);
      assert.equal(typeof err.data.error, 'string');
      return true;
    });
    assert.equal(client.connection.state, 'connected');
    assert.equal(client.connection.socket_id, socketId, 'same connection');
    assert.equal(client.channel('private-bad').subscribed, false);

    await h.subscribe(client, 'private-good');
    const got = h.waitFor(client.channel('private-good'), 'still-here');
    await assertEmptyOk(ctx.sdk.trigger('private-good', 'still-here', { yes: true }));
    assert.deepEqual(await got, { yes: true });
  });

  it('a signature made for another socket_id is refused', TEST, async () => {
    const client = await h.connectClient(ctx.server, {
      authorize: ({ channelName }) => ctx.sdk.authorizeChannel('1234.5678', channelName),
    });
    await assert.rejects(h.subscribe(client, 'private-replay'), (err) => err.data && err.data.status === 401);
    assert.equal(client.connection.state, 'connected');
  });

  it('on the wire: no auth gives pusher:subscription_error on that channel and the socket stays open', TEST, async () => {
    const raw = await h.RawClient.established(ctx.server);
    const reply = await raw.subscribe('private-noauth');
    assert.equal(reply.event, 'pusher:subscription_error');
    assert.equal(reply.channel, 'private-noauth');
    const data = rawData(reply);
    assert.equal(data.type, 'AuthError');
    assert.equal(data.status, 401);
    raw.send({ event: 'pusher:ping', data: {} });
    assert.equal((await raw.next()).event, 'pusher:pong');
  });
});

describe('presence channels', () => {
  const ctx = useServer();
  const alice = { user_id: 'alice', user_info: { name: 'Alice' } };
  const bob = { user_id: 'bob', user_info: { name: 'Bob' } };

  it('members list, member_added with user_info, member_removed on disconnect, count', TEST, async () => {
    const a = await h.connectClient(ctx.server, { presence: alice });
    const membersA = await h.subscribe(a, 'presence-room');
    assert.equal(membersA.count, 1);
    assert.deepEqual(membersA.me, { id: 'alice', info: { name: 'Alice' } });
    const roomA = a.channel('presence-room');
    const added = h.waitFor(roomA, 'pusher:member_added');

    const b = await h.connectClient(ctx.server, { presence: bob });
    const membersB = await h.subscribe(b, 'presence-room');
    assert.equal(membersB.count, 2);
    assert.deepEqual(memberIds(membersB), ['alice', 'bob']);
    assert.deepEqual(membersB.get('alice'), { id: 'alice', info: { name: 'Alice' } });
    assert.deepEqual(membersB.me, { id: 'bob', info: { name: 'Bob' } });

    assert.deepEqual(await added, { id: 'bob', info: { name: 'Bob' } });
    assert.equal(roomA.members.count, 2);

    const removed = h.waitFor(roomA, 'pusher:member_removed');
    b.disconnect();
    assert.deepEqual(await removed, { id: 'bob', info: { name: 'Bob' } });
    assert.equal(roomA.members.count, 1);
    assert.deepEqual(memberIds(roomA.members), ['alice']);
  });

  it('wire format: presence {ids, hash, count}, member_added {user_id, user_info}, member_removed {user_id}', TEST, async () => {
    const a = await h.RawClient.established(ctx.server);
    const okA = await a.subscribe('presence-wire', ctx.sdk.authorizeChannel(a.socketId, 'presence-wire', alice));
    assert.equal(okA.event, 'pusher_internal:subscription_succeeded');
    assert.equal(okA.channel, 'presence-wire');
    assert.equal(typeof okA.data, 'string');
    assert.deepEqual(JSON.parse(okA.data), { presence: { ids: ['alice'], hash: { alice: { name: 'Alice' } }, count: 1 } });

    const b = await h.RawClient.established(ctx.server);
    const okB = await b.subscribe('presence-wire', ctx.sdk.authorizeChannel(b.socketId, 'presence-wire', bob));
    assert.equal(okB.event, 'pusher_internal:subscription_succeeded');
    const presence = JSON.parse(okB.data).presence;
    assert.deepEqual([...presence.ids].sort(), ['alice', 'bob']);
    assert.deepEqual(presence.hash, { alice: { name: 'Alice' }, bob: { name: 'Bob' } });
    assert.equal(presence.count, 2);

    const added = await a.next();
    assert.equal(added.event, 'pusher_internal:member_added');
    assert.equal(added.channel, 'presence-wire');
    assert.deepEqual(rawData(added), { user_id: 'bob', user_info: { name: 'Bob' } });

    b.terminate();
    const removed = await a.next();
    assert.equal(removed.event, 'pusher_internal:member_removed');
    assert.equal(removed.channel, 'presence-wire');
    assert.deepEqual(rawData(removed), { user_id: 'bob' });
  });

  it('a user on two connections is one member: no member_added/removed for the second connection', TEST, async () => {
    const channelName = 'presence-dedupe';
    const subscriptions = async () =>
      (await getJson(ctx.sdk, `/channels/${channelName}`, { info: 'subscription_count' })).subscription_count;

    const b = await h.connectClient(ctx.server, { presence: bob });
    await h.subscribe(b, channelName);
    const roomB = b.channel(channelName);
    const a1 = await h.connectClient(ctx.server, { presence: alice });
    const addedOnce = h.waitFor(roomB, 'pusher:member_added');
    await h.subscribe(a1, channelName);
    assert.deepEqual(await addedOnce, { id: 'alice', info: { name: 'Alice' } });

    const events = h.record(roomB, '*');
    const a2 = await h.connectClient(ctx.server, { presence: alice });
    const membersA2 = await h.subscribe(a2, channelName);
    assert.equal(membersA2.count, 2);
    await h.barrier(ctx.sdk, channelName, [b]);
    assert.deepEqual(events.map((e) => e.event).filter((e) => e.startsWith('pusher:member')), [], 'no member event for a second connection');
    assert.equal(roomB.members.count, 2);

    a2.disconnect();
    await h.waitUntil(async () => (await subscriptions()) === 2, { label: 'subscription_count 2 after a2 left' });
    await h.barrier(ctx.sdk, channelName, [b]);
    assert.deepEqual(events.map((e) => e.event).filter((e) => e.startsWith('pusher:member')), [], 'alice still has a connection');

    const removed = h.waitFor(roomB, 'pusher:member_removed');
    a1.disconnect();
    assert.deepEqual(await removed, { id: 'alice', info: { name: 'Alice' } });
    assert.equal(roomB.members.count, 1);
  });

  it('a numeric user_id is accepted', TEST, async () => {
    const carol = await h.connectClient(ctx.server, { presence: { user_id: 42, user_info: { n: 1 } } });
    const membersC = await h.subscribe(carol, 'presence-numeric');
    assert.equal(membersC.count, 1);
    const dave = await h.connectClient(ctx.server, { presence: { user_id: 'dave', user_info: {} } });
    const membersD = await h.subscribe(dave, 'presence-numeric');
    assert.equal(membersD.count, 2);
    assert.deepEqual(membersD.get('42'), { id: '42', info: { n: 1 } });
  });
});

describe('client events', () => {
  const ctx = useServer();

  it('client-typing from A on a private channel reaches B, not A', TEST, async () => {
    const a = await h.connectClient(ctx.server);
    const b = await h.connectClient(ctx.server);
    await h.subscribe(a, 'private-chat');
    await h.subscribe(b, 'private-chat');
    const echoed = h.record(a.channel('private-chat'), 'client-typing');
    const got = h.waitForArgs(b.channel('private-chat'), 'client-typing');
    assert.equal(a.channel('private-chat').trigger('client-typing', { typing: true, who: 'A' }), true);
    const [data, metadata] = await got;
    assert.deepEqual(data, { typing: true, who: 'A' });
    assert.deepEqual(metadata, {});
    await h.barrier(ctx.sdk, 'private-chat', [a, b]);
    assert.deepEqual(echoed, [], 'never echoed to the sender');
  });

  it('on a presence channel the relayed event carries the sender user_id', TEST, async () => {
    const a = await h.connectClient(ctx.server, { presence: { user_id: 'alice', user_info: {} } });
    const b = await h.connectClient(ctx.server, { presence: { user_id: 'bob', user_info: {} } });
    await h.subscribe(a, 'presence-chat');
    await h.subscribe(b, 'presence-chat');
    const got = h.waitForArgs(b.channel('presence-chat'), 'client-wave');
    a.channel('presence-chat').trigger('client-wave', { hi: 'there' });
    const [data, metadata] = await got;
    assert.deepEqual(data, { hi: 'there' });
    assert.deepEqual(metadata, { user_id: 'alice' });
  });

  it('client events on a public channel are not relayed; the sender stays connected', TEST, async () => {
    const a = await h.connectClient(ctx.server);
    const b = await h.connectClient(ctx.server);
    await h.subscribe(a, 'public-chat');
    await h.subscribe(b, 'public-chat');
    const relayed = h.record(b.channel('public-chat'), 'client-nope');
    a.channel('public-chat').trigger('client-nope', { x: 1 });
    await h.barrier(ctx.sdk, 'public-chat', [a, b]);
    assert.deepEqual(relayed, []);
    assert.equal(a.connection.state, 'connected');
  });
});

describe('socket_id exclusion', () => {
  const ctx = useServer();

  it('a trigger with socket_id of A reaches B and not A', TEST, async () => {
    const a = await h.connectClient(ctx.server);
    const b = await h.connectClient(ctx.server);
    await h.subscribe(a, 'excl');
    await h.subscribe(b, 'excl');
    const gotByA = h.record(a.channel('excl'), 'news');
    const gotByB = h.waitFor(b.channel('excl'), 'news');
    await assertEmptyOk(ctx.sdk.trigger('excl', 'news', { n: 1 }, { socket_id: a.connection.socket_id }));
    assert.deepEqual(await gotByB, { n: 1 });
    await h.barrier(ctx.sdk, 'excl', [a, b]);
    assert.deepEqual(gotByA, []);
  });
});

describe('batch trigger', () => {
  const ctx = useServer();

  it('triggerBatch with two events on two channels delivers both', TEST, async () => {
    const client = await h.connectClient(ctx.server);
    await h.subscribe(client, 'batch-a');
    await h.subscribe(client, 'batch-b');
    const a = h.waitFor(client.channel('batch-a'), 'ev-a');
    const b = h.waitFor(client.channel('batch-b'), 'ev-b');
    await assertEmptyOk(
      ctx.sdk.triggerBatch([
        { channel: 'batch-a', name: 'ev-a', data: { n: 1 } },
        { channel: 'batch-b', name: 'ev-b', data: 'two' },
      ]),
    );
    assert.deepEqual(await a, { n: 1 });
    assert.equal(await b, 'two');
  });

  it('each batch entry honours its own socket_id', TEST, async () => {
    const a = await h.connectClient(ctx.server);
    const b = await h.connectClient(ctx.server);
    await h.subscribe(a, 'batch-x');
    await h.subscribe(b, 'batch-x');
    const seenByA = h.record(a.channel('batch-x'), '*');
    const bGotOne = h.waitFor(b.channel('batch-x'), 'one');
    const bGotTwo = h.waitFor(b.channel('batch-x'), 'two');
    const aGotTwo = h.waitFor(a.channel('batch-x'), 'two');
    await assertEmptyOk(
      ctx.sdk.triggerBatch([
        { channel: 'batch-x', name: 'one', data: '1', socket_id: a.connection.socket_id },
        { channel: 'batch-x', name: 'two', data: '2' },
      ]),
    );
    assert.equal(await bGotOne, 1);
    assert.equal(await bGotTwo, 2);
    assert.equal(await aGotTwo, 2);
    assert.deepEqual(seenByA.map((e) => e.event), ['two']);
  });
});

describe('channel queries (HTTP API through the SDK)', () => {
  const ctx = useServer({ keepClients: true });

  before(async () => {
    const a = await h.connectClient(ctx.server, { presence: { user_id: 'alice', user_info: { name: 'Alice' } } });
    const b = await h.connectClient(ctx.server, { presence: { user_id: 'bob', user_info: { name: 'Bob' } } });
    await h.subscribe(a, 'presence-room');
    await h.subscribe(b, 'presence-room');
    await h.subscribe(a, 'lobby');
  }, HOOK);

  it('GET /channels?filter_by_prefix=presence-&info=user_count', TEST, async () => {
    const body = await getJson(ctx.sdk, '/channels', { filter_by_prefix: 'presence-', info: 'user_count' });
    assert.deepEqual(body, { channels: { 'presence-room': { user_count: 2 } } });
  });

  it('GET /channels lists every occupied channel', TEST, async () => {
    const body = await getJson(ctx.sdk, '/channels');
    assert.deepEqual(body, { channels: { 'presence-room': {}, lobby: {} } });
  });

  it('GET /channels/presence-room?info=user_count,subscription_count', TEST, async () => {
    const body = await getJson(ctx.sdk, '/channels/presence-room', { info: 'user_count,subscription_count' });
    assert.deepEqual(body, { occupied: true, user_count: 2, subscription_count: 2 });
  });

  it('GET /channels/lobby?info=subscription_count and an empty channel', TEST, async () => {
    assert.deepEqual(await getJson(ctx.sdk, '/channels/lobby', { info: 'subscription_count' }), {
      occupied: true,
      subscription_count: 1,
    });
    assert.deepEqual(await getJson(ctx.sdk, '/channels/nobody-here'), { occupied: false });
  });

  it('GET /channels/presence-room/users lists the user ids', TEST, async () => {
    const body = await getJson(ctx.sdk, '/channels/presence-room/users');
    assert.ok(Array.isArray(body.users), JSON.stringify(body));
    const users = [...body.users].sort((x, y) => String(x.id).localeCompare(String(y.id)));
    assert.deepEqual(users, [{ id: 'alice' }, { id: 'bob' }]);
  });

  it('GET /channels/<public>/users is a 400', TEST, async () => {
    await assert.rejects(ctx.sdk.get({ path: '/channels/lobby/users' }), requestError(400));
  });
});

describe('HTTP API authentication', () => {
  const ctx = useServer();

  it('a wrong secret is rejected with 401 (trigger and query)', TEST, async () => {
    const bad = ctx.server.sdk({ secret: 'wrong-secret' });
    await assert.rejects(bad.trigger('orders', 'x', { a: 1 }), requestError(401));
    await assert.rejects(bad.get({ path: '/channels' }), requestError(401));
  });

  it('a timestamp older than 600 s is rejected with 401', TEST, async () => {
    const realNow = Date.now;
    let pending;
    Date.now = () => realNow() - 700 * 1000;
    try {
      pending = ctx.sdk.trigger('orders', 'x', { a: 1 }); // signs synchronously
    } finally {
      Date.now = realNow;
    }
    await assert.rejects(pending, requestError(401));
  });
});

/** Connects a client for `user`, signs in and waits until its #server-to-user- channel is subscribed. */
async function signedIn(server, user, options = {}) {
  const client = await h.connectClient(server, { user, ...options });
  const success = h.waitFor(client, 'pusher:signin_success');
  client.signin();
  const data = await success;
  const channel = await h.waitUntil(() => client.user.serverToUserChannel, { label: 'the #server-to-user- channel' });
  assert.equal(channel.name, `#server-to-user-${user.id}`);
  await h.subscribed(channel);
  return { client, data };
}

describe('user sign-in and sendToUser', () => {
  const ctx = useServer();

  it('signin gives pusher:signin_success with the signed user_data', TEST, async () => {
    const user = { id: 'user-1', user_info: { name: 'One' } };
    const { client, data } = await signedIn(ctx.server, user);
    assert.equal(typeof data.user_data, 'string');
    assert.deepEqual(JSON.parse(data.user_data), user);
    assert.deepEqual(client.user.user_data, user);
  });

  it('sendToUser reaches every connection of that user and nobody else', TEST, async () => {
    const one = await signedIn(ctx.server, { id: 'user-2' });
    const two = await signedIn(ctx.server, { id: 'user-2' });
    const other = await signedIn(ctx.server, { id: 'user-3' });
    const strayed = h.record(other.client.user, 'notice');
    const got1 = h.waitFor(one.client.user, 'notice');
    const got2 = h.waitFor(two.client.user, 'notice');
    await assertEmptyOk(ctx.sdk.sendToUser('user-2', 'notice', { text: 'hello user-2' }));
    assert.deepEqual(await got1, { text: 'hello user-2' });
    assert.deepEqual(await got2, { text: 'hello user-2' });
    // Barrier for user-3: an event to that user arrives after anything sent before it.
    const own = h.waitFor(other.client.user, 'own');
    await assertEmptyOk(ctx.sdk.sendToUser('user-3', 'own', { mine: true }));
    assert.deepEqual(await own, { mine: true });
    assert.deepEqual(strayed, []);
  });

  it('a bad signin signature closes the connection with 4009', TEST, async () => {
    const client = await h.connectClient(ctx.server, {
      user: { id: 'mallory' },
      sdk: ctx.server.sdk({ secret: 'wrong-secret' }),
    });
    const error = h.waitFor(client.connection, 'error', { filter: (e) => e && e.type === 'WebSocketError' });
    client.signin();
    const err = await error;
    assert.equal(err.error.data.code, 4009, JSON.stringify(err));
    await h.waitForState(client, 'disconnected');
  });

  it('a signed-in connection joins a presence channel without channel_data', TEST, async () => {
    const user = { id: 'user-p', user_info: { name: 'Pat' } };
    const { client } = await signedIn(ctx.server, user, { presence: null });
    const members = await h.subscribe(client, 'presence-signed');
    assert.equal(members.count, 1);
    assert.equal(members.me && members.me.id, 'user-p');
    assert.deepEqual(memberIds(members), ['user-p']);
  });

  it('watchlist: online and offline events for watched users', TEST, async () => {
    const { client: watcher } = await signedIn(ctx.server, { id: 'watcher', watchlist: ['friend'] });
    const online = h.waitFor(watcher.user.watchlist, 'online');
    const { client: friend } = await signedIn(ctx.server, { id: 'friend' });
    assert.deepEqual(await online, { name: 'online', user_ids: ['friend'] });
    const offline = h.waitFor(watcher.user.watchlist, 'offline');
    friend.disconnect();
    assert.deepEqual(await offline, { name: 'offline', user_ids: ['friend'] });
  });
});

describe('terminate user connections', () => {
  const ctx = useServer();

  it('terminateUserConnections closes every connection of that user (4009, no reconnect) and only those', TEST, async () => {
    const t1 = (await signedIn(ctx.server, { id: 'doomed' })).client;
    const t2 = (await signedIn(ctx.server, { id: 'doomed' })).client;
    const survivor = (await signedIn(ctx.server, { id: 'survivor' })).client;
    const errors = [t1, t2].map((c) =>
      h.waitFor(c.connection, 'error', { filter: (e) => e && e.type === 'WebSocketError' }),
    );
    await assertEmptyOk(ctx.sdk.terminateUserConnections('doomed'));
    for (const err of await Promise.all(errors)) {
      assert.equal(err.error.data.code, 4009, JSON.stringify(err));
    }
    await h.waitForState(t1, 'disconnected');
    await h.waitForState(t2, 'disconnected');

    assert.equal(survivor.connection.state, 'connected');
    const got = h.waitFor(survivor.user, 'still');
    await assertEmptyOk(ctx.sdk.sendToUser('survivor', 'still', { here: true }));
    assert.deepEqual(await got, { here: true });
  });

  it('terminating a user with no connection answers {}', TEST, async () => {
    await assertEmptyOk(ctx.sdk.terminateUserConnections('nobody'));
  });
});

describe('cache channels', () => {
  const ctx = useServer();

  it('a new subscriber gets the last event right after subscription_succeeded', TEST, async () => {
    await assertEmptyOk(ctx.sdk.trigger('cache-news', 'headline', { title: 'first' }));
    await assertEmptyOk(ctx.sdk.trigger('cache-news', 'headline', { title: 'second' }));
    const client = await h.connectClient(ctx.server);
    const channel = client.subscribe('cache-news');
    const seen = h.record(channel, '*');
    const cached = h.waitFor(channel, 'headline');
    await h.subscribed(channel);
    assert.deepEqual(await cached, { title: 'second' });
    await h.barrier(ctx.sdk, 'cache-news', [client]);
    const names = seen.map((e) => e.event).filter((e) => !e.startsWith('barrier-'));
    assert.deepEqual(names, ['pusher:subscription_succeeded', 'headline']);
  });

  it('an empty cache channel gives pusher:cache_miss after subscription_succeeded', TEST, async () => {
    const client = await h.connectClient(ctx.server);
    const channel = client.subscribe('cache-empty');
    const seen = h.record(channel, '*');
    const miss = h.waitFor(channel, 'pusher:cache_miss');
    await h.subscribed(channel);
    await miss;
    assert.deepEqual(seen.map((e) => e.event), ['pusher:subscription_succeeded', 'pusher:cache_miss']);
  });

  it('cache_miss on the wire: {"event":"pusher:cache_miss","channel":C}', TEST, async () => {
    const raw = await h.RawClient.established(ctx.server);
    assert.equal((await raw.subscribe('cache-wire')).event, 'pusher_internal:subscription_succeeded');
    const miss = await raw.next();
    assert.equal(miss.event, 'pusher:cache_miss');
    assert.equal(miss.channel, 'cache-wire');
  });

  it('private-cache- channels replay too', TEST, async () => {
    await assertEmptyOk(ctx.sdk.trigger('private-cache-stock', 'level', { n: 3 }));
    const client = await h.connectClient(ctx.server);
    const channel = client.subscribe('private-cache-stock');
    const cached = h.waitFor(channel, 'level');
    await h.subscribed(channel);
    assert.deepEqual(await cached, { n: 3 });
  });
});

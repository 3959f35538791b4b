'use strict';
// laravel-echo 2 (npm) on pusher-js 8 against pushi, with both of its
// Pusher-protocol broadcasters: `pusher` (needs a `cluster`, unused once
// wsHost is set) and `reverb` (no cluster). Public, private and presence
// channels, whispers and leaving; user ids are compared with `===` as Laravel
// pages do (`member.id === me.id`), so a numeric id must come back a number.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');

const h = require('./helpers');

// laravel-echo 2 ships as an ES module ("type": "module"), so it is imported, not required.
let Echo;

const TEST = { timeout: 15000 };
const HOOK = { timeout: 25000 };

/** An Echo instance whose channel authorization runs in-process through the `pusher` SDK. */
function makeEcho(server, broadcaster, presence = null) {
  const sdk = server.sdk();
  const options = {
    broadcaster,
    key: server.app.key,
    Pusher: h.PusherJS,
    wsHost: server.ws.host,
    wsPort: server.ws.port,
    wssPort: server.ws.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    enableStats: false,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const data = channelName.startsWith('presence-') ? presence : undefined;
        callback(null, sdk.authorizeChannel(socketId, channelName, data || undefined));
      },
    },
  };
  if (broadcaster === 'pusher') options.cluster = 'mt1';
  const echo = new Echo(options);
  server.clients.add(echo.connector.pusher);
  return echo;
}

async function connected(echo) {
  await h.waitForState(echo.connector.pusher, 'connected');
  return echo;
}

/** Resolves when Echo's channel is subscribed. */
function subscribedTo(channel) {
  return h.subscribed(channel.subscription);
}

/** The next call of an Echo callback registration (`fn(cb)`), with a 5 s cap. */
function nextCall(register, label) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${label}`)), 5000);
    let done = false;
    register((...args) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(args);
    });
  });
}

for (const broadcaster of ['pusher', 'reverb']) {
  describe(`laravel-echo 2.5, broadcaster "${broadcaster}"`, () => {
    let server;
    before(async () => {
      ({ default: Echo } = await import('laravel-echo'));
      server = await h.startServer();
    }, HOOK);
    after(async () => {
      if (server) await server.stop();
    }, HOOK);

    it('channel(): listens to namespaced and dotted event names', TEST, async () => {
      const echo = await connected(makeEcho(server, broadcaster));
      const channel = echo.channel('orders');
      await subscribedTo(channel);
      const shipped = nextCall((cb) => channel.listen('OrderShipped', cb), 'App\\Events\\OrderShipped');
      const raw = nextCall((cb) => channel.listen('.created', cb), '.created');
      const sdk = server.sdk();
      assert.equal((await sdk.trigger('orders', 'App\\Events\\OrderShipped', { id: 7 })).status, 200);
      assert.equal((await sdk.trigger('orders', 'created', { id: 8 })).status, 200);
      assert.deepEqual((await shipped)[0], { id: 7 });
      assert.deepEqual((await raw)[0], { id: 8 });
      echo.disconnect();
    });

    it('private(): server events and whispers between two pages', TEST, async () => {
      const [a, b] = await Promise.all([connected(makeEcho(server, broadcaster)), connected(makeEcho(server, broadcaster))]);
      const [ca, cb] = [a.private('room'), b.private('room')];
      await Promise.all([subscribedTo(ca), subscribedTo(cb)]);
      const whisper = nextCall((fn) => cb.listenForWhisper('typing', fn), 'whisper');
      ca.whisper('typing', { who: 'a' });
      assert.deepEqual((await whisper)[0], { who: 'a' });
      const event = nextCall((fn) => ca.listen('.message', fn), '.message');
      assert.equal((await server.sdk().trigger('private-room', 'message', 'hi')).status, 200);
      assert.equal((await event)[0], 'hi');
      a.disconnect();
      b.disconnect();
    });

    it('join(): here, joining, leaving and whispers, ids compared with ===', TEST, async () => {
      const me = { user_id: 1, user_info: { id: 1, name: 'Ada' } };
      const other = { user_id: 2, user_info: { id: 2, name: 'Bob' } };
      const a = await connected(makeEcho(server, broadcaster, me));
      const ca = a.join('chat');
      const here = await nextCall((fn) => ca.here(fn), 'here (a)');
      assert.deepEqual(here[0], [me.user_info]);
      const members = ca.subscription.members;
      assert.equal(members.me.id, 1, 'pusher-js keeps the number it parsed');

      const joining = nextCall((fn) => ca.joining(fn), 'joining');
      const added = nextCall((fn) => ca.listen('.pusher:member_added', fn), 'pusher:member_added');
      const b = await connected(makeEcho(server, broadcaster, other));
      const cb = b.join('chat');
      const hereB = await nextCall((fn) => cb.here(fn), 'here (b)');
      assert.deepEqual(hereB[0].map((u) => u.id).sort(), [1, 2]);
      assert.ok(hereB[0].some((u) => u.id === cb.subscription.members.me.id), 'b finds itself with ===');
      assert.deepEqual((await joining)[0], other.user_info);
      const [member] = await added;
      assert.ok(member.id === 2, `member.id is the number 2, not ${JSON.stringify(member.id)}`);
      assert.ok(member.id !== members.me.id);

      const whisper = nextCall((fn) => ca.listenForWhisper('typing', fn), 'presence whisper');
      cb.whisper('typing', { typing: true });
      const [data, metadata] = await whisper;
      assert.deepEqual(data, { typing: true });
      assert.ok(metadata.user_id === 2, `whisper user_id is the number 2, not ${JSON.stringify(metadata.user_id)}`);

      const users = await h.readResponse(await server.sdk().get({ path: '/channels/presence-chat/users' }));
      assert.equal(users.status, 200, users.text);
      assert.deepEqual(users.body.users.map((u) => u.id).sort(), [1, 2], 'the HTTP API gives the ids as sent');

      const leaving = nextCall((fn) => ca.leaving(fn), 'leaving');
      const removed = nextCall((fn) => ca.listen('.pusher:member_removed', fn), 'pusher:member_removed');
      b.leave('chat');
      assert.deepEqual((await leaving)[0], other.user_info);
      assert.ok((await removed)[0].id === 2);
      assert.equal(b.connector.channels['presence-chat'], undefined, 'b left');
      a.disconnect();
      b.disconnect();
    });
  });
}

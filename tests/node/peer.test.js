'use strict';
// Pushi's peer channels through pusher-js: presence members whose
// channel_data carries `"peer": true` are put on one private pair channel
// `peer-<base>:<a>&<b>` per pair of users, where they can exchange client
// events; nobody else can join or hear a pair's channel.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');

const h = require('./helpers');

const TEST = { timeout: 15000 };
const HOOK = { timeout: 25000 };

const member = (id) => ({ user_id: id, user_info: { name: id }, peer: true });

/** Every raw protocol message a pusher-js client receives, with its channel. */
function messages(client) {
  const seen = [];
  client.connection.bind('message', (m) => seen.push(m));
  return seen;
}

describe('peer channels', () => {
  let server;
  before(async () => {
    server = await h.startServer();
  }, HOOK);
  after(async () => {
    if (server) await server.stop();
  }, HOOK);

  async function occupied() {
    const res = await h.readResponse(await server.sdk().get({ path: '/channels' }));
    assert.equal(res.status, 200, res.text);
    return Object.keys(res.body.channels).filter((c) => c.startsWith('peer-')).sort();
  }

  it('pairs get one channel each, exchange events there, and lose it when one leaves', TEST, async () => {
    const [alice, bob, carol] = await Promise.all(
      ['alice', 'bob', 'carol'].map((id) => h.connectClient(server, { presence: member(id) })),
    );
    const heard = { alice: messages(alice), bob: messages(bob), carol: messages(carol) };
    for (const c of [alice, bob, carol]) await h.subscribe(c, 'presence-chat');
    await h.waitUntil(async () => (await occupied()).length === 3, { label: 'three pair channels' });
    assert.deepEqual(await occupied(), ['peer-chat:alice&bob', 'peer-chat:alice&carol', 'peer-chat:bob&carol']);

    // The pair subscribes by name (it is already on it; no auth needed) and talks.
    const ab = 'peer-chat:alice&bob';
    await h.subscribe(alice, ab);
    const bobChannel = bob.subscribe(ab);
    await h.subscribed(bobChannel);
    const got = h.waitFor(bobChannel, 'client-hello');
    alice.channel(ab).trigger('client-hello', { text: 'hi bob' });
    assert.deepEqual(await got, { text: 'hi bob' });

    // Carol is on her own pairs only: she cannot join alice&bob and heard nothing of it.
    const refused = carol.subscribe(ab);
    const error = await h.waitFor(refused, 'pusher:subscription_error');
    assert.equal(error.status, 403);
    const ac = 'peer-chat:alice&carol';
    await h.subscribe(carol, ac);
    await h.subscribe(alice, ac);
    const toCarol = h.waitFor(carol.channel(ac), 'client-psst');
    alice.channel(ac).trigger('client-psst', { text: 'hi carol' });
    assert.deepEqual(await toCarol, { text: 'hi carol' });
    const events = (who, channel) => heard[who].filter((m) => m.channel === channel && m.event.startsWith('client-'));
    assert.deepEqual(events('carol', ab), [], 'carol heard nothing on alice&bob');
    assert.deepEqual(events('bob', ac), [], 'bob heard nothing on alice&carol');
    assert.equal(events('bob', ab).length, 1);

    // Carol leaves: the pair channels with her go; alice&bob stays.
    carol.disconnect();
    await h.waitUntil(async () => (await occupied()).length === 1, { label: 'carol pairs gone' });
    assert.deepEqual(await occupied(), [ab]);
  });

  it('members without the peer flag get no pair channels', TEST, async () => {
    const plain = (id) => ({ user_id: id, user_info: {} });
    const [dave, erin] = await Promise.all(['dave', 'erin'].map((id) => h.connectClient(server, { presence: plain(id) })));
    await h.subscribe(dave, 'presence-quiet');
    await h.subscribe(erin, 'presence-quiet');
    assert.ok(!(await occupied()).some((c) => c.startsWith('peer-quiet:')));
    const direct = dave.subscribe('peer-quiet:dave&erin');
    // Not a pair (no peer flag) but both are members: eligibility is membership, so this works.
    await h.subscribed(direct);
    dave.disconnect();
    erin.disconnect();
  });
});

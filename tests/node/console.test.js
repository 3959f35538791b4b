'use strict';
// The web console (/console) driven in headless Chromium (Debian's
// /usr/bin/chromium through puppeteer-core): sign in with an app's id and
// secret, watch a pusher-js client connect and subscribe, see an event
// triggered with the `pusher` SDK pass, send the test-event form to the
// pusher-js client, watch a presence member come and go, and check that a
// wrong secret is refused and that an app session cannot open another app.
// A screenshot of the console is saved as target/console.png.
// Run with tests/node/run.sh (tests/setup.sh installs chromium).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const puppeteer = require('puppeteer-core');
const h = require('./helpers');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = path.resolve(__dirname, '..', '..', 'target', 'console.png');
const TEST = { timeout: 30000 };
const HOOK = { timeout: 40000 };
/** How soon the console must show what happened. */
const SHOWN_WITHIN_MS = 1000;
const OTHER = { id: 'other-app', key: 'other-key', secret: 'other-secret' };

describe('web console in headless Chromium', () => {
  let server;
  let browser;
  let page;
  let profile;
  let appsFile;
  let consoleUrl;

  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: tests/setup.sh installs Debian's chromium`);
    appsFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pushi-console-')), 'apps.json');
    fs.writeFileSync(appsFile, JSON.stringify([{ ...OTHER, name: 'other' }]));
    server = await h.startServer({ PUSHI_APPS_FILE: appsFile, PUSHI_ADMIN_TOKEN: 'operator-token-for-tests' });
    consoleUrl = `http://127.0.0.1:${server.api.port}/console`;
    profile = fs.mkdtempSync(path.join(os.tmpdir(), 'pushi-chromium-'));
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      userDataDir: profile,
      args: [
        '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 1100 });
    page.on('pageerror', (err) => { throw err; });
  }, HOOK);

  after(async () => {
    if (browser) await browser.close();
    if (server) await server.stop();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
    if (appsFile) fs.rmSync(path.dirname(appsFile), { recursive: true, force: true });
  }, HOOK);

  async function signIn(appId, secret) {
    await page.goto(consoleUrl);
    await page.waitForSelector('#app-form', { visible: true });
    await page.$eval('#app-id', (e, v) => { e.value = v; }, appId);
    await page.$eval('#app-secret', (e, v) => { e.value = v; }, secret);
    await page.click('#app-form button[type=submit]');
  }

  /** Waits until `selector` is in the page; fails after SHOWN_WITHIN_MS. */
  async function shown(selector, what) {
    const start = Date.now();
    try {
      await page.waitForSelector(selector, { timeout: SHOWN_WITHIN_MS });
    } catch (err) {
      throw new Error(`${what} not shown within ${SHOWN_WITHIN_MS} ms (${selector})`);
    }
    return Date.now() - start;
  }

  it('refuses a wrong secret', TEST, async () => {
    await signIn(server.app.id, 'not-the-secret');
    await page.waitForFunction(() => document.querySelector('#signin-error').textContent.length > 0, { timeout: 5000 });
    const error = await page.$eval('#signin-error', (e) => e.textContent);
    assert.match(error, /wrong app id and secret/);
    assert.equal(await page.$eval('#console', (e) => e.hidden), true);
  });

  it('signs in with the app and shows a pusher-js connection and its channel', TEST, async () => {
    await signIn(server.app.id, server.app.secret);
    await page.waitForSelector('#console:not([hidden])', { timeout: 5000 });
    await page.waitForFunction(() => document.querySelector('#feed-status').textContent === 'live', { timeout: 5000 });
    await page.waitForSelector('#signin', { hidden: true, timeout: 1000 });
    const cookies = await page.cookies();
    const session = cookies.find((c) => c.name === 'pushi_console');
    assert.ok(session, 'a session cookie');
    assert.equal(session.httpOnly, true);
    assert.equal(session.sameSite, 'Strict');
    assert.equal(await page.evaluate(() => document.cookie), '', 'the page script cannot read the cookie');

    const client = await h.connectClient(server);
    await h.subscribe(client, 'news');
    await shown(`tr[data-socket="${client.connection.socket_id}"]`, 'the connection');
    await shown('#channels tr[data-channel="news"]', 'the channel');
    const count = await page.$eval('#channels tr[data-channel="news"] td:nth-child(2)', (e) => e.textContent);
    assert.equal(count, '1');
    await shown(`#log tr[data-kind="subscribed"][data-channel="news"]`, 'the subscription in the event log');
  });

  it('shows an event triggered with the pusher SDK in the log', TEST, async () => {
    const client = await h.connectClient(server);
    await h.subscribe(client, 'orders');
    const channel = client.channel('orders');
    const received = h.waitFor(channel, 'order-placed');
    await server.sdk().trigger('orders', 'order-placed', { id: 7, item: 'tea' });
    await received;
    await shown('#log tr[data-kind="api_message"][data-event="order-placed"]', 'the SDK event');
    const detail = await page.$eval('#log tr[data-event="order-placed"] td:last-child', (e) => e.textContent);
    assert.match(detail, /"item":"tea"/);
    assert.match(detail, /1 recipients/);
  });

  it('sends the test-event form to a pusher-js client', TEST, async () => {
    const client = await h.connectClient(server);
    await h.subscribe(client, 'console-news');
    const channel = client.channel('console-news');
    const received = h.waitFor(channel, 'from-console');
    await page.$eval('#event-channel', (e) => { e.value = 'console-news'; });
    await page.$eval('#event-name', (e) => { e.value = 'from-console'; });
    await page.$eval('#event-data', (e) => { e.value = '{"hello":"browser"}'; });
    await page.click('#event-form button[type=submit]');
    const data = await received;
    assert.deepEqual(data, { hello: 'browser' });
    await page.waitForFunction(() => document.querySelector('#event-result').textContent === 'sent', { timeout: 5000 });
    await shown('#log tr[data-kind="api_message"][data-event="from-console"]', 'the test event in the log');
  });

  it('shows a presence member appear and disappear', TEST, async () => {
    const alice = await h.connectClient(server, { presence: { user_id: 'alice', user_info: { name: 'Alice' } } });
    await h.subscribe(alice, 'presence-lobby');
    await shown('#channels tr[data-members-of="presence-lobby"] li[data-member="alice"]', 'the member');
    await shown('#log tr[data-kind="member_added"][data-channel="presence-lobby"]', 'member_added in the log');
    const users = await page.$eval('#channels tr[data-channel="presence-lobby"] td:nth-child(3)', (e) => e.textContent);
    assert.equal(users, '1');
    alice.unsubscribe('presence-lobby');
    const start = Date.now();
    await page.waitForFunction(() => !document.querySelector('li[data-member="alice"]'), { timeout: SHOWN_WITHIN_MS });
    assert.ok(Date.now() - start <= SHOWN_WITHIN_MS);
    await shown('#log tr[data-kind="member_removed"][data-channel="presence-lobby"]', 'member_removed in the log');
    fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    process.stdout.write(`# console screenshot: ${SCREENSHOT}\n`);
  });

  it('does not let an app session open another app', TEST, async () => {
    const result = await page.evaluate(async (other) => {
      const state = await fetch(`/console/apps/${other}`);
      const feed = await new Promise((resolve) => {
        const ws = new WebSocket(`ws://${location.host}/console/feed?app=${other}`);
        ws.onopen = () => { ws.close(); resolve('opened'); };
        ws.onerror = () => resolve('refused');
      });
      const send = await fetch('/console/events', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ app_id: other, channel: 'x', name: 'y', data: '{}' }),
      });
      return { state: state.status, feed, send: send.status };
    }, OTHER.id);
    assert.deepEqual(result, { state: 403, feed: 'refused', send: 403 });
    // The page itself ignores ?app= for an app session: it shows its own app.
    await page.goto(`${consoleUrl}?app=${OTHER.id}`);
    await page.waitForSelector('#console:not([hidden])', { timeout: 5000 });
    assert.equal(await page.$eval('#app-select', (e) => e.value), server.app.id);
    assert.equal(await page.$eval('#app-select', (e) => e.disabled), true);
  });

  it('lets the operator pick any app, and signs out', TEST, async () => {
    await page.click('#signout');
    await page.waitForSelector('#signin:not([hidden])', { timeout: 5000 });
    await page.$eval('#admin-token', (e) => { e.value = 'operator-token-for-tests'; });
    await page.click('#admin-form button[type=submit]');
    await page.waitForSelector('#console:not([hidden])', { timeout: 5000 });
    const options = await page.$$eval('#app-select option', (os) => os.map((o) => o.value));
    assert.deepEqual(options.sort(), [OTHER.id, server.app.id].sort());
    await page.select('#app-select', OTHER.id);
    const other = h.createClient(server, { key: OTHER.key });
    await h.waitForState(other, 'connected');
    await shown(`tr[data-socket="${other.connection.socket_id}"]`, "the other app's connection");
    await page.click('#signout');
    await page.waitForSelector('#signin:not([hidden])', { timeout: 5000 });
    const status = await page.evaluate(async () => (await fetch('/console/session')).status);
    assert.equal(status, 401);
  });
});

'use strict';
// Restarts that refuse nobody: pusher-js clients reconnect soon after the
// server is restarted on the same ports, started directly (bind again) and
// with systemd socket activation emulated by activate.py (the listening
// sockets outlive the process). The times are measurements, printed as test
// diagnostics; the assertion is only that the client comes back within a
// generous bound.

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const h = require('./helpers');

const BOUND_MS = 10000;
const TEST = { timeout: 60000 };

/** Resolves with Date.now() when the client is next `connected`; rejects after `ms`. */
function connectedWithin(client, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.connection.unbind('state_change', onChange);
      reject(new Error(`pusher-js not connected again within ${ms} ms (state ${client.connection.state})`));
    }, ms);
    const onChange = (change) => {
      if (change.current === 'connected') {
        clearTimeout(timer);
        client.connection.unbind('state_change', onChange);
        resolve(Date.now());
      }
    };
    client.connection.bind('state_change', onChange);
  });
}

function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', resolve));
}

describe('restart', () => {
  it('direct start: pusher-js reconnects after SIGTERM and a start on the same ports', TEST, async (t) => {
    const first = await h.startServer();
    const client = await h.connectClient(first);
    const ports = { SERVER_PORT: String(first.ws.port), APP_PORT: String(first.api.port) };
    const back = connectedWithin(client, 30000);
    const stopAt = Date.now();
    first.child.kill('SIGTERM');
    await exited(first.child);
    const exitedAt = Date.now();
    const second = await h.startServer(ports);
    const readyAt = Date.now();
    try {
      const connectedAt = await back;
      const report = {
        drain_ms: exitedAt - stopAt,
        restart_ms: readyAt - exitedAt,
        reconnect_after_ready_ms: connectedAt - readyAt,
        reconnect_after_sigterm_ms: connectedAt - stopAt,
      };
      t.diagnostic(`direct restart: ${JSON.stringify(report)}`);
      process.stdout.write(`# MEASURE direct ${JSON.stringify(report)}\n`);
      assert.ok(connectedAt - readyAt <= BOUND_MS, `reconnected ${connectedAt - readyAt} ms after the new server was ready`);
    } finally {
      client.disconnect();
      await first.stop();
      await second.stop();
    }
  });

  it('socket activation: pusher-js reconnects through the kept listening socket', TEST, async (t) => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pushi-node-activate-'));
    const holder = spawn('python3', [path.join(__dirname, 'activate.py'), h.BINARY], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: {
        PATH: process.env.PATH || '/usr/bin:/bin',
        PUSHI_DATA_DIR: dataDir,
        PUSHI_APP_ID: h.APP.id,
        PUSHI_APP_KEY: h.APP.key,
        PUSHI_APP_SECRET: h.APP.secret,
        RUST_LOG: 'info',
      },
    });
    const lines = [];
    const waiters = [];
    readline.createInterface({ input: holder.stdout }).on('line', (line) => {
      lines.push(line);
      for (const w of waiters.splice(0)) w();
    });
    const log = [];
    const listening = [];
    readline.createInterface({ input: holder.stderr }).on('line', (line) => {
      log.push(line);
      if (/REST listener on/.test(line)) for (const w of listening.splice(0)) w(Date.now());
    });
    const nextLine = async (pattern) => {
      const deadline = Date.now() + 20000;
      for (;;) {
        const found = lines.findIndex((l) => pattern.test(l));
        if (found >= 0) return lines.splice(found, 1)[0];
        if (Date.now() > deadline) throw new Error(`activate.py: no ${pattern}; log:\n${log.slice(-20).join('\n')}`);
        await new Promise((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 200);
        });
      }
    };
    const ready = () => new Promise((resolve) => listening.push(resolve));
    const ports = JSON.parse(await nextLine(/^\{/));
    const server = { ws: { host: '127.0.0.1', port: ports.ws }, api: { host: '127.0.0.1', port: ports.api }, app: h.APP, clients: new Set() };
    server.sdk = () => new h.PusherSDK({ appId: h.APP.id, key: h.APP.key, secret: h.APP.secret, host: '127.0.0.1', port: ports.api, useTLS: false });
    let client;
    try {
      let up = ready();
      holder.stdin.write('start\n');
      await nextLine(/^started/);
      await up;
      client = await h.connectClient(server);
      const back = connectedWithin(client, 30000);
      const stopAt = Date.now();
      holder.stdin.write('stop\n');
      await nextLine(/^stopped/);
      const exitedAt = Date.now();
      up = ready();
      holder.stdin.write('start\n');
      await nextLine(/^started/);
      const readyAt = await up;
      const connectedAt = await back;
      const report = {
        drain_ms: exitedAt - stopAt,
        restart_ms: readyAt - exitedAt,
        reconnect_after_ready_ms: connectedAt - readyAt,
        reconnect_after_sigterm_ms: connectedAt - stopAt,
      };
      t.diagnostic(`socket-activated restart: ${JSON.stringify(report)}`);
      process.stdout.write(`# MEASURE activated ${JSON.stringify(report)}\n`);
      assert.ok(connectedAt - readyAt <= BOUND_MS, `reconnected ${connectedAt - readyAt} ms after the new server was ready`);
    } finally {
      if (client) client.disconnect();
      holder.stdin.end();
      await exited(holder);
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

// pushi web console: sign-in, the live feed (/console/feed), tables, the
// event log, the test-event form and two charts. No framework, no build
// step; every text from the server goes into the page as text (never HTML):
// event data comes from clients.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_LOG = 500;
  const CHART_SPAN_MS = 5 * 60 * 1000;

  let session = null; // {scope, app_id, apps, csrf}
  let app = null; // the app id shown
  let feed = null;
  let feedGeneration = 0;
  let paused = false;
  let held = []; // events that arrived while paused
  let samples = []; // {t, connections, rate}
  let lastCount = null; // {t, messages}
  let dropped = 0;

  /** Builds an element: el('td', {class: 'x'}, 'text', child). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    for (const c of children) {
      node.append(c instanceof Node ? c : document.createTextNode(c === undefined || c === null ? '' : String(c)));
    }
    return node;
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (session && method !== 'GET') headers['X-Console-CSRF'] = session.csrf;
    const response = await fetch(path, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (_) { /* no body */ }
    return { status: response.status, data };
  }

  function showSignIn(message) {
    session = null;
    closeFeed();
    $('console').hidden = true;
    $('signout').hidden = true;
    $('who').textContent = '';
    $('signin').hidden = false;
    $('signin-error').textContent = message || '';
  }

  function showConsole(s) {
    session = s;
    $('signin').hidden = true;
    $('console').hidden = false;
    $('signout').hidden = false;
    $('who').textContent = s.scope === 'operator' ? 'operator (every app)' : `app ${s.app_id}`;
    const select = $('app-select');
    select.replaceChildren(...s.apps.map((a) => el('option', { value: a.id }, `${a.id}${a.name && a.name !== a.id ? ` (${a.name})` : ''}`)));
    select.disabled = s.scope !== 'operator';
    const wanted = new URLSearchParams(location.search).get('app');
    choose(s.app_id || (s.apps.some((a) => a.id === wanted) ? wanted : (s.apps[0] || {}).id));
  }

  function choose(id) {
    app = id || null;
    if (app) $('app-select').value = app;
    samples = [];
    lastCount = null;
    dropped = 0;
    $('log').tBodies[0].replaceChildren();
    held = [];
    openFeed();
  }

  function closeFeed() {
    feedGeneration += 1;
    if (feed) feed.close();
    feed = null;
  }

  function openFeed() {
    closeFeed();
    if (!app) return;
    const generation = feedGeneration;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}/console/feed?app=${encodeURIComponent(app)}`);
    feed = socket;
    $('feed-status').textContent = 'connecting…';
    socket.onopen = () => { $('feed-status').textContent = 'live'; };
    socket.onmessage = (m) => {
      if (generation !== feedGeneration) return;
      let msg;
      try { msg = JSON.parse(m.data); } catch (_) { return; }
      if (msg.type === 'snapshot') render(msg);
      else if (msg.type === 'events') {
        dropped = msg.dropped || 0;
        for (const e of msg.events) addEvent(e);
        logStatus();
      }
    };
    socket.onclose = async () => {
      if (generation !== feedGeneration) return;
      $('feed-status').textContent = 'disconnected; retrying…';
      const r = await api('GET', '/console/session');
      if (r.status !== 200) return showSignIn('Your console session ended; sign in again.');
      setTimeout(() => { if (generation === feedGeneration) openFeed(); }, 1000);
    };
  }

  function render(snap) {
    const a = (snap.apps || []).find((x) => x.id === app) || (snap.apps || [])[0];
    const server = snap.server || {};
    if (a) {
      $('stat-connections').textContent = a.connections;
      $('stat-channels').textContent = a.channel_count;
      const now = Date.now();
      let rate = 0;
      if (lastCount) {
        const dt = (now - lastCount.t) / 1000;
        if (dt > 0) rate = Math.max(0, (a.messages - lastCount.messages) / dt);
      }
      lastCount = { t: now, messages: a.messages };
      $('stat-rate').textContent = rate.toFixed(rate < 10 ? 1 : 0);
      samples.push({ t: now, connections: a.connections, rate });
      samples = samples.filter((s) => s.t >= now - CHART_SPAN_MS);
      renderChannels(a);
      renderSockets(a);
    }
    const hooks = server.webhooks || {};
    $('stat-webhooks').textContent = `${hooks.sent || 0} / ${hooks.failed || 0}`;
    let sent = 0; let failed = 0;
    for (const h of ((server.deliveries || {}).handlers || [])) { sent += h.stats.sent; failed += h.stats.failed; }
    $('stat-deliveries').textContent = `${sent} / ${failed}`;
    const store = server.store || {};
    const storeNode = $('stat-store');
    storeNode.textContent = store.status || '–';
    storeNode.className = `value ${store.status === 'ok' ? 'ok' : 'bad'}`;
    chart($('chart-connections'), samples.map((s) => [s.t, s.connections]));
    chart($('chart-messages'), samples.map((s) => [s.t, s.rate]));
  }

  function renderChannels(a) {
    const rows = [];
    for (const c of a.channels) {
      rows.push(el('tr', { 'data-channel': c.name },
        el('td', {}, c.name), el('td', {}, c.subscription_count), el('td', {}, c.user_count === undefined ? '' : c.user_count)));
      if (c.members && c.members.length) {
        const list = el('ul', {}, ...c.members.map((m) => el('li', { 'data-member': m.id, title: JSON.stringify(m.info) }, m.id)));
        rows.push(el('tr', { 'data-members-of': c.name }, el('td', { class: 'members', colspan: 3 }, 'members: ', list)));
      }
    }
    $('channels').tBodies[0].replaceChildren(...rows);
    const more = a.channel_count - a.channels.length;
    $('channels-more').textContent = more > 0 ? `and ${more} more` : (a.channel_count ? '' : 'no occupied channels');
  }

  function renderSockets(a) {
    $('sockets').tBodies[0].replaceChildren(...a.sockets.map((s) => el('tr', { 'data-socket': s.socket_id },
      el('td', {}, s.socket_id), el('td', {}, s.user_id || ''),
      el('td', {}, s.channels.join(', ') + (s.channel_count > s.channels.length ? ' …' : '')))));
    const more = a.connections - a.sockets.length;
    $('sockets-more').textContent = more > 0 ? `and ${more} more` : (a.connections ? '' : 'no connections');
  }

  function chart(canvas, points) {
    const ctx = canvas.getContext('2d');
    const w = canvas.width; const h = canvas.height; const pad = 18;
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = '#dde1e8';
    ctx.beginPath(); ctx.moveTo(pad, h - pad); ctx.lineTo(w, h - pad); ctx.stroke();
    const max = Math.max(1, ...points.map((p) => p[1]));
    ctx.fillStyle = '#6b7385';
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillText(String(Math.round(max * 10) / 10), 2, 12);
    if (points.length < 2) return;
    const t1 = points[points.length - 1][0]; const t0 = t1 - CHART_SPAN_MS;
    ctx.strokeStyle = '#3556d8';
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach(([t, v], i) => {
      const x = pad + ((t - t0) / CHART_SPAN_MS) * (w - pad);
      const y = h - pad - (v / max) * (h - 2 * pad);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }

  function details(e) {
    const parts = [];
    if (e.socket_id) parts.push(`socket ${e.socket_id}`);
    if (e.user_id !== undefined) parts.push(`user ${e.user_id}`);
    if (e.recipients !== undefined) parts.push(`${e.recipients} recipients`);
    if (e.data !== undefined) {
      const text = typeof e.data === 'string' ? e.data : JSON.stringify(e.data);
      parts.push(text.length > 300 ? `${text.slice(0, 300)}…` : text);
    }
    return parts.join(' · ');
  }

  function matches(row) {
    const c = $('filter-channel').value.trim();
    const ev = $('filter-event').value.trim();
    return (!c || (row.dataset.channel || '').includes(c)) && (!ev || (row.dataset.event || '').includes(ev));
  }

  function addEvent(e) {
    if (paused) {
      held.push(e);
      if (held.length > MAX_LOG) { held.shift(); dropped += 1; }
      return;
    }
    const time = new Date(e.time || Date.now());
    const row = el('tr', { 'data-kind': e.name, 'data-channel': e.channel || '', 'data-event': e.event || '' },
      el('td', {}, time.toLocaleTimeString()), el('td', {}, el('span', { class: `kind ${e.name}` }, e.name)),
      el('td', {}, e.channel || ''), el('td', {}, e.event || ''), el('td', {}, details(e)));
    row.hidden = !matches(row);
    const body = $('log').tBodies[0];
    body.prepend(row);
    while (body.rows.length > MAX_LOG) body.deleteRow(body.rows.length - 1);
  }

  function logStatus() {
    const parts = [];
    if (paused) parts.push(`paused, ${held.length} waiting`);
    if (dropped) parts.push(`${dropped} events dropped (the console could not keep up)`);
    $('log-status').textContent = parts.join('; ');
  }

  function refilter() {
    for (const row of $('log').tBodies[0].rows) row.hidden = !matches(row);
  }

  $('app-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const r = await api('POST', '/console/session', { app_id: $('app-id').value.trim(), secret: $('app-secret').value });
    $('app-secret').value = '';
    if (r.status === 200) showConsole(r.data);
    else showSignIn((r.data && r.data.error) || `sign-in failed (${r.status})`);
  });

  $('admin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const r = await api('POST', '/console/session', { token: $('admin-token').value });
    $('admin-token').value = '';
    if (r.status === 200) showConsole(r.data);
    else showSignIn((r.data && r.data.error) || `sign-in failed (${r.status})`);
  });

  $('signout').addEventListener('click', async () => {
    await api('DELETE', '/console/session');
    showSignIn('Signed out.');
  });

  $('app-select').addEventListener('change', () => choose($('app-select').value));

  $('event-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = { name: $('event-name').value.trim(), channel: $('event-channel').value.trim(), data: $('event-data').value };
    if (session && session.scope === 'operator') body.app_id = app;
    const r = await api('POST', '/console/events', body);
    const out = $('event-result');
    out.textContent = r.status === 200 ? 'sent' : `refused: ${(r.data && r.data.error) || r.status}`;
    out.className = r.status === 200 ? 'ok' : 'bad';
  });

  $('pause').addEventListener('click', () => {
    paused = !paused;
    $('pause').textContent = paused ? 'Resume' : 'Pause';
    if (!paused) { const waiting = held; held = []; waiting.forEach(addEvent); }
    logStatus();
  });

  $('clear').addEventListener('click', () => { $('log').tBodies[0].replaceChildren(); held = []; logStatus(); });
  $('filter-channel').addEventListener('input', refilter);
  $('filter-event').addEventListener('input', refilter);

  api('GET', '/console/session').then((r) => (r.status === 200 ? showConsole(r.data) : showSignIn()));
})();

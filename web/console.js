// The console: plain JavaScript over the REST API, no build step, no third-party code.
//
// Authentication is the session cookie (HttpOnly, set by log-in or sign-up). The CSRF token that
// log-in, sign-up and GET /v1/auth/me return is kept in this page's memory only (never in
// storage) and sent as X-CSRF-Token on every non-GET call, as the API requires.
//
// Everything the API returns is put into the page with textContent (the el() helper below), never
// as HTML: an endpoint name, a reason or a memo can never become markup.
'use strict';

const $ = (id) => document.getElementById(id);

const state = {
  me: null,          // GET /v1/auth/me
  csrf: '',          // X-CSRF-Token of this session (memory only)
  view: '',
  timer: null,       // the current view's refresh timer
  catalog: [],
  endpoints: [],
  ledgerCursor: null,
  abort: null,       // AbortController of a playground stream in flight
  history: [],       // playground messages [{role, content}]
};

const REFRESH_MS = 2000; // endpoints and hosts change state within seconds; cheap list queries

// ---- small helpers ----

// el('td', {class: 'x', 'aria-label': 'y'}, 'text', child…): strings become text nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'onclick') e.addEventListener('click', v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toISOString().replace('T', ' ').slice(0, 19);
}

function flash(msg) {
  $('flash').textContent = msg || '';
  if (msg) setTimeout(() => { if ($('flash').textContent === msg) $('flash').textContent = ''; }, 5000);
}

function showError(id, e) { $(id).textContent = e ? (e.message || String(e)) : ''; }

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code || body?.error?.type;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  const res = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({}));
  if (res.status === 401 && state.me && !path.startsWith('/v1/auth/')) {
    signedOut('Your session ended: please log in again.');
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = 'Copied';
  } catch {
    // No clipboard permission (plain http, old browser): select the text for a manual copy.
    const range = document.createRange();
    range.selectNodeContents(button.parentElement.querySelector('code'));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.textContent = 'Press Ctrl+C';
  }
  setTimeout(() => { button.textContent = 'Copy'; }, 2000);
}

// ---- sessions ----

async function start() {
  try {
    const me = await api('GET', '/v1/auth/me');
    signedIn(me);
  } catch {
    signedOut();
  }
}

function signedIn(me) {
  state.me = me;
  state.csrf = me.csrf_token || '';
  const user = me.user;
  $('who').textContent = user && user.email !== me.account.name ? `${user.email} · ${me.account.name}` : me.account.name;
  $('nav-admin').hidden = !isAdmin();
  $('nav').hidden = false;
  $('who-box').hidden = false;
  $('view-auth').hidden = true;
  route();
}

function isAdmin() { return state.me?.user?.role === 'admin'; }

function signedOut(msg) {
  state.me = null;
  state.csrf = '';
  stopTimer();
  if (state.abort) state.abort.abort();
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  $('nav').hidden = true;
  $('who-box').hidden = true;
  $('who').textContent = '';
  $('key-secret-box').hidden = true;
  $('key-secret').textContent = '';
  $('token-box').hidden = true;
  $('token-secret').textContent = '';
  $('view-auth').hidden = false;
  flash(msg || '');
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  showError('login-error', null);
  try {
    const r = await api('POST', '/v1/auth/login', { email: $('login-email').value.trim(), password: $('login-password').value });
    $('login-password').value = '';
    state.csrf = r.csrf_token;
    signedIn(await api('GET', '/v1/auth/me'));
  } catch (e) { showError('login-error', e); }
});

$('signup-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  showError('signup-error', null);
  try {
    const r = await api('POST', '/v1/auth/signup', {
      email: $('signup-email').value.trim(), password: $('signup-password').value,
      account_name: $('signup-account').value.trim(),
    });
    $('signup-password').value = '';
    state.csrf = r.csrf_token;
    signedIn(await api('GET', '/v1/auth/me'));
    flash('Welcome! Your account is ready.');
  } catch (e) { showError('signup-error', e); }
});

$('logout').addEventListener('click', async () => {
  try { await api('POST', '/v1/auth/logout'); } catch { /* the session is gone either way */ }
  location.hash = '';
  signedOut('You are logged out.');
});

// ---- views ----

const views = {
  endpoints: { enter: enterEndpoints, refresh: refreshEndpoints },
  playground: { enter: enterPlayground },
  keys: { enter: refreshKeys },
  billing: { enter: enterBilling },
  admin: { enter: refreshHosts, refresh: refreshHosts, admin: true },
};

function stopTimer() { clearInterval(state.timer); state.timer = null; }

function route() {
  if (!state.me) return;
  let name = location.hash.slice(1);
  if (!views[name] || (views[name].admin && !isAdmin())) name = 'endpoints';
  stopTimer();
  state.view = name;
  for (const [n] of Object.entries(views)) $(`view-${n}`).hidden = n !== name;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  views[name].enter();
  if (views[name].refresh) state.timer = setInterval(views[name].refresh, REFRESH_MS);
}

window.addEventListener('hashchange', route);

// ---- endpoints ----

async function enterEndpoints() {
  try {
    state.catalog = (await api('GET', '/v1/catalog')).data;
    renderCatalog();
  } catch (e) { showError('deploy-error', e); }
  refreshEndpoints();
}

function suggestName(model) {
  const base = model.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^[^a-z]+/, '').slice(0, 50) || 'ep';
  return `${base}-${Math.random().toString(16).slice(2, 6)}`;
}

function renderCatalog() {
  const box = $('catalog');
  box.replaceChildren();
  for (const m of state.catalog) {
    const slug = m.id.replace(/[^A-Za-z0-9_-]/g, '_');
    const nameId = `deploy-name-${slug}`, repId = `deploy-replicas-${slug}`, kindId = `deploy-kind-${slug}`;
    const price = (micros) => `$${(micros / 1e6).toFixed(2)}`;
    const kinds = m.device_kinds || [];
    const form = el('form', { class: 'card model', role: 'listitem', 'aria-label': `Deploy ${m.id}`, dataset: { model: m.id } },
      el('h3', {}, m.id),
      el('p', { class: 'hint' }, `${m.family} · context ${m.context_length} · ${kinds.join('/').toUpperCase()}` +
        ` · ${m.min_devices} device${m.min_devices === 1 ? '' : 's'} min` +
        ` · ${price(m.input_price_micros_per_mtok)}/${price(m.output_price_micros_per_mtok)} per M tokens in/out`),
      el('div', { class: 'row' },
        el('label', { for: nameId }, 'Name', el('input', { id: nameId, name: 'name', required: true, maxlength: 63,
          pattern: '[a-z][a-z0-9-]*', value: suggestName(m.id), title: 'lower-case letters, digits and dashes' })),
        el('label', { for: repId }, 'Replicas', el('input', { id: repId, name: 'replicas', type: 'number', min: 1, max: 16, value: 1, class: 'narrow' })),
        kinds.length > 1 ? el('label', { for: kindId }, 'Device', el('select', { id: kindId, name: 'device_kind' },
          kinds.map((k) => el('option', { value: k }, k.toUpperCase())))) : null,
        el('button', { type: 'submit' }, 'Deploy')));
    form.addEventListener('submit', (ev) => { ev.preventDefault(); deploy(form, m); });
    box.append(form);
  }
  if (!state.catalog.length) box.append(el('p', { class: 'empty' }, 'The catalog is empty: an operator adds models with `orp-controller model add`.'));
}

async function deploy(form, model) {
  showError('deploy-error', null);
  const body = { name: form.elements.name.value.trim(), model: model.id, replicas: Number(form.elements.replicas.value) };
  if (form.elements.device_kind) body.device_kind = form.elements.device_kind.value;
  const button = form.querySelector('button');
  button.disabled = true;
  try {
    const ep = await api('POST', '/v1/endpoints', body);
    flash(`Deploying ${ep.name}…`);
    form.elements.name.value = suggestName(model.id);
    await refreshEndpoints();
  } catch (e) { showError('deploy-error', e); } finally { button.disabled = false; }
}

function reasons(ep) {
  const all = [];
  if (ep.status === 'stopped' && ep.status_reason) all.push(ep.status_reason);
  for (const r of ep.replica_states || []) if (r.reason) all.push(r.reason);
  return [...new Set(all)].join('; ');
}

async function refreshEndpoints() {
  let list;
  try {
    list = (await api('GET', '/v1/endpoints')).data;
    showError('endpoints-error', null);
  } catch (e) { showError('endpoints-error', e); return; }
  state.endpoints = list;
  const body = $('endpoints');
  body.replaceChildren(...list.map((ep) => {
    const stopped = ep.status === 'stopped';
    return el('tr', { dataset: { name: ep.name, id: ep.id } },
      el('th', { scope: 'row' }, ep.name),
      el('td', {}, ep.model),
      el('td', {}, `${ep.replicas} × ${ep.gpus_per_replica} ${ep.device_kind.toUpperCase()}`),
      el('td', {}, el('span', { class: `status status-${ep.status}`, dataset: { status: ep.status } }, ep.status)),
      el('td', { class: 'replicas' }, `${ep.replicas_ready}/${ep.replicas}`),
      el('td', { class: 'reason' }, reasons(ep)),
      el('td', { class: 'actions' },
        stopped
          ? el('button', { type: 'button', class: 'secondary', 'aria-label': `Start ${ep.name}`, onclick: () => toggle(ep, 'start') }, 'Start')
          : el('button', { type: 'button', class: 'secondary', 'aria-label': `Stop ${ep.name}`, onclick: () => toggle(ep, 'stop') }, 'Stop'),
        ep.status === 'ready' ? el('a', { class: 'button secondary', href: '#playground', 'aria-label': `Try ${ep.name} in the playground`,
          onclick: () => { state.playWith = ep.name; } }, 'Try') : null,
        el('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${ep.name}`, onclick: () => remove(ep) }, 'Delete')));
  }));
  $('endpoints-empty').hidden = list.length > 0;
}

async function toggle(ep, action) {
  try {
    await api('POST', `/v1/endpoints/${ep.id}/${action}`);
    flash(`${action === 'stop' ? 'Stopping' : 'Starting'} ${ep.name}…`);
    refreshEndpoints();
  } catch (e) { showError('endpoints-error', e); }
}

async function remove(ep) {
  if (!confirm(`Delete endpoint ${ep.name}? Its replicas stop and its name is free again.`)) return;
  try {
    await api('DELETE', `/v1/endpoints/${ep.id}`);
    flash(`Deleted ${ep.name}.`);
    refreshEndpoints();
  } catch (e) { showError('endpoints-error', e); }
}

// ---- playground ----

// The gateway is its own listener (--gateway-port): by default the API port + 1, as quickstart
// runs them; the field can be changed and is remembered in this browser.
function defaultGateway() {
  const port = Number(location.port || (location.protocol === 'https:' ? 443 : 80)) + 1;
  return `${location.protocol}//${location.hostname}:${port}/v1`;
}

async function enterPlayground() {
  if (!$('play-gateway').value) $('play-gateway').value = localStorage.getItem('orp-gateway') || defaultGateway();
  $('play-base').textContent = $('play-gateway').value;
  try {
    state.endpoints = (await api('GET', '/v1/endpoints')).data;
  } catch (e) { showError('play-error', e); }
  const sel = $('play-endpoint');
  const keep = state.playWith || sel.value;
  state.playWith = null;
  const ready = state.endpoints.filter((ep) => ep.status === 'ready');
  sel.replaceChildren(...ready.map((ep) => el('option', { value: ep.name, selected: ep.name === keep }, ep.name)));
  if (!ready.length) sel.append(el('option', { value: '' }, 'no ready endpoint'));
  $('play-send').disabled = !ready.length;
}

$('play-gateway').addEventListener('change', () => {
  localStorage.setItem('orp-gateway', $('play-gateway').value.trim());
  $('play-base').textContent = $('play-gateway').value.trim();
});

function chatBubble(role, content) {
  const b = el('div', { class: `msg msg-${role}` }, el('span', { class: 'who' }, role === 'user' ? 'You' : 'Assistant'), el('p', {}, content));
  $('play-log').append(b);
  b.scrollIntoView({ block: 'end' });
  return b.querySelector('p');
}

// Reads an OpenAI-style server-sent event stream: "data: {json}\n\n" events, "data: [DONE]" at the
// end, ": ping" comments in between. onDelta gets each piece of text.
async function readSSE(res, onDelta) {
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut).replace(/^\r?\n\r?\n/, '');
      const data = event.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (!data) continue;
      if (data === '[DONE]') return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || 'the stream failed');
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) onDelta(delta);
    }
  }
}

$('play-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const model = $('play-endpoint').value, text = $('play-input').value.trim();
  if (!model || !text) return;
  showError('play-error', null);
  state.history.push({ role: 'user', content: text });
  chatBubble('user', text);
  $('play-input').value = '';
  const out = chatBubble('assistant', '');
  out.parentElement.setAttribute('aria-busy', 'true');
  state.abort = new AbortController();
  $('play-send').disabled = true;
  $('play-stop').disabled = false;
  let reply = '';
  try {
    const gw = $('play-gateway').value.trim().replace(/\/+$/, '');
    // Another origin (port): the session cookie goes along with credentials: 'include', and the
    // cookie-authenticated POST needs the CSRF token like any other.
    const res = await fetch(`${gw}/chat/completions`, {
      method: 'POST', credentials: 'include', signal: state.abort.signal,
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': state.csrf },
      body: JSON.stringify({ model, messages: state.history, stream: true }),
    });
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => ({})));
    await readSSE(res, (d) => { reply += d; out.textContent = reply; });
    state.history.push({ role: 'assistant', content: reply });
  } catch (e) {
    if (e.name === 'AbortError') {
      state.history.push({ role: 'assistant', content: reply });
    } else {
      state.history.pop();
      out.parentElement.remove();
      showError('play-error', e instanceof TypeError
        ? new Error(`could not reach the gateway at ${$('play-gateway').value} (is the URL right, and does it allow this origin?)`) : e);
    }
  } finally {
    out.parentElement?.removeAttribute('aria-busy');
    state.abort = null;
    $('play-send').disabled = false;
    $('play-stop').disabled = true;
  }
});

$('play-stop').addEventListener('click', () => state.abort?.abort());
$('play-clear').addEventListener('click', () => { state.history = []; $('play-log').replaceChildren(); });
$('play-input').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey) { ev.preventDefault(); $('play-form').requestSubmit(); }
});

// ---- API keys ----

async function refreshKeys() {
  let list;
  try {
    list = (await api('GET', '/v1/api-keys')).data;
    showError('keys-error', null);
  } catch (e) { showError('keys-error', e); return; }
  $('keys').replaceChildren(...list.map((k) => el('tr', { dataset: { id: k.id } },
    el('th', { scope: 'row' }, k.name || '(unnamed)'),
    el('td', {}, el('code', {}, `${k.prefix}…`)),
    el('td', {}, k.scopes.join(', ') + (k.endpoint_ids ? ` (${k.endpoint_ids.length} endpoint${k.endpoint_ids.length === 1 ? '' : 's'})` : '')),
    el('td', {}, when(k.created_at)),
    el('td', {}, when(k.last_used_at)),
    el('td', { class: 'actions' }, el('button', { type: 'button', class: 'danger', 'aria-label': `Revoke key ${k.name || k.prefix}`,
      onclick: () => revokeKey(k) }, 'Revoke')))));
  if (!list.length) $('keys').append(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'No API keys yet.')));
}

$('key-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  showError('keys-error', null);
  const scopes = [];
  if ($('key-inference').checked) scopes.push('inference');
  if ($('key-manage').checked) scopes.push('manage');
  if (!scopes.length) { showError('keys-error', new Error('pick at least one scope')); return; }
  try {
    const k = await api('POST', '/v1/api-keys', { name: $('key-name').value.trim(), scopes });
    $('key-secret').textContent = k.key;
    $('key-secret-box').hidden = false;
    $('key-name').value = '';
    $('key-copy').focus();
    refreshKeys();
  } catch (e) { showError('keys-error', e); }
});

$('key-copy').addEventListener('click', () => copy($('key-secret').textContent, $('key-copy')));
// The secret leaves the page: it cannot be shown again (the server keeps only its hash).
$('key-done').addEventListener('click', () => { $('key-secret').textContent = ''; $('key-secret-box').hidden = true; });

async function revokeKey(k) {
  if (!confirm(`Revoke the key ${k.name || k.prefix}? Programs using it stop working at once.`)) return;
  try {
    await api('DELETE', `/v1/api-keys/${k.id}`);
    flash('Key revoked.');
    refreshKeys();
  } catch (e) { showError('keys-error', e); }
}

// ---- usage & billing ----

function thisMonth() { return new Date().toISOString().slice(0, 7); }

function statementLinks() {
  const m = $('statement-month').value || thisMonth();
  $('statement-csv').href = `/v1/billing/statements/${encodeURIComponent(m)}?format=csv`;
  $('statement-csv').setAttribute('download', `statement-${m}.csv`);
  $('statement-json').href = `/v1/billing/statements/${encodeURIComponent(m)}`;
}

async function enterBilling() {
  if (!$('statement-month').value) $('statement-month').value = thisMonth();
  statementLinks();
  showError('billing-error', null);
  try {
    const b = await api('GET', '/v1/billing/balance');
    $('balance').textContent = b.balance_display;
    $('balance').classList.toggle('negative', b.balance_micros < 0);
  } catch (e) { showError('billing-error', e); }
  refreshUsage();
  state.ledgerCursor = null;
  $('ledger').replaceChildren();
  loadLedger();
}

$('statement-month').addEventListener('change', statementLinks);
$('usage-granularity').addEventListener('change', refreshUsage);

// Device time is metered in device-milliseconds; people read seconds.
function quantity(q, unit) {
  if (unit === 'device_ms') return `${(q / 1000).toFixed(1)} device-seconds`;
  return `${q} ${unit || ''}`.trim();
}

async function refreshUsage() {
  let rows;
  try {
    rows = (await api('GET', `/v1/billing/usage?granularity=${$('usage-granularity').value}`)).data;
  } catch (e) { showError('billing-error', e); return; }
  $('usage').replaceChildren(...rows.map((u) => el('tr', {},
    el('td', {}, when(u.period_start)), el('td', {}, u.endpoint), el('td', {}, u.kind.replace('usage_', '')),
    el('td', {}, quantity(u.quantity, u.unit)), el('td', { class: 'num' }, u.cost_display))));
  $('usage-empty').hidden = rows.length > 0;
  drawUsage(rows);
}

// Cost per period as bars, oldest on the left: inline SVG, no chart library.
function drawUsage(rows) {
  const box = $('usage-chart');
  box.replaceChildren();
  const per = new Map();
  for (const u of rows) per.set(u.period_start, (per.get(u.period_start) || 0) + u.cost_micros);
  const periods = [...per.keys()].sort().slice(-48);
  if (!periods.length) return;
  const max = Math.max(...periods.map((p) => per.get(p)), 1);
  // At most 48 bars, each 2-24 units wide: one period is a bar, not a wall.
  const W = 600, H = 140, gap = 2, bw = Math.min(24, Math.max(2, (W - gap * periods.length) / periods.length));
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H + 4}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `Cost per ${$('usage-granularity').value}, last ${periods.length} periods`);
  periods.forEach((p, i) => {
    const h = Math.max(1, (per.get(p) / max) * H);
    const r = document.createElementNS(NS, 'rect');
    r.setAttribute('x', String(i * (bw + gap)));
    r.setAttribute('y', String(H - h));
    r.setAttribute('width', String(bw));
    r.setAttribute('height', String(h));
    const t = document.createElementNS(NS, 'title');
    t.textContent = `${when(p)}: $${(per.get(p) / 1e6).toFixed(6)}`;
    r.append(t);
    svg.append(r);
  });
  box.append(svg);
}

async function loadLedger() {
  const q = state.ledgerCursor ? `&starting_after=${encodeURIComponent(state.ledgerCursor)}` : '';
  let page;
  try {
    page = await api('GET', `/v1/billing/ledger?limit=20${q}`);
  } catch (e) { showError('billing-error', e); return; }
  $('ledger').append(...page.data.map((l) => el('tr', { dataset: { id: l.id } },
    el('td', {}, when(l.at)), el('td', {}, l.kind),
    el('td', { class: `num ${l.amount_micros < 0 ? 'negative' : 'positive'}` }, l.amount_display),
    el('td', {}, l.quantity === null ? '' : quantity(l.quantity, l.unit)), el('td', {}, l.memo || ''))));
  state.ledgerCursor = page.has_more ? page.next_starting_after : null;
  $('ledger-more').hidden = !page.has_more;
}

$('ledger-more').addEventListener('click', loadLedger);

// ---- admin ----

async function refreshHosts() {
  let hosts;
  try {
    hosts = (await api('GET', '/v1/admin/hosts')).data;
    showError('admin-error', null);
  } catch (e) { showError('admin-error', e); return; }
  $('hosts').replaceChildren(...hosts.map((h) => {
    const flags = [h.state, h.cordoned ? 'cordoned' : null, h.draining ? 'draining' : null].filter(Boolean).join(', ');
    const live = h.state !== 'revoked';
    const act = (what, label) => el('button', { type: 'button', class: what === 'drain' ? 'danger' : 'secondary',
      'aria-label': `${label} ${h.name}`, onclick: () => hostAction(h, what) }, label);
    return el('tr', { dataset: { name: h.name, id: h.id } },
      el('th', { scope: 'row' }, h.name, el('div', { class: 'hint' }, h.address || '')),
      el('td', { class: 'host-state' }, flags),
      el('td', {}, h.pool || '—'),
      el('td', {}, el('ul', { class: 'devices' }, (h.devices || []).map((d) => el('li', { class: d.healthy === false ? 'negative' : '' },
        `#${d.index} ${d.model || d.kind.toUpperCase()}${d.memory_mib ? ` ${Math.round(d.memory_mib / 1024)} GiB` : ''}` +
        (d.healthy === false ? ' (unhealthy)' : ''))))),
      el('td', {}, when(h.last_seen_at)),
      el('td', { class: 'actions' }, live ? [
        h.cordoned ? act('uncordon', 'Uncordon') : act('cordon', 'Cordon'),
        h.draining ? null : act('drain', 'Drain'),
      ] : null));
  }));
  if (!hosts.length) $('hosts').append(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'No hosts have registered.')));
}

async function hostAction(h, what) {
  if (what === 'drain' && !confirm(`Drain ${h.name}? Its replicas move to other hosts, then it stays cordoned.`)) return;
  try {
    await api('POST', `/v1/admin/hosts/${h.id}/${what}`);
    flash(`${h.name}: ${what} requested.`);
    refreshHosts();
  } catch (e) { showError('admin-error', e); }
}

$('token-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  showError('admin-error', null);
  const body = { ttl_s: Math.round(Number($('token-ttl').value) * 60) };
  if ($('token-pool').value.trim()) body.pool = $('token-pool').value.trim();
  try {
    const t = await api('POST', '/v1/admin/enrollment-tokens', body);
    $('token-secret').textContent = t.token;
    $('token-box').hidden = false;
    $('token-copy').focus();
  } catch (e) { showError('admin-error', e); }
});

$('token-copy').addEventListener('click', () => copy($('token-secret').textContent, $('token-copy')));

$('credit-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  showError('admin-error', null);
  const acct = $('credit-account').value.trim();
  const micros = Math.round(Number($('credit-amount').value) * 1e6);
  try {
    // One idempotency key per credit: a retry after a lost reply (same amount) is the same
    // entry, not a second credit. A new key only after a success.
    state.creditKey ||= `console-${Date.now()}-${Math.random().toString(16).slice(2, 10)}`;
    const r = await api('POST', `/v1/admin/accounts/${encodeURIComponent(acct)}/credits`,
      { amount_micros: micros, idempotency_key: state.creditKey, memo: 'added in the console' });
    state.creditKey = null;
    flash(`Credited ${r.amount_display} to account ${acct}.`);
    $('credit-amount').value = '';
  } catch (e) { showError('admin-error', e); }
});

$('credit-form').addEventListener('input', () => { state.creditKey = null; }); // another credit

start();

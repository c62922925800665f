// The console: plain JavaScript over the REST API, no build step. The one third-party piece is
// uPlot (web/vendor/uplot, MIT), loaded as a plain script, for the charts.
//
// Authentication is the session cookie (HttpOnly, set by log-in or sign-up). The CSRF token that
// log-in, sign-up and GET /v1/auth/me return is kept in this page's memory only (never in
// storage) and sent as X-CSRF-Token on every non-GET call, as the API requires.
//
// Everything the API returns is put into the page with textContent (the el() helper below), never
// as HTML: an endpoint name, a reason, a log line or a memo can never become markup.
//
// Every chart plots a documented REST series as it comes from stored rows:
//   dashboard spend      GET /v1/billing/usage?granularity=hour|day   (ledger charges)
//   billing usage        GET /v1/billing/usage?granularity=…          (per endpoint and kind)
//   endpoint traffic     GET /v1/endpoints/{id}/stats?granularity=minute (usage events)
//   endpoint TTFT, speed the same series' ttft_ms_* and tokens_per_second (the runtime's times)
'use strict';

const $ = (id) => document.getElementById(id);

const state = {
  me: null,          // GET /v1/auth/me
  csrf: '',          // X-CSRF-Token of this session (memory only)
  view: '',
  param: '',         // the id in #endpoints/<id>
  timer: null,       // the current view's refresh timer
  catalog: [],
  presets: new Map(), // model → GET /v1/catalog/presets entry
  endpoints: [],
  ledgerCursor: null,
  auditCursor: null,
  abort: null,       // AbortController of a playground stream in flight
  history: [],       // playground messages [{role, content}]
  charts: {},        // box id → uPlot instance (tests read .data)
  logs: null,        // the endpoint page's log reader {abort, lastId, paused}
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

function usd(micros, digits = 2) {
  return `${micros < 0 ? '-' : ''}$${(Math.abs(micros) / 1e6).toFixed(digits)}`;
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function gb(bytes) {
  if (bytes < 1e9) return `${(bytes / 1e6).toFixed(bytes < 10e6 ? 1 : 0)} MB`;
  return `${(bytes / 1e9).toFixed(bytes < 10e9 ? 1 : 0)} GB`;
}

// Dollars on chart axes and legends: three significant digits, so small amounts stay apart.
const dollars = (v) => `$${v === 0 ? '0' : Number(v.toPrecision(3))}`;

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
    this.param = body?.error?.param || null;
  }
}

// Requests on their way: log-out and a password change (which rotates the session) wait for them,
// so that none reaches the server with a session that just ended.
const inflight = new Set();

async function settle() { await Promise.allSettled([...inflight]); }

function api(method, path, body) {
  const p = apiCall(method, path, body);
  inflight.add(p);
  p.finally(() => inflight.delete(p)).catch(() => {});
  return p;
}

async function apiCall(method, path, body) {
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

async function copy(text, button, node) {
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = 'Copied';
  } catch {
    // No clipboard permission (plain http, old browser): select the text for a manual copy.
    const code = node || button.parentElement.querySelector('code, pre');
    if (code) {
      const range = document.createRange();
      range.selectNodeContents(code);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
    }
    button.textContent = 'Press Ctrl+C';
  }
  setTimeout(() => { button.textContent = label; }, 2000);
}

// Buttons with data-copy="<id>" copy that element's text.
document.addEventListener('click', (ev) => {
  const b = ev.target.closest('button[data-copy]');
  if (b) copy($(b.dataset.copy).textContent, b, $(b.dataset.copy));
});

// The gateway is its own listener (--gateway-port): by default the API port + 1, as quickstart
// runs them; the playground's field can change it and is remembered in this browser.
function gatewayUrl() {
  const saved = localStorage.getItem('orp-gateway');
  if (saved) return saved;
  const port = Number(location.port || (location.protocol === 'https:' ? 443 : 80)) + 1;
  return `${location.protocol}//${location.hostname}:${port}/v1`;
}

// ---- charts (uPlot) ----

const PALETTE = ['#2557d6', '#137333', '#b3261e', '#8a5a00', '#6b3fa0', '#0b7285'];

// Draws (or redraws) a chart in box `id`: x in seconds, series [{label, values}], bars or lines.
// The box gets an aria-label that says what the chart shows in words.
// dots: mark each value (for sparse series, where a minute between two empty ones has no line).
function drawChart(id, { x, series, bars = false, dots = false, yLabel = '', valueFmt = (v) => String(v), summary }) {
  const box = $(id);
  const width = Math.max(260, Math.floor(box.clientWidth || 600));
  const opts = {
    width, height: 200,
    legend: { show: true },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.1 : 1] } },
    axes: [{ stroke: '#5f6b7a', grid: { stroke: '#e3e6ea' } },
      { stroke: '#5f6b7a', grid: { stroke: '#e3e6ea' }, label: yLabel, size: 60, values: (u, vals) => vals.map(valueFmt) }],
    series: [{}, ...series.map((s, i) => ({
      label: s.label, stroke: PALETTE[i % PALETTE.length], width: bars ? 1 : 2,
      fill: bars ? `${PALETTE[i % PALETTE.length]}99` : undefined,
      paths: bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined,
      points: { show: dots, size: 6 }, value: (u, v) => (v === null || v === undefined ? '—' : valueFmt(v)),
    }))],
  };
  const data = [x, ...series.map((s) => s.values)];
  box.setAttribute('aria-label', summary || series.map((s) => s.label).join(', '));
  // The same chart again (a refresh): new data in place, so the legend and the hover stay.
  const old = state.charts[id];
  if (old && old.root.isConnected && old.series.length === series.length + 1 &&
      series.every((s, i) => old.series[i + 1].label === s.label)) {
    if (box.clientWidth && old.width !== width) old.setSize({ width, height: 200 });
    old.setData(data);
    return;
  }
  old?.destroy();
  box.replaceChildren();
  box.setAttribute('role', 'img');
  state.charts[id] = new uPlot(opts, data, box);
}

window.addEventListener('resize', () => {
  for (const [id, u] of Object.entries(state.charts)) {
    const box = $(id);
    if (box && box.offsetParent && box.clientWidth) u.setSize({ width: Math.max(260, box.clientWidth), height: 200 });
  }
});

// n periods of `stepS` seconds ending with the current one (UTC-aligned), in seconds.
function periodStarts(n, stepS) {
  const now = Math.floor(Date.now() / 1000 / stepS) * stepS;
  return Array.from({ length: n }, (_, i) => now - (n - 1 - i) * stepS);
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
  state.csrf = me.csrf_token || state.csrf || '';
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
  leaveView();
  if (state.abort) state.abort.abort();
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  $('admin-nav').hidden = true;
  $('nav').hidden = true;
  $('who-box').hidden = true;
  $('who').textContent = '';
  $('key-secret-box').hidden = true;
  $('key-secret').textContent = '';
  $('token-box').hidden = true;
  $('token-secret').textContent = '';
  $('token-command').textContent = '';
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
  leaveView();
  await settle();
  try { await api('POST', '/v1/auth/logout'); } catch { /* the session is gone either way */ }
  location.hash = '';
  signedOut('You are logged out.');
});

// ---- views ----

const views = {
  dashboard: { enter: enterDashboard, refresh: refreshDashboard },
  catalog: { enter: enterCatalog },
  endpoints: { enter: refreshEndpoints, refresh: refreshEndpoints },
  endpoint: { enter: enterEndpoint, refresh: refreshEndpoint, leave: stopLogs, nav: 'endpoints' },
  playground: { enter: enterPlayground },
  keys: { enter: refreshKeys },
  billing: { enter: enterBilling },
  quotas: { enter: enterQuotas },
  audit: { enter: enterAudit },
  account: { enter: enterAccount },
  admin: { enter: refreshHosts, refresh: refreshHosts, admin: true },
  'admin-accounts': { enter: enterAccounts, admin: true, nav: 'admin' },
  'admin-gpus': { enter: enterGpus, admin: true, nav: 'admin' },
  'admin-catalog': { enter: enterAdminCatalog, admin: true, nav: 'admin' },
  'admin-tokens': { enter: enterTokens, admin: true, nav: 'admin' },
};

function leaveView() {
  clearInterval(state.timer);
  state.timer = null;
  views[state.view]?.leave?.();
}

function route() {
  if (!state.me) return;
  let [name, param] = location.hash.slice(1).split('/');
  if (name === 'endpoints' && param) name = 'endpoint';
  if (!views[name] || (views[name].admin && !isAdmin())) name = 'dashboard';
  leaveView();
  state.view = name;
  state.param = param ? decodeURIComponent(param) : '';
  for (const n of Object.keys(views)) $(`view-${n}`).hidden = n !== name;
  const top = views[name].nav || name;
  const current = (a, on) => (on ? a.setAttribute('aria-current', 'page') : a.removeAttribute('aria-current'));
  for (const a of document.querySelectorAll('#nav a')) current(a, a.dataset.view === top);
  for (const a of document.querySelectorAll('#admin-nav a')) current(a, a.dataset.view === name);
  $('admin-nav').hidden = !views[name].admin;
  views[name].enter();
  if (views[name].refresh) state.timer = setInterval(views[name].refresh, REFRESH_MS);
}

window.addEventListener('hashchange', route);

// ---- catalog and presets ----

async function loadCatalog() {
  const [cat, pre] = await Promise.all([api('GET', '/v1/catalog'), api('GET', '/v1/catalog/presets')]);
  state.catalog = cat.data;
  state.presets = new Map(pre.data.map((m) => [m.model, m]));
}

// Price per device-hour of what an endpoint runs on (the presets carry the prices in force).
function devicePrice(ep) {
  let any = null;
  for (const m of state.presets.values()) {
    for (const p of m.presets) {
      if (p.device_kind !== ep.device_kind) continue;
      if (!ep.gpu_type || p.gpu_type === ep.gpu_type) return p.micros_per_device_hour;
      any ??= p.micros_per_device_hour;
    }
  }
  return any;
}

function presetLabel(p) {
  return p.device_kind === 'cpu' ? `${p.gpus_per_replica} × CPU slot`
    : `${p.gpus_per_replica} × ${p.gpu_type} (${Math.round(p.memory_mib / 1024)} GiB)`;
}

async function enterCatalog() {
  showError('catalog-error', null);
  // Fresh cards each visit (prices and free capacity change); none of the old ones meanwhile.
  $('catalog').replaceChildren(el('p', { class: 'hint' }, 'Loading the catalog…'));
  try {
    await loadCatalog();
  } catch (e) { showError('catalog-error', e); return; }
  renderCatalog();
}

function suggestName(model) {
  const base = model.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^[^a-z]+/, '').slice(0, 50).replace(/-+$/, '') || 'ep';
  return `${base}-${Math.random().toString(16).slice(2, 6)}`;
}

function renderCatalog() {
  const box = $('catalog');
  box.replaceChildren();
  for (const m of state.catalog) box.append(modelCard(m));
  if (!state.catalog.length) box.append(el('p', { class: 'empty' }, 'The catalog is empty: an operator adds models with orp-controller model add.'));
}

// One model: facts, the price of each preset, a one-click Deploy and the advanced form.
function modelCard(m) {
  const slug = m.id.replace(/[^A-Za-z0-9_-]/g, '_');
  const pre = state.presets.get(m.id);
  const presets = pre?.presets || [];
  const def = presets.find((p) => p.default);
  const fid = (f) => `adv-${f}-${slug}`;
  const field = (f, label, input) => el('div', { class: 'field' },
    el('label', { for: fid(f) }, label, input),
    el('p', { class: 'error field-error', id: `${fid(f)}-error` }));

  const typeSel = el('select', { id: fid('gpu_type'), name: 'gpu_type' },
    el('option', { value: '' }, def ? `Default: ${presetLabel(def)}` : 'Default'),
    presets.filter((p) => p.device_kind === 'gpu').map((p) => el('option', { value: p.gpu_type }, p.gpu_type)),
    m.device_kinds.includes('cpu') && m.device_kinds.includes('gpu') ? el('option', { value: 'cpu' }, 'CPU slots') : null);
  const adv = el('form', { class: 'advanced', novalidate: true, 'aria-label': `Advanced deploy of ${m.id}` },
    field('name', 'Name', el('input', { id: fid('name'), name: 'name', required: true, maxlength: 63,
      pattern: '[a-z]([a-z0-9\\-]*[a-z0-9])?', value: suggestName(m.id), autocomplete: 'off',
      title: 'lower-case letters, digits and dashes, starting with a letter' })),
    field('gpu_type', 'GPU type', typeSel),
    field('gpus_per_replica', 'GPUs per replica', el('input', { id: fid('gpus_per_replica'), name: 'gpus_per_replica', type: 'number',
      min: m.min_devices, max: 8, placeholder: def ? String(def.gpus_per_replica) : 'auto', class: 'narrow' })),
    field('replicas', 'Replicas', el('input', { id: fid('replicas'), name: 'replicas', type: 'number', min: 1, max: 16, value: 1, required: true, class: 'narrow' })),
    field('billing_mode', 'Billing', el('select', { id: fid('billing_mode'), name: 'billing_mode' },
      el('option', { value: 'time' }, 'per second of GPU time'),
      isAdmin() ? el('option', { value: 'value' }, 'per token (operator only)') : null)),
    field('pool', 'Pool', el('input', { id: fid('pool'), name: 'pool', maxlength: 63, placeholder: 'any' })),
    el('button', { type: 'submit' }, `Deploy ${m.id} with these settings`));
  adv.addEventListener('submit', (ev) => { ev.preventDefault(); deployAdvanced(adv, m, fid); });

  const price = (micros) => `$${(micros / 1e6).toFixed(2)}`;
  const card = el('article', { class: 'card model', role: 'listitem', 'aria-labelledby': `model-${slug}`, dataset: { model: m.id } },
    el('h3', { id: `model-${slug}` }, m.id),
    el('dl', { class: 'facts' },
      el('dt', {}, 'Family'), el('dd', {}, m.family),
      el('dt', {}, 'Size'), el('dd', {}, pre?.weights_bytes ? `${gb(pre.weights_bytes)} of weights` : 'unknown'),
      el('dt', {}, 'Context'), el('dd', {}, `${m.context_length.toLocaleString('en-US')} tokens`),
      el('dt', {}, 'Per M tokens'), el('dd', {}, `${price(m.input_price_micros_per_mtok)} in / ${price(m.output_price_micros_per_mtok)} out`)),
    el('ul', { class: 'presets', 'aria-label': `Presets of ${m.id}` }, presets.length
      ? presets.map((p) => el('li', { class: p.default ? 'default' : '' },
        `${presetLabel(p)}: ${usd(p.price_micros_per_minute, p.price_micros_per_minute < 10000 ? 4 : 2)}/min per replica`,
        p.default ? el('span', { class: 'tag' }, 'default') : null,
        p.available_now ? null : el('span', { class: 'tag warn' }, 'no free capacity now')))
      : el('li', {}, 'No host offers a device this model fits on yet.')),
    el('div', { class: 'row' },
      el('button', { type: 'button', class: 'deploy', 'aria-label': `Deploy ${m.id}`, onclick: (ev) => deployOneClick(ev.currentTarget, m) }, 'Deploy')),
    el('p', { class: 'error', id: `deploy-error-${slug}`, role: 'alert' }),
    el('details', {}, el('summary', {}, 'Advanced'), adv));
  return card;
}

// One click: the name is made up, everything else is the API's default (presets.c).
async function deployOneClick(button, m) {
  const slug = m.id.replace(/[^A-Za-z0-9_-]/g, '_');
  showError(`deploy-error-${slug}`, null);
  button.disabled = true;
  try {
    const ep = await api('POST', '/v1/endpoints', { name: suggestName(m.id), model: m.id });
    deployed(ep);
  } catch (e) {
    await explainDeployError(e, $(`deploy-error-${slug}`));
  } finally { button.disabled = false; }
}

async function deployAdvanced(form, m, fid) {
  for (const f of form.querySelectorAll('.field-error')) f.textContent = '';
  const slug = m.id.replace(/[^A-Za-z0-9_-]/g, '_');
  showError(`deploy-error-${slug}`, null);
  // The browser's own checks first, each message next to its field.
  let bad = null;
  for (const input of form.querySelectorAll('input, select')) {
    if (!input.checkValidity()) {
      $(`${input.id}-error`).textContent = input.validationMessage + (input.name === 'name' && input.validity.patternMismatch ? ` (${input.title})` : '');
      bad ||= input;
    }
  }
  if (bad) { bad.focus(); return; }
  const v = (n) => form.elements[n].value.trim();
  const body = { name: v('name'), model: m.id, replicas: Number(v('replicas')) };
  if (v('gpu_type') === 'cpu') body.device_kind = 'cpu';
  else if (v('gpu_type')) { body.gpu_type = v('gpu_type'); body.device_kind = 'gpu'; }
  if (v('gpus_per_replica')) body.gpus_per_replica = Number(v('gpus_per_replica'));
  if (v('billing_mode') !== 'time') body.billing_mode = v('billing_mode');
  if (v('pool')) body.pool = v('pool');
  const button = form.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    deployed(await api('POST', '/v1/endpoints', body));
  } catch (e) {
    // The API names the field it refuses: say so next to it.
    const slot = e.param && $(`${fid(e.param)}-error`);
    await explainDeployError(e, slot || $(`deploy-error-${slug}`));
    if (slot) $(fid(e.param)).focus();
  } finally { button.disabled = false; }
}

// A refused deploy in words; a quota refusal also says what the quotas are and what is in use.
async function explainDeployError(e, where) {
  where.textContent = e.message;
  if (e.code !== 'quota_exceeded') return;
  try {
    const q = await api('GET', '/v1/quotas');
    const lim = (n) => (n === null ? 'no limit' : String(n));
    where.append(el('span', { class: 'quota-explain' },
      ` Your quota: ${lim(q.max_devices)} devices (${q.devices_in_use} in use by running endpoints), ` +
      `${lim(q.max_endpoints)} endpoints (${q.endpoints_in_use} exist). Stop or delete an endpoint, or ask the operator for more. `,
      el('a', { href: '#quotas' }, 'See your quotas')));
  } catch { /* the message above stands on its own */ }
}

function deployed(ep) {
  flash(`Deploying ${ep.name} on ${ep.replicas} × ${ep.gpus_per_replica} ${ep.gpu_type || ep.device_kind.toUpperCase()}…`);
  location.hash = `#endpoints/${ep.id}`;
}

// ---- endpoints ----

function reasons(ep) {
  const all = [];
  if (ep.status === 'stopped' && ep.status_reason) all.push(ep.status_reason);
  for (const r of ep.replica_states || []) if (r.reason) all.push(r.reason);
  return [...new Set(all)].join('; ');
}

function devicesOf(ep) {
  return `${ep.replicas} × ${ep.gpus_per_replica} ${ep.gpu_type || ep.device_kind.toUpperCase()}`;
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
      el('th', { scope: 'row' }, el('a', { href: `#endpoints/${ep.id}` }, ep.name)),
      el('td', {}, ep.model),
      el('td', {}, devicesOf(ep)),
      el('td', {}, el('span', { class: `status status-${ep.status}`, dataset: { status: ep.status } }, ep.status)),
      el('td', { class: 'replicas' }, `${ep.replicas_ready}/${ep.replicas}`),
      el('td', { class: 'reason' }, reasons(ep)),
      el('td', { class: 'actions' },
        stopped
          ? el('button', { type: 'button', class: 'secondary', 'aria-label': `Start ${ep.name}`, onclick: () => toggle(ep, 'start', 'endpoints-error') }, 'Start')
          : el('button', { type: 'button', class: 'secondary', 'aria-label': `Stop ${ep.name}`, onclick: () => toggle(ep, 'stop', 'endpoints-error') }, 'Stop'),
        ep.status === 'ready' ? el('a', { class: 'button secondary', href: '#playground', 'aria-label': `Try ${ep.name} in the playground`,
          onclick: () => { state.playWith = ep.name; } }, 'Try') : null,
        el('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${ep.name}`, onclick: () => remove(ep, 'endpoints-error') }, 'Delete')));
  }));
  $('endpoints-empty').hidden = list.length > 0;
}

async function toggle(ep, action, errId) {
  showError(errId, null);
  try {
    await api('POST', `/v1/endpoints/${ep.id}/${action}`);
    flash(`${action === 'stop' ? 'Stopping' : 'Starting'} ${ep.name}…`);
    views[state.view].refresh?.();
  } catch (e) { showError(errId, e); }
}

async function remove(ep, errId) {
  if (!confirm(`Delete endpoint ${ep.name}? Its replicas stop and its name is free again.`)) return false;
  try {
    await api('DELETE', `/v1/endpoints/${ep.id}`);
    flash(`Deleted ${ep.name}.`);
    if (state.view === 'endpoints') refreshEndpoints();
    return true;
  } catch (e) { showError(errId, e); return false; }
}

// ---- one endpoint ----

async function enterEndpoint() {
  state.epLoaded = null;
  $('ep-title').textContent = '';
  $('ep-logs').textContent = '';
  $('ep-replica-rows').replaceChildren();
  showError('ep-error', null);
  if (!state.presets.size) loadCatalog().catch(() => {});
  await refreshEndpoint();
  startLogs();
}

async function refreshEndpoint() {
  const id = state.param;
  let ep;
  try {
    ep = await api('GET', `/v1/endpoints/${encodeURIComponent(id)}`);
  } catch (e) {
    showError('ep-error', e);
    if (e.status === 404) stopLogs();
    return;
  }
  const first = state.epLoaded !== ep.id;
  state.epLoaded = ep.id;
  state.ep = ep;
  $('ep-title').textContent = ep.name;
  $('ep-status').textContent = ep.status;
  $('ep-status').className = `status status-${ep.status}`;
  $('ep-status').dataset.status = ep.status;
  $('ep-summary').textContent = `${ep.model} · ${devicesOf(ep)} · billed by ${ep.billing_mode}${ep.pool ? ` · pool ${ep.pool}` : ''}`;
  $('ep-reason').textContent = reasons(ep);
  if (first || document.activeElement !== $('ep-replicas')) $('ep-replicas').value = ep.replicas;
  const stopped = ep.status === 'stopped';
  $('ep-toggle').textContent = stopped ? 'Start' : 'Stop';
  $('ep-try').hidden = ep.status !== 'ready';
  const now = Date.now();
  $('ep-replica-rows').replaceChildren(...ep.replica_states.map((r) => el('tr', { dataset: { state: r.state } },
    el('td', {}, String(r.ordinal)), el('td', {}, r.host || '—'),
    el('td', {}, r.devices.length ? r.devices.join(', ') : '—'),
    el('td', {}, el('span', { class: `status status-${r.state === 'ready' ? 'ready' : r.state === 'failed' ? 'failed' : 'deploying'}` }, r.state)),
    el('td', {}, r.state === 'ready' && r.ready_at ? duration(now - Date.parse(r.ready_at)) : '—'),
    el('td', { class: 'reason' }, r.reason || ''))));
  if (!ep.replica_states.length) $('ep-replica-rows').append(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, stopped ? 'Stopped: no replicas run.' : 'No replicas.')));
  if (first) renderSnippets(ep);
  refreshStats(ep);
}

function renderSnippets(ep) {
  const base = gatewayUrl();
  $('ep-base').textContent = base;
  $('ep-model').textContent = ep.name;
  const q = (s) => JSON.stringify(s);
  const snippets = {
    curl: `curl ${base}/chat/completions \\\n  -H "Authorization: Bearer $ORP_API_KEY" \\\n  -H "Content-Type: application/json" \\\n` +
      `  -d '${JSON.stringify({ model: ep.name, messages: [{ role: 'user', content: 'Hello!' }] })}'`,
    Python: `from openai import OpenAI\n\nclient = OpenAI(base_url=${q(base)}, api_key=os.environ["ORP_API_KEY"])\n` +
      `reply = client.chat.completions.create(\n    model=${q(ep.name)},\n    messages=[{"role": "user", "content": "Hello!"}],\n)\nprint(reply.choices[0].message.content)`,
    JavaScript: `import OpenAI from 'openai';\n\nconst client = new OpenAI({ baseURL: ${q(base)}, apiKey: process.env.ORP_API_KEY });\n` +
      `const reply = await client.chat.completions.create({\n  model: ${q(ep.name)},\n  messages: [{ role: 'user', content: 'Hello!' }],\n});\nconsole.log(reply.choices[0].message.content);`,
  };
  snippets.Python = `import os\n${snippets.Python}`;
  $('ep-snippets').replaceChildren(...Object.entries(snippets).map(([lang, text]) => {
    const id = `snippet-${lang.toLowerCase()}`;
    return el('div', { class: 'snippet' },
      el('div', { class: 'row' }, el('h3', {}, lang),
        el('button', { type: 'button', class: 'secondary', 'data-copy': id, 'aria-label': `Copy the ${lang} snippet` }, 'Copy')),
      el('pre', { id, tabindex: 0 }, text));
  }));
}

async function refreshStats(ep) {
  let s;
  try {
    s = await api('GET', `/v1/endpoints/${ep.id}/stats?granularity=minute`);
  } catch { return; } // the page's other parts say what is wrong
  const x = s.data.map((p) => Date.parse(p.period_start) / 1000);
  const requests = s.data.map((p) => p.requests);
  const total = requests.reduce((a, b) => a + b, 0);
  drawChart('chart-ep-requests', { x, bars: true, yLabel: 'requests / min', series: [{ label: 'requests per minute', values: requests }],
    summary: `Requests per minute over the last hour: ${total} in all` });
  drawChart('chart-ep-tokens', { x, yLabel: 'tokens / s', valueFmt: (v) => (v < 10 ? v.toFixed(2) : v.toFixed(0)),
    series: [{ label: 'generated tokens/s', values: s.data.map((p) => p.completion_tokens / 60) },
      { label: 'prompt tokens/s', values: s.data.map((p) => p.prompt_tokens / 60) }],
    summary: 'Tokens per second over the last hour, generated and prompt' });
  // Time to first token: the runtime's, from its queue to the first sampled token (a minute
  // without requests has none, and the lines break there).
  const ms = (v) => (v < 10 ? v.toFixed(2) : v.toFixed(0));
  const busy = s.data.filter((p) => p.ttft_ms_mean !== null);
  const last = busy.length ? busy[busy.length - 1] : null;
  drawChart('chart-ep-ttft', { x, dots: true, yLabel: 'ms', valueFmt: ms,
    series: [{ label: 'TTFT mean (ms)', values: s.data.map((p) => p.ttft_ms_mean) },
      { label: 'TTFT p50 (ms)', values: s.data.map((p) => p.ttft_ms_p50) },
      { label: 'TTFT p95 (ms)', values: s.data.map((p) => p.ttft_ms_p95) }],
    summary: last ? `Time to first token per minute over the last hour; latest minute with requests: mean ${ms(last.ttft_ms_mean)} ms, p95 ${ms(last.ttft_ms_p95)} ms`
      : 'Time to first token per minute over the last hour: no requests yet' });
  drawChart('chart-ep-speed', { x, dots: true, yLabel: 'tokens / s', valueFmt: (v) => (v < 10 ? v.toFixed(2) : v.toFixed(0)),
    series: [{ label: 'generated tokens/s per request', values: s.data.map((p) => p.tokens_per_second) }],
    summary: 'Generation speed a caller sees: completion tokens per second of request time, per minute' });
}

$('ep-scale').addEventListener('click', async () => {
  showError('ep-error', null);
  const n = Number($('ep-replicas').value);
  if (!$('ep-replicas').checkValidity() || !Number.isInteger(n)) {
    showError('ep-error', new Error(`replicas: ${$('ep-replicas').validationMessage || 'a whole number from 1 to 16'}`));
    $('ep-replicas').focus();
    return;
  }
  try {
    await api('PATCH', `/v1/endpoints/${state.ep.id}`, { replicas: n });
    flash(`Scaling ${state.ep.name} to ${n} replica${n === 1 ? '' : 's'}…`);
    refreshEndpoint();
  } catch (e) { showError('ep-error', e); }
});
$('ep-toggle').addEventListener('click', () => toggle(state.ep, state.ep.status === 'stopped' ? 'start' : 'stop', 'ep-error'));
$('ep-delete').addEventListener('click', async () => {
  if (await remove(state.ep, 'ep-error')) location.hash = '#endpoints';
});
$('ep-try').addEventListener('click', () => { state.playWith = state.ep?.name; });

// Live logs: GET /v1/endpoints/{id}/logs as text/event-stream ("id: N / event: log / data: {json}"),
// read with fetch so a reconnect can say where it left off (Last-Event-ID); the last 200 lines
// first. A controller without the route answers 404, and the page says so instead of retrying.
function startLogs() {
  stopLogs();
  const lg = { abort: new AbortController(), lastId: null, paused: false, lines: 0 };
  state.logs = lg;
  $('ep-logs-toggle').textContent = 'Pause';
  readLogs(lg, state.param);
}

function stopLogs() {
  state.logs?.abort.abort();
  state.logs = null;
}

const LOG_LINES_MAX = 2000; // lines kept on the page; older ones scroll away

function logState(text) { $('ep-logs-state').textContent = text; }

async function readLogs(lg, id) {
  let delay = 1000;
  while (state.logs === lg && !lg.paused) {
    const headers = { Accept: 'text/event-stream' };
    let url = `/v1/endpoints/${encodeURIComponent(id)}/logs`;
    if (lg.lastId !== null) headers['Last-Event-ID'] = lg.lastId;
    else url += '?tail=200';
    try {
      const res = await fetch(url, { headers, credentials: 'same-origin', signal: lg.abort.signal });
      if (res.status === 404) {
        const body = await res.json().catch(() => ({}));
        logState(body?.error?.code === 'endpoint_not_found' ? 'This endpoint does not exist.'
          : 'Live logs are not available: this controller does not serve GET /v1/endpoints/{id}/logs yet.');
        return;
      }
      if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => ({})));
      logState('Live: new lines appear as the replicas write them.');
      delay = 1000;
      await readEvents(res, (ev) => {
        if (ev.id !== undefined) lg.lastId = ev.id;
        if (ev.event !== 'log') return;
        const d = JSON.parse(ev.data);
        appendLog(d);
      });
      if (state.logs === lg && !lg.paused) logState('The log stream ended; reconnecting…');
    } catch (e) {
      if (e.name === 'AbortError') return;
      logState(`Logs: ${e.message}; retrying in ${Math.round(delay / 1000)} s…`);
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function appendLog(d) {
  const pre = $('ep-logs');
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  const line = el('span', { class: d.stream === 'stderr' ? 'stderr' : '' },
    `${(d.time || '').replace('T', ' ').replace(/\.\d+/, '').replace('Z', '')} [${String(d.replica_id || '').slice(0, 8)}] ${d.line}\n`);
  pre.append(line);
  while (pre.childNodes.length > LOG_LINES_MAX) pre.firstChild.remove();
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

$('ep-logs-toggle').addEventListener('click', () => {
  const lg = state.logs;
  if (!lg) { startLogs(); return; }
  lg.paused = !lg.paused;
  $('ep-logs-toggle').textContent = lg.paused ? 'Resume' : 'Pause';
  if (lg.paused) {
    lg.abort.abort();
    lg.abort = new AbortController();
    logState('Paused.');
  } else readLogs(lg, state.param);
});

// Server-sent events from a fetch Response: calls onEvent({id, event, data}) for each event;
// comment lines (": ping") are skipped. Returns at the end of the stream.
async function readEvents(res, onEvent) {
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut).replace(/^\r?\n\r?\n/, '');
      const ev = { data: '' };
      const data = [];
      for (const l of block.split(/\r?\n/)) {
        if (!l || l.startsWith(':')) continue;
        const i = l.indexOf(':');
        const k = i < 0 ? l : l.slice(0, i), v = i < 0 ? '' : l.slice(i + 1).replace(/^ /, '');
        if (k === 'data') data.push(v);
        else if (k === 'id' || k === 'event') ev[k] = v;
      }
      if (!data.length && ev.id === undefined) continue;
      ev.data = data.join('\n');
      if (await onEvent(ev) === false) return;
    }
  }
}

// ---- dashboard ----

async function enterDashboard() {
  showError('dashboard-error', null);
  if (!state.presets.size) {
    try { await loadCatalog(); } catch (e) { showError('dashboard-error', e); }
  }
  refreshDashboard();
  drawSpend();
}

async function refreshDashboard() {
  try {
    const [b, eps] = await Promise.all([api('GET', '/v1/billing/balance'), api('GET', '/v1/endpoints')]);
    $('dash-balance').textContent = usd(b.balance_micros, b.balance_micros % 10000 ? 4 : 2);
    $('dash-balance').title = b.balance_display;
    $('dash-balance').classList.toggle('negative', b.balance_micros < 0);
    state.endpoints = eps.data;
    // Spending now: every ready replica of a time-billed endpoint costs its devices × the price
    // per device-hour; value-billed endpoints cost per token and are not in this rate.
    let rate = 0, unknown = false;
    for (const ep of eps.data) {
      if (ep.billing_mode !== 'time' || !ep.replicas_ready) continue;
      const p = devicePrice(ep);
      if (p === null) unknown = true;
      else rate += ep.replicas_ready * ep.gpus_per_replica * p;
    }
    $('dash-rate').textContent = `${usd(rate, rate && rate < 100000 ? 4 : 2)}/hour`;
    $('dash-rate-hint').textContent = unknown ? ' (some prices unknown)' : '';
    const running = eps.data.filter((ep) => ep.status === 'ready' || ep.status === 'degraded');
    $('dash-running').textContent = `${running.length} of ${eps.data.length}`;
    $('dash-endpoints').replaceChildren(...eps.data.map((ep) => el('li', {},
      el('a', { href: `#endpoints/${ep.id}` }, ep.name), ' ',
      el('span', { class: `status status-${ep.status}` }, ep.status), ` ${ep.model} · ${devicesOf(ep)}`)));
  } catch (e) { showError('dashboard-error', e); }
}

async function drawSpend() {
  try {
    const [hours, days] = await Promise.all([api('GET', '/v1/billing/usage?granularity=hour'), api('GET', '/v1/billing/usage?granularity=day')]);
    // Each charge into the UTC period that holds its start (the database may truncate days in
    // its own time zone; such a day still lands in one bar).
    const bucket = (rows, n, stepS) => {
      const x = periodStarts(n, stepS);
      const v = new Array(n).fill(0);
      for (const u of rows) {
        const i = Math.floor((Date.parse(u.period_start) / 1000 - x[0]) / stepS);
        if (i >= 0 && i < n) v[i] += u.cost_micros / 1e6;
      }
      return { x, v };
    };
    const d = bucket(hours.data, 24, 3600), m = bucket(days.data, 30, 86400);
    const fmt = dollars;
    drawChart('chart-spend-day', { x: d.x, bars: true, yLabel: 'USD', valueFmt: fmt, series: [{ label: 'spend per hour', values: d.v }],
      summary: `Spend per hour over the last 24 hours: ${fmt(d.v.reduce((a, b) => a + b, 0))} in all` });
    drawChart('chart-spend-month', { x: m.x, bars: true, yLabel: 'USD', valueFmt: fmt, series: [{ label: 'spend per day', values: m.v }],
      summary: `Spend per day over the last 30 days: ${fmt(m.v.reduce((a, b) => a + b, 0))} in all` });
  } catch (e) { showError('dashboard-error', e); }
}

// ---- playground ----

async function enterPlayground() {
  if (!$('play-gateway').value) $('play-gateway').value = gatewayUrl();
  $('play-base').textContent = $('play-gateway').value;
  try {
    state.endpoints = (await api('GET', '/v1/endpoints')).data;
    if (!state.catalog.length) await loadCatalog();
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

// What an exchange cost: tokens × the model's prices for a value-billed endpoint; a time-billed
// one is paid by its GPU time, whatever the tokens.
function exchangeCost(epName, usage) {
  const ep = state.endpoints.find((e) => e.name === epName);
  const m = state.catalog.find((c) => c.id === ep?.model);
  const tokens = `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`;
  if (!ep || ep.billing_mode !== 'value' || !m) return `${tokens}; billed by the endpoint's GPU time, not per token.`;
  const micros = (usage.prompt_tokens * m.input_price_micros_per_mtok + usage.completion_tokens * m.output_price_micros_per_mtok) / 1e6;
  return `${tokens}: ${usd(Math.ceil(micros), 6)}.`;
}

$('play-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const model = $('play-endpoint').value, text = $('play-input').value.trim();
  if (!model || !text) return;
  showError('play-error', null);
  for (const id of ['play-temperature', 'play-max-tokens']) {
    if (!$(id).checkValidity()) { showError('play-error', new Error(`${$(id).parentElement.firstChild.textContent.trim()}: ${$(id).validationMessage}`)); $(id).focus(); return; }
  }
  state.history.push({ role: 'user', content: text });
  chatBubble('user', text);
  $('play-input').value = '';
  const out = chatBubble('assistant', '');
  out.parentElement.setAttribute('aria-busy', 'true');
  state.abort = new AbortController();
  $('play-send').disabled = true;
  $('play-stop').disabled = false;
  $('play-usage').textContent = '';
  let reply = '';
  try {
    const gw = $('play-gateway').value.trim().replace(/\/+$/, '');
    const system = $('play-system').value.trim();
    const body = {
      model, stream: true, stream_options: { include_usage: true },
      messages: system ? [{ role: 'system', content: system }, ...state.history] : state.history,
    };
    if ($('play-temperature').value !== '') body.temperature = Number($('play-temperature').value);
    if ($('play-max-tokens').value !== '') body.max_tokens = Number($('play-max-tokens').value);
    // Another origin (port): the session cookie goes along with credentials: 'include', and the
    // cookie-authenticated POST needs the CSRF token like any other.
    const res = await fetch(`${gw}/chat/completions`, {
      method: 'POST', credentials: 'include', signal: state.abort.signal,
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': state.csrf },
      body: JSON.stringify(body),
    });
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => ({})));
    await readEvents(res, (e) => {
      if (e.data === '[DONE]') return false;
      const chunk = JSON.parse(e.data);
      if (chunk.error) throw new Error(chunk.error.message || 'the stream failed');
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) { reply += delta; out.textContent = reply; }
      if (chunk.usage) $('play-usage').textContent = exchangeCost(model, chunk.usage);
      return true;
    });
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
$('play-clear').addEventListener('click', () => { state.history = []; $('play-log').replaceChildren(); $('play-usage').textContent = ''; });
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
  if (!scopes.length) { showError('keys-error', new Error('Scopes: pick at least one.')); return; }
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
    $('month-spend').textContent = `${usd(b.month_spend_micros)} charged this month` +
      (b.monthly_spend_cap_micros === null ? '' : ` of a ${usd(b.monthly_spend_cap_micros)} monthly spend cap`);
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

// Cost per period, one series per endpoint and kind, the last 48 periods that have charges.
function drawUsage(rows) {
  const periods = [...new Set(rows.map((u) => u.period_start))].sort().slice(-48);
  const keys = [...new Set(rows.map((u) => `${u.endpoint} · ${u.kind.replace('usage_', '')}`))].sort();
  if (!periods.length) { state.charts['usage-chart']?.destroy(); delete state.charts['usage-chart']; $('usage-chart').replaceChildren(); return; }
  const at = new Map(periods.map((p, i) => [p, i]));
  const series = keys.map((k) => ({ label: k, values: new Array(periods.length).fill(null) }));
  for (const u of rows) {
    const i = at.get(u.period_start);
    if (i === undefined) continue;
    const s = series[keys.indexOf(`${u.endpoint} · ${u.kind.replace('usage_', '')}`)];
    s.values[i] = (s.values[i] || 0) + u.cost_micros / 1e6;
  }
  const fmt = dollars;
  drawChart('usage-chart', { x: periods.map((p) => Date.parse(p) / 1000), yLabel: 'USD', valueFmt: fmt, series,
    summary: `Cost per ${$('usage-granularity').value} by endpoint and kind, ${periods.length} periods` });
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

// ---- quotas ----

async function enterQuotas() {
  showError('quotas-error', null);
  let q;
  try { q = await api('GET', '/v1/quotas'); } catch (e) { showError('quotas-error', e); return; }
  const lim = (n, f = String) => (n === null ? 'no limit' : f(n));
  $('quotas-source').textContent = q.defaults ? 'The operator\'s defaults apply to your account.' : 'The operator set these for your account.';
  const row = (name, use, quota, checked) => el('tr', {}, el('th', { scope: 'row' }, name), el('td', {}, use), el('td', {}, quota), el('td', {}, checked));
  $('quotas').replaceChildren(
    row('Devices (GPUs or CPU slots) of running endpoints', String(q.devices_in_use), lim(q.max_devices), 'when you deploy, scale up or start'),
    row('Endpoints', String(q.endpoints_in_use), lim(q.max_endpoints), 'when you deploy'),
    row('Requests per minute', '—', lim(q.requests_per_min), 'on every request (429 beyond it)'),
    row('Burst', '—', lim(q.requests_burst), 'requests allowed at once above the rate'),
    row('Tokens per minute', '—', lim(q.tokens_per_min), 'on every request: prompt bytes + max_tokens, unused ones given back (429 beyond it)'),
    row('Monthly spend cap', '—', lim(q.monthly_spend_cap_micros, (m) => usd(m)), 'stored; not enforced yet'));
}

// ---- audit log ----

async function enterAudit() {
  state.auditCursor = null;
  $('audit').replaceChildren();
  loadAudit();
}

async function loadAudit() {
  showError('audit-error', null);
  const q = state.auditCursor ? `&starting_after=${encodeURIComponent(state.auditCursor)}` : '';
  let page;
  try { page = await api('GET', `/v1/audit-log?limit=50${q}`); } catch (e) { showError('audit-error', e); return; }
  $('audit').append(...page.data.map((a) => el('tr', { dataset: { id: a.id } },
    el('td', {}, when(a.at)),
    el('td', {}, a.key_id ? `key ${a.key_id}` : a.user_id ? `user ${a.user_id}` : '—'),
    el('td', {}, el('code', {}, `${a.method} ${a.path}`)),
    el('td', {}, a.object_id || ''),
    el('td', {}, a.address || ''))));
  if (!page.data.length && !state.auditCursor) $('audit').append(el('tr', {}, el('td', { colspan: 5, class: 'empty' }, 'Nothing yet.')));
  state.auditCursor = page.has_more ? page.next_starting_after : null;
  $('audit-more').hidden = !page.has_more;
}

$('audit-more').addEventListener('click', loadAudit);

// ---- account ----

function enterAccount() {
  const u = state.me.user;
  $('account-who').textContent = u ? `${u.email}, ${u.role} of ${state.me.account.name} (account ${state.me.account.id})` : state.me.account.name;
  // A user made by the operator's CLI has no password yet: nothing to confirm.
  $('pw-current').required = !!u?.has_password;
}

$('password-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  for (const id of ['pw-current-error', 'pw-new-error', 'pw-repeat-error', 'password-error']) $(id).textContent = '';
  if (!$('pw-new').checkValidity()) { $('pw-new-error').textContent = $('pw-new').validationMessage; $('pw-new').focus(); return; }
  if ($('pw-new').value !== $('pw-repeat').value) { $('pw-repeat-error').textContent = 'The two new passwords differ.'; $('pw-repeat').focus(); return; }
  const body = { new_password: $('pw-new').value };
  if ($('pw-current').value) body.current_password = $('pw-current').value;
  try {
    leaveView();
    await settle();
    const r = await api('POST', '/v1/auth/password', body);
    if (r.csrf_token) state.csrf = r.csrf_token; // the session was rotated
    for (const id of ['pw-current', 'pw-new', 'pw-repeat']) $(id).value = '';
    flash('Password changed. Your other sessions have ended.');
    state.me = await api('GET', '/v1/auth/me');
    enterAccount();
  } catch (e) {
    const slot = { current_password: 'pw-current-error', new_password: 'pw-new-error' }[e.param];
    $(slot || 'password-error').textContent = e.message;
  }
});

// ---- admin: hosts ----

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
      el('td', {}, el('ul', { class: 'devices' }, (h.devices || []).map((d) => el('li', { class: d.healthy === false ? 'negative' : '', dataset: { uuid: d.uuid } },
        `#${d.index} ${d.model || d.kind.toUpperCase()}${d.memory_mib ? ` ${Math.round(d.memory_mib / 1024)} GiB` : ''}` +
        (d.healthy === false ? ' (unhealthy)' : ''), el('div', { class: 'hint gpu-live' }, deviceLive(d)))))),
      el('td', {}, when(h.last_seen_at)),
      el('td', { class: 'actions' }, live ? [
        h.cordoned ? act('uncordon', 'Uncordon') : act('cordon', 'Cordon'),
        h.draining ? null : act('drain', 'Drain'),
      ] : null));
  }));
  if (!hosts.length) $('hosts').append(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'No hosts have registered.')));
}

// A device's latest readings (sent on the agent's heartbeats) and its health, in words. A reading
// the device cannot give (CPU slots, no NVML) is "n/a".
function deviceLive(d) {
  const na = (v, f) => (v === null || v === undefined ? 'n/a' : f(v));
  const mem = na(d.memory_used_mib, (v) => `${(v / 1024).toFixed(1)}${d.memory_mib ? ` / ${(d.memory_mib / 1024).toFixed(1)}` : ''} GiB`);
  const health = d.healthy === false ? `unhealthy: ${d.ecc_errors} ECC error${d.ecc_errors === 1 ? '' : 's'}, ${d.retired_pages} retired page${d.retired_pages === 1 ? '' : 's'}` : 'healthy';
  return `utilization ${na(d.utilization_percent, (v) => `${v} %`)} · memory ${mem} · temperature ${na(d.temperature_c, (v) => `${v} °C`)} · ${health}`;
}

async function hostAction(h, what) {
  if (what === 'drain' && !confirm(`Drain ${h.name}? Its replicas move to other hosts, then it stays cordoned.`)) return;
  try {
    await api('POST', `/v1/admin/hosts/${h.id}/${what}`);
    flash(`${h.name}: ${what} requested.`);
    refreshHosts();
  } catch (e) { showError('admin-error', e); }
}

// ---- admin: accounts ----

async function enterAccounts() {
  state.accountsCursor = null;
  $('accounts').replaceChildren();
  loadAccounts();
}

async function loadAccounts() {
  showError('accounts-error', null);
  const params = new URLSearchParams({ limit: '50' });
  if ($('accounts-filter').value) params.set('suspended', $('accounts-filter').value);
  if (state.accountsCursor) params.set('starting_after', state.accountsCursor);
  let page;
  try {
    page = await api('GET', `/v1/admin/accounts?${params}`);
    $('accounts-note').textContent = '';
  } catch (e) {
    $('accounts-note').textContent = e.status === 404
      ? 'This controller does not list accounts (GET /v1/admin/accounts): open one by its id.'
      : `Could not list accounts: ${e.message}`;
    return;
  }
  $('accounts').append(...page.data.map((a) => el('tr', { dataset: { id: a.id } },
    el('td', {}, a.id), el('th', { scope: 'row' }, a.name),
    el('td', { class: `num ${a.balance_micros < 0 ? 'negative' : ''}` }, usd(a.balance_micros)),
    el('td', {}, String(a.endpoints)),
    el('td', { class: 'acct-state' }, a.operator ? 'operator' : a.suspended ? `suspended: ${a.suspend_reason || 'no reason given'}` : 'active'),
    el('td', { class: 'actions' }, el('button', { type: 'button', class: 'secondary', 'aria-label': `Open account ${a.id} (${a.name})`,
      onclick: () => { $('acct-id').value = a.id; openAccount(a.id); } }, 'Open')))));
  if (!page.data.length && !state.accountsCursor) $('accounts').append(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'No accounts.')));
  state.accountsCursor = page.has_more ? page.next_starting_after : null;
  $('accounts-more').hidden = !page.has_more;
}

$('accounts-more').addEventListener('click', loadAccounts);
$('accounts-filter').addEventListener('change', enterAccounts);

$('account-pick').addEventListener('submit', (ev) => {
  ev.preventDefault();
  showError('accounts-error', null);
  if (!$('acct-id').checkValidity()) { showError('accounts-error', new Error('Account id: a number, e.g. 2.')); $('acct-id').focus(); return; }
  openAccount($('acct-id').value.trim());
});

// One account: its state (GET /v1/admin/accounts/{id} where the controller has it), credit and
// quotas.
async function openAccount(id) {
  showError('accounts-error', null);
  let q, a = null;
  try {
    q = await api('GET', `/v1/admin/accounts/${encodeURIComponent(id)}/quotas`);
    a = await api('GET', `/v1/admin/accounts/${encodeURIComponent(id)}`).catch((e) => (e.status === 404 ? null : Promise.reject(e)));
  } catch (e) { showError('accounts-error', e); return; }
  state.acct = id;
  state.creditKey = null;
  $('acct-title').textContent = a ? `Account ${id}: ${a.name}` : `Account ${id}`;
  $('acct-status').textContent = a
    ? `Balance ${usd(a.balance_micros)} · ${a.users} user${a.users === 1 ? '' : 's'} · ${a.endpoints} endpoint${a.endpoints === 1 ? '' : 's'} · ` +
      (a.suspended ? `suspended since ${when(a.suspended_at)}: ${a.suspend_reason || 'no reason given'}` : 'active')
    : '';
  $('suspend-form').hidden = !a || a.suspended || a.operator;
  $('unsuspend-button').hidden = !a || !a.suspended;
  $('acct-box').hidden = false;
  const f = $('quota-form').elements;
  for (const n of ['max_devices', 'max_endpoints', 'requests_per_min', 'requests_burst', 'tokens_per_min']) f[n].value = q[n] ?? '';
  f.monthly_spend_cap.value = q.monthly_spend_cap_micros === null ? '' : (q.monthly_spend_cap_micros / 1e6).toFixed(2);
  $('quota-source').textContent = q.defaults ? 'Showing the defaults: saving gives this account its own quotas.' : 'This account has its own quotas.';
}

async function refreshAccountRow() {
  if (state.view === 'admin-accounts') { await enterAccounts(); await openAccount(state.acct); }
}

$('suspend-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  showError('accounts-error', null);
  if (!confirm(`Suspend account ${state.acct}? Its keys and sessions stop working and its endpoints stop.`)) return;
  try {
    const body = {};
    if ($('suspend-reason').value.trim()) body.reason = $('suspend-reason').value.trim();
    await api('POST', `/v1/admin/accounts/${encodeURIComponent(state.acct)}/suspend`, body);
    $('suspend-reason').value = '';
    flash(`Account ${state.acct} suspended.`);
    await refreshAccountRow();
  } catch (e) { showError('accounts-error', e); }
});

$('unsuspend-button').addEventListener('click', async () => {
  showError('accounts-error', null);
  try {
    await api('POST', `/v1/admin/accounts/${encodeURIComponent(state.acct)}/unsuspend`);
    flash(`Account ${state.acct} is active again; its stopped endpoints stay stopped until started.`);
    await refreshAccountRow();
  } catch (e) { showError('accounts-error', e); }
});

$('credit-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  showError('accounts-error', null);
  const acct = state.acct;
  const micros = Math.round(Number($('credit-amount').value) * 1e6);
  if (!$('credit-amount').checkValidity() || !(micros > 0)) { showError('accounts-error', new Error('Amount: at least $0.01.')); $('credit-amount').focus(); return; }
  try {
    // One idempotency key per credit: a retry after a lost reply (same amount) is the same
    // entry, not a second credit. A new key only after a success.
    state.creditKey ||= `console-${Date.now()}-${Math.random().toString(16).slice(2, 10)}`;
    const r = await api('POST', `/v1/admin/accounts/${encodeURIComponent(acct)}/credits`,
      { amount_micros: micros, idempotency_key: state.creditKey, memo: $('credit-memo').value.trim() || 'added in the console' });
    state.creditKey = null;
    flash(`Credited ${usd(micros)} to account ${acct} (ledger entry ${r.id || 'stored'}).`);
    $('credit-amount').value = '';
    await refreshAccountRow();
  } catch (e) { showError('accounts-error', e); }
});

$('credit-form').addEventListener('input', () => { state.creditKey = null; }); // another credit

// Form fields by name → the label's words, for messages that say which field is wrong.
function fieldName(input) { return input.closest('label')?.firstChild?.textContent.trim() || input.name; }

// The browser's own checks on a form: the first bad field's message, in words, or null.
function formProblem(form) {
  for (const input of form.querySelectorAll('input, select')) {
    if (!input.checkValidity()) { input.focus(); return new Error(`${fieldName(input)}: ${input.validationMessage}`); }
  }
  return null;
}

// An API error about one field of a form: named by its label when the param is one of them.
function fieldError(form, e) {
  const input = e.param && form.elements[e.param];
  if (input && input.closest) { input.focus(); return new Error(`${fieldName(input)}: ${e.message}`); }
  return e;
}

// A form of the admin pages: the browser's checks first, then send(form's elements), each error
// in words at errId, naming the field when the API names one.
function onSubmit(formId, errId, send) {
  $(formId).addEventListener('submit', async (ev) => {
    ev.preventDefault();
    showError(errId, null);
    const form = $(formId);
    const bad = formProblem(form);
    if (bad) { showError(errId, bad); return; }
    try { await send(form.elements, form); } catch (e) { showError(errId, fieldError(form, e)); }
  });
}

onSubmit('quota-form', 'accounts-error', async (f) => {
  const body = {};
  for (const n of ['max_devices', 'max_endpoints', 'requests_per_min', 'requests_burst', 'tokens_per_min']) if (f[n].value !== '') body[n] = Number(f[n].value);
  if (f.monthly_spend_cap.value !== '') body.monthly_spend_cap_micros = Math.round(Number(f.monthly_spend_cap.value) * 1e6);
  await api('PUT', `/v1/admin/accounts/${encodeURIComponent(state.acct)}/quotas`, body);
  flash(`Quotas of account ${state.acct} saved.`);
  openAccount(state.acct);
});

// ---- admin: GPU types, catalog ----

async function enterGpus() {
  showError('gpus-error', null);
  let hosts, types = null;
  try {
    [hosts] = await Promise.all([api('GET', '/v1/admin/hosts'), loadCatalog()]);
    types = await api('GET', '/v1/admin/gpu-types').catch((e) => (e.status === 404 ? null : Promise.reject(e)));
  } catch (e) { showError('gpus-error', e); return; }
  // What the hosts report, by model.
  const fleet = new Map();
  for (const h of hosts.data) {
    if (h.state === 'revoked') continue;
    for (const d of h.devices || []) {
      const name = d.kind === 'cpu' ? 'CPU slot' : d.model || 'GPU';
      const t = fleet.get(name) || { name, kind: d.kind, memory: d.memory_mib, n: 0, healthy: 0, hosts: new Set() };
      t.n++;
      if (d.healthy !== false) t.healthy++;
      t.hosts.add(h.name);
      fleet.set(name, t);
    }
  }
  const kindPrice = (t) => {
    for (const m of state.presets.values()) {
      for (const p of m.presets) if (p.device_kind === t.kind) return usd(p.micros_per_device_hour);
    }
    return '—';
  };
  $('fleet-types').replaceChildren(...[...fleet.values()].map((t) => el('tr', {},
    el('th', { scope: 'row' }, t.name), el('td', {}, t.memory ? `${Math.round(t.memory / 1024)} GiB` : '—'),
    el('td', {}, String(t.n)), el('td', {}, String(t.healthy)), el('td', {}, [...t.hosts].join(', ')), el('td', {}, kindPrice(t)))));
  if (!fleet.size) $('fleet-types').append(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'No hosts have registered.')));
  $('fleet-models').replaceChildren(...[...fleet.values()].filter((t) => t.kind === 'gpu').map((t) => el('option', { value: t.name })));
  state.fleet = fleet;

  if (!types) {
    $('gpu-types').replaceChildren(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'This controller has no GPU type routes (GET /v1/admin/gpu-types).')));
    return;
  }
  $('gpu-types').replaceChildren(...types.data.map((t) => {
    const f = fleet.get(t.model_match);
    const input = el('input', { type: 'number', min: 0, step: '0.01', class: 'narrow', 'aria-label': `New price of ${t.id} per GPU-hour (USD)` });
    return el('tr', { dataset: { name: t.id } },
      el('th', { scope: 'row' }, t.id), el('td', {}, t.model_match || '—'),
      el('td', {}, t.memory_mib ? `${Math.round(t.memory_mib / 1024)} GiB` : '—'),
      el('td', {}, f ? `${f.n} on ${f.hosts.size} host${f.hosts.size === 1 ? '' : 's'}` : 'none'),
      el('td', {}, `${usd(t.micros_per_gpu_hour)} since ${when(t.price_effective_at)}`,
        t.price_history.length > 1 ? el('div', { class: 'hint' }, `${t.price_history.length - 1} earlier price${t.price_history.length === 2 ? '' : 's'}`) : null),
      el('td', { class: 'actions' }, input, el('button', { type: 'button', class: 'secondary', 'aria-label': `Set the price of ${t.id}`,
        onclick: () => setGpuPrice(t, input) }, 'Set price')));
  }));
  if (!types.data.length) $('gpu-types').append(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'No GPU types yet: add one below.')));
}

async function setGpuPrice(t, input) {
  showError('gpus-error', null);
  if (input.value === '' || !input.checkValidity()) { showError('gpus-error', new Error(`New price of ${t.id}: ${input.validationMessage || 'enter an amount in USD'}`)); input.focus(); return; }
  try {
    await api('PATCH', `/v1/admin/gpu-types/${encodeURIComponent(t.id)}`, { micros_per_gpu_hour: Math.round(Number(input.value) * 1e6) });
    flash(`${t.id}: ${usd(Math.round(Number(input.value) * 1e6))} per GPU-hour from now on.`);
    enterGpus();
  } catch (e) { showError('gpus-error', e); }
}

// Picking a model the fleet reports fills in its memory.
$('gpu-type-form').elements.model_match.addEventListener('change', () => {
  const f = $('gpu-type-form').elements, t = state.fleet?.get(f.model_match.value);
  if (t && !f.memory_mib.value) f.memory_mib.value = t.memory;
});

onSubmit('gpu-type-form', 'gpus-error', async (f, form) => {
  const body = { name: f.name.value.trim(), model_match: f.model_match.value.trim(), micros_per_gpu_hour: Math.round(Number(f.price.value) * 1e6) };
  if (f.memory_mib.value !== '') body.memory_mib = Number(f.memory_mib.value);
  await api('POST', '/v1/admin/gpu-types', body);
  flash(`GPU type ${body.name} added.`);
  form.reset();
  enterGpus();
});

async function enterAdminCatalog() {
  showError('acat-error', null);
  let list;
  try {
    await loadCatalog();
    list = (await api('GET', '/v1/admin/catalog').catch((e) => (e.status === 404 ? { data: state.catalog } : Promise.reject(e)))).data;
  } catch (e) { showError('acat-error', e); return; }
  const price = (micros) => `$${(micros / 1e6).toFixed(2)}`;
  $('admin-models').replaceChildren(...list.map((m) => {
    const pre = state.presets.get(m.id);
    const size = pre?.weights_bytes ? gb(pre.weights_bytes) : m.parameter_count ? `${(m.parameter_count / 1e9).toFixed(1)} B parameters` : 'unknown';
    return el('tr', { dataset: { model: m.id } }, el('th', { scope: 'row' }, m.id), el('td', {}, m.family), el('td', {}, String(m.context_length)),
      el('td', {}, size),
      el('td', {}, `${m.device_kinds.join(', ')}, at least ${m.min_devices}`),
      el('td', {}, `${price(m.input_price_micros_per_mtok)} / ${price(m.output_price_micros_per_mtok)}`),
      el('td', { class: 'model-state' }, m.retired_at ? `retired ${when(m.retired_at)}` : 'offered'),
      el('td', { class: 'actions' }, m.retired_at || !('retired_at' in m) ? null : el('button', { type: 'button', class: 'danger',
        'aria-label': `Retire ${m.id}`, onclick: () => retireModel(m) }, 'Retire')));
  }));
}

async function retireModel(m) {
  if (!confirm(`Retire ${m.id}? Customers no longer see or deploy it; what runs keeps running.`)) return;
  showError('acat-error', null);
  try {
    await api('POST', `/v1/admin/catalog/${encodeURIComponent(m.id)}/retire`);
    flash(`${m.id} retired.`);
    enterAdminCatalog();
  } catch (e) { showError('acat-error', e); }
}

onSubmit('model-form', 'acat-error', async (f, form) => {
  const body = {
    name: f.name.value.trim(), family: f.family.value.trim(), source: f.source.value.trim(),
    context_length: Number(f.context_length.value), device_kinds: f.device_kinds.value.split(','),
    min_devices: Number(f.min_devices.value || 1),
    input_price_micros_per_mtok: Math.round(Number(f.in_price.value || 0) * 1e6),
    output_price_micros_per_mtok: Math.round(Number(f.out_price.value || 0) * 1e6),
  };
  if (f.parameters.value) body.parameter_count = Math.round(Number(f.parameters.value) * 1e9);
  await api('POST', '/v1/admin/catalog', body);
  flash(`${body.name} added to the catalog.`);
  form.reset();
  enterAdminCatalog();
});

// ---- admin: enrollment ----

// The agent API listener is its own port (--agent-port): by default the API port + 2, as
// quickstart runs them; the field can change it and is remembered in this browser.
function enterTokens() {
  if (!$('token-agent-url').value) {
    const port = Number(location.port || (location.protocol === 'https:' ? 443 : 80)) + 2;
    $('token-agent-url').value = localStorage.getItem('orp-agent-url') || `${location.protocol}//${location.hostname}:${port}`;
  }
  refreshTokens();
}

async function refreshTokens() {
  let page, hosts;
  try {
    [page, hosts] = await Promise.all([api('GET', '/v1/admin/enrollment-tokens?limit=50'), api('GET', '/v1/admin/hosts')]);
  } catch (e) {
    $('tokens').replaceChildren(el('tr', {}, el('td', { colspan: 6, class: 'empty' },
      e.status === 404 ? 'This controller does not list enrollment tokens.' : e.message)));
    return;
  }
  const hostName = new Map(hosts.data.map((h) => [String(h.id), h.name]));
  $('tokens').replaceChildren(...page.data.map((t) => el('tr', { dataset: { id: t.id, state: t.state } },
    el('th', { scope: 'row' }, el('code', {}, `${t.prefix}…`)), el('td', {}, t.pool || '—'),
    el('td', {}, when(t.created_at)), el('td', {}, when(t.expires_at)),
    el('td', { class: 'token-state' }, t.state === 'used' ? `used by ${hostName.get(String(t.used_by_host)) || `host ${t.used_by_host}`}` : t.state),
    el('td', { class: 'actions' }, t.state === 'active' ? el('button', { type: 'button', class: 'danger',
      'aria-label': `Revoke token ${t.prefix}`, onclick: () => revokeToken(t) }, 'Revoke') : null))));
  if (!page.data.length) $('tokens').append(el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'No enrollment tokens yet.')));
}

async function revokeToken(t) {
  if (!confirm(`Revoke the enrollment token ${t.prefix}…? No host can enroll with it afterwards.`)) return;
  showError('tokens-error', null);
  try {
    await api('DELETE', `/v1/admin/enrollment-tokens/${encodeURIComponent(t.id)}`);
    flash('Enrollment token revoked.');
    refreshTokens();
  } catch (e) { showError('tokens-error', e); }
}

$('token-agent-url').addEventListener('change', () => localStorage.setItem('orp-agent-url', $('token-agent-url').value.trim()));

// The exact command for the new host: the token through the environment (not the command line,
// where `ps` shows it), the host's own name and first address.
function installCommand(url, token) {
  return `ORP_AGENT_TOKEN=${token} orp-agent --controller ${url.replace(/\/+$/, '')} ` +
    '--name "$(hostname)" --advertise-addr "$(hostname -I | cut -d\' \' -f1)" --state-dir /var/lib/orp-agent';
}

$('token-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  showError('tokens-error', null);
  for (const id of ['token-ttl', 'token-agent-url']) {
    if (!$(id).checkValidity()) { showError('tokens-error', new Error(`${$(id).parentElement.firstChild.textContent.trim()}: ${$(id).validationMessage}`)); $(id).focus(); return; }
  }
  const body = { ttl_s: Math.round(Number($('token-ttl').value) * 60) };
  if ($('token-pool').value.trim()) body.pool = $('token-pool').value.trim();
  try {
    const t = await api('POST', '/v1/admin/enrollment-tokens', body);
    $('token-secret').textContent = t.token;
    $('token-command').textContent = installCommand($('token-agent-url').value.trim(), t.token);
    $('token-expires').textContent = `${when(t.expires_at)} UTC`;
    $('token-box').hidden = false;
    $('token-command-copy').focus();
    refreshTokens();
  } catch (e) { showError('tokens-error', e); }
});

start();

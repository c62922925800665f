// The console: plain JavaScript over the REST API, no build step. The API key is kept in this
// tab's sessionStorage only; every call sends it as a Bearer token.
'use strict';

const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem('orp-key') || '';
let timer = null;

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(data.error?.message || `HTTP ${res.status}`), { status: res.status });
  return data;
}

function showError(e) { $('error').textContent = e ? e.message : ''; }

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

async function refresh() {
  try {
    const list = await api('GET', '/v1/endpoints');
    const body = $('endpoints');
    body.replaceChildren();
    for (const ep of list.data) {
      const tr = document.createElement('tr');
      tr.dataset.name = ep.name;
      tr.append(text('td', ep.name), text('td', ep.model),
        text('td', `${ep.gpus_per_replica} × ${ep.device_kind.toUpperCase()}`),
        text('td', ep.status, `status-${ep.status}`),
        text('td', `${ep.replicas_ready}/${ep.replicas}` +
          (ep.replica_states.some((r) => r.reason) ? ` — ${ep.replica_states.map((r) => r.reason).filter(Boolean).join('; ')}` : '')));
      const td = document.createElement('td');
      const del = text('button', 'Delete');
      del.onclick = async () => {
        if (!confirm(`Delete endpoint ${ep.name}?`)) return;
        try { await api('DELETE', `/v1/endpoints/${ep.id}`); showError(null); refresh(); } catch (e) { showError(e); }
      };
      td.append(del);
      tr.append(td);
      body.append(tr);
    }
  } catch (e) {
    if (e.status === 401) return logout();
    showError(e);
  }
}

async function enter() {
  try {
    const cat = await api('GET', '/v1/catalog');
    const sel = $('ep-model');
    sel.replaceChildren(...cat.data.map((m) => {
      const o = text('option', `${m.id} (${m.family}, ${m.device_kinds.join('/')})`);
      o.value = m.id;
      return o;
    }));
  } catch (e) {
    if (e.status === 401) { logout(); $('error').textContent = ''; alert('That API key was not accepted.'); return; }
    showError(e);
  }
  $('login').hidden = true;
  $('app').hidden = false;
  $('who').textContent = `${key.slice(0, 14)}…`;
  $('gateway-url').textContent = `${location.protocol}//${location.hostname}:${Number(location.port || 80) + 1}/v1`;
  refresh();
  timer = setInterval(refresh, 2000);
}

function logout() {
  key = '';
  sessionStorage.removeItem('orp-key');
  clearInterval(timer);
  $('app').hidden = true;
  $('login').hidden = false;
  $('who').textContent = '';
}

$('login-form').onsubmit = (ev) => {
  ev.preventDefault();
  key = $('key').value.trim();
  sessionStorage.setItem('orp-key', key);
  enter();
};

$('deploy-form').onsubmit = async (ev) => {
  ev.preventDefault();
  try {
    await api('POST', '/v1/endpoints', {
      name: $('ep-name').value.trim(), model: $('ep-model').value, replicas: Number($('ep-replicas').value),
    });
    showError(null);
    $('ep-name').value = '';
    refresh();
  } catch (e) { showError(e); }
};

$('logout').onclick = logout;
if (key) enter();

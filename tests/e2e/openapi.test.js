// docs/openapi.json stays true: every route of the API and gateway listeners is documented and
// every documented route exists (asked of the running controller, and read from the C route
// tables), and real happy-path replies validate against the document's schemas, whose objects
// admit no field they do not name.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Platform, checkReply as check, documentedRoutes as documented, openapi as doc, openapiSchema, root, waitFor } from './harness.js';

const P = new Platform();
const METHODS = ['get', 'post', 'put', 'patch', 'delete'];

const norm = (p) => p.replace(/\{[^}]*\}/g, '{}');

const gw = (method, p, { body, key = P.adminKey } = {}) => P.call(method, p, { body, key, gw: true });

before(async () => { await P.start({ cpuSlots: 2, controllerArgs: ['--billing-period-s', '2'] }); }, { timeout: 180000 });
after(async () => { await P.stop(); });

test('GET /v1/openapi.json serves docs/openapi.json without credentials; every schema compiles', async () => {
  const r = await P.api('GET', '/v1/openapi.json', { key: null });
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers.get('content-type'), /^application\/json/);
  assert.deepEqual(r.json, doc);
  assert.equal(doc.openapi, '3.1.0');
  for (const name of Object.keys(doc.components.schemas))
    assert.ok(openapiSchema(`#/components/schemas/${name}`), `schema ${name} compiles`);
  // additionalProperties: false is really enforced: a stray field fails.
  const v = openapiSchema('#/components/schemas/Balance');
  const bal = { object: 'balance', account_id: '1', balance_micros: 1, balance_display: '0.000001 USD', month_spend_micros: 0, month_spend_display: '0.000000 USD', monthly_spend_cap_micros: null, monthly_spend_cap_display: null };
  assert.ok(v(bal));
  assert.ok(!v({ ...bal, extra: 1 }));
});

test('every route in the C route tables is documented, and nothing else is', () => {
  const dir = path.join(root, 'controller');
  const inSource = new Set();
  for (const f of fs.readdirSync(dir).filter((f) => f.endsWith('.c') && f !== 'agentapi.c')) {
    const src = fs.readFileSync(path.join(dir, f), 'utf8');
    for (const m of src.matchAll(/\{\s*"(GET|POST|PUT|PATCH|DELETE)",\s*"([^"]+)",\s*h_\w+\s*\}/g)) {
      if (m[2].endsWith('*')) continue; // the console's static files: documented as GET /
      const gateway = f === 'gateway.c';
      inSource.add(`${m[1]} ${m[2]} ${gateway ? 'gateway' : 'api'}`);
    }
  }
  assert.ok(inSource.size >= 30, `found the route tables (${inSource.size} routes)`);
  const inDoc = new Set(documented().filter((d) => d.route !== '/')
    .map((d) => `${d.method} ${norm(d.route)} ${d.gateway ? 'gateway' : 'api'}`));
  assert.deepEqual([...inSource].filter((x) => !inDoc.has(x)).sort(), [], 'routes missing from docs/openapi.json');
  assert.deepEqual([...inDoc].filter((x) => !inSource.has(x)).sort(), [], 'documented routes with no handler');
});

test('the running controller has every documented route (no 404/405 without credentials) and no undocumented method on them', async () => {
  const sample = { id: '1', month: '2026-01' };
  for (const [p, item] of Object.entries(doc.paths)) {
    const base = item['x-orp-listener'] === 'gateway' ? `http://127.0.0.1:${P.ports.gateway}` : P.apiUrl;
    const url = base + p.replace(/\{([^}]*)\}/g, (_, n) => sample[n] ?? 'x');
    for (const m of METHODS) {
      const res = await fetch(url, { method: m.toUpperCase() });
      const text = await res.text();
      if (item[m]) {
        assert.ok(![404, 405].includes(res.status), `${m.toUpperCase()} ${p}: ${res.status} ${text}`);
        // Without credentials, whatever a protected route answers is a documented status.
        if (res.status !== 200) {
          const op = item[m];
          let resp = op.responses[String(res.status)];
          assert.ok(resp, `${m.toUpperCase()} ${p}: unauthenticated status ${res.status} is documented (${text})`);
        }
      } else {
        assert.ok([404, 405].includes(res.status), `${m.toUpperCase()} ${p} is not documented but answered ${res.status}: ${text}`);
      }
    }
  }
});

test('happy-path replies validate against the schemas', async () => {
  const api = async (method, route, p, opts) => check(method, route, await P.api(method, p, opts));

  const created = await api('POST', '/v1/endpoints', '/v1/endpoints', { body: { name: 'oa-one', model: 'demo-tiny', replicas: 1 } });
  const id = created.id;
  await waitFor('oa-one ready', async () => (await P.api('GET', `/v1/endpoints/${id}`)).json?.status === 'ready', 90000, 300);
  const ep = await api('GET', '/v1/endpoints/{id}', `/v1/endpoints/${id}`);
  assert.equal(ep.replica_states[0].state, 'ready');
  assert.ok(ep.replica_states[0].host && ep.replica_states[0].ready_at);
  await api('GET', '/v1/endpoints', '/v1/endpoints');
  assert.ok((await api('GET', '/v1/catalog', '/v1/catalog')).data.length >= 1);
  assert.ok((await api('GET', '/v1/catalog/presets', '/v1/catalog/presets')).data.length >= 1);
  assert.ok((await api('GET', '/v1/quotas', '/v1/quotas')).devices_in_use >= 1);
  check('GET', '/v1/endpoints/{id}', await P.api('GET', '/v1/endpoints/00000000-0000-0000-0000-000000000000'));

  // The gateway.
  const models = check('GET', '/v1/models', await gw('GET', '/v1/models'));
  assert.ok(models.data.some((m) => m.id === 'oa-one'));
  check('POST', '/v1/chat/completions', await gw('POST', '/v1/chat/completions',
    { body: { model: 'oa-one', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 } }));
  check('POST', '/v1/chat/completions', await gw('POST', '/v1/chat/completions',
    { body: { model: 'nope', messages: [{ role: 'user', content: 'hi' }] } }));

  // Billing: wait for a charge so that usage and statement lines are not empty.
  await waitFor('a usage charge', async () =>
    (await P.api('GET', '/v1/billing/ledger')).json?.data?.some((e) => e.kind === 'usage_time'), 30000, 300);
  await api('GET', '/v1/billing/balance', '/v1/billing/balance');
  const ledger = await api('GET', '/v1/billing/ledger', '/v1/billing/ledger?limit=1');
  assert.equal(ledger.has_more, true);
  assert.ok(ledger.next_starting_after);
  assert.ok((await api('GET', '/v1/billing/usage', '/v1/billing/usage?granularity=minute')).data.length >= 1);
  // The chat request's usage event comes with an agent heartbeat, not with the charge above.
  const stats = await waitFor('the chat request in the stats', async () => {
    const s = await api('GET', '/v1/endpoints/{id}/stats', `/v1/endpoints/${id}/stats?granularity=minute`);
    return s.data.reduce((n, p) => n + p.requests, 0) >= 1 ? s : false;
  }, 30000, 300);
  assert.equal(stats.data.length, 60);
  const month = new Date().toISOString().slice(0, 7);
  const stmt = await api('GET', '/v1/billing/statements/{month}', `/v1/billing/statements/${month}`);
  assert.ok(stmt.lines.some((l) => l.kind === 'usage_time') && stmt.lines.some((l) => l.kind === 'credit'));
  const acct = (await P.api('GET', '/v1/billing/balance')).json.account_id;
  await api('POST', '/v1/admin/accounts/{id}/credits', `/v1/admin/accounts/${acct}/credits`,
    { body: { amount_micros: 5000000, idempotency_key: 'oa-1', memo: 'test' } });
  await api('POST', '/v1/admin/accounts/{id}/credits', `/v1/admin/accounts/${acct}/credits`,
    { body: { amount_micros: 5000000, idempotency_key: 'oa-1' } });
  await api('GET', '/v1/admin/accounts/{id}/quotas', `/v1/admin/accounts/${acct}/quotas`);
  await api('PUT', '/v1/admin/accounts/{id}/quotas', `/v1/admin/accounts/${acct}/quotas`,
    { body: { max_devices: 100, max_endpoints: 10, requests_per_min: 6000 } });
  await api('PUT', '/v1/admin/endpoints/{id}/shared', `/v1/admin/endpoints/${id}/shared`, { body: { shared: false } });

  // Keys, people, the audit log.
  const key = await api('POST', '/v1/api-keys', '/v1/api-keys', { body: { name: 'oa', scopes: ['inference'], endpoint_ids: [id] } });
  await api('POST', '/v1/api-keys', '/v1/api-keys', { body: { expires_at: '2099-01-01T00:00:00Z' } });
  await api('GET', '/v1/api-keys', '/v1/api-keys?limit=1');
  await api('GET', '/v1/auth/me', '/v1/auth/me');
  await api('DELETE', '/v1/api-keys/{id}', `/v1/api-keys/${key.id}`);
  const su = await P.api('POST', '/v1/auth/signup', { key: null, body: { email: 'oa@example.com', password: 'long enough', account_name: 'OA' } });
  check('POST', '/v1/auth/signup', su);
  const li = check('POST', '/v1/auth/login', await P.api('POST', '/v1/auth/login', { key: null, body: { email: 'oa@example.com', password: 'long enough' } }));
  check('POST', '/v1/auth/login', await P.api('POST', '/v1/auth/login', { key: null, body: { email: 'oa@example.com', password: 'wrong one' } }));
  const cookie = (await fetch(`${P.apiUrl}/v1/auth/login`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email: 'oa@example.com', password: 'long enough' }) })).headers.getSetCookie()[0].split(';')[0];
  const csrf = (await (await fetch(`${P.apiUrl}/v1/auth/me`, { headers: { Cookie: cookie } })).json()).csrf_token;
  assert.ok(li.csrf_token && csrf);
  const sess = async (method, p, body) => {
    const res = await fetch(`${P.apiUrl}${p}`, { method, headers: { Cookie: cookie, 'X-CSRF-Token': csrf, 'Content-Type': 'application/json' }, body: body && JSON.stringify(body) });
    const text = await res.text();
    return { status: res.status, text, json: JSON.parse(text) };
  };
  check('GET', '/v1/auth/me', await sess('GET', '/v1/auth/me'));
  check('POST', '/v1/auth/password', await sess('POST', '/v1/auth/password', { current_password: 'wrong one', new_password: 'another long one' }));
  check('POST', '/v1/auth/logout', await sess('POST', '/v1/auth/logout'));
  const audit = await api('GET', '/v1/audit-log', '/v1/audit-log?limit=5');
  assert.ok(audit.data.length === 5 && audit.has_more);

  // Hosts.
  const hosts = await api('GET', '/v1/admin/hosts', '/v1/admin/hosts');
  const host = hosts.data[0].id;
  assert.ok(hosts.data[0].devices.length >= 1);
  await api('POST', '/v1/admin/hosts/{id}/cordon', `/v1/admin/hosts/${host}/cordon`);
  await api('POST', '/v1/admin/hosts/{id}/uncordon', `/v1/admin/hosts/${host}/uncordon`);
  await api('POST', '/v1/admin/enrollment-tokens', '/v1/admin/enrollment-tokens', { body: { ttl_s: 60, pool: 'oa' } });
  check('DELETE', '/v1/admin/hosts/{id}', await P.api('DELETE', '/v1/admin/hosts/999999'));

  // Scale, stop, start, delete.
  assert.equal((await api('PATCH', '/v1/endpoints/{id}', `/v1/endpoints/${id}`, { body: { replicas: 2 } })).replicas, 2);
  await api('PATCH', '/v1/endpoints/{id}', `/v1/endpoints/${id}`, { body: { replicas: 1 } });
  await api('POST', '/v1/endpoints/{id}/stop', `/v1/endpoints/${id}/stop`);
  await api('POST', '/v1/endpoints/{id}/start', `/v1/endpoints/${id}/start`);
  const del = await api('DELETE', '/v1/endpoints/{id}', `/v1/endpoints/${id}`);
  assert.equal(del.status, 'deleted');
  check('GET', '/healthz', await P.api('GET', '/healthz', { key: null }));
});

// The console's read routes (console_api.c) against a real controller, agent, runtime and
// PostgreSQL: GET /v1/endpoints/{id}/stats counts exactly the requests made (every period of the
// window present, zeros included) and is another account's 404; GET /v1/quotas shows the quotas
// in force and the use a deploy checks.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { Platform, waitFor } from './harness.js';

const P = new Platform();
let id;

before(async () => {
  await P.start({ cpuSlots: 1 });
  id = await P.deploy('stats-ep');
}, { timeout: 120000 });

after(() => P.stop());

const total = (s, k) => s.data.reduce((n, p) => n + p[k], 0);

test('the stats series counts each request once, in every granularity', { timeout: 60000 }, async () => {
  const client = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0 });
  const N = 5;
  let completion = 0;
  for (let i = 0; i < N; i++) {
    const c = await client.chat.completions.create({ model: 'stats-ep', messages: [{ role: 'user', content: `n ${i}` }], max_tokens: 6 });
    completion += c.usage.completion_tokens;
  }
  const s = await waitFor('the usage stored', async () => {
    const r = await P.api('GET', `/v1/endpoints/${id}/stats`);
    return r.status === 200 && total(r.json, 'requests') === N ? r.json : false;
  }, 30000, 300);
  assert.equal(s.granularity, 'minute');
  assert.equal(s.data.length, 60);
  assert.equal(total(s, 'completion_tokens'), completion, 'the tokens the client was told');
  const times = s.data.map((p) => Date.parse(p.period_start));
  assert.ok(times.every((t, i) => i === 0 || t - times[i - 1] === 60000), 'one row per minute, oldest first');
  assert.ok(Date.now() - times[59] < 60000, 'the last row is the current minute');
  for (const [g, rows] of [['hour', 48], ['day', 30]]) {
    const r = await P.api('GET', `/v1/endpoints/${id}/stats?granularity=${g}`);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.data.length, rows);
    assert.equal(total(r.json, 'requests'), N);
  }
});

test('stats: bad granularity 400, bad id 404, another account\'s endpoint 404', async () => {
  const bad = await P.api('GET', `/v1/endpoints/${id}/stats?granularity=week`);
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error.param, 'granularity');
  assert.equal((await P.api('GET', '/v1/endpoints/not-a-uuid/stats')).status, 404);
  assert.equal((await P.api('GET', '/v1/endpoints/00000000-0000-0000-0000-000000000000/stats')).status, 404);
  const other = P.newAccountKey('other@example.com');
  const r = await P.api('GET', `/v1/endpoints/${id}/stats`, { key: other });
  assert.equal(r.status, 404);
  assert.equal(r.json.error.code, 'endpoint_not_found');
  assert.equal((await P.api('GET', `/v1/endpoints/${id}/stats`, { key: null })).status, 401);
});

test('GET /v1/quotas: the defaults, then the account\'s own, with the use beside them', async () => {
  let q = (await P.api('GET', '/v1/quotas')).json;
  assert.deepEqual({ d: q.defaults, dev: q.devices_in_use, eps: q.endpoints_in_use, max: q.max_devices },
    { d: true, dev: 1, eps: 1, max: 16 });
  const acct = (await P.api('GET', '/v1/billing/balance')).json.account_id;
  const put = await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: { max_devices: 3, max_endpoints: 2 } });
  assert.equal(put.status, 200, put.text);
  q = (await P.api('GET', '/v1/quotas')).json;
  assert.deepEqual({ d: q.defaults, max: q.max_devices, eps: q.max_endpoints, rpm: q.requests_per_min },
    { d: false, max: 3, eps: 2, rpm: null });
  // Another account sees its own use, not this one's.
  const other = (await P.api('GET', '/v1/quotas', { key: P.newAccountKey('third@example.com') })).json;
  assert.equal(other.devices_in_use, 0);
  assert.equal(other.defaults, true);
});

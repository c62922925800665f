// Scaling an endpoint with PATCH /v1/endpoints/{id}: up (new replicas placed), down (the highest
// ordinals stop), past the capacity (waits with a reason), and bad input.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { Platform, waitFor } from './harness.js';

const P = new Platform();
let id;

before(async () => {
  await P.start({ cpuSlots: 2 });
  id = await P.deploy('scaled');
}, { timeout: 120000 });
after(async () => { await P.stop(); });

const get = async () => (await P.api('GET', `/v1/endpoints/${id}`)).json;
const live = async () => (await P.db.query(
  "SELECT ordinal, state FROM replicas WHERE endpoint_id = $1 AND state <> 'stopped' ORDER BY ordinal", [id])).rows;

test('scale up, then down, then past the capacity', { timeout: 90000 }, async () => {
  const up = await P.api('PATCH', `/v1/endpoints/${id}`, { body: { replicas: 2 } });
  assert.equal(up.status, 200, up.text);
  assert.equal(up.json.replicas, 2);
  await waitFor('two ready replicas', async () => (await get()).replicas_ready === 2);
  const client = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0 });
  await client.chat.completions.create({ model: 'scaled', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });

  const down = await P.api('PATCH', `/v1/endpoints/${id}`, { body: { replicas: 1 } });
  assert.equal(down.status, 200);
  await waitFor('one replica left', async () => (await live()).length === 1);
  assert.deepEqual(await live(), [{ ordinal: 0, state: 'ready' }], 'the highest ordinal went');
  assert.equal((await get()).status, 'ready');

  const past = await P.api('PATCH', `/v1/endpoints/${id}`, { body: { replicas: 3 } });
  assert.equal(past.status, 200);
  const ep = await waitFor('a verdict for the third', async () => {
    const e = await get();
    return e.replicas_ready === 2 && e.replica_states.some((r) => /no capacity/.test(r.reason)) ? e : false;
  }, 30000);
  assert.equal(ep.status, 'deploying');
  assert.equal(ep.replicas_ready, 2);
  assert.equal((await P.api('PATCH', `/v1/endpoints/${id}`, { body: { replicas: 1 } })).status, 200);
  await waitFor('back to one', async () => (await live()).length === 1);
});

test('bad scale requests change nothing', async () => {
  for (const [body, code, param] of [
    [{ replicas: 0 }, 'invalid_parameter', 'replicas'],
    [{ replicas: 17 }, 'invalid_parameter', 'replicas'],
    [{ replicas: '2' }, 'invalid_parameter', 'replicas'],
    [{}, 'missing_parameter', 'replicas'],
    [{ replicas: 2, model: 'x' }, 'unknown_parameter', 'model'],
  ]) {
    const r = await P.api('PATCH', `/v1/endpoints/${id}`, { body });
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal(r.json.error.code, code);
    assert.equal(r.json.error.param, param);
  }
  const other = P.newAccountKey('other-scaler@example.com');
  assert.equal((await P.api('PATCH', `/v1/endpoints/${id}`, { key: other, body: { replicas: 2 } })).status, 404);
  assert.equal((await P.api('PATCH', '/v1/endpoints/not-an-id', { body: { replicas: 2 } })).status, 404);
  assert.equal((await get()).replicas, 1);
  // The change is in the audit log.
  const log = await P.api('GET', '/v1/audit-log?limit=50');
  assert.ok(log.json.data.some((e) => e.method === 'PATCH' && e.object_id === id), JSON.stringify(log.json.data[0]));
});

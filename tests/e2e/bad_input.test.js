// Bad input: each kind of malformed or unauthorized request gets the right 4xx with an
// OpenAI-shaped JSON error body, changes nothing, and the controller keeps serving.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { Platform } from './harness.js';

const P = new Platform();
let endpointId;
let otherKey;

before(async () => {
  await P.start({ cpuSlots: 1 });
  endpointId = await P.deploy('mine');
  otherKey = P.newAccountKey('other@example.com');
}, { timeout: 180000 });

after(async () => {
  await P.stop();
});

function assertError(r, status, code, param) {
  assert.equal(r.status, status, `status for ${r.text}`);
  assert.ok(r.json && r.json.error, `JSON error body: ${r.text}`);
  const e = r.json.error;
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, 'string');
  assert.ok('param' in e && 'code' in e);
  if (code) assert.equal(e.code, code);
  if (param !== undefined) assert.equal(e.param, param);
}

async function gateway(body, { key = P.adminKey, raw } = {}) {
  const res = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...(key ? { Authorization: `Bearer ${key}` } : {}) },
    body: raw ?? JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text };
}

test('REST API: malformed JSON, missing and wrong-typed fields, unknown model', async () => {
  assertError(await P.api('POST', '/v1/endpoints', { raw: '{"name": "x",' }), 400, 'invalid_json');
  assertError(await P.api('POST', '/v1/endpoints', { raw: '[1,2]' }), 400, 'invalid_json');
  assertError(await P.api('POST', '/v1/endpoints', { raw: '' }), 400, 'invalid_json');
  assertError(await P.api('POST', '/v1/endpoints', { body: { model: 'demo-tiny' } }), 400, 'missing_parameter', 'name');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'a' } }), 400, 'missing_parameter', 'model');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 5, model: 'demo-tiny' } }), 400, 'invalid_parameter', 'name');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'a', model: 'demo-tiny', replicas: 'two' } }), 400, 'invalid_parameter', 'replicas');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'a', model: 'demo-tiny', replicas: 1.5 } }), 400, 'invalid_parameter', 'replicas');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'a', model: 'demo-tiny', gpus_per_replica: 0 } }), 400, 'invalid_parameter', 'gpus_per_replica');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'a', model: 'demo-tiny', replicas: 1000 } }), 400, 'invalid_parameter', 'replicas');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'Bad Name!', model: 'demo-tiny' } }), 400, 'invalid_parameter', 'name');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'a', model: 'demo-tiny', colour: 'red' } }), 400, 'unknown_parameter', 'colour');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'a', model: 'no-such-model' } }), 400, 'model_not_found', 'model');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'a', model: 'demo-tiny', pool: '' } }), 400, 'invalid_parameter', 'pool');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'a', model: 'demo-tiny', pool: 'bad\u0001' } }), 400, 'invalid_parameter', 'pool');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'a', model: 'demo-tiny', billing_mode: 'free' } }), 400, 'invalid_parameter', 'billing_mode');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'a', model: 'demo-tiny', billing_mode: 'value' }, key: otherKey }), 403, 'admin_only', 'billing_mode');
  assertError(await P.api('POST', '/v1/endpoints', { body: { name: 'mine', model: 'demo-tiny' } }), 409, 'name_taken', 'name');
  assertError(await P.api('POST', '/v1/endpoints', { raw: JSON.stringify({ name: 'big', model: 'x'.repeat(2 * 1024 * 1024) }) }), 413, 'body_too_large');
  assertError(await P.api('PUT', '/v1/endpoints'), 405);
  assertError(await P.api('POST', '/v1/no-such-route', { body: {} }), 404);
  // Nothing was created by any of that.
  const l = await P.api('GET', '/v1/endpoints');
  assert.deepEqual(l.json.data.map((e) => e.name), ['mine']);
});

test('missing or wrong API key is 401 on the API and the gateway', async () => {
  assertError(await P.api('GET', '/v1/endpoints', { key: null }), 401, 'missing_api_key');
  assertError(await P.api('GET', '/v1/endpoints', { key: 'sk-orp-' + '0'.repeat(48) }), 401, 'invalid_api_key');
  assertError(await P.api('GET', '/v1/endpoints', { key: 'garbage' }), 401, 'invalid_api_key');
  // Who asks is checked before anything about what is asked.
  assertError(await P.api('GET', '/v1/endpoints/not-a-uuid', { key: null }), 401, 'missing_api_key');
  assertError(await P.api('DELETE', `/v1/endpoints/${endpointId}`, { key: null }), 401, 'missing_api_key');
  assertError(await P.api('POST', '/v1/endpoints', { key: null, raw: '{bad json' }), 401, 'missing_api_key');
  assertError(await gateway({ model: 'mine', messages: [] }, { key: null }), 401, 'missing_api_key');
  assertError(await gateway({ model: 'mine', messages: [] }, { key: 'sk-orp-nope' }), 401, 'invalid_api_key');
  const c = new OpenAI({ apiKey: 'sk-orp-' + 'f'.repeat(48), baseURL: P.gatewayUrl, maxRetries: 0 });
  await assert.rejects(c.models.list(), (e) => e.status === 401);
});

test("another account's endpoint is a 404, exactly like a missing one", async () => {
  assertError(await P.api('GET', `/v1/endpoints/${endpointId}`, { key: otherKey }), 404, 'endpoint_not_found');
  assertError(await P.api('DELETE', `/v1/endpoints/${endpointId}`, { key: otherKey }), 404, 'endpoint_not_found');
  assertError(await P.api('GET', '/v1/endpoints/00000000-0000-0000-0000-000000000000'), 404, 'endpoint_not_found');
  assertError(await P.api('GET', '/v1/endpoints/not-a-uuid'), 404, 'endpoint_not_found');
  const l = await P.api('GET', '/v1/endpoints', { key: otherKey });
  assert.deepEqual(l.json.data, []);
  // Nor can the other account call it through the gateway.
  assertError(await gateway({ model: 'mine', messages: [{ role: 'user', content: 'hi' }] }, { key: otherKey }), 404, 'model_not_found', 'model');
  // Still there and ready for its owner.
  const g = await P.api('GET', `/v1/endpoints/${endpointId}`);
  assert.equal(g.json.status, 'ready');
});

test('gateway: malformed JSON, missing model, unknown model, unsupported parameter', async () => {
  assertError(await gateway(null, { raw: '{"model":' }), 400, 'invalid_json');
  assertError(await gateway({ messages: [] }), 400, 'missing_parameter', 'model');
  assertError(await gateway({ model: 7, messages: [] }), 400, 'invalid_parameter', 'model');
  assertError(await gateway({ model: 'nope', messages: [{ role: 'user', content: 'hi' }] }), 404, 'model_not_found', 'model');
  // The runtime validates the rest; its 400s come back through the gateway unchanged.
  let r = await gateway({ model: 'mine', messages: [{ role: 'user', content: 'hi' }], tools: [{ type: 'function', function: { name: 'f' } }] });
  assertError(r, 400, undefined, 'tools');
  r = await gateway({ model: 'mine', messages: [{ role: 'user', content: 'hi' }], n: 3 });
  assertError(r, 400, undefined, 'n');
  r = await gateway({ model: 'mine', messages: 'hi' });
  assertError(r, 400, undefined, 'messages');
  r = await gateway({ model: 'mine', messages: [{ role: 'user', content: 'hi' }], temperature: 'hot' });
  assertError(r, 400, undefined, 'temperature');
  r = await gateway({ model: 'mine', messages: [{ role: 'user', content: 'hi' }], max_tokens: 100000 });
  assertError(r, 400);
});

test('the controller is still serving, and a good request still works', async () => {
  const h = await P.api('GET', '/healthz', { key: null });
  assert.equal(h.status, 200);
  const c = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0 });
  const out = await c.chat.completions.create({ model: 'mine', messages: [{ role: 'user', content: 'ok?' }], max_tokens: 4 });
  assert.equal(out.choices.length, 1);
  assert.ok(out.usage.completion_tokens >= 1);
});

test('API keys are stored only as a SHA-256 hash', async () => {
  const r = await P.db.query('SELECT prefix, secret_hash FROM api_keys');
  assert.ok(r.rows.length >= 2);
  const { createHash } = await import('node:crypto');
  const want = createHash('sha256').update(P.adminKey).digest('hex');
  assert.ok(r.rows.some((k) => k.secret_hash === want));
  for (const k of r.rows) {
    assert.notEqual(k.secret_hash, P.adminKey);
    assert.equal(k.prefix.length, 14);
    assert.ok(P.adminKey.startsWith(k.prefix) || otherKey.startsWith(k.prefix));
  }
  const dump = JSON.stringify((await P.db.query('SELECT * FROM api_keys')).rows);
  assert.ok(!dump.includes(P.adminKey) && !dump.includes(otherKey));
});

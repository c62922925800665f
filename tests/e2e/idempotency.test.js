// Idempotency-Key on the POSTs that create something (endpoints, API keys, sign-up): the same
// key and body get the first reply again (status and body); another body gets 409; 50
// concurrent duplicates make one object; errors are not stored; keys of two accounts never meet.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Platform } from './harness.js';

const P = new Platform();

before(async () => { await P.start({ cpuSlots: 1 }); }, { timeout: 120000 });
after(async () => { await P.stop(); });

async function post(path, body, { key = P.adminKey, idem, raw } = {}) {
  const headers = { 'Content-Type': 'application/json' };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (idem !== undefined) headers['Idempotency-Key'] = idem;
  const res = await fetch(`${P.apiUrl}${path}`, { method: 'POST', headers, body: raw ?? JSON.stringify(body) });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text, headers: res.headers };
}

const count = async (sql, args) => (await P.db.query(sql, args)).rows[0].n;

test('50 concurrent POSTs with one Idempotency-Key make one endpoint; all get the same reply', async () => {
  const body = { name: 'once', model: 'demo-tiny' };
  const replies = await Promise.all(Array.from({ length: 50 }, () => post('/v1/endpoints', body, { idem: 'deploy-once-1' })));
  for (const r of replies) assert.equal(r.status, 201, r.text);
  const ids = new Set(replies.map((r) => r.json.id));
  assert.equal(ids.size, 1);
  assert.equal(await count("SELECT count(*)::int AS n FROM endpoints WHERE name = 'once'"), 1);
  assert.equal(await count("SELECT count(*)::int AS n FROM replicas r JOIN endpoints e ON e.id = r.endpoint_id WHERE e.name = 'once'"), 1);
  // The replies are byte for byte the stored one (created_at, status and all).
  const texts = new Set(replies.map((r) => r.text));
  assert.equal(texts.size, 1, [...texts].join('\n'));
  assert.ok(replies.filter((r) => r.headers.get('idempotent-replayed') === 'true').length >= 49);
});

test('a later retry gets the same reply even after the state changed; another body is a 409', async () => {
  const first = await post('/v1/endpoints', { name: 'retry', model: 'demo-tiny' }, { idem: 'deploy-retry' });
  assert.equal(first.status, 201, first.text);
  // Delete it: the replay still says what the creation said.
  const del = await P.api('DELETE', `/v1/endpoints/${first.json.id}`);
  assert.equal(del.status, 200);
  const again = await post('/v1/endpoints', { name: 'retry', model: 'demo-tiny' }, { idem: 'deploy-retry' });
  assert.equal(again.status, 201);
  assert.equal(again.text, first.text);
  assert.equal(again.headers.get('idempotent-replayed'), 'true');
  const other = await post('/v1/endpoints', { name: 'retry2', model: 'demo-tiny' }, { idem: 'deploy-retry' });
  assert.equal(other.status, 409, other.text);
  assert.equal(other.json.error.code, 'idempotency_key_reused');
  // The same key on another route is another request too.
  const k = await post('/v1/api-keys', { name: 'x' }, { idem: 'deploy-retry' });
  assert.equal(k.status, 409, k.text);
  assert.equal(await count("SELECT count(*)::int AS n FROM endpoints WHERE name LIKE 'retry%'"), 1);
});

test('errors are not stored: a retry after a 400 runs again', async () => {
  const bad = await post('/v1/endpoints', { name: 'Bad Name', model: 'demo-tiny' }, { idem: 'fix-me' });
  assert.equal(bad.status, 400);
  const good = await post('/v1/endpoints', { name: 'fixed', model: 'demo-tiny' }, { idem: 'fix-me' });
  assert.equal(good.status, 201, good.text);
});

test('keys of two accounts never meet; malformed keys are a 400', async () => {
  const other = P.newAccountKey('other@example.com');
  const a = await post('/v1/api-keys', { name: 'k' }, { idem: 'shared-name' });
  const b = await post('/v1/api-keys', { name: 'k' }, { idem: 'shared-name', key: other });
  assert.equal(a.status, 201, a.text);
  assert.equal(b.status, 201, b.text);
  assert.notEqual(a.json.id, b.json.id);
  const long = await post('/v1/api-keys', { name: 'k' }, { idem: 'x'.repeat(256) });
  assert.equal(long.status, 400);
  assert.equal(long.json.error.code, 'invalid_idempotency_key');
  const spaced = await post('/v1/api-keys', { name: 'k' }, { idem: 'has space' });
  assert.equal(spaced.status, 400);
});

test('API keys: one key made; the replay has no secret, which is never stored', async () => {
  const replies = await Promise.all(Array.from({ length: 10 }, () => post('/v1/api-keys', { name: 'ci-once' }, { idem: 'key-once' })));
  for (const r of replies) assert.equal(r.status, 201, r.text);
  assert.equal(await count("SELECT count(*)::int AS n FROM api_keys WHERE name = 'ci-once'"), 1);
  const withSecret = replies.filter((r) => r.json.key);
  assert.equal(withSecret.length, 1);
  assert.equal(new Set(replies.map((r) => r.json.id)).size, 1);
  const dump = JSON.stringify((await P.db.query('SELECT * FROM idempotency_keys')).rows);
  assert.ok(!dump.includes(withSecret[0].json.key.slice(7, 55)));
});

test('sign-up: the same request twice makes one account; no password is stored in the key table', async () => {
  const body = { email: 'dup@example.com', password: 'sign me up once', account_name: 'Dup' };
  const replies = await Promise.all(Array.from({ length: 5 }, () => post('/v1/auth/signup', body, { key: null, idem: 'signup-1' })));
  for (const r of replies) assert.equal(r.status, 201, r.text);
  assert.equal(await count("SELECT count(*)::int AS n FROM users WHERE email = 'dup@example.com'"), 1);
  assert.equal(await count("SELECT count(*)::int AS n FROM accounts WHERE name = 'Dup'"), 1);
  const other = await post('/v1/auth/signup', { ...body, account_name: 'Dup 2' }, { key: null, idem: 'signup-1' });
  assert.equal(other.status, 409, other.text);
  const dump = JSON.stringify((await P.db.query('SELECT * FROM idempotency_keys')).rows);
  assert.ok(!dump.includes('sign me up once'));
});

// Enrollment tokens and revoking hosts, with real agents on this machine:
//   - a one-time token (REST or CLI) registers exactly one host, into the token's pool; the same
//     token again, an expired one or garbage is a 401; only its hash is stored;
//   - an agent enrolled with a token registers again with its host key when its inventory changes
//     (the token is spent by then);
//   - DELETE /v1/admin/hosts/{id} revokes a host: its key is a 401, its replica is placed on another
//     host with a new epoch, and afterwards the revoked agent changes nothing; an agent holding the
//     static --agent-token is refused (403) and stops its runtimes;
//   - customers get 403 on all of it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { Platform, bin, sleep, waitFor } from './harness.js';
import { runtimesUnder } from './netns.js';

const P = new Platform();
const device = (name) => ({ index: 0, uuid: `CPU-${name}-0`, kind: 'cpu', model: 'CPU slot', memory_mib: 0 });
const regBody = (name) => ({ name, address: '127.0.0.1', agent_version: 'test', devices: [device(name)] });

before(async () => { await P.start({ cpuSlots: 1 }); }, { timeout: 120000 });

after(async () => {
  if (process.exitCode) {
    console.error(P.log('controller').slice(-5000));
    for (const n of ['agent', 'agent-edge-b', 'agent-edge-c']) console.error(P.log(n).slice(-2500));
  }
  await P.stop();
});

const host = async (name) => (await P.db.query(
  'SELECT id::int AS id, state, pool, key_hash FROM hosts WHERE name = $1', [name])).rows[0];

test('a token made by the REST API registers one host, once, into its pool; only its hash is stored', async () => {
  const t = await P.api('POST', '/v1/admin/enrollment-tokens', { body: { ttl_s: 600, pool: 'edge' } });
  assert.equal(t.status, 201, t.text);
  assert.match(t.json.token, /^orp_et_[0-9a-f]{48}$/);
  assert.equal(t.json.pool, 'edge');
  assert.ok(t.json.token.startsWith(t.json.prefix));
  const stored = await P.db.query('SELECT token_hash, prefix FROM enrollment_tokens WHERE id = $1', [t.json.id]);
  assert.notEqual(stored.rows[0].token_hash, t.json.token);
  assert.equal((await P.db.query("SELECT count(*)::int AS n FROM enrollment_tokens WHERE token_hash = $1 OR prefix = $1",
    [t.json.token])).rows[0].n, 0);

  const r1 = await P.agentApi('/agent/v1/register', t.json.token, regBody('raw-1'));
  assert.equal(r1.status, 200, r1.text);
  assert.match(r1.json.host_key, /^[0-9a-f]{64}$/);
  assert.equal((await host('raw-1')).pool, 'edge');
  const used = await P.db.query('SELECT used_at IS NOT NULL AS used, used_by_host::int AS h FROM enrollment_tokens WHERE id = $1', [t.json.id]);
  assert.deepEqual(used.rows[0], { used: true, h: Number(r1.json.host_id) });

  // The same token again, for another name or the same: 401, nothing written.
  const r2 = await P.agentApi('/agent/v1/register', t.json.token, regBody('raw-2'));
  assert.equal(r2.status, 401);
  assert.equal(r2.json.error.code, 'invalid_agent_token');
  assert.equal(await host('raw-2'), undefined);
  assert.equal((await P.agentApi('/agent/v1/register', t.json.token, regBody('raw-1'))).status, 401);
  // The host's own key re-registers it (a changed inventory) without any token, and rotates it.
  const r3 = await P.agentApi('/agent/v1/register', r1.json.host_key, regBody('raw-1'));
  assert.equal(r3.status, 200, r3.text);
  assert.notEqual(r3.json.host_key, r1.json.host_key);
  assert.equal((await P.agentApi('/agent/v1/heartbeat', r1.json.host_key, { host_id: r1.json.host_id })).status, 401);
  // …but one host's key is no key for another name.
  assert.equal((await P.agentApi('/agent/v1/register', r3.json.host_key, regBody('raw-3'))).status, 401);
  // Garbage and an empty bearer.
  assert.equal((await P.agentApi('/agent/v1/register', 'orp_et_' + '0'.repeat(48), regBody('raw-4'))).status, 401);
  assert.equal((await P.agentApi('/agent/v1/register', 'x'.repeat(300), regBody('raw-4'))).status, 401);
  // The static development token still works.
  assert.equal((await P.agentApi('/agent/v1/register', P.agentToken, regBody('raw-5'))).status, 200);
});

test('an expired token is a 401; bad token requests are 400', { timeout: 30000 }, async () => {
  const tok = P.run(bin.controller, ['host', 'token', 'create', '--ttl-s', '1', '--database-url', P.dbUrl]);
  assert.match(tok, /^orp_et_[0-9a-f]{48}$/);
  await sleep(1500);
  assert.equal((await P.agentApi('/agent/v1/register', tok, regBody('late'))).status, 401);
  assert.equal(await host('late'), undefined);
  for (const body of [{ ttl_s: 0 }, { ttl_s: 10 * 86400 }, { ttl_s: '60' }, { pool: '' }, { pool: 'a b' }, { color: 'red' }]) {
    const r = await P.api('POST', '/v1/admin/enrollment-tokens', { body });
    assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.text}`);
  }
  const none = await P.api('POST', '/v1/admin/enrollment-tokens');
  assert.equal(none.status, 201, none.text);
  assert.equal(none.json.pool, null);
});

test('customers may neither create tokens nor revoke hosts', async () => {
  const key = P.newAccountKey('customer@example.com');
  assert.equal((await P.api('POST', '/v1/admin/enrollment-tokens', { key, body: {} })).status, 403);
  const h = await host('e2e-host');
  assert.equal((await P.api('DELETE', `/v1/admin/hosts/${h.id}`, { key })).status, 403);
  assert.equal((await host('e2e-host')).state, 'ready');
  assert.equal((await P.api('DELETE', '/v1/admin/hosts/999999')).status, 404);
  assert.equal((await P.api('DELETE', '/v1/admin/hosts/abc')).status, 404);
});

test('revoking a host: its key is a 401, its replica moves, and it changes nothing afterwards', { timeout: 120000 }, async () => {
  // Two agents enrolled with one-time tokens from the CLI into pool 'edge', one CPU slot each.
  const agents = {};
  for (const name of ['edge-b', 'edge-c']) {
    const tok = P.run(bin.controller, ['host', 'token', 'create', '--pool', 'edge', '--database-url', P.dbUrl]);
    agents[name] = P.spawnAgent(name, { token: tok, cpuSlots: 1 });
  }
  await waitFor('both edge agents to register', async () =>
    (await P.db.query("SELECT count(*)::int AS n FROM hosts WHERE pool = 'edge' AND name LIKE 'edge-%'")).rows[0].n === 2, 20000);

  const r = await P.api('POST', '/v1/endpoints', { body: { name: 'rv', model: 'demo-tiny', pool: 'edge' } });
  assert.equal(r.status, 201, r.text);
  const rep = async () => (await P.db.query(
    `SELECT r.id::text, r.state, r.epoch::int AS epoch, h.name AS host, r.reason FROM replicas r
     LEFT JOIN hosts h ON h.id = r.host_id WHERE r.endpoint_id = $1`, [r.json.id])).rows[0];
  const before = await waitFor('the replica to be ready', async () => { const x = await rep(); return x.state === 'ready' ? x : false; }, 60000);
  const victim = before.host;
  const survivor = victim === 'edge-b' ? 'edge-c' : 'edge-b';
  const vh = await host(victim);
  const savedKey = JSON.parse(fs.readFileSync(path.join(agents[victim].stateDir, 'agent.json'), 'utf8')).host_key;
  assert.equal((await P.agentApi('/agent/v1/heartbeat', savedKey, { host_id: String(vh.id) })).status, 200);

  const del = await P.api('DELETE', `/v1/admin/hosts/${vh.id}`);
  assert.equal(del.status, 200, del.text);
  assert.equal(del.json.state, 'revoked');
  assert.equal((await P.agentApi('/agent/v1/heartbeat', savedKey, { host_id: String(vh.id) })).status, 401);
  assert.equal((await P.agentApi('/agent/v1/register', savedKey, regBody(victim))).status, 401);

  const moved = await waitFor('the replica to be ready on the other host', async () => {
    const x = await rep();
    return x.state === 'ready' && x.host === survivor && x.epoch > before.epoch ? x : false;
  }, 30000);
  // The revoked agent keeps trying (its host key, then its spent token: 401 both) and changes
  // nothing: the replica stays as it is, the host stays revoked.
  await sleep(3000);
  assert.deepEqual(await rep(), moved);
  assert.equal((await host(victim)).state, 'revoked');
  assert.match(P.log(`agent-${victim}`), /register refused/);
  const client = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0 });
  const c = await client.chat.completions.create({ model: 'rv', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
  const id = c.id.replace(/^chatcmpl-/, '');
  const u = await waitFor('its usage', async () =>
    (await P.db.query('SELECT epoch::int AS epoch FROM usage_events WHERE request_id = $1', [id])).rows[0], 10000);
  assert.equal(u.epoch, moved.epoch);

  // A host holding the static token, once revoked, is refused with 403 and stops its runtimes.
  const r2 = await P.api('POST', '/v1/endpoints', { body: { name: 'rv2', model: 'demo-tiny', pool: 'default' } });
  assert.equal(r2.status, 201, r2.text);
  await waitFor('rv2 to be ready', async () => (await P.api('GET', `/v1/endpoints/${r2.json.id}`)).json.status === 'ready', 60000);
  const mainDir = path.join(P.tmp, 'agent');
  assert.equal(runtimesUnder(mainDir).length, 1);
  const eh = await host('e2e-host');
  assert.equal((await P.api('DELETE', `/v1/admin/hosts/${eh.id}`)).status, 200);
  await waitFor('the static-token agent to stop its runtime', async () => runtimesUnder(mainDir).length === 0, 20000);
  assert.match(P.log('agent'), /revoked by the operator/);
  assert.equal((await host('e2e-host')).state, 'revoked');
  const rv2 = await P.db.query('SELECT state, host_id FROM replicas WHERE endpoint_id = $1', [r2.json.id]);
  assert.deepEqual(rv2.rows[0], { state: 'pending', host_id: null });
});

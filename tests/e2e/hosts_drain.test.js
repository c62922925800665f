// Cordon, uncordon and drain, with two real agents (one CPU slot each). The drain is stepped with
// `orp-controller host drain-step` (one pass of what the leader runs each interval), so each step's
// effect can be checked: make before break — a replacement is created and placed on the other
// host, the old replica keeps serving until the replacement is ready, then it is stopped, then
// the drain finishes and the host stays cordoned. Customers get 403.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { Platform, bin, sleep, waitFor } from './harness.js';

const P = new Platform();

before(async () => {
  await P.start({ cpuSlots: 1 });
  P.spawnAgent('drain-b', { cpuSlots: 1 });
  await waitFor('the second agent', async () => (await P.db.query('SELECT count(*)::int AS n FROM gpus')).rows[0].n === 2, 20000);
}, { timeout: 120000 });

after(async () => {
  if (process.exitCode) {
    console.error(P.log('controller').slice(-5000));
    console.error(P.log('agent').slice(-2000));
    console.error(P.log('agent-drain-b').slice(-2000));
  }
  await P.stop();
});

const hostRow = async (name) => (await P.db.query(
  'SELECT id::int AS id, cordoned, draining FROM hosts WHERE name = $1', [name])).rows[0];
const drainStep = () => Number(P.run(bin.controller, ['host', 'drain-step', '--database-url', P.dbUrl]));

test('customers get 403; unknown hosts 404', async () => {
  const key = P.newAccountKey('drain-customer@example.com');
  const h = await hostRow('e2e-host');
  for (const a of ['cordon', 'uncordon', 'drain']) {
    assert.equal((await P.api('POST', `/v1/admin/hosts/${h.id}/${a}`, { key })).status, 403);
    assert.equal((await P.api('POST', `/v1/admin/hosts/424242/${a}`)).status, 404);
  }
  assert.deepEqual(await hostRow('e2e-host'), { ...h, cordoned: false, draining: false });
});

test('cordon keeps new replicas off a host; uncordon lets them on again', { timeout: 60000 }, async () => {
  const a = await hostRow('e2e-host');
  const b = await hostRow('drain-b');
  for (const h of [a, b]) {
    const r = await P.api('POST', `/v1/admin/hosts/${h.id}/cordon`);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.cordoned, true);
  }
  const r = await P.api('POST', '/v1/endpoints', { body: { name: 'cd', model: 'demo-tiny' } });
  assert.equal(r.status, 201);
  await waitFor('a no-capacity reason', async () =>
    /no capacity/.test((await P.api('GET', `/v1/endpoints/${r.json.id}`)).json.replica_states[0].reason), 10000);
  assert.equal((await P.api('POST', `/v1/admin/hosts/${b.id}/uncordon`)).json.cordoned, false);
  const ep = await waitFor('placed on the uncordoned host', async () => {
    const g = await P.api('GET', `/v1/endpoints/${r.json.id}`);
    return g.json.status === 'ready' ? g.json : false;
  }, 30000);
  assert.equal(ep.replica_states[0].host, 'drain-b');
  assert.equal(P.run(bin.controller, ['host', 'uncordon', String(a.id), '--database-url', P.dbUrl]).includes('"cordoned":false'), true);
  assert.equal((await P.api('DELETE', `/v1/endpoints/${r.json.id}`)).status, 200);
  await waitFor('both slots free', async () => (await P.db.query(
    "SELECT count(*)::int AS n FROM replicas WHERE state <> 'stopped'")).rows[0].n === 0, 20000);
});

test('drain moves a replica make-before-break, then the host stays cordoned', { timeout: 120000 }, async () => {
  const id = await P.deploy('dr');
  const rows = async () => (await P.db.query(
    `SELECT r.id::text, r.state, r.epoch::int AS epoch, h.name AS host, r.replaces::text AS replaces
     FROM replicas r LEFT JOIN hosts h ON h.id = r.host_id WHERE r.endpoint_id = $1 ORDER BY r.created_at`, [id])).rows;
  const [old] = await rows();
  const from = await hostRow(old.host);
  const to = old.host === 'e2e-host' ? 'drain-b' : 'e2e-host';
  const d = await P.api('POST', `/v1/admin/hosts/${from.id}/drain`);
  assert.equal(d.status, 200, d.text);
  assert.deepEqual([d.json.cordoned, d.json.draining], [true, true]);

  // The leader's loop drives the drain. Make before break: at every moment of the move, at least
  // one replica of the endpoint is ready, and the old one keeps serving until the new one is.
  const client = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0 });
  let rs;
  await waitFor('the drain to finish', async () => {
    rs = await rows();
    const ready = rs.filter((x) => x.state === 'ready').length;
    assert.ok(ready >= 1, `no ready replica during the drain: ${JSON.stringify(rs)}`);
    const h = await hostRow(old.host);
    return rs[0].state === 'stopped' && !h.draining;
  }, 60000, 50);
  assert.equal(rs.length, 2);
  assert.equal(rs[1].replaces, old.id);
  assert.equal(rs[1].host, to);
  assert.equal(rs[1].state, 'ready');
  assert.deepEqual(await hostRow(old.host), { ...from, cordoned: true, draining: false });
  assert.equal(drainStep(), 0, 'nothing left to move');
  const ep = (await P.api('GET', `/v1/endpoints/${id}`)).json;
  assert.equal(ep.status, 'ready');
  assert.equal(ep.replica_states.length, 1);
  assert.equal(ep.replica_states[0].host, to);
  const c = await client.chat.completions.create({ model: 'dr', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
  const rid = c.id.replace(/^chatcmpl-/, '');
  const u = await waitFor('usage', async () =>
    (await P.db.query('SELECT replica_id::text FROM usage_events WHERE request_id = $1', [rid])).rows[0], 10000);
  assert.equal(u.replica_id, rs[1].id);
  await sleep(100);
});

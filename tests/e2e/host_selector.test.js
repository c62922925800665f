// Host labels and endpoint host selectors (issue 6), with real agents: each orp-agent is started
// with --cpu-slots 1 and, for two of them, --labels. A deploy whose host_selector one host matches
// runs there; one that no host matches stays pending with a reason naming the labels, and is placed
// once an agent with those labels registers. An admin sets a host's labels with
// PUT /v1/admin/hosts/{id}/labels (audit-logged) or `orp-controller host labels`; a PATCH of the
// selector moves nothing that runs.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { Platform, bin, waitFor } from './harness.js';

const P = new Platform();

// An orp-agent like P.spawnAgent's, with --labels.
function labelledAgent(name, labels) {
  return P.spawn(`agent-${name}`, bin.agent, ['--controller', `http://127.0.0.1:${P.ports.agent}`,
    '--token', P.agentToken, '--name', name, '--cpu-slots', '1', '--labels', labels,
    '--state-dir', path.join(P.tmp, `agent-${name}`), '--heartbeat-ms', '500',
    '--port-base', String(20000 + Math.floor(Math.random() * 20000)), '--log-level', 'debug']);
}

async function hostNamed(name) {
  const r = await P.api('GET', '/v1/admin/hosts');
  assert.equal(r.status, 200, r.text);
  return r.json.data.find((h) => h.name === name);
}

async function replicaOf(id) {
  const r = await P.api('GET', `/v1/endpoints/${id}`);
  assert.equal(r.status, 200, r.text);
  return r.json.replica_states[0];
}

before(async () => {
  await P.start({ cpuSlots: 1 }); // 'e2e-host': no labels
  labelledAgent('eu-box', 'zone=eu,gpu-class=premium');
  await waitFor('eu-box to register with its labels', async () => {
    const h = await hostNamed('eu-box');
    return h && h.labels.zone === 'eu' && h.labels['gpu-class'] === 'premium';
  }, 20000);
}, { timeout: 60000 });

after(async () => {
  await P.stop();
});

test('a selector one host matches: the replica runs there, and GET shows the selector', { timeout: 120000 }, async () => {
  const id = await P.deploy('sel-eu', { host_selector: { zone: 'eu', 'gpu-class': 'premium' } });
  const ep = (await P.api('GET', `/v1/endpoints/${id}`)).json;
  assert.deepEqual(ep.host_selector, { zone: 'eu', 'gpu-class': 'premium' });
  assert.equal(ep.replica_states[0].host, 'eu-box');

  // A PATCH of the selector applies to future placements only: the running replica stays.
  const p = await P.api('PATCH', `/v1/endpoints/${id}`, { body: { host_selector: { zone: 'us' } } });
  assert.equal(p.status, 200, p.text);
  assert.deepEqual(p.json.host_selector, { zone: 'us' });
  assert.equal(p.json.replicas, 1);
  await new Promise((r) => setTimeout(r, 1500)); // a few scheduler passes
  const rep = await replicaOf(id);
  assert.equal(rep.host, 'eu-box');
  assert.equal(rep.state, 'ready');
  assert.equal((await P.api('DELETE', `/v1/endpoints/${id}`)).status, 200);
});

test('no host matches: pending with the reason; placed when an agent with the labels registers', { timeout: 120000 }, async () => {
  const c = await P.api('POST', '/v1/endpoints', { body: { name: 'sel-ap', model: 'demo-tiny', host_selector: { zone: 'ap', tier: 'spot' } } });
  assert.equal(c.status, 201, c.text);
  const id = c.json.id;
  const why = 'no capacity: no host has labels tier=spot, zone=ap';
  await waitFor('the reason', async () => (await replicaOf(id)).reason === why, 15000, 200);
  const rep = await replicaOf(id);
  assert.equal(rep.state, 'pending');
  assert.equal(rep.host, null);
  // A host with only one of the two labels is no match.
  labelledAgent('ap-half', 'zone=ap');
  await waitFor('ap-half to register', async () => (await hostNamed('ap-half'))?.labels.zone === 'ap', 20000);
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal((await replicaOf(id)).state, 'pending');
  // Both labels: placed there and ready.
  labelledAgent('ap-box', 'zone=ap,tier=spot,rack=r7');
  await waitFor('the replica to be ready on ap-box', async () => {
    const r = await replicaOf(id);
    return r.state === 'ready' && r.host === 'ap-box';
  }, 90000, 300);
});

test('an admin sets a host\'s labels; the call is audit-logged; customers and bad labels are refused', { timeout: 120000 }, async () => {
  const host = await hostNamed('e2e-host');
  assert.deepEqual(host.labels, {});
  const put = await P.api('PUT', `/v1/admin/hosts/${host.id}/labels`, { body: { labels: { zone: 'sa', 'example.com/rack': 'r1' } } });
  assert.equal(put.status, 200, put.text);
  assert.deepEqual(put.json, { object: 'host', id: host.id, name: 'e2e-host', state: 'ready', labels: { zone: 'sa', 'example.com/rack': 'r1' } });
  assert.deepEqual((await hostNamed('e2e-host')).labels, { zone: 'sa', 'example.com/rack': 'r1' });
  const log = await P.api('GET', '/v1/audit-log?limit=50');
  assert.ok(log.json.data.some((e) => e.method === 'PUT' && e.path === `/v1/admin/hosts/${host.id}/labels`), log.text);

  // The relabelled host takes an endpoint that selects it.
  const id = await P.deploy('sel-sa', { host_selector: { zone: 'sa' } });
  assert.equal((await replicaOf(id)).host, 'e2e-host');

  const bad = await P.api('PUT', `/v1/admin/hosts/${host.id}/labels`, { body: { labels: { zone: 'a b' } } });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error.param, 'labels');
  assert.match(bad.json.error.message, /value of label 'zone'/);
  const cust = P.newAccountKey('sel-customer@example.com');
  const forbidden = await P.api('PUT', `/v1/admin/hosts/${host.id}/labels`, { key: cust, body: { labels: {} } });
  assert.equal(forbidden.status, 403);
  assert.deepEqual((await hostNamed('e2e-host')).labels, { zone: 'sa', 'example.com/rack': 'r1' });

  // Bad selectors on create and PATCH are 400s naming host_selector; nothing is created.
  const tooMany = Object.fromEntries([...Array(17).keys()].map((i) => [`k${i}`, 'v']));
  for (const sel of [tooMany, { zone: 7 }, { 'zone=eu': 'x' }, 'zone=eu', null]) {
    const r = await P.api('POST', '/v1/endpoints', { body: { name: 'sel-bad', model: 'demo-tiny', host_selector: sel } });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.error.param, 'host_selector');
    const q = await P.api('PATCH', `/v1/endpoints/${id}`, { body: { host_selector: sel } });
    assert.equal(q.status, 400, q.text);
  }
  const list = await P.api('GET', '/v1/endpoints?name=sel-bad');
  assert.equal(list.json.data.length, 0);

  // The same from the command line (no audit row: it runs with database access, as cordon does).
  const out = JSON.parse(P.run(bin.controller, ['host', 'labels', host.id, 'zone=sa,rack=r2', '--database-url', P.dbUrl]));
  assert.deepEqual(out.labels, { zone: 'sa', rack: 'r2' });
  assert.deepEqual((await hostNamed('e2e-host')).labels, { zone: 'sa', rack: 'r2' });
  const cli = spawnSync(bin.controller, ['host', 'labels', host.id, 'zone=', 'extra'], { encoding: 'utf8' });
  assert.equal(cli.status, 2);
  const bad2 = spawnSync(bin.controller, ['host', 'labels', host.id, 'a b=c', '--database-url', P.dbUrl], { encoding: 'utf8' });
  assert.equal(bad2.status, 2);
  assert.match(bad2.stderr, /label name 'a b'/);
  assert.equal((await replicaOf(id)).host, 'e2e-host'); // relabelling moves nothing
});

test('an agent with malformed --labels refuses to start', () => {
  const r = spawnSync(bin.agent, ['--controller', 'http://127.0.0.1:1', '--token', 't', '--labels', 'zone'], { encoding: 'utf8', timeout: 10000 });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr + r.stdout, /labels: 'zone' is not name=value/);
});

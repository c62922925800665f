// Deploy defaults (presets.c) against a real controller and PostgreSQL: two hosts register through
// the real agent API with the inventories of an 8×H100 80GB and an 8×H200 141GB server (their
// heartbeats sent by this test, since no GPU is here), and the catalog holds an 8B and a 70B model
// whose manifests give their real BF16 sizes. A deploy that names no GPU type or width gets the
// cheapest fit, is placed on that type only, and a named type that cannot hold the model is a 400.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Platform, bin, gpuHost, waitFor } from './harness.js';

const P = new Platform();
const H100 = 'NVIDIA H100 80GB HBM3';
const H200 = 'NVIDIA H200';
const hosts = {};
let beat;

function addModel(name, bytes) {
  const file = path.join(P.tmp, `${name}.manifest.json`);
  fs.writeFileSync(file, JSON.stringify({ files: [
    { path: 'config.json', size: 700, sha256: 'a'.repeat(64) },
    { path: 'model-00001-of-00002.safetensors', size: Math.floor(bytes / 2), sha256: 'b'.repeat(64) },
    { path: 'model-00002-of-00002.safetensors', size: bytes - Math.floor(bytes / 2), sha256: 'c'.repeat(64) }] }));
  P.run(bin.controller, ['model', 'add', '--name', name, '--source', `http://weights.invalid/${name}/`,
    '--manifest', file, '--family', 'llama', '--context', '131072', '--device-kinds', 'gpu', '--database-url', P.dbUrl]);
}

before(async () => {
  await P.start({ cpuSlots: 1 });
  for (const [name, model, mib] of [['h100-box', H100, 81559], ['h200-box', H200, 143771]]) {
    const r = await P.agentApi('/agent/v1/register', P.agentToken, gpuHost(name, model, mib));
    assert.equal(r.status, 200, r.text);
    hosts[name] = r.json;
  }
  // Keep both hosts alive: an empty report each time (the runtimes they would start are not here).
  beat = setInterval(() => {
    for (const h of Object.values(hosts)) {
      P.agentApi('/agent/v1/heartbeat', h.host_key, { host_id: h.host_id, replicas: [], usage: [] }).catch(() => {});
    }
  }, 400);
  addModel('llama-8b', 16060522496);
  addModel('llama-70b', 141107412992);
  const acct = (await P.api('GET', '/v1/billing/balance')).json.account_id;
  await P.api('POST', `/v1/admin/accounts/${acct}/credits`, { body: { amount_micros: 100000000, idempotency_key: 'presets' } });
}, { timeout: 120000 });

after(async () => {
  clearInterval(beat);
  await P.stop();
});

test('GET /v1/catalog/presets lists each GPU type a model fits on, with the default marked', async () => {
  const r = await P.api('GET', '/v1/catalog/presets');
  assert.equal(r.status, 200, r.text);
  const of = (m) => r.json.data.find((x) => x.model === m);
  const brief = (m) => of(m).presets.map((p) => `${p.gpu_type ?? 'cpu'}:${p.gpus_per_replica}${p.default ? '*' : ''}`);
  assert.deepEqual(brief('llama-70b'), [`${H100}:4`, `${H200}:2*`]);
  assert.deepEqual(brief('llama-8b'), [`${H100}:1*`, `${H200}:1`]);
  assert.deepEqual(brief('demo-tiny'), ['cpu:1*']);
  assert.equal(of('llama-70b').weights_bytes, 141107412992);
  const h100 = of('llama-70b').presets[0];
  // 4 GPUs at the default 2.00 USD per GPU-hour: 8.00 USD per hour = 133 334 micros per minute.
  assert.equal(h100.price_micros_per_minute, Math.ceil((4 * h100.micros_per_device_hour) / 60));
  assert.equal(h100.available_now, true);
});

test('a deploy without GPU type or width gets the default, placed on that type only', { timeout: 30000 }, async () => {
  const r = await P.api('POST', '/v1/endpoints', { body: { name: 'big', model: 'llama-70b' } });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.gpu_type, H200);
  assert.equal(r.json.gpus_per_replica, 2);
  const placed = await waitFor('big placed', async () => {
    const g = (await P.api('GET', `/v1/endpoints/${r.json.id}`)).json;
    return g.replica_states[0].host ? g.replica_states[0] : false;
  }, 20000, 200);
  assert.equal(placed.host, 'h200-box');
  assert.equal(placed.devices.length, 2);

  const small = await P.api('POST', '/v1/endpoints', { body: { name: 'small', model: 'llama-8b', gpu_type: H100 } });
  assert.equal(small.status, 201, small.text);
  assert.equal(small.json.gpus_per_replica, 1);
  const on = await waitFor('small placed', async () => (await P.api('GET', `/v1/endpoints/${small.json.id}`)).json.replica_states[0].host, 20000, 200);
  assert.equal(on, 'h100-box');

  // A width without a type: a type whose that many GPUs hold the weights (one 141 GB GPU does).
  const one = await P.api('POST', '/v1/endpoints', { body: { name: 'one-gpu', model: 'llama-70b', gpus_per_replica: 1 } });
  assert.equal(one.status, 201, one.text);
  assert.equal(one.json.gpu_type, H200);
  assert.equal(one.json.gpus_per_replica, 1);
});

test('a GPU type that cannot hold the model, an unknown type, a type on CPU: 400 naming the field', async () => {
  const cases = [
    [{ model: 'llama-70b', gpu_type: H100, gpus_per_replica: 1 }, 'gpus_per_replica', /does not fit on 1 × NVIDIA H100/],
    [{ model: 'llama-70b', gpu_type: 'NVIDIA A100' }, 'gpu_type', /no live host offers GPU type 'NVIDIA A100'/],
    [{ model: 'demo-tiny', gpu_type: H100 }, 'gpu_type', /needs device_kind "gpu"/],
    [{ model: 'llama-70b', gpu_type: 7 }, 'gpu_type', /gpu_type/],
  ];
  for (const [body, param, msg] of cases) {
    const r = await P.api('POST', '/v1/endpoints', { body: { name: 'nope', ...body } });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.error.param, param);
    assert.match(r.json.error.message, msg);
  }
  assert.equal((await P.db.query("SELECT count(*)::int AS n FROM endpoints WHERE name = 'nope'")).rows[0].n, 0);
});

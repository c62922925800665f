// Time billing by GPU type (schema/016), end to end: three hosts register through the real agent
// API with 8×H100, 8×H200 and 8×A100 inventories (their heartbeats, which report the replicas
// placed on them as ready, are sent by this test, since no GPU is here); the operator prices H100
// and H200 as GPU types and leaves A100 untyped (the device kind's price applies), then changes
// the H100 price while the replicas are ready. Two controllers meter at once. Every ledger entry
// must equal what the test recomputes on its own: ready seconds × GPUs from the ready intervals ×
// the price version in force (gpu_type_prices / device_prices rows) for the GPU model the replica
// was placed on. Statements and presets name and show the type's price; a replica on a mixed
// host opens one ready interval per GPU type.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Platform, bin, gpuHost, waitFor } from './harness.js';

const PERIOD_S = 2;
const P = new Platform();
const MODELS = { h100: 'NVIDIA H100 80GB HBM3', h200: 'NVIDIA H200', a100: 'NVIDIA A100-SXM4-80GB' };
const TYPES = [['h100-80gb', MODELS.h100, 3000000], ['h200-141gb', MODELS.h200, 5000000]];
const H100_NEW_PRICE = 4500000;
const ENDPOINTS = [['on-h100', MODELS.h100, 2], ['on-h200', MODELS.h200, 1], ['on-a100', MODELS.a100, 1]];
const hosts = {};
const ids = {};
let beat;

// What an agent would report: every replica placed on the host and not being stopped is ready.
async function heartbeat(h) {
  const reps = (await P.db.query(
    `SELECT id, epoch FROM replicas WHERE host_id = $1 AND state IN ('assigned', 'starting', 'ready')`,
    [h.host_id])).rows;
  await P.agentApi('/agent/v1/heartbeat', h.host_key, { host_id: h.host_id, usage: [],
    replicas: reps.map((r) => ({ replica_id: r.id, epoch: Number(r.epoch), state: 'ready', port: 40000 })) });
}

before(async () => {
  await P.start({ cpuSlots: 1, controllerArgs: ['--billing-period-s', String(PERIOD_S)] });
  P.spawn('controller2', bin.controller, ['serve', '--database-url', P.dbUrl, '--only', 'none',
    '--unlocked-leader', '--billing-period-s', String(PERIOD_S), '--scheduler-interval-ms', '250',
    '--liveness-timeout-ms', '5000']);
  for (const [name, model_match, price] of TYPES) {
    const r = await P.api('POST', '/v1/admin/gpu-types', { body: { name, model_match, micros_per_gpu_hour: price } });
    assert.equal(r.status, 201, r.text);
  }
  for (const [k, model] of Object.entries(MODELS)) {
    const r = await P.agentApi('/agent/v1/register', P.agentToken, gpuHost(`${k}-box`, model, 81559));
    assert.equal(r.status, 200, r.text);
    hosts[k] = r.json;
  }
  beat = setInterval(() => { for (const h of Object.values(hosts)) heartbeat(h).catch(() => {}); }, 300);
  const file = path.join(P.tmp, 'llama-8b.manifest.json');
  fs.writeFileSync(file, JSON.stringify({ files: [
    { path: 'config.json', size: 700, sha256: 'a'.repeat(64) },
    { path: 'model.safetensors', size: 16060522496, sha256: 'b'.repeat(64) }] }));
  P.run(bin.controller, ['model', 'add', '--name', 'llama-8b', '--source', 'http://weights.invalid/llama-8b/',
    '--manifest', file, '--family', 'llama', '--context', '8192', '--device-kinds', 'gpu', '--database-url', P.dbUrl]);
  const acct = (await P.api('GET', '/v1/billing/balance')).json.account_id;
  await P.api('POST', `/v1/admin/accounts/${acct}/credits`, { body: { amount_micros: 100000000, idempotency_key: 'gpu-types' } });
}, { timeout: 120000 });

after(async () => {
  clearInterval(beat);
  if (process.exitCode) console.error(P.log('controller').slice(-3000));
  await P.stop();
});

const ceilDiv = (a, b) => (a + b - 1n) / b;
const us = (col) => `(extract(epoch FROM ${col}) * 1000000)::bigint`;

test('each GPU type is charged its price version in force, by the GPUs the replica holds', { timeout: 150000 }, async () => {
  for (const [name, gpu_type, gpus_per_replica] of ENDPOINTS) {
    const r = await P.api('POST', '/v1/endpoints', { body: { name, model: 'llama-8b', gpu_type, gpus_per_replica } });
    assert.equal(r.status, 201, r.text);
    ids[name] = r.json.id;
  }
  await waitFor('all three ready', async () => (await P.db.query(
    'SELECT count(DISTINCT endpoint_id)::int AS n FROM ready_intervals WHERE ended_at IS NULL')).rows[0].n === 3, 30000, 200);
  const placedOn = {};
  for (const [name] of ENDPOINTS) {
    placedOn[name] = (await P.api('GET', `/v1/endpoints/${ids[name]}`)).json.replica_states[0].host;
  }
  assert.deepEqual(placedOn, { 'on-h100': 'h100-box', 'on-h200': 'h200-box', 'on-a100': 'a100-box' });
  // A price change while they are ready: a new version, the old one kept.
  await new Promise((r) => setTimeout(r, 2 * PERIOD_S * 1000));
  const ch = await P.api('PATCH', '/v1/admin/gpu-types/h100-80gb', { body: { micros_per_gpu_hour: H100_NEW_PRICE } });
  assert.equal(ch.status, 200, ch.text);
  assert.equal(ch.json.price_history.length, 2);
  await new Promise((r) => setTimeout(r, 3 * PERIOD_S * 1000));
  for (const [name] of ENDPOINTS) assert.equal((await P.api('DELETE', `/v1/endpoints/${ids[name]}`)).status, 200);
  await waitFor('every interval closed and billed', async () => (await P.db.query(
    'SELECT count(*)::int AS n FROM ready_intervals WHERE ended_at IS NULL OR billed_until < ended_at')).rows[0].n === 0,
  30000, 250);

  // The test's own pricing: the GPU model of the host each endpoint was placed on, the type whose
  // model_match it is, and that type's (else the kind's) price rows.
  const types = (await P.db.query('SELECT id, name, model_match FROM gpu_types')).rows;
  const typePrices = (await P.db.query(
    `SELECT gpu_type_id, micros_per_gpu_hour AS p, ${us('effective_at')} AS at FROM gpu_type_prices ORDER BY effective_at, id`)).rows;
  const kindPrices = (await P.db.query(
    `SELECT micros_per_device_hour AS p, ${us('effective_at')} AS at FROM device_prices WHERE device_kind = 'gpu' ORDER BY effective_at`)).rows;
  const inForce = (rows, ps) => rows.filter((x) => BigInt(x.at) <= ps).pop();
  const Pus = BigInt(PERIOD_S) * 1000000n;
  let versionsSeen = new Set();
  for (const [name, model, gpus] of ENDPOINTS) {
    const type = types.find((t) => t.model_match === model);
    const iv = (await P.db.query(
      `SELECT devices, gpu_type_id, ${us('started_at')} AS s, ${us('ended_at')} AS e FROM ready_intervals WHERE endpoint_id = $1`,
      [ids[name]])).rows;
    assert.ok(iv.length >= 1, `${name} was ready`);
    const want = new Map();
    for (const r of iv) {
      assert.equal(r.devices, gpus, `${name}: all its GPUs in one interval`);
      assert.equal(r.gpu_type_id, type ? type.id : null, `${name}: the interval's GPU type`);
      const s = BigInt(r.s);
      const e = BigInt(r.e);
      for (let ps = (s / Pus) * Pus; ps < e; ps += Pus) {
        const part = (e < ps + Pus ? e : ps + Pus) - (s > ps ? s : ps);
        if (part > 0n) want.set(ps, (want.get(ps) ?? 0n) + BigInt(r.devices) * part);
      }
    }
    const got = (await P.db.query(
      `SELECT idempotency_key, amount_micros, quantity, gpu_type, ${us('period_start')} AS ps
         FROM ledger_entries WHERE endpoint_id = $1 AND kind = 'usage_time'`, [ids[name]])).rows;
    const byPeriod = new Map();
    for (const g of got) {
      const ps = BigInt(g.ps);
      assert.ok(!byPeriod.has(ps), `${name}: period ${ps} charged once`);
      byPeriod.set(ps, g);
    }
    assert.deepEqual([...byPeriod.keys()].sort(), [...want.keys()].sort(), `${name}: one charge per period it was ready`);
    for (const [ps, deviceUs] of want) {
      const g = byPeriod.get(ps);
      const deviceMs = (deviceUs + 500n) / 1000n;
      const tp = type && inForce(typePrices.filter((x) => x.gpu_type_id === type.id), ps);
      const price = BigInt((tp ?? inForce(kindPrices, ps)).p);
      if (type) versionsSeen.add(`${name}:${price}`);
      assert.equal(BigInt(g.quantity), deviceMs, `${name}: device-ms of period ${ps}`);
      assert.equal(-BigInt(g.amount_micros), ceilDiv(deviceMs * price, 3600000n), `${name}: amount of period ${ps} at ${price}`);
      assert.equal(g.gpu_type, type ? type.name : null);
      assert.match(g.idempotency_key, new RegExp(`^time:${ids[name]}:\\d+${type ? `:t${type.id}` : ''}$`));
    }
  }
  // The H100 endpoint was charged both of its price versions; the A100 one the kind's 2.00 USD.
  assert.ok(versionsSeen.has('on-h100:3000000') && versionsSeen.has(`on-h100:${H100_NEW_PRICE}`), [...versionsSeen].join());
  assert.ok(versionsSeen.has('on-h200:5000000'));
  const a100 = (await P.db.query(
    "SELECT DISTINCT memo FROM ledger_entries WHERE endpoint_id = $1 AND kind = 'usage_time'", [ids['on-a100']])).rows;
  assert.ok(a100.every((m) => m.memo.startsWith('gpu at 2000000 ')), JSON.stringify(a100));
});

test('statement lines name the GPU type, in JSON and CSV', async () => {
  const month = new Date().toISOString().slice(0, 7);
  const s = await P.api('GET', `/v1/billing/statements/${month}`);
  assert.equal(s.status, 200, s.text);
  const timed = Object.fromEntries(s.json.lines.filter((l) => l.kind === 'usage_time').map((l) => [l.endpoint, l]));
  assert.equal(timed['on-h100'].gpu_type, 'h100-80gb');
  assert.equal(timed['on-h200'].gpu_type, 'h200-141gb');
  assert.equal(timed['on-a100'].gpu_type, null);
  for (const [name] of ENDPOINTS) {
    const sum = (await P.db.query(
      "SELECT sum(amount_micros)::bigint AS s FROM ledger_entries WHERE endpoint_id = $1 AND kind = 'usage_time'", [ids[name]])).rows[0].s;
    assert.equal(timed[name].amount_micros, Number(sum));
  }
  const credit = s.json.lines.find((l) => l.kind === 'credit');
  assert.equal(credit.gpu_type, null);
  const res = await fetch(`${P.apiUrl}/v1/billing/statements/${month}?format=csv`, { headers: { Authorization: `Bearer ${P.adminKey}` } });
  const rows = (await res.text()).trim().split('\r\n').map((l) => l.split(','));
  assert.equal(rows[0][9], 'gpu_type');
  assert.equal(rows.find((r) => r[1] === 'on-h200' && r[3] === 'usage_time')[9], 'h200-141gb');
  assert.equal(rows.find((r) => r[1] === 'on-a100' && r[3] === 'usage_time')[9], '');
});

test('presets show each GPU type\'s price in force, the kind price for an untyped model', async () => {
  const r = await P.api('GET', '/v1/catalog/presets');
  assert.equal(r.status, 200, r.text);
  const presets = r.json.data.find((x) => x.model === 'llama-8b').presets;
  const by = Object.fromEntries(presets.map((p) => [p.gpu_type, p]));
  assert.equal(by[MODELS.h100].micros_per_device_hour, H100_NEW_PRICE);
  assert.equal(by[MODELS.h200].micros_per_device_hour, 5000000);
  assert.equal(by[MODELS.a100].micros_per_device_hour, 2000000);
  for (const p of presets) {
    assert.equal(p.price_micros_per_minute, Math.ceil((p.gpus_per_replica * p.micros_per_device_hour) / 60));
  }
  // The cheapest fit is the default: one A100 at the kind's price.
  assert.equal(presets.find((p) => p.default).gpu_type, MODELS.a100);
});

test('a replica holding GPUs of two types opens one ready interval per type (the trigger, rolled back)', async () => {
  // An endpoint made before GPU types (no endpoints.gpu_type) may be placed on a mixed host.
  const body = gpuHost('mix-box', MODELS.h200, 81559);
  body.devices.forEach((d, i) => { if (i >= 5) d.model = MODELS.a100; });
  const reg = await P.agentApi('/agent/v1/register', P.agentToken, body);
  assert.equal(reg.status, 200, reg.text);
  const c = await P.db.connect();
  try {
    await c.query('BEGIN');
    const rep = (await c.query(
      "SELECT id FROM replicas WHERE endpoint_id = $1 AND state = 'stopped' LIMIT 1", [ids['on-h200']])).rows[0];
    await c.query(
      "UPDATE replicas SET state = 'ready', epoch = epoch + 1000, host_id = $2, devices = $3 WHERE id = $1",
      [rep.id, reg.json.host_id, body.devices.slice(3).map((d) => d.uuid)]);
    const iv = (await c.query(
      `SELECT t.name, i.devices FROM ready_intervals i LEFT JOIN gpu_types t ON t.id = i.gpu_type_id
        WHERE i.replica_id = $1 AND i.ended_at IS NULL ORDER BY t.name`, [rep.id])).rows;
    assert.deepEqual(iv, [{ name: 'h200-141gb', devices: 2 }, { name: null, devices: 3 }]);
  } finally {
    await c.query('ROLLBACK');
    c.release();
  }
});

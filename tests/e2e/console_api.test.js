// The console's read routes (console_api.c) against a real controller, agent, runtime and
// PostgreSQL: GET /v1/endpoints/{id}/stats counts exactly the requests made (every period of the
// window present, zeros included) and is another account's 404; GET /v1/quotas shows the quotas
// in force and the use a deploy checks; the time to first token and tokens/s of real requests;
// GPU readings sent on heartbeats reach GET /v1/admin/hosts (null for CPU slots).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { Platform, waitFor } from './harness.js';

const P = new Platform();
let id;

before(async () => {
  await P.start({ cpuSlots: 2 }); // one slot for ttft-ep, deleted after its test
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

test('stats: time to first token and tokens/s of N real requests, each TTFT within its request', { timeout: 60000 }, async () => {
  const client = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0 });
  const ep = await P.deploy('ttft-ep');
  try {
    await ttftChecks(client, ep);
  } finally {
    assert.equal((await P.api('DELETE', `/v1/endpoints/${ep}`)).status, 200);
  }
});

async function ttftChecks(client, ep) {
  const N = 6;
  let slowest = 0, completion = 0;
  const walls = [];
  for (let i = 0; i < N; i++) {
    // Half streamed, half not: both paths journal their times.
    const t0 = performance.now();
    if (i % 2) {
      const stream = await client.chat.completions.create({ model: 'ttft-ep', stream: true,
        stream_options: { include_usage: true }, messages: [{ role: 'user', content: `t ${i}` }], max_tokens: 8 });
      for await (const c of stream) completion += c.usage?.completion_tokens ?? 0;
    } else {
      const c = await client.chat.completions.create({ model: 'ttft-ep', messages: [{ role: 'user', content: `t ${i}` }], max_tokens: 8 });
      completion += c.usage.completion_tokens;
    }
    walls.push(performance.now() - t0);
    slowest = Math.max(slowest, walls[i]);
  }
  const s = await waitFor('the usage stored', async () => {
    const r = await P.api('GET', `/v1/endpoints/${ep}/stats`);
    return r.status === 200 && total(r.json, 'requests') === N ? r.json : false;
  }, 30000, 300);
  const busy = s.data.filter((p) => p.requests > 0);
  const idle = s.data.filter((p) => p.requests === 0);
  assert.ok(busy.length >= 1 && busy.length <= 2, 'the requests fall in one or two minutes');
  for (const p of busy) {
    assert.ok(p.ttft_ms_mean > 0 && p.ttft_ms_p50 > 0, `TTFT is positive: ${JSON.stringify(p)}`);
    assert.ok(p.ttft_ms_p50 <= p.ttft_ms_p95, 'p50 <= p95');
    // The runtime's first token comes before the client has its whole reply.
    assert.ok(p.ttft_ms_p95 <= slowest && p.ttft_ms_mean <= slowest, `TTFT ${p.ttft_ms_p95} ms within the slowest request's ${slowest} ms`);
    assert.ok(p.tokens_per_second > 0, 'tokens per second of request time');
  }
  // tokens/s is completion tokens over request time, which the client saw all of (and more).
  const wallSum = walls.reduce((a, b) => a + b, 0) / 1000;
  const tps = busy.reduce((n, p) => n + p.completion_tokens / p.tokens_per_second, 0);
  assert.ok(tps > 0 && tps <= wallSum, `request time ${tps} s within the client's ${wallSum} s`);
  assert.equal(total(s, 'completion_tokens'), completion);
  assert.ok(idle.every((p) => p.ttft_ms_mean === null && p.ttft_ms_p95 === null && p.tokens_per_second === null),
    'an idle minute has no times');
  // The hourly and daily series agree with the minutes on the mean of the same requests.
  const day = (await P.api('GET', `/v1/endpoints/${ep}/stats?granularity=day`)).json.data.filter((p) => p.requests);
  const mean = busy.reduce((n, p) => n + p.ttft_ms_mean * p.requests, 0) / N;
  assert.ok(Math.abs(day.reduce((n, p) => n + p.ttft_ms_mean * p.requests, 0) / N - mean) < 0.01);
}

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

// Two GPUs of a host registered through the real agent API (no GPU here), their readings sent on
// heartbeats as an agent with NVML sends them.
test('GPU readings on heartbeats reach GET /v1/admin/hosts; CPU slots have none', { timeout: 30000 }, async () => {
  const uuids = ['GPU-tele-0', 'GPU-tele-1'];
  const reg = await P.agentApi('/agent/v1/register', P.agentToken, { name: 'tele-box', address: '127.0.0.1',
    agent_version: 'e2e', devices: uuids.map((uuid, i) => ({ index: i, uuid, kind: 'gpu', model: 'NVIDIA H100 80GB HBM3',
      memory_mib: 81559, healthy: i === 0, ecc_errors: i, retired_pages: 0 })) });
  assert.equal(reg.status, 200, reg.text);
  const { host_id, host_key } = reg.json;
  const beat = (gpus) => P.agentApi('/agent/v1/heartbeat', host_key, { host_id, replicas: [], usage: [], gpus });
  const devices = async (name) => (await P.api('GET', '/v1/admin/hosts')).json.data.find((h) => h.name === name).devices;
  let d = await devices('tele-box');
  assert.deepEqual(d.map((g) => g.utilization_percent), [null, null], 'no reading before the first heartbeat');
  let r = await beat([{ uuid: 'GPU-tele-0', utilization_percent: 87, memory_used_mib: 61234, temperature_c: 71 },
    { uuid: 'GPU-tele-1', utilization_percent: 3, temperature_c: 40 }, // no memory reading on this board
    { uuid: 'GPU-h100-box-0', utilization_percent: 50 }]); // not this host's: ignored
  assert.equal(r.status, 200, r.text);
  d = await devices('tele-box');
  assert.deepEqual(d.map((g) => [g.utilization_percent, g.memory_used_mib, g.temperature_c, g.healthy]),
    [[87, 61234, 71, true], [3, null, 40, false]]);
  assert.ok(d.every((g) => Math.abs(Date.parse(g.sampled_at) - Date.now()) < 60000));
  // A newer reading replaces the last; a malformed one is dropped and the heartbeat still counts.
  r = await beat([{ uuid: 'GPU-tele-0', utilization_percent: 12, memory_used_mib: 100, temperature_c: 55 },
    { uuid: 'GPU-tele-1', utilization_percent: 150 }]);
  assert.equal(r.status, 200, r.text);
  d = await devices('tele-box');
  assert.deepEqual(d.map((g) => [g.utilization_percent, g.memory_used_mib, g.temperature_c]), [[12, 100, 55], [3, null, 40]]);
  assert.equal((await beat('garbage')).status, 200, 'readings never cost a heartbeat');
  // The harness's agent runs with --cpu-slots (no NVML): its devices have no readings.
  const cpu = (await P.api('GET', '/v1/admin/hosts')).json.data.filter((h) => h.name !== 'tele-box').flatMap((h) => h.devices);
  assert.ok(cpu.length >= 1 && cpu.every((g) => g.kind === 'cpu' && g.utilization_percent === null &&
    g.memory_used_mib === null && g.temperature_c === null && g.sampled_at === null));
  // An operator's route: a customer gets 403.
  assert.equal((await P.api('GET', '/v1/admin/hosts', { key: P.newAccountKey('tele@example.com') })).status, 403);
});

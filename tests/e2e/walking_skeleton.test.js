// Walking skeleton, end to end: deploy the demo model through the REST API, wait until it is
// ready, chat through the gateway with the official openai client (streaming and not), and check
// that the runtime's usage for each call reached PostgreSQL once, with the counts the client saw.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { Platform, waitFor } from './harness.js';

const P = new Platform();
let endpointId;
let client;

before(async () => {
  await P.start();
  endpointId = await P.deploy('demo-chat');
  client = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0 });
}, { timeout: 180000 });

after(async () => {
  if (process.exitCode) {
    console.error(P.log('controller').slice(-4000));
    console.error(P.log('agent').slice(-4000));
  }
  await P.stop();
});

// The runtime names each completion after the request id the gateway made for it.
const requestIdOf = (completionId) => completionId.replace(/^chatcmpl-/, '');

async function usageRow(requestId) {
  return waitFor(`usage event ${requestId}`, async () => {
    const r = await P.db.query('SELECT * FROM usage_events WHERE request_id = $1', [requestId]);
    return r.rows[0];
  }, 20000, 200);
}

test('the endpoint is listed with its replica placed on a CPU slot', async () => {
  const r = await P.api('GET', '/v1/endpoints');
  assert.equal(r.status, 200);
  const ep = r.json.data.find((e) => e.id === endpointId);
  assert.ok(ep, 'endpoint is listed');
  assert.equal(ep.status, 'ready');
  assert.equal(ep.device_kind, 'cpu');
  assert.equal(ep.pool, null);
  assert.equal(ep.billing_mode, 'time');
  assert.equal(ep.replica_states.length, 1);
  assert.equal(ep.replica_states[0].state, 'ready');
  assert.match(ep.replica_states[0].devices[0], /^CPU-e2e-host-/);
  assert.ok(ep.replica_states[0].epoch > 0);
});

test('the operator sees the host and its CPU slots', async () => {
  const r = await P.api('GET', '/v1/admin/hosts');
  assert.equal(r.status, 200);
  assert.equal(r.json.data.length, 1);
  const h = r.json.data[0];
  assert.equal(h.name, 'e2e-host');
  assert.equal(h.state, 'ready');
  assert.deepEqual(h.devices.map((d) => [d.kind, d.model, d.uuid]),
    [['cpu', 'CPU slot', 'CPU-e2e-host-0'], ['cpu', 'CPU slot', 'CPU-e2e-host-1']]);
  assert.ok(Date.parse(h.last_seen_at) > Date.now() - 60000);
});

test('GET /v1/models through the openai client lists the endpoint', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids, ['demo-chat']);
});

test('non-streaming chat completion, and its usage stored once', async () => {
  const { data: c, response } = await client.chat.completions.create({
    model: 'demo-chat',
    messages: [{ role: 'user', content: 'Hello! Say something.' }],
    max_tokens: 12,
    temperature: 0,
  }).withResponse();
  assert.equal(c.object, 'chat.completion');
  assert.equal(c.model, 'demo-chat');
  assert.equal(c.choices.length, 1);
  assert.equal(c.choices[0].message.role, 'assistant');
  assert.equal(typeof c.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(c.choices[0].finish_reason));
  assert.ok(c.usage.prompt_tokens > 5, `prompt_tokens ${c.usage.prompt_tokens}`);
  assert.ok(c.usage.completion_tokens >= 1 && c.usage.completion_tokens <= 12);
  assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + c.usage.completion_tokens);

  const rid = requestIdOf(c.id);
  assert.match(rid, /^req_[0-9a-f]{24}$/, 'the gateway made the request id');
  assert.equal(response.headers.get('x-request-id'), rid, 'one id from gateway to runtime to billing');
  const row = await usageRow(rid);
  assert.equal(row.prompt_tokens, c.usage.prompt_tokens);
  assert.equal(row.completion_tokens, c.usage.completion_tokens);
  assert.equal(row.endpoint_id, endpointId);
  const n = await P.db.query('SELECT count(*)::int AS n FROM usage_events WHERE request_id = $1', [rid]);
  assert.equal(n.rows[0].n, 1);

  // Greedy decoding is deterministic: the same request gives the same text.
  const again = await client.chat.completions.create({
    model: 'demo-chat', messages: [{ role: 'user', content: 'Hello! Say something.' }],
    max_tokens: 12, temperature: 0,
  });
  assert.equal(again.choices[0].message.content, c.choices[0].message.content);
});

test('streaming chat completion with include_usage, and its usage stored once', async () => {
  const stream = await client.chat.completions.create({
    model: 'demo-chat',
    messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Stream, please.' }],
    max_tokens: 20,
    temperature: 0.8,
    seed: 7,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let usage;
  let id;
  let finish;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    id = chunk.id;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.choices.length) {
      text += chunk.choices[0].delta.content ?? '';
      if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(chunks >= 3, `got ${chunks} chunks`);
  assert.ok(['stop', 'length'].includes(finish));
  assert.ok(usage, 'a usage chunk arrived');
  assert.ok(usage.completion_tokens >= 1 && usage.completion_tokens <= 20);
  assert.equal(typeof text, 'string');
  const row = await usageRow(requestIdOf(id));
  assert.equal(row.prompt_tokens, usage.prompt_tokens);
  assert.equal(row.completion_tokens, usage.completion_tokens);
});

test('an endpoint asking for a pool no host is in waits, and says why', async () => {
  const r = await P.api('POST', '/v1/endpoints', { body: { name: 'elsewhere', model: 'demo-tiny', pool: 'gpu-farm' } });
  assert.equal(r.status, 201);
  assert.equal(r.json.pool, 'gpu-farm');
  const ep = await waitFor('a placement verdict', async () => {
    const g = await P.api('GET', `/v1/endpoints/${r.json.id}`);
    return /no capacity/.test(g.json.replica_states[0].reason) ? g.json : false;
  }, 10000);
  assert.equal(ep.status, 'deploying');
  assert.match(ep.replica_states[0].reason, /pool 'gpu-farm'/);
  assert.equal((await P.api('DELETE', `/v1/endpoints/${r.json.id}`)).status, 200);
});

test('deleting the endpoint stops its replica and frees the CPU slot', async () => {
  const d = await P.api('DELETE', `/v1/endpoints/${endpointId}`);
  assert.equal(d.status, 200);
  assert.equal(d.json.status, 'deleted');
  await waitFor('the replica to stop', async () => {
    const r = await P.db.query('SELECT state FROM replicas WHERE endpoint_id = $1', [endpointId]);
    return r.rows.every((x) => x.state === 'stopped');
  }, 30000);
  const g = await P.api('GET', `/v1/endpoints/${endpointId}`);
  assert.equal(g.json.status, 'deleted');
  const l = await P.api('GET', '/v1/endpoints');
  assert.equal(l.json.data.length, 0);
  // The gateway no longer routes to it.
  await assert.rejects(
    client.chat.completions.create({ model: 'demo-chat', messages: [{ role: 'user', content: 'hi' }] }),
    (e) => e.status === 404,
  );
});

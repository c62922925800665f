// The gateway's routing: a request for an endpoint that is still starting is held until a
// replica is ready instead of failing; a replica whose runtime died is skipped (the request goes
// to another one) before anyone has noticed it is gone.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { Platform, sleep, waitFor } from './harness.js';

const P = new Platform();
let client;

before(async () => {
  // Slow heartbeats: a dead runtime stays "ready" in the database for a while.
  await P.start({ cpuSlots: 2, controllerArgs: ['--hold-s', '20', '--cors-origins', 'http://console.test:8080,http://127.0.0.1:9'] });
  client = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0 });
}, { timeout: 120000 });

after(async () => { await P.stop(); });

test('a request sent right after deploying is held until the endpoint is ready', async () => {
  const r = await P.api('POST', '/v1/endpoints', { body: { name: 'fresh', model: 'demo-tiny', replicas: 2 } });
  assert.equal(r.status, 201);
  assert.equal(r.json.status, 'deploying');
  const t0 = Date.now();
  const c = await client.chat.completions.create({ model: 'fresh', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
  assert.equal(c.choices.length, 1);
  assert.ok(Date.now() - t0 > 100, 'it waited for the replica');
});

test('a replica whose runtime died is skipped', async () => {
  await waitFor('both replicas ready', async () => {
    const l = await P.api('GET', '/v1/endpoints');
    return l.json.data[0].replicas_ready === 2;
  });
  // Kill one runtime without telling anyone: until the agent notices, it is still "ready".
  const dir = path.join(P.tmp, 'agent', 'replicas');
  const pidFile = fs.readdirSync(dir).map((d) => path.join(dir, d, 'pid')).find((f) => fs.existsSync(f));
  const pid = Number(fs.readFileSync(pidFile, 'utf8').trim().split(/\s+/)[0]);
  process.kill(pid, 'SIGKILL');
  await sleep(50);
  const results = await Promise.all([...Array(12).keys()].map(() =>
    client.chat.completions.create({ model: 'fresh', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 })
      .then(() => 'ok', (e) => `error ${e.status}`)));
  assert.deepEqual(results, Array(12).fill('ok'));
  assert.match(P.log('controller'), /refused the connection; trying another/);
});

test('with no replica at all, the hold ends in 503 with Retry-After', async () => {
  const r = await P.api('POST', '/v1/endpoints', { body: { name: 'never', model: 'demo-tiny', replicas: 4 } });
  assert.equal(r.status, 201); // 4 CPU slots are never free on this host: it stays pending
  const t0 = Date.now();
  const res = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${P.adminKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'never', messages: [{ role: 'user', content: 'hi' }] }),
  });
  assert.equal(res.status, 503);
  assert.ok(Date.now() - t0 >= 19000, 'held for --hold-s');
  assert.ok(Number(res.headers.get('retry-after')) > 0);
  assert.equal((await res.json()).error.code, 'endpoint_not_ready');
  const g = await P.api('GET', `/v1/endpoints/${r.json.id}`);
  assert.match(g.json.replica_states[0].reason, /(waiting for a host|no capacity)/);
});

test('CORS: the console\'s origin may call the gateway from a browser, others may not', async () => {
  const pre = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'OPTIONS',
    headers: { Origin: 'http://console.test:8080', 'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'content-type,x-csrf-token' },
  });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get('access-control-allow-origin'), 'http://console.test:8080');
  assert.equal(pre.headers.get('access-control-allow-credentials'), 'true');
  assert.match(pre.headers.get('access-control-allow-headers'), /x-csrf-token/);
  const other = await fetch(`${P.gatewayUrl}/chat/completions`, { method: 'OPTIONS', headers: { Origin: 'http://evil.test' } });
  assert.equal(other.status, 204);
  assert.equal(other.headers.get('access-control-allow-origin'), null);
  const m = await fetch(`${P.gatewayUrl}/models`, { headers: { Origin: 'http://console.test:8080', Authorization: `Bearer ${P.adminKey}` } });
  assert.equal(m.status, 200);
  assert.equal(m.headers.get('access-control-allow-origin'), 'http://console.test:8080');
  assert.equal(m.headers.get('vary'), 'Origin');
  // Errors carry the headers too, so the page can read them.
  const e = await fetch(`${P.gatewayUrl}/chat/completions`, { method: 'POST', headers: { Origin: 'http://console.test:8080' }, body: '{}' });
  assert.equal(e.status, 401);
  assert.equal(e.headers.get('access-control-allow-origin'), 'http://console.test:8080');
});

// The replica the gateway would call, straight: its address and secret from the database.
async function runtimeOf(endpointName) {
  const r = await P.db.query(
    `SELECT h.address, r.port, r.secret FROM replicas r JOIN hosts h ON h.id = r.host_id
       JOIN endpoints e ON e.id = r.endpoint_id WHERE e.name = $1 AND r.state = 'ready' LIMIT 1`, [endpointName]);
  return { url: `http://${r.rows[0].address}:${r.rows[0].port}`, secret: r.rows[0].secret };
}

test('the request id is the server\'s; the client\'s own id is only echoed', async () => {
  const res = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${P.adminKey}`, 'Content-Type': 'application/json', 'X-Request-Id': 'client-chosen-1' },
    body: JSON.stringify({ model: 'fresh', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
  });
  assert.equal(res.status, 200);
  const rid = res.headers.get('x-request-id');
  assert.match(rid, /^req_[0-9a-f]{24}$/);
  assert.equal(res.headers.get('x-client-request-id'), 'client-chosen-1');
  assert.equal((await res.json()).id, `chatcmpl-${rid}`);
  await waitFor('its usage event', async () =>
    (await P.db.query('SELECT 1 FROM usage_events WHERE request_id = $1', [rid])).rowCount === 1);
  const forged = await P.db.query("SELECT count(*)::int AS n FROM usage_events WHERE request_id LIKE 'client-chosen%'");
  assert.equal(forged.rows[0].n, 0);
});

test('the gateway takes ordinary headers and refuses oversized ones (--gateway-connection-memory-kib 16)', async () => {
  const call = (extra) => fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${P.adminKey}`, 'Content-Type': 'application/json', ...extra },
    body: JSON.stringify({ model: 'fresh', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
  }).then((r) => r.status, () => 'closed');
  // A browser's cookies for the host and a few long headers: about 6 KiB in all.
  assert.equal(await call({ Cookie: 'a=' + 'x'.repeat(4000), 'X-Trace': 'y'.repeat(2000) }), 200);
  // Beyond the connection's memory: refused (431), never buffered; the gateway serves on.
  assert.ok([413, 431, 'closed'].includes(await call({ 'X-Big': 'x'.repeat(64 * 1024) })));
  assert.equal(await call({}), 200);
});

test('the runtime\'s fingerprint header and body pass through unchanged', async () => {
  const body = JSON.stringify({ model: 'fresh', messages: [{ role: 'user', content: 'same' }], max_tokens: 3, temperature: 0 });
  const rt = await runtimeOf('fresh');
  const direct = await fetch(`${rt.url}/v1/chat/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${rt.secret}`, 'Content-Type': 'application/json' }, body,
  });
  const viaGw = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${P.adminKey}`, 'Content-Type': 'application/json' }, body,
  });
  assert.equal(direct.status, 200);
  assert.equal(viaGw.status, 200);
  // Null on both sides until the runtime sends one; the same value once it does.
  assert.equal(viaGw.headers.get('openrunpod-fingerprint'), direct.headers.get('openrunpod-fingerprint'));
  const a = await direct.json();
  const b = await viaGw.json();
  assert.equal(b.choices[0].message.content, a.choices[0].message.content);
  assert.equal(b.system_fingerprint, a.system_fingerprint);
});

test('a client that leaves mid-stream cancels the request at the runtime, which meters what it made', async () => {
  const ac = new AbortController();
  const res = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST', signal: ac.signal,
    headers: { Authorization: `Bearer ${P.adminKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'fresh', messages: [{ role: 'user', content: 'tell me a long story' }], stream: true, ignore_eos: true, max_tokens: 900 }),
  });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/event-stream');
  const rid = res.headers.get('x-request-id');
  const reader = res.body.getReader();
  const first = await reader.read(); // the first event arrives before the stream ends: no buffering
  assert.match(new TextDecoder().decode(first.value), /^data: /);
  ac.abort();
  let row;
  await waitFor('the cancelled request\'s usage event', async () => {
    row = (await P.db.query('SELECT completion_tokens, finish_reason FROM usage_events WHERE request_id = $1', [rid])).rows[0];
    return row;
  });
  assert.equal(row.finish_reason, 'cancelled', `${row.completion_tokens} tokens, ${row.finish_reason}`);
  assert.ok(row.completion_tokens < 900);
  assert.match(P.log('controller'), new RegExp(`request ${rid}: the client left; cancelling it upstream`));
});

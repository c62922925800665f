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

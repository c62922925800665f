// Quotas, rate limits, stop/start, and what happens when an account runs out of credit.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Platform, waitFor } from './harness.js';

const P = new Platform();
let key;
let acct;
let epId;

before(async () => {
  await P.start({ cpuSlots: 2, controllerArgs: ['--billing-period-s', '1', '--credit-grace-s', '1'] });
  key = P.newAccountKey('limited@example.com');
  acct = (await P.db.query("SELECT account_id FROM users WHERE email = 'limited@example.com'")).rows[0].account_id;
}, { timeout: 120000 });

after(async () => { await P.stop(); });

const as = (method, path, o = {}) => P.api(method, path, { key, ...o });

async function chat(model = 'limited') {
  const res = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
  });
  const body = await res.json();
  return { status: res.status, body, headers: res.headers };
}

test('the operator sets quotas; deploys beyond them get 403', async () => {
  const q0 = await P.api('GET', `/v1/admin/accounts/${acct}/quotas`);
  assert.equal(q0.status, 200);
  assert.equal(q0.json.defaults, true);
  const put = await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, {
    body: { max_devices: 1, max_endpoints: 2, requests_per_min: 60, requests_burst: 3 },
  });
  assert.equal(put.status, 200, put.text);
  assert.equal(put.json.defaults, false);
  assert.equal(put.json.max_devices, 1);
  assert.equal(put.json.monthly_spend_cap_micros, null);
  assert.equal((await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: { max_devices: -1 } })).status, 400);
  assert.equal((await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: { nope: 1 } })).status, 400);
  assert.equal((await P.api('GET', '/v1/admin/accounts/424242/quotas')).status, 404);
  // A customer cannot read or set quotas.
  assert.equal((await as('GET', `/v1/admin/accounts/${acct}/quotas`)).status, 403);

  assert.equal((await as('POST', '/v1/endpoints', { body: { name: 'too-big', model: 'demo-tiny', replicas: 2 } })).status, 403);
  const r = await as('POST', '/v1/endpoints', { body: { name: 'limited', model: 'demo-tiny' } });
  assert.equal(r.status, 201, r.text);
  epId = r.json.id;
  const more = await as('POST', '/v1/endpoints', { body: { name: 'second', model: 'demo-tiny' } });
  assert.equal(more.status, 403);
  assert.equal(more.json.error.code, 'quota_exceeded');
  await waitFor('the endpoint to be ready', async () => (await as('GET', `/v1/endpoints/${epId}`)).json.status === 'ready');
});

test('a burst passes, then 429 with Retry-After and RateLimit headers', async () => {
  await new Promise((r) => setTimeout(r, 3100)); // a full bucket
  const results = [];
  for (let i = 0; i < 8; i++) results.push(await chat());
  const ok = results.filter((r) => r.status === 200);
  const limited = results.filter((r) => r.status === 429);
  assert.equal(ok.length + limited.length, 8, results.map((r) => r.status).join(','));
  assert.ok(ok.length >= 3 && ok.length <= 4, `admitted ${ok.length}`);
  assert.equal(ok[0].headers.get('ratelimit-limit'), '60');
  assert.equal(ok[0].headers.get('ratelimit-remaining'), '2');
  const l = limited[0];
  assert.equal(l.body.error.code, 'rate_limit_exceeded');
  assert.equal(l.body.error.type, 'rate_limit_error');
  assert.ok(Number(l.headers.get('retry-after')) >= 1);
  assert.equal(l.headers.get('ratelimit-remaining'), '0');
  // After Retry-After, it passes again.
  await new Promise((r) => setTimeout(r, Number(l.headers.get('retry-after')) * 1000));
  assert.equal((await chat()).status, 200);
});

test('the owner stops and starts an endpoint', async () => {
  const s = await as('POST', `/v1/endpoints/${epId}/stop`);
  assert.equal(s.status, 200);
  assert.equal(s.json.status, 'stopped');
  assert.equal(s.json.status_reason, 'stopped by its owner');
  await new Promise((r) => setTimeout(r, 1100)); // past the rate limit
  const c = await chat();
  assert.equal(c.status, 409);
  assert.equal(c.body.error.code, 'endpoint_stopped');
  await waitFor('its replica to stop', async () =>
    (await P.db.query("SELECT count(*)::int AS n FROM replicas WHERE endpoint_id = $1 AND state <> 'stopped'", [epId])).rows[0].n === 0);
  assert.equal((await as('POST', `/v1/endpoints/${epId}/stop`)).json.status, 'stopped');
  const g = await as('POST', `/v1/endpoints/${epId}/start`);
  assert.equal(g.status, 200);
  await waitFor('it to be ready again', async () => (await as('GET', `/v1/endpoints/${epId}`)).json.status === 'ready');
  await new Promise((r) => setTimeout(r, 1100));
  assert.equal((await chat()).status, 200);
  // Another account cannot stop it.
  assert.equal((await P.api('POST', `/v1/endpoints/${epId}/stop`)).status, 404);
});

test('out of credit: requests get 402, and the endpoint stops after the grace period', async () => {
  await P.db.query(
    "INSERT INTO ledger_entries (account_id, amount_micros, kind, idempotency_key) SELECT $1, -sum(amount_micros) - 1, 'adjustment', 'drain' FROM ledger_entries WHERE account_id = $1",
    [acct]);
  await new Promise((r) => setTimeout(r, 1100));
  const c = await chat();
  assert.equal(c.status, 402);
  const ep = await waitFor('the endpoint to be stopped for credit', async () => {
    const g = await as('GET', `/v1/endpoints/${epId}`);
    return g.json.status === 'stopped' ? g.json : false;
  }, 20000, 300);
  assert.match(ep.status_reason, /^out of credit since /);
  const od = await P.db.query('SELECT overdrawn_since FROM accounts WHERE id = $1', [acct]);
  assert.ok(od.rows[0].overdrawn_since);
  // It cannot be started until credit is added; then it can.
  assert.equal((await as('POST', `/v1/endpoints/${epId}/start`)).status, 402);
  const cr = await P.api('POST', `/v1/admin/accounts/${acct}/credits`, { body: { amount_micros: 10000000, idempotency_key: 'refill' } });
  assert.equal(cr.status, 201);
  await waitFor('overdrawn_since to clear', async () =>
    (await P.db.query('SELECT overdrawn_since FROM accounts WHERE id = $1', [acct])).rows[0].overdrawn_since === null);
  assert.equal((await as('POST', `/v1/endpoints/${epId}/start`)).status, 200);
  await waitFor('ready after the refill', async () => (await as('GET', `/v1/endpoints/${epId}`)).json.status === 'ready');
});

test('monthly spend cap: time-billed endpoints stop when the month\'s charges reach it; deploys and starts get 402', async () => {
  const spent = async () => Number((await P.db.query('SELECT account_month_spend($1) AS s', [acct])).rows[0].s);
  await waitFor('some usage charged this month', async () => (await spent()) > 0);
  const q = (await P.api('GET', `/v1/admin/accounts/${acct}/quotas`)).json;
  const limits = { max_devices: q.max_devices, max_endpoints: q.max_endpoints, requests_per_min: q.requests_per_min, requests_burst: q.requests_burst };
  const cap = (await spent()) + 3; // a few seconds more of ready time
  const put = await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: { ...limits, monthly_spend_cap_micros: cap } });
  assert.equal(put.status, 200);
  assert.equal(put.json.monthly_spend_cap_micros, cap);
  // The customer sees this month's charges against the cap on the balance.
  const before = await spent();
  const bal = await as('GET', '/v1/billing/balance');
  const after = await spent();
  assert.equal(bal.status, 200, bal.text);
  assert.equal(bal.json.monthly_spend_cap_micros, cap);
  assert.match(bal.json.monthly_spend_cap_display, /^0\.[0-9]{6} USD$/);
  assert.ok(bal.json.month_spend_micros >= before && bal.json.month_spend_micros <= after,
    `month_spend_micros ${bal.json.month_spend_micros}, account_month_spend ${before}..${after}`);
  const ep = await waitFor('the endpoint to be stopped at the cap', async () => {
    const g = await as('GET', `/v1/endpoints/${epId}`);
    return g.json.status === 'stopped' ? g.json : false;
  }, 30000, 300);
  assert.match(ep.status_reason, /^monthly spend cap of [0-9.]+ USD reached/);
  assert.ok(await spent() >= cap, 'stopped only once the charges reached the cap');
  // Requests name the reason; new deploys and starts are refused with 402 while it holds.
  const c = await chat();
  assert.equal(c.status, 409);
  assert.match(c.body.error.message, /monthly spend cap/);
  const d = await as('POST', '/v1/endpoints', { body: { name: 'another', model: 'demo-tiny' } });
  assert.equal(d.status, 402);
  assert.equal(d.json.error.code, 'spend_cap_reached');
  assert.match(d.json.error.message, /monthly spend cap of [0-9.]+ USD is reached/);
  const s = await as('POST', `/v1/endpoints/${epId}/start`);
  assert.equal(s.status, 402);
  assert.equal(s.json.error.code, 'spend_cap_reached');
  // The operator lifts the cap: it starts again.
  assert.equal((await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: limits })).status, 200);
  assert.equal((await as('POST', `/v1/endpoints/${epId}/start`)).status, 200);
});

test('a scripted burst against a rate limit admits burst + rate × t (± 1)', async () => {
  const RATE = 600; // per minute: one every 100 ms
  const BURST = 20;
  const q = await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: { requests_per_min: RATE, requests_burst: BURST } });
  assert.equal(q.status, 200);
  await new Promise((r) => setTimeout(r, 3500)); // the gateway's 1 s key cache, and a full bucket
  // One request every 10 ms for 3 s. The limit is checked before routing, so a model that does
  // not exist costs the runtime nothing: every answer but 429 was admitted by the limiter.
  const logFrom = P.log('controller').length;
  const t0 = performance.now();
  const pending = [];
  for (let i = 0; i <= 300; i++) {
    const due = t0 + i * 10;
    while (performance.now() < due) await new Promise((r) => setTimeout(r, Math.max(0, due - performance.now())));
    pending.push(chat('no-such-model'));
  }
  const results = await Promise.all(pending);
  const admitted = results.filter((r) => r.status !== 429).length;
  assert.ok(results.every((r) => r.status === 429 || r.status === 404), results.map((r) => r.status).join(','));
  // t as the limiter saw it: from the first request's arrival to the last one's, by the gateway's
  // own access log (a loaded machine delays some sends; the client's clock would misplace them).
  // The access-log line is written after the reply is sent: wait until every one is there.
  const lines = () => P.log('controller').slice(logFrom).split('\n')
    .filter((l) => / gateway POST \/v1\/chat\/completions (404|429) /.test(l));
  await waitFor('every request in the access log', async () => lines().length >= results.length, 10000, 50);
  const at = lines().map((l) => Date.parse(l.slice(0, 24)));
  assert.equal(at.length, results.length);
  const t = (Math.max(...at) - Math.min(...at)) / 1000;
  const want = BURST + (RATE / 60) * t;
  assert.ok(Math.abs(admitted - want) <= 1, `admitted ${admitted} over ${t.toFixed(3)} s; burst + rate × t = ${want.toFixed(2)}`);
});

// Tokens per minute: a request is charged its body's bytes (an upper bound of its prompt tokens)
// plus max_tokens at admission, and given back what its reply's usage shows it did not use.
test('tokens per minute: a burst admits what the bucket holds (± 1), 429 says so, unused tokens return', async () => {
  await waitFor('the endpoint ready', async () => (await as('GET', `/v1/endpoints/${epId}`)).json.status === 'ready');
  const body = (stream, maxTokens = 2) => JSON.stringify({ model: 'limited', messages: [{ role: 'user', content: 'hi' }], max_tokens: maxTokens, stream });
  const cost = Buffer.byteLength(body(false)); // + max_tokens below
  const COST = cost + 2;
  const LIMIT = COST * 10 + Math.floor(COST / 2); // ten requests and a half
  const put = await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: { requests_per_min: 100000, requests_burst: 1000, tokens_per_min: LIMIT } });
  assert.equal(put.status, 200, put.text);
  assert.equal(put.json.tokens_per_min, LIMIT);
  assert.equal((await P.api('GET', `/v1/admin/accounts/${acct}/quotas`)).json.tokens_per_min, LIMIT);
  assert.equal((await as('GET', '/v1/quotas')).json.tokens_per_min, LIMIT);
  assert.equal((await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: { tokens_per_min: 0 } })).status, 400);
  assert.equal((await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: { requests_per_min: 100000, requests_burst: 1000, tokens_per_min: LIMIT } })).status, 200);
  await new Promise((r) => setTimeout(r, 2500)); // the gateway's 1 s key cache
  const send = async (b) => {
    const res = await fetch(`${P.gatewayUrl}/chat/completions`, {
      method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' }, body: b,
    });
    return { status: res.status, headers: res.headers, text: await res.text() };
  };
  const remaining = (r) => Number(r.headers.get('x-ratelimit-remaining-tokens'));

  // More than the whole minute's allowance: refused, saying so, and nothing charged.
  const big = await send(body(false, LIMIT));
  assert.equal(big.status, 400, big.text);
  const bigErr = JSON.parse(big.text).error;
  assert.equal(bigErr.code, 'request_too_large');
  assert.equal(bigErr.param, 'max_tokens');
  assert.match(bigErr.message, new RegExp(`more than your whole limit of ${LIMIT} tokens per minute`));
  assert.equal(big.headers.get('retry-after'), null, 'waiting would not help');
  assert.equal(remaining(big), LIMIT);

  // Settlement: a finished request gives back what its usage shows it did not use.
  const r1 = await send(body(false));
  assert.equal(r1.status, 200, r1.text);
  assert.equal(r1.headers.get('x-ratelimit-limit-tokens'), String(LIMIT));
  assert.ok(Math.abs(remaining(r1) - (LIMIT - COST)) <= 1, `remaining ${remaining(r1)} after one request of ${COST}`);
  const u1 = JSON.parse(r1.text).usage;
  const used1 = u1.prompt_tokens + u1.completion_tokens;
  assert.ok(used1 < COST, `used ${used1} of ${COST}`);
  const t1 = performance.now();
  const r2 = await send(body(false));
  assert.equal(r2.status, 200, r2.text);
  const refill = Math.ceil((LIMIT / 60) * (performance.now() - t1) / 1000) + 1;
  const settled = LIMIT - used1 - COST; // the first request's unused tokens came back
  assert.ok(remaining(r2) >= settled - 1 && remaining(r2) <= settled + refill,
    `remaining ${remaining(r2)}: settled ${settled}, unsettled ${LIMIT - 2 * COST}`);
  const u2 = JSON.parse(r2.text).usage;
  // A stream that asked for its usage (stream_options.include_usage) is settled by it too.
  const withUsage = JSON.stringify({ model: 'limited', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, stream: true, stream_options: { include_usage: true } });
  const t3 = performance.now();
  const r3 = await send(withUsage);
  assert.equal(r3.status, 200, r3.text);
  const u3 = r3.text.split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6))).find((e) => e.usage)?.usage;
  assert.ok(u3, `a usage event in ${r3.text.slice(-400)}`);
  const r4 = await send(body(false));
  assert.equal(r4.status, 200, r4.text);
  const refill3 = Math.ceil((LIMIT / 60) * (performance.now() - t3) / 1000) + 1;
  const settled3 = remaining(r2) + COST - (u2.prompt_tokens + u2.completion_tokens) -
    (u3.prompt_tokens + u3.completion_tokens) - COST;
  assert.ok(remaining(r4) >= settled3 - 1 && remaining(r4) <= settled3 + refill3,
    `remaining ${remaining(r4)}: settled ${settled3}, the stream unsettled ${settled3 - (Buffer.byteLength(withUsage) + 2) + u3.prompt_tokens + u3.completion_tokens}`);
  const u4 = JSON.parse(r4.text).usage;
  const bucket = remaining(r4) + COST - (u4.prompt_tokens + u4.completion_tokens);

  // A burst of streams (which keep their whole charge) admits what the bucket holds, ± 1.
  const N = 20;
  const results = await Promise.all([...Array(N).keys()].map(() => send(body(true))));
  const ok = results.filter((r) => r.status === 200);
  const limited = results.filter((r) => r.status === 429);
  assert.equal(ok.length + limited.length, N, results.map((r) => r.status).join(','));
  const want = Math.floor(bucket / COST);
  assert.ok(Math.abs(ok.length - want) <= 1, `admitted ${ok.length}; the bucket held ${bucket} tokens, ${want} requests of ${COST}`);
  const l = limited[0];
  const err = JSON.parse(l.text).error;
  assert.equal(err.code, 'rate_limit_exceeded');
  assert.equal(err.type, 'rate_limit_error');
  assert.match(err.message, new RegExp(`token limit of ${LIMIT} tokens per minute reached`));
  assert.ok(Number(l.headers.get('retry-after')) >= 1, `Retry-After ${l.headers.get('retry-after')}`);
  assert.equal(l.headers.get('x-ratelimit-limit-tokens'), String(LIMIT));
  assert.ok(remaining(l) < COST, `remaining ${remaining(l)} < ${COST}`);
  assert.match(l.headers.get('x-ratelimit-reset-tokens'), /^[0-9]+s$/);
  // The request limit's headers are there too.
  assert.equal(l.headers.get('ratelimit-limit'), '100000');
});

// Time-billed streams run on the owner's credit: when it runs out (after the grace period) the
// endpoint is stopped, and a stream cut by that ends cleanly, its last event saying why.
// (Value-billed requests reserve their whole maximum cost before they start: they cannot run dry
// mid-way; leases.test.js.)
test('a stream cut because the account ran dry ends cleanly with a final event saying why', { timeout: 120000 }, async () => {
  await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: { requests_per_min: 100000, requests_burst: 1000 } });
  await waitFor('the endpoint ready', async () => (await as('GET', `/v1/endpoints/${epId}`)).json.status === 'ready');
  await new Promise((r) => setTimeout(r, 3000)); // the key cache, and the last test's limiter state
  let flowing = 0;
  // Enough long streams that the replica is still generating when it is stopped.
  const streams = [...Array(24).keys()].map(async () => {
    const res = await fetch(`${P.gatewayUrl}/chat/completions`, {
      method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'limited', messages: [{ role: 'user', content: 'go on' }], stream: true, ignore_eos: true, max_tokens: 900 }),
    });
    if (res.status !== 200) return { status: res.status };
    let text = '';
    const dec = new TextDecoder();
    let first = true;
    for await (const chunk of res.body) { // throws if the connection breaks instead of ending
      if (first) { first = false; flowing++; }
      text += dec.decode(chunk, { stream: true });
    }
    const events = text.split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
    return { status: 200, events };
  });
  // Drain the account as soon as the first stream flows.
  await waitFor('a stream to flow', async () => flowing > 0, 30000, 5);
  await P.db.query(
    "INSERT INTO ledger_entries (account_id, amount_micros, kind, idempotency_key) SELECT $1, -sum(amount_micros) - 1, 'adjustment', 'drain-mid-stream' FROM ledger_entries WHERE account_id = $1",
    [acct]);
  const results = await Promise.all(streams);
  const ok = results.filter((r) => r.status === 200);
  const cut = ok.filter((r) => r.events[r.events.length - 1] !== '[DONE]');
  assert.ok(cut.length >= 1, `streams cut: ${cut.length} of ${ok.length} (statuses ${results.map((r) => r.status).join(',')})`);
  for (const r of cut) {
    const last = JSON.parse(r.events[r.events.length - 1]);
    assert.equal(last.error.code, 'endpoint_stopped');
    assert.equal(last.error.type, 'insufficient_quota');
    assert.match(last.error.message, /was stopped during the stream: out of credit since /);
    assert.ok(r.events.length > 1, 'it was cut mid-way, after some events');
  }
  const g = await as('GET', `/v1/endpoints/${epId}`);
  assert.match(g.json.status_reason, /^out of credit since /);
});

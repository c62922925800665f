// Shared value-billed endpoints: the operator offers one of its endpoints to every account; any
// account's key calls it by name through the gateway, and the CALLER pays per token (admitted
// against its own balance lease, charged in its own ledger, shown in its own usage). A caller
// with no credit gets 402, and one at its monthly spend cap gets 402 saying so.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { Platform, waitFor } from './harness.js';

const PERIOD_S = 1;
const IN_PRICE = 3000000; // micros per million tokens
const OUT_PRICE = 7000000;
const P = new Platform();
let adminAcct;
let epId;

const acctOf = async (email) =>
  (await P.db.query('SELECT account_id FROM users WHERE email = $1', [email])).rows[0].account_id;

async function credit(acct, micros, key) {
  const r = await P.api('POST', `/v1/admin/accounts/${acct}/credits`, { body: { amount_micros: micros, idempotency_key: key } });
  assert.equal(r.status, 201);
}

// A small chat request to the shared endpoint with key: { status, body }.
async function callShared(key) {
  const res = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'community', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 }),
  });
  return { status: res.status, body: await res.json() };
}

before(async () => {
  await P.start({ cpuSlots: 1, controllerArgs: ['--billing-period-s', String(PERIOD_S)] });
  P.priceDemoModel(IN_PRICE, OUT_PRICE);
  epId = await P.deploy('community', { billing_mode: 'value' });
  adminAcct = await acctOf('admin@example.com');
}, { timeout: 180000 });

after(async () => { await P.stop(); });

test('only the operator shares, and only a value-billed endpoint', async () => {
  const other = P.newAccountKey('not-admin@example.com');
  const r = await P.api('PUT', `/v1/admin/endpoints/${epId}/shared`, { key: other, body: { shared: true } });
  assert.equal(r.status, 403);
  const bad = await P.api('PUT', `/v1/admin/endpoints/${epId}/shared`, { body: { shared: 'yes' } });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error.param, 'shared');
  const missing = await P.api('PUT', '/v1/admin/endpoints/00000000-0000-0000-0000-000000000000/shared', { body: { shared: true } });
  assert.equal(missing.status, 404);
  const ok = await P.api('PUT', `/v1/admin/endpoints/${epId}/shared`, { body: { shared: true } });
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.json, { object: 'endpoint_sharing', endpoint_id: epId, name: 'community', shared: true });
});

test('another account calls it by name and pays for its own tokens', async () => {
  const key = P.newAccountKey('caller@example.com');
  const acct = await acctOf('caller@example.com');
  await credit(acct, 50000000, 'caller-1');
  const before = Number((await P.api('GET', '/v1/billing/balance', { key })).json.balance_micros);
  const client = new OpenAI({ apiKey: key, baseURL: P.gatewayUrl, maxRetries: 0 });
  const models = await client.models.list();
  const listed = models.data.find((m) => m.id === 'community');
  assert.ok(listed, 'the shared endpoint is listed for every account');
  assert.equal(String(listed.owned_by), String(adminAcct));

  const { data: c, response } = await client.chat.completions.create({
    model: 'community', messages: [{ role: 'user', content: 'hello there' }], max_tokens: 5,
  }).withResponse();
  const rid = response.headers.get('x-request-id');
  assert.equal(rid, `${c.id.replace(/^chatcmpl-/, '')}`);
  assert.match(rid, new RegExp(`^req_[0-9a-f]{24}_a${acct}$`), 'the id names the paying caller');
  const s = await client.chat.completions.create({
    model: 'community', messages: [{ role: 'user', content: 'stream it' }], max_tokens: 5, stream: true,
    stream_options: { include_usage: true },
  });
  let usage2;
  for await (const ch of s) if (ch.usage) usage2 = ch.usage;
  assert.ok(usage2);

  // Both usage events are the caller's; the metering charges them to the caller, at the prices.
  const ev = await waitFor('both usage events', async () => {
    const r = await P.db.query('SELECT account_id, prompt_tokens, completion_tokens FROM usage_events WHERE account_id = $1', [acct]);
    return r.rows.length === 2 ? r.rows : false;
  });
  const want = ev.reduce((s2, e) => s2 + e.prompt_tokens * IN_PRICE + e.completion_tokens * OUT_PRICE, 0);
  await waitFor('the caller is charged', async () =>
    (await P.db.query('SELECT count(*)::int AS n FROM usage_events WHERE account_id = $1 AND billed_in IS NULL', [acct])).rows[0].n === 0);
  const charged = await P.db.query(
    "SELECT -sum(amount_micros)::bigint AS s, min(idempotency_key) AS k FROM ledger_entries WHERE account_id = $1 AND kind = 'usage_value'", [acct]);
  // Charged per period on the period's totals, rounded up: within one micro-unit per entry.
  const entries = (await P.db.query("SELECT count(*)::int AS n FROM ledger_entries WHERE account_id = $1 AND kind = 'usage_value'", [acct])).rows[0].n;
  assert.ok(Number(charged.rows[0].s) >= Math.ceil(want / 1e6) && Number(charged.rows[0].s) <= Math.ceil(want / 1e6) + entries,
    `charged ${charged.rows[0].s} for ${want / 1e6}`);
  assert.match(charged.rows[0].k, new RegExp(`^value:${epId}:a${acct}:`));
  const owner = await P.db.query("SELECT count(*)::int AS n FROM ledger_entries WHERE account_id = $1 AND kind = 'usage_value'", [adminAcct]);
  assert.equal(owner.rows[0].n, 0, 'the operator pays nothing for the caller\'s tokens');
  // The caller sees it: balance down by the charge, usage and ledger name the endpoint.
  const after = Number((await P.api('GET', '/v1/billing/balance', { key })).json.balance_micros);
  assert.equal(before - after, Number(charged.rows[0].s));
  const usage = await P.api('GET', '/v1/billing/usage?granularity=day', { key });
  assert.ok(usage.json.data.some((u) => u.endpoint === 'community' && u.kind === 'usage_value'));
  const ledger = await P.api('GET', '/v1/billing/ledger', { key });
  assert.ok(ledger.json.data.some((e) => e.kind === 'usage_value'));
  // No hold is left behind once the requests are settled.
  await waitFor('the caller\'s hold settled', async () =>
    Number((await P.db.query('SELECT COALESCE(sum(amount_micros), 0) AS s FROM holds WHERE account_id = $1', [acct])).rows[0].s) <= 0 ||
    (await P.db.query('SELECT count(*)::int AS n FROM holds WHERE account_id = $1', [acct])).rows[0].n === 0, 20000);
});

test('a caller with no credit gets 402, and one at its spend cap gets 402 saying so', async () => {
  const broke = P.newAccountKey('broke@example.com');
  // New accounts start with some credit: this one spends it all elsewhere first.
  await P.db.query(
    "INSERT INTO ledger_entries (account_id, amount_micros, kind, idempotency_key) SELECT $1, -sum(amount_micros), 'adjustment', 'broke' FROM ledger_entries WHERE account_id = $1",
    [await acctOf('broke@example.com')]);
  const res = await callShared(broke);
  assert.equal(res.status, 402);
  const e = res.body;
  assert.equal(e.error.code, 'insufficient_balance');
  assert.equal(e.error.type, 'insufficient_quota');
  assert.match(e.error.message, /add credit/);

  const capped = P.newAccountKey('capped@example.com');
  const acct = await acctOf('capped@example.com');
  await credit(acct, 50000000, 'capped-1');
  const q = await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: { monthly_spend_cap_micros: 0 } });
  assert.equal(q.status, 200);
  const res2 = await callShared(capped);
  assert.equal(res2.status, 402);
  const e2 = res2.body;
  assert.equal(e2.error.code, 'spend_cap_reached');
  assert.match(e2.error.message, /monthly spend cap of 0\.000000 USD is reached/);
});

test('withdrawn, it is a 404 for callers again', async () => {
  const key = P.newAccountKey('late@example.com');
  assert.equal((await P.api('PUT', `/v1/admin/endpoints/${epId}/shared`, { body: { shared: false } })).status, 200);
  await new Promise((r) => setTimeout(r, 1100)); // the gateway's route cache
  const res = await callShared(key);
  assert.equal(res.status, 404);
  assert.equal(res.body.error.code, 'model_not_found');
});

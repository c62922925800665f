// Billing, end to end: time-billed and value-billed endpoints, metered by two controllers at
// once (one the elected leader, one running its loops without election), with 2-second billing
// periods. Afterwards every ledger entry must equal what the test recomputes on its own from the
// ready intervals and usage events, nothing may be billed twice, and the balance must be the sum
// of the ledger.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { Platform, bin, waitFor } from './harness.js';

const PERIOD_S = 2;
const P = new Platform();
let client;
let timeId;
let valueId;
const IN_PRICE = 1000000; // micros per million input tokens
const OUT_PRICE = 3000000;

before(async () => {
  await P.start({ cpuSlots: 2, controllerArgs: ['--billing-period-s', String(PERIOD_S)] });
  // New token prices for the demo model: the database versions them.
  P.priceDemoModel(IN_PRICE, OUT_PRICE);
  // A second controller that meters too, without the leader election: only the idempotency
  // keys and row locks stand between the two and a double charge.
  P.spawn('controller2', bin.controller, ['serve', '--database-url', P.dbUrl, '--only', 'none',
    '--unlocked-leader', '--billing-period-s', String(PERIOD_S), '--scheduler-interval-ms', '250',
    '--liveness-timeout-ms', '5000']);
  timeId = await P.deploy('timed');
  valueId = await P.deploy('metered', { billing_mode: 'value' });
  client = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0 });
}, { timeout: 180000 });

after(async () => {
  if (process.exitCode) {
    console.error(P.log('controller').slice(-3000));
    console.error(P.log('controller2').slice(-3000));
  }
  await P.stop();
});

async function chat(model, i) {
  const args = { model, messages: [{ role: 'user', content: `request ${i}` }], max_tokens: 8 + (i % 5) };
  if (i % 2) {
    const s = await client.chat.completions.create({ ...args, stream: true, stream_options: { include_usage: true } });
    let usage;
    for await (const ch of s) if (ch.usage) usage = ch.usage;
    return usage;
  }
  return (await client.chat.completions.create(args)).usage;
}

// Splits [s, e) (microseconds) into billing periods aligned to the Unix epoch.
function* periods(s, e) {
  const P = BigInt(PERIOD_S) * 1000000n;
  for (let ps = (s / P) * P; ps < e; ps += P) {
    const a = s > ps ? s : ps;
    const b = e < ps + P ? e : ps + P;
    if (b > a) yield [ps, b - a];
  }
}
const ceilDiv = (a, b) => (a + b - 1n) / b;

test('a metered workload, two meters, then exact charges', { timeout: 180000 }, async () => {
  const usages = await Promise.all([...Array(12).keys()].map((i) => chat(i % 2 ? 'timed' : 'metered', i)));
  assert.ok(usages.every((u) => u && u.completion_tokens > 0));
  // Keep them ready across a few periods, then stop both.
  await new Promise((r) => setTimeout(r, 3 * PERIOD_S * 1000));
  for (const id of [timeId, valueId]) assert.equal((await P.api('DELETE', `/v1/endpoints/${id}`)).status, 200);

  await waitFor('every interval closed and billed, every usage event billed', async () => {
    const open = await P.db.query(
      `SELECT count(*)::int AS n FROM ready_intervals
        WHERE ended_at IS NULL OR billed_until < ended_at`);
    const unbilled = await P.db.query('SELECT count(*)::int AS n FROM usage_events WHERE billed_in IS NULL');
    const events = await P.db.query('SELECT count(*)::int AS n FROM usage_events');
    return open.rows[0].n === 0 && unbilled.rows[0].n === 0 && events.rows[0].n === 12;
  }, 60000, 500);

  // Time: recompute every (endpoint, period) from the intervals, in integer microseconds.
  const iv = await P.db.query(
    `SELECT endpoint_id, devices, device_kind,
            (extract(epoch FROM started_at) * 1000000)::bigint AS s,
            (extract(epoch FROM ended_at) * 1000000)::bigint AS e
       FROM ready_intervals WHERE endpoint_id = $1`, [timeId]);
  assert.ok(iv.rows.length >= 1);
  const price = BigInt((await P.db.query(
    "SELECT micros_per_device_hour AS p FROM device_prices WHERE device_kind = 'cpu' ORDER BY effective_at DESC LIMIT 1")).rows[0].p);
  const want = new Map();
  for (const r of iv.rows) {
    for (const [ps, us] of periods(BigInt(r.s), BigInt(r.e))) {
      want.set(ps, (want.get(ps) ?? 0n) + BigInt(r.devices) * us);
    }
  }
  const got = await P.db.query(
    `SELECT idempotency_key, amount_micros, quantity, (extract(epoch FROM period_start) * 1000000)::bigint AS ps
       FROM ledger_entries WHERE endpoint_id = $1 AND kind = 'usage_time'`, [timeId]);
  const gotBy = new Map();
  for (const g of got.rows) {
    const ps = BigInt(g.ps);
    const prev = gotBy.get(ps) ?? { q: 0n, amount: 0n, n: 0 };
    gotBy.set(ps, { q: prev.q + BigInt(g.quantity), amount: prev.amount + BigInt(g.amount_micros), n: prev.n + 1 });
  }
  assert.deepEqual([...gotBy.keys()].sort(), [...want.keys()].sort(), 'one charge per period the replica was ready');
  let totalDeviceMs = 0n;
  for (const [ps, us] of want) {
    const deviceMs = (us + 500n) / 1000n;
    const g = gotBy.get(ps);
    assert.equal(g.n, 1, `period ${ps} charged once`);
    assert.equal(g.q, deviceMs, `device-ms of period ${ps}`);
    assert.equal(-g.amount, ceilDiv(deviceMs * price, 3600000n), `amount of period ${ps}`);
    totalDeviceMs += deviceMs;
  }
  assert.ok(totalDeviceMs > BigInt(3 * PERIOD_S * 1000), `ready for ${totalDeviceMs} device-ms`);
  // The value-billed endpoint's ready time is not charged to anyone.
  const vt = await P.db.query("SELECT count(*)::int AS n FROM ledger_entries WHERE endpoint_id = $1 AND kind = 'usage_time'", [valueId]);
  assert.equal(vt.rows[0].n, 0);

  // Value: tokens of the usage events, grouped by the period they arrived in.
  const ev = await P.db.query(
    `SELECT prompt_tokens, completion_tokens, (extract(epoch FROM created_at) * 1000000)::bigint AS t, billed_in
       FROM usage_events WHERE endpoint_id = $1`, [valueId]);
  assert.equal(ev.rows.length, 6);
  const vwant = new Map();
  const Pus = BigInt(PERIOD_S) * 1000000n;
  for (const e of ev.rows) {
    const ps = (BigInt(e.t) / Pus) * Pus;
    const w = vwant.get(ps) ?? { pt: 0n, ct: 0n };
    vwant.set(ps, { pt: w.pt + BigInt(e.prompt_tokens), ct: w.ct + BigInt(e.completion_tokens) });
  }
  const vgot = await P.db.query(
    `SELECT amount_micros, quantity, (extract(epoch FROM period_start) * 1000000)::bigint AS ps
       FROM ledger_entries WHERE endpoint_id = $1 AND kind = 'usage_value'`, [valueId]);
  let vq = 0n;
  let vamount = 0n;
  for (const g of vgot.rows) { vq += BigInt(g.quantity); vamount += BigInt(g.amount_micros); }
  // A period is priced at the model's price version in force at its start.
  const versions = (await P.db.query(
    `SELECT (extract(epoch FROM mp.effective_at) * 1000000)::bigint AS at,
            mp.input_price_micros_per_mtok AS pin, mp.output_price_micros_per_mtok AS pout
       FROM model_prices mp JOIN models m ON m.id = mp.model_id WHERE m.name = 'demo-tiny'
      ORDER BY mp.effective_at`)).rows;
  assert.equal(versions.length, 2, 'the price change was versioned');
  assert.equal(BigInt(versions[1].pin), BigInt(IN_PRICE));
  let wq = 0n;
  let wamount = 0n;
  for (const [ps, w] of vwant) {
    const v = versions.filter((x) => BigInt(x.at) <= ps).pop();
    wq += w.pt + w.ct;
    wamount += ceilDiv(w.pt * BigInt(v.pin) + w.ct * BigInt(v.pout), 1000000n);
  }
  assert.equal(vq, wq, 'every token billed once');
  assert.equal(-vamount, wamount, 'value charges at the versioned prices');
  // The client saw the same tokens the ledger charged.
  const clientTokens = usages.filter((_, i) => i % 2 === 0).reduce((a, u) => a + u.total_tokens, 0);
  assert.equal(Number(wq), clientTokens);

  // The balance is the sum of the ledger, and the API says the same.
  const sum = await P.db.query(
    "SELECT sum(amount_micros)::bigint AS s FROM ledger_entries WHERE account_id = (SELECT account_id FROM endpoints WHERE id = $1)", [timeId]);
  const bal = await P.api('GET', '/v1/billing/balance');
  assert.equal(bal.status, 200);
  assert.equal(BigInt(bal.json.balance_micros), BigInt(sum.rows[0].s));
  assert.ok(bal.json.balance_micros < 100000000, 'something was charged');
  assert.match(bal.json.balance_display, /^-?\d+\.\d{6} USD$/);

  // Usage by minute and the ledger, as the account reads them.
  const u = await P.api('GET', '/v1/billing/usage?granularity=minute');
  assert.equal(u.status, 200);
  assert.ok(u.json.data.some((r) => r.kind === 'usage_time' && r.endpoint === 'timed'));
  assert.ok(u.json.data.some((r) => r.kind === 'usage_value' && r.endpoint === 'metered'));
  const page1 = await P.api('GET', '/v1/billing/ledger?limit=2');
  assert.equal(page1.json.data.length, 2);
  assert.equal(page1.json.has_more, true);
  const page2 = await P.api('GET', `/v1/billing/ledger?limit=200&starting_after=${page1.json.next_starting_after}`);
  const all = (await P.db.query('SELECT count(*)::int AS n FROM ledger_entries WHERE account_id = (SELECT account_id FROM endpoints WHERE id = $1)', [timeId])).rows[0].n;
  assert.equal(page1.json.data.length + page2.json.data.length, all);
  assert.equal((await P.api('GET', '/v1/billing/ledger?limit=0')).status, 400);
});

test('the ledger is append-only', async () => {
  await assert.rejects(P.db.query('UPDATE ledger_entries SET amount_micros = 0'), /append-only/);
  await assert.rejects(P.db.query('DELETE FROM ledger_entries'), /append-only/);
});

test('credits are idempotent, and an account with nothing left gets 402', async () => {
  const key = P.newAccountKey('poor@example.com');
  const acct = (await P.db.query("SELECT account_id FROM users WHERE email = 'poor@example.com'")).rows[0].account_id;
  // Spend the initial credit entirely (an operator adjustment, written as a new entry).
  await P.db.query(
    "INSERT INTO ledger_entries (account_id, amount_micros, kind, idempotency_key) SELECT $1, -sum(amount_micros), 'adjustment', 'test-drain' FROM ledger_entries WHERE account_id = $1",
    [acct]);
  const r = await P.api('POST', '/v1/endpoints', { key, body: { name: 'x', model: 'demo-tiny' } });
  assert.equal(r.status, 402);
  assert.equal(r.json.error.code, 'insufficient_balance');

  const body = { amount_micros: 5000000, idempotency_key: 'topup-1', memo: 'card' };
  const c1 = await P.api('POST', `/v1/admin/accounts/${acct}/credits`, { body });
  assert.equal(c1.status, 201);
  const c2 = await P.api('POST', `/v1/admin/accounts/${acct}/credits`, { body });
  assert.equal(c2.status, 200);
  assert.equal(c2.json.id, c1.json.id);
  assert.equal(c2.json.replayed, true);
  const c3 = await P.api('POST', `/v1/admin/accounts/${acct}/credits`, { body: { ...body, amount_micros: 7 } });
  assert.equal(c3.status, 409);
  assert.equal((await P.api('POST', '/v1/admin/accounts/999999/credits', { body })).status, 404);
  assert.equal((await P.api('POST', `/v1/admin/accounts/${acct}/credits`, { body: { ...body, amount_micros: -5 } })).status, 400);
  const bal = await P.api('GET', '/v1/billing/balance', { key });
  assert.equal(bal.json.balance_micros, 5000000);
  assert.equal(bal.json.balance_display, '5.000000 USD');

  // With credit it can deploy; drained again, the gateway refuses its requests with 402.
  await P.deploy.call({ ...P, adminKey: key, api: (m, p, o = {}) => P.api(m, p, { key, ...o }) }, 'poor-ep');
  await P.db.query(
    "INSERT INTO ledger_entries (account_id, amount_micros, kind, idempotency_key) SELECT $1, -sum(amount_micros), 'adjustment', 'test-drain-2' FROM ledger_entries WHERE account_id = $1",
    [acct]);
  const poor = new OpenAI({ apiKey: key, baseURL: P.gatewayUrl, maxRetries: 0 });
  await assert.rejects(poor.chat.completions.create({ model: 'poor-ep', messages: [{ role: 'user', content: 'hi' }] }),
    (e) => e.status === 402 && e.code === 'insufficient_balance');
});

test('the monthly statement adds up to the balance, in JSON and CSV', async () => {
  const month = new Date().toISOString().slice(0, 7);
  const bal = (await P.api('GET', '/v1/billing/balance')).json.balance_micros;
  const s = await P.api('GET', `/v1/billing/statements/${month}`);
  assert.equal(s.status, 200);
  assert.equal(s.json.month, month);
  assert.equal(s.json.opening_balance_micros, 0);
  assert.equal(s.json.closing_balance_micros, bal);
  const sum = s.json.lines.reduce((a, l) => a + l.amount_micros, 0);
  assert.equal(s.json.opening_balance_micros + sum, s.json.closing_balance_micros);
  const kinds = new Set(s.json.lines.map((l) => l.kind));
  for (const k of ['credit', 'usage_time', 'usage_value']) assert.ok(kinds.has(k), `a ${k} line`);
  const timed = s.json.lines.find((l) => l.kind === 'usage_time');
  assert.equal(timed.endpoint, 'timed');
  assert.equal(timed.unit, 'device_ms');

  const res = await fetch(`${P.apiUrl}/v1/billing/statements/${month}?format=csv`, { headers: { Authorization: `Bearer ${P.adminKey}` } });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/csv/);
  assert.match(res.headers.get('content-disposition'), new RegExp(`statement-${month}\\.csv`));
  const rows = (await res.text()).trim().split('\r\n').map((l) => l.split(','));
  assert.deepEqual(rows[0].slice(0, 4), ['month', 'endpoint', 'endpoint_id', 'kind']);
  const closing = rows.find((r) => r[3] === 'closing_balance');
  assert.equal(Number(closing[7]), bal);
  assert.equal(rows.length, s.json.lines.length + 3);

  assert.equal((await P.api('GET', '/v1/billing/statements/2026-13')).status, 404);
  assert.equal((await P.api('GET', '/v1/billing/statements/last-month')).status, 404);
  assert.equal((await P.api('GET', `/v1/billing/statements/${month}?format=xml`)).status, 400);
  // A month with nothing in it: an empty statement, balances carried.
  const empty = await P.api('GET', '/v1/billing/statements/2031-01');
  assert.equal(empty.json.lines.length, 0);
  assert.equal(empty.json.opening_balance_micros, bal);
});

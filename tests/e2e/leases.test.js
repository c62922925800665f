// Balance leases (issue 7): value-billed requests are admitted against a lease on the account's
// balance, each by its maximum cost, so that concurrent requests can never overspend it. An
// account whose balance covers exactly N requests of a known maximum cost sends 1,000 at once:
// exactly N are admitted and the rest get 402; once metered, the balance is not below zero, and
// the gateway's holds are gone afterwards. Time-billed endpoints keep the balance > 0 rule.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Platform, bin, freePort, sleep, waitFor } from './harness.js';

const P = new Platform();
// Input free and output a whole number of micro-units per token, with exactly one completion
// token per request (max_tokens 1, ignore_eos): a request's maximum cost is its actual cost, so
// "covers exactly N" does not depend on which requests were already metered when others came.
const IN_PRICE = 0; // micros per million input tokens
const OUT_PRICE = 7000000; // micros per million output tokens
const N = 100;
const TOTAL = 1000;
let acct;
let valueId;

before(async () => {
  await P.start({
    cpuSlots: 2,
    controllerArgs: ['--billing-period-s', '1', '--per-ip-connections', '0', '--lease-ttl-s', '5'],
  });
  // Prices first (versioned by the database), so that every period of the test is priced at them.
  await P.db.query(
    "UPDATE models SET input_price_micros_per_mtok = $1, output_price_micros_per_mtok = $2 WHERE name = 'demo-tiny'",
    [IN_PRICE, OUT_PRICE]);
  valueId = await P.deploy('metered', { billing_mode: 'value' });
  acct = (await P.db.query('SELECT account_id FROM endpoints WHERE id = $1', [valueId])).rows[0].account_id;
  const q = await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, {
    body: { requests_per_min: 1000000, requests_burst: 100000 },
  });
  assert.equal(q.status, 200, q.text);
  // The gateway caches a key's account and limits for up to a second (docs/architecture.md):
  // the burst below must meet the raised request limit, not the default one.
  await sleep(1500);
}, { timeout: 180000 });

after(async () => {
  if (process.exitCode) console.error(P.log('controller').slice(-4000));
  await P.stop();
});

const balance = async (a) => BigInt((await P.db.query(
  'SELECT COALESCE(sum(amount_micros), 0)::bigint AS s FROM ledger_entries WHERE account_id = $1', [a])).rows[0].s);

async function post(key, body, url = P.gatewayUrl) {
  const res = await fetch(`${url}/chat/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' }, body,
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text };
}

test('a balance that covers N requests admits exactly N of 1,000 concurrent ones', { timeout: 180000 }, async () => {
  const body = JSON.stringify({ model: 'metered', messages: [{ role: 'user', content: 'hello' }], max_tokens: 1, ignore_eos: true });
  // The maximum: every body byte a prompt token, max_tokens completion tokens, rounded up.
  const bytes = BigInt(Buffer.byteLength(body));
  const M = (bytes * BigInt(IN_PRICE) + 1n * BigInt(OUT_PRICE) + 999999n) / 1000000n;
  assert.equal(M, 7n);
  // Set the balance to exactly N × M (an operator adjustment, a new ledger entry).
  await P.db.query(
    "INSERT INTO ledger_entries (account_id, amount_micros, kind, idempotency_key) VALUES ($1, $2, 'adjustment', 'lease-test')",
    [acct, (BigInt(N) * M - await balance(acct)).toString()]);
  assert.equal(await balance(acct), BigInt(N) * M);

  const results = await Promise.all([...Array(TOTAL).keys()].map(() => post(P.adminKey, body)));
  const by = {};
  for (const r of results) by[r.status] = (by[r.status] ?? 0) + 1;
  assert.equal(by[200], N, JSON.stringify(by));
  assert.equal(by[402], TOTAL - N, JSON.stringify(by));
  const refused = results.find((r) => r.status === 402).json.error;
  assert.equal(refused.code, 'insufficient_balance', JSON.stringify(refused));
  assert.match(refused.message, /balance cannot cover this request/);

  // Metering closes the periods: every admitted request is billed, the balance is not below zero.
  await waitFor('every usage event billed', async () => {
    const r = await P.db.query(
      'SELECT count(*)::int AS n, count(billed_in)::int AS b FROM usage_events WHERE endpoint_id = $1', [valueId]);
    return r.rows[0].n === N && r.rows[0].b === N;
  }, 60000, 250);
  const left = await balance(acct);
  assert.ok(left >= 0n, `balance ${left} after metering`);
  const charged = BigInt((await P.db.query(
    "SELECT COALESCE(-sum(amount_micros), 0)::bigint AS s FROM ledger_entries WHERE endpoint_id = $1 AND kind = 'usage_value'",
    [valueId])).rows[0].s);
  assert.ok(charged > 0n && charged <= BigInt(N) * M, `charged ${charged}`);
  assert.equal(left, BigInt(N) * M - charged, `balance ${left}, charged ${charged}`);

  // The gateway lets go of its hold once nothing is pending (or it lapses after --lease-ttl-s).
  await waitFor('no live hold', async () => (await P.db.query(
    'SELECT count(*)::int AS n FROM holds WHERE account_id = $1 AND expires_at > now()', [acct])).rows[0].n === 0, 30000, 250);

  // What is left covers only whole requests: one more than that is refused.
  const more = Number(left / M);
  const again = await Promise.all([...Array(more + 3).keys()].map(() => post(P.adminKey, body)));
  assert.equal(again.filter((r) => r.status === 200).length, more, again.map((r) => r.status).join(','));
  assert.equal(again.filter((r) => r.status === 402).length, 3, again.map((r) => `${r.status} ${r.text}`).join('\n'));
});

test('time-billed endpoints are unaffected: balance > 0 admits, no hold is taken', { timeout: 180000 }, async () => {
  const key = P.newAccountKey('timed@example.com');
  const other = (await P.db.query("SELECT account_id FROM users WHERE email = 'timed@example.com'")).rows[0].account_id;
  const r = await P.api('POST', '/v1/endpoints', { key, body: { name: 'timed', model: 'demo-tiny' } });
  assert.equal(r.status, 201, r.text);
  await waitFor('the endpoint to be ready', async () => (await P.api('GET', `/v1/endpoints/${r.json.id}`, { key })).json.status === 'ready', 90000, 300);
  const body = JSON.stringify({ model: 'timed', messages: [{ role: 'user', content: 'hi' }] });
  assert.equal((await post(key, body)).status, 200);
  assert.equal((await P.db.query('SELECT count(*)::int AS n FROM holds WHERE account_id = $1', [other])).rows[0].n, 0);
  // Nothing left: the time-billed rule refuses it (within the 1 s route cache).
  await P.db.query(
    "INSERT INTO ledger_entries (account_id, amount_micros, kind, idempotency_key) SELECT $1, -sum(amount_micros), 'adjustment', 'lease-test-drain' FROM ledger_entries WHERE account_id = $1",
    [other]);
  await waitFor('a 402 for the drained account', async () => (await post(key, body)).status === 402, 10000, 250);
});

test('two more gateways, each with its own lease on one balance, never overspend it', { timeout: 180000 }, async (t) => {
  // Small chunks, so that both hold part of the balance and top up while the burst runs.
  const urls = [];
  for (const name of ['gw-a', 'gw-b']) {
    const port = await freePort();
    P.spawn(name, bin.controller, ['serve', '--database-url', P.dbUrl, '--only', 'gateway',
      '--gateway-port', String(port), '--no-leader', '--per-ip-connections', '0',
      '--billing-period-s', '1', '--lease-ttl-s', '5', '--lease-chunk-micros', '40']);
    const url = `http://127.0.0.1:${port}/v1`;
    await waitFor(`${name} to listen`, async () => {
      try { return (await fetch(`http://127.0.0.1:${port}/healthz`)).status < 500; } catch { return false; }
    }, 20000, 100);
    urls.push(url);
  }
  const body = JSON.stringify({ model: 'metered', messages: [{ role: 'user', content: 'hello' }], max_tokens: 1, ignore_eos: true });
  const M = 7n;
  // Nothing pending from the tests before: every event billed, no live hold.
  await waitFor('a settled account', async () => {
    const u = await P.db.query('SELECT count(*)::int AS n FROM usage_events WHERE billed_in IS NULL');
    const h = await P.db.query('SELECT count(*)::int AS n FROM holds WHERE account_id = $1 AND expires_at > now()', [acct]);
    return u.rows[0].n === 0 && h.rows[0].n === 0;
  }, 30000, 250);
  await P.db.query(
    "INSERT INTO ledger_entries (account_id, amount_micros, kind, idempotency_key) VALUES ($1, $2, 'adjustment', 'lease-test-2')",
    [acct, (BigInt(N) * M - await balance(acct)).toString()]);
  const before = await P.db.query('SELECT count(*)::int AS n FROM usage_events WHERE endpoint_id = $1', [valueId]);
  const results = await Promise.all([...Array(TOTAL).keys()].map((i) => post(P.adminKey, body, urls[i % 2])));
  const ok = results.filter((r) => r.status === 200).length;
  const refused = results.filter((r) => r.status === 402).length;
  assert.equal(ok + refused, TOTAL, results.filter((r) => r.status !== 200 && r.status !== 402).map((r) => r.text).join('\n'));
  t.diagnostic(`admitted ${ok} of ${TOTAL} through two gateways (the balance covers ${N})`);
  // A balance split between leases may strand a little room, but never admits more than it covers.
  assert.ok(ok <= N && ok >= N / 2, `admitted ${ok} of a balance that covers ${N}`);
  await waitFor('every admitted request billed', async () => {
    const r = await P.db.query(
      'SELECT count(*)::int AS n, count(billed_in)::int AS b FROM usage_events WHERE endpoint_id = $1', [valueId]);
    return r.rows[0].n === before.rows[0].n + ok && r.rows[0].b === r.rows[0].n;
  }, 60000, 250);
  assert.ok(await balance(acct) >= 0n);
  await waitFor('no live hold', async () => (await P.db.query(
    'SELECT count(*)::int AS n FROM holds WHERE account_id = $1 AND expires_at > now()', [acct])).rows[0].n === 0, 30000, 250);
});

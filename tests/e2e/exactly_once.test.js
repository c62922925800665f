// Exactly once, across crashes: hundreds of concurrent requests through the gateway, half of
// them streaming, while the controller is SIGKILLed and restarted several times (once with many
// streams open). Afterwards every request a runtime served (its own usage journal is the truth)
// has exactly one usage event with the same token counts, every completion the client received
// matches its event, and the ledger charges exactly the priced usage.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { Platform, bin, sleep, waitFor } from './harness.js';

const PERIOD_S = 2;
const IN_PRICE = 2000000;
const OUT_PRICE = 5000000;
const REQUESTS = 300;
const CONCURRENCY = 60;
const P = new Platform();

before(async () => {
  await P.start({ cpuSlots: 2, controllerArgs: ['--billing-period-s', String(PERIOD_S)] });
  P.run(bin.controller, ['model', 'add', '--name', 'demo-tiny', '--source', P.modelDir,
    '--family', 'llama', '--context', '1024', '--device-kinds', 'cpu',
    '--input-price-micros-per-mtok', String(IN_PRICE),
    '--output-price-micros-per-mtok', String(OUT_PRICE), '--database-url', P.dbUrl]);
  await P.deploy('metered', { billing_mode: 'value', replicas: 2 });
  // This test is about crashes, not rate limits: lift the operator account's.
  const acct = (await P.db.query("SELECT account_id FROM users WHERE email = 'admin@example.com'")).rows[0].account_id;
  const q = await P.api('PUT', `/v1/admin/accounts/${acct}/quotas`, { body: { requests_per_min: 1000000, requests_burst: 100000 } });
  assert.equal(q.status, 200);
}, { timeout: 180000 });

after(async () => {
  if (process.exitCode) console.error(P.log('controller').slice(-4000));
  await P.stop();
});

// The demo model's versioned token prices, as a lookup: period start (us) -> [in, out].
async function pricesAt() {
  const v = await P.db.query(
    `SELECT (extract(epoch FROM mp.effective_at) * 1000000)::bigint AS at,
            mp.input_price_micros_per_mtok AS pin, mp.output_price_micros_per_mtok AS pout
       FROM model_prices mp JOIN models m ON m.id = mp.model_id WHERE m.name = 'demo-tiny'
      ORDER BY mp.effective_at`);
  assert.equal(BigInt(v.rows[v.rows.length - 1].pin), BigInt(IN_PRICE));
  return (ps) => {
    let cur;
    for (const r of v.rows) if (BigInt(r.at) <= ps) cur = r;
    return [BigInt(cur.pin), BigInt(cur.pout)];
  };
}

function journals() {
  const dir = path.join(P.tmp, 'agent', 'replicas');
  const lines = new Map();
  for (const d of fs.readdirSync(dir)) {
    const f = path.join(dir, d, 'usage.jsonl');
    if (!fs.existsSync(f)) continue;
    for (const l of fs.readFileSync(f, 'utf8').split('\n')) {
      if (!l) continue;
      const j = JSON.parse(l);
      if (j.request_id.startsWith('probe-')) continue; // the agent's completion probes: never billed
      assert.ok(!lines.has(j.request_id), `the runtime journaled ${j.request_id} once`);
      lines.set(j.request_id, j);
    }
  }
  return lines;
}

test('no request is lost or billed twice while the controller crashes', { timeout: 300000 }, async () => {
  const client = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0, timeout: 60000 });
  const seen = new Map(); // request id -> usage the client received
  let failed = 0;
  let firstError;
  let served = 0;
  let open = 0;
  let maxOpen = 0;
  let next = 0;
  async function one(i) {
    const args = {
      model: 'metered', messages: [{ role: 'user', content: `request number ${i}` }],
      max_tokens: 20 + (i * 37) % 180, temperature: 0.5, seed: i,
    };
    open++;
    maxOpen = Math.max(maxOpen, open);
    try {
      if (i % 2) {
        const s = await client.chat.completions.create({ ...args, stream: true, stream_options: { include_usage: true } });
        let id;
        let usage;
        for await (const ch of s) { id = ch.id; if (ch.usage) usage = ch.usage; }
        if (usage) seen.set(id.replace(/^chatcmpl-/, ''), usage);
        if (usage) served++;
      } else {
        const c = await client.chat.completions.create(args);
        seen.set(c.id.replace(/^chatcmpl-/, ''), c.usage);
        served++;
      }
    } catch (e) {
      if (!failed) firstError = e;
      failed++; // the controller died under it, or was down when it started
      // Do not burn through the workload while it is down: wait for it to come back.
      await waitFor('the controller', async () => (await fetch(`${P.apiUrl}/healthz`).catch(() => ({}))).ok, 20000, 100);
    } finally {
      open--;
    }
  }
  async function worker() {
    while (next < REQUESTS) {
      const i = next++;
      await one(i);
    }
  }
  const crashes = (async () => {
    for (let k = 0; k < 3; k++) {
      // Crash while it serves, with many requests open (they queue at the runtimes).
      const servedBefore = served;
      await waitFor('streams to pile up', async () =>
        (served >= servedBefore + 20 && open >= 50) || next >= REQUESTS, 60000, 20);
      if (next >= REQUESTS && open === 0) break;
      const openAtKill = open;
      await P.killController();
      if (k === 0) assert.ok(openAtKill >= 50, `${openAtKill} requests open at the first crash`);
      await sleep(300);
      await P.startController();
    }
  })();
  await Promise.all([...Array(CONCURRENCY)].map(worker));
  await crashes;
  assert.ok(seen.size > REQUESTS / 4, `${seen.size} completions received, ${failed} failed; first: ${firstError?.stack}`);
  assert.ok(failed > 0, 'the crashes cut some requests off');

  // Everything the runtimes served reaches PostgreSQL, once.
  let lines;
  await waitFor('every journaled request to be stored', async () => {
    lines = journals();
    const n = (await P.db.query("SELECT count(*)::int AS n FROM usage_events")).rows[0].n;
    return n === lines.size;
  }, 60000, 500);
  const ev = await P.db.query('SELECT request_id, prompt_tokens, completion_tokens, finish_reason FROM usage_events');
  const byId = new Map(ev.rows.map((r) => [r.request_id, r]));
  for (const [rid, j] of lines) {
    const e = byId.get(rid);
    assert.ok(e, `usage of ${rid} stored`);
    assert.equal(e.prompt_tokens, j.prompt_tokens);
    assert.equal(e.completion_tokens, j.completion_tokens);
  }
  assert.ok([...lines.values()].some((j) => j.finish_reason === 'cancelled'), 'some streams were cut mid-way and still metered');
  for (const [rid, u] of seen) {
    const e = byId.get(rid);
    assert.ok(e, `the completion ${rid} the client received was metered`);
    assert.equal(e.prompt_tokens, u.prompt_tokens);
    assert.equal(e.completion_tokens, u.completion_tokens);
  }

  // And charged exactly: all of it, once, at the prices.
  await waitFor('every usage event billed', async () =>
    (await P.db.query('SELECT count(*)::int AS n FROM usage_events WHERE billed_in IS NULL')).rows[0].n === 0,
  30000, 500);
  const Pus = BigInt(PERIOD_S) * 1000000n;
  const periods = new Map();
  const rows = await P.db.query(
    'SELECT prompt_tokens, completion_tokens, (extract(epoch FROM created_at) * 1000000)::bigint AS t FROM usage_events');
  for (const r of rows.rows) {
    const ps = (BigInt(r.t) / Pus) * Pus;
    const w = periods.get(ps) ?? { pt: 0n, ct: 0n };
    periods.set(ps, { pt: w.pt + BigInt(r.prompt_tokens), ct: w.ct + BigInt(r.completion_tokens) });
  }
  // The price of a period is the model's price version in force at the period's start.
  const prices = await pricesAt();
  let want = 0n;
  for (const [ps, w] of periods) {
    const [pin, pout] = prices(ps);
    want += (w.pt * pin + w.ct * pout + 999999n) / 1000000n;
  }
  assert.ok(want > 0n);
  const got = await P.db.query("SELECT -sum(amount_micros)::bigint AS s, count(*)::int AS n FROM ledger_entries WHERE kind = 'usage_value'");
  if (BigInt(got.rows[0].s) !== want) {
    const entries = await P.db.query(
      "SELECT idempotency_key, amount_micros, quantity, memo, (extract(epoch FROM period_start) * 1000000)::bigint AS ps FROM ledger_entries WHERE kind = 'usage_value' ORDER BY id");
    console.log('# periods:', JSON.stringify([...periods].map(([k, v]) => [String(k), String(v.pt), String(v.ct)])));
    console.log('# entries:', JSON.stringify(entries.rows));
  }
  assert.equal(BigInt(got.rows[0].s), want, `ledger charges ${got.rows[0].s}, priced usage ${want}`);
  // One entry per period with usage (plus any late ones, which carry their own key).
  const onTime = await P.db.query("SELECT count(*)::int AS n FROM ledger_entries WHERE kind = 'usage_value' AND idempotency_key NOT LIKE '%:late:%'");
  assert.equal(onTime.rows[0].n, periods.size);
  console.log(`# ${REQUESTS} requests, ${seen.size} completed, ${failed} cut off, ${lines.size} metered, max ${maxOpen} open, ${got.rows[0].n} ledger entries over ${periods.size} periods`);
});

// Exactly once, across crashes: 1,000 concurrent requests through the gateway, half of them
// streaming, while the controller is SIGKILLed and restarted several times (once with at least 50
// streams open mid-way, some of them read slowly); a request cut off by a crash is sent again, as a client would. Afterwards every
// request a runtime served (its own usage journal is the truth) has exactly one usage event with
// the same token counts, every completion the client received matches its event, the ledger
// charges exactly the priced usage, and a time-billed endpoint running through it all is billed
// the ready time its runtime's own log shows (± 1 s).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { Platform, sleep, waitFor } from './harness.js';

const PERIOD_S = 2;
const IN_PRICE = 2000000;
const OUT_PRICE = 5000000;
const REQUESTS = 1000; // all sent at once
const CRASHES = 3;
const P = new Platform();

before(async () => {
  // No per-address connection limit: the test is one client address holding 1,000 requests.
  // Heartbeats every 200 ms: the agent's report of ready and of stopped is what the billed ready
  // time starts and ends with, and the runtime's own log is compared with it (± 1 s).
  await P.start({ cpuSlots: 3, controllerArgs: ['--billing-period-s', String(PERIOD_S), '--per-ip-connections', '0', '--hold-s', '120', '--heartbeat-ms', '200'] });
  P.priceDemoModel(IN_PRICE, OUT_PRICE);
  await P.deploy('metered', { billing_mode: 'value', replicas: 2 });
  await P.deploy('timed', { billing_mode: 'time', replicas: 1 });
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
  const client = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0, timeout: 120000 });
  const seen = new Map(); // request id -> usage the client received
  let failed = 0;
  let firstError;
  let served = 0;
  let open = 0;
  let streamsOpen = 0; // streaming requests sent and not ended (at a runtime, or waiting for one)
  let streamsFlowing = 0; // of those, the ones whose first event has arrived
  let maxOpen = 0;
  let done = 0;
  async function attempt(i) {
    const args = {
      model: 'metered', messages: [{ role: 'user', content: `request number ${i}` }],
      max_tokens: 4 + (i * 7) % 13, temperature: 0.5, seed: i,
    };
    // One stream in ten is long, so that crashes find runtimes generating for streams that then
    // lose their client: the runtime must meter those as cancelled.
    if (i % 10 === 3) Object.assign(args, { max_tokens: 200, ignore_eos: true });
    if (i % 2) {
      let id;
      let usage;
      let flowing = false;
      streamsOpen++;
      try {
        const s = await client.chat.completions.create({ ...args, stream: true, stream_options: { include_usage: true } });
        for await (const ch of s) {
          if (!flowing) {
            flowing = true;
            streamsFlowing++;
            // A quarter of the clients read slowly: their streams stay open mid-way at the
            // gateway (the runtime may be done) when the controller dies under them.
            if (i % 4 === 1) await sleep(1500);
          }
          id = ch.id;
          if (ch.usage) usage = ch.usage;
        }
      } finally {
        streamsOpen--;
        if (flowing) streamsFlowing--;
      }
      if (!usage) throw new Error('the stream ended without its usage');
      seen.set(id.replace(/^chatcmpl-/, ''), usage);
    } else {
      const c = await client.chat.completions.create(args);
      seen.set(c.id.replace(/^chatcmpl-/, ''), c.usage);
    }
    served++;
  }
  // One logical request: sent again (a new request id) when a crash cuts it off.
  async function one(i) {
    open++;
    maxOpen = Math.max(maxOpen, open);
    try {
      for (let tries = 0; tries < 10; tries++) {
        try {
          await attempt(i);
          return;
        } catch (e) {
          if (!failed) firstError = e;
          failed++; // the controller died under it, or was down when it started
          await waitFor('the controller', async () => (await fetch(`${P.apiUrl}/healthz`).catch(() => ({}))).ok, 30000, 100);
        }
      }
    } finally {
      open--;
      done++;
    }
  }
  let streamsAtFirstKill = 0;
  let flowingAtFirstKill = 0;
  const crashes = (async () => {
    for (let k = 0; k < CRASHES; k++) {
      // Crash while it serves, with many streams open.
      const servedBefore = served;
      await waitFor('streams to pile up', async () =>
        (served >= servedBefore + 50 && streamsFlowing >= 50) || done === REQUESTS, 120000, 5);
      if (done === REQUESTS) break;
      if (k === 0) { streamsAtFirstKill = streamsOpen; flowingAtFirstKill = streamsFlowing; }
      await P.killController();
      await sleep(300);
      await P.startController();
    }
  })();
  await Promise.all([...Array(REQUESTS).keys()].map(one));
  await crashes;
  assert.ok(flowingAtFirstKill >= 50, `${flowingAtFirstKill} streams open mid-way at the first crash`);
  assert.equal(served, REQUESTS, `${served} of ${REQUESTS} served, ${failed} attempts failed; first: ${firstError?.stack}`);
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
  console.log(`# ${REQUESTS} requests, ${seen.size} completed, ${failed} cut off, ${lines.size} metered, max ${maxOpen} open, ${streamsAtFirstKill} streams open at the first crash (${flowingAtFirstKill} of them mid-way), ${got.rows[0].n} ledger entries over ${periods.size} periods`);
});

// The runtime's own log says when it became ready ("model … ready in") and when it was told to
// stop ("signal 15: stopping"); the ready seconds billed for its replica must match (± 1 s: the
// agent's probe and heartbeat lie between the two clocks).
test('billed ready seconds match the ready interval in the runtime\'s own log', { timeout: 120000 }, async () => {
  const ep = (await P.db.query("SELECT id FROM endpoints WHERE name = 'timed'")).rows[0].id;
  const rep = (await P.db.query('SELECT id, epoch FROM replicas WHERE endpoint_id = $1', [ep])).rows;
  assert.equal(rep.length, 1);
  assert.equal((await P.api('DELETE', `/v1/endpoints/${ep}`)).status, 200);
  const logFile = path.join(P.tmp, 'agent', 'replicas', `${rep[0].id}-${rep[0].epoch}`, 'runtime.log');
  const stamp = (re) => {
    const line = fs.readFileSync(logFile, 'utf8').split('\n').find((l) => re.test(l));
    return line ? Date.parse(line.slice(0, 24)) : undefined;
  };
  await waitFor('the runtime to log its stop', async () => fs.existsSync(logFile) && stamp(/signal [0-9]+: stopping/) !== undefined, 30000);
  const logged = (stamp(/signal [0-9]+: stopping/) - stamp(/model '.*' ready in/)) / 1000;
  // Every interval closed and billed up to its end.
  await waitFor('the ready time billed', async () => (await P.db.query(
    'SELECT count(*)::int AS n FROM ready_intervals WHERE endpoint_id = $1 AND (ended_at IS NULL OR billed_until < ended_at)', [ep])).rows[0].n === 0, 30000, 250);
  const iv = await P.db.query('SELECT count(*)::int AS n FROM ready_intervals WHERE endpoint_id = $1', [ep]);
  assert.equal(iv.rows[0].n, 1, 'one ready interval, unbroken by the controller\'s crashes');
  const billed = await P.db.query(
    "SELECT COALESCE(sum(quantity), 0)::bigint AS ms FROM ledger_entries WHERE endpoint_id = $1 AND kind = 'usage_time'", [ep]);
  const billedS = Number(billed.rows[0].ms) / 1000;
  console.log(`# ready ${logged.toFixed(3)} s in the runtime's log, ${billedS.toFixed(3)} s billed`);
  assert.ok(Math.abs(billedS - logged) <= 1, `billed ${billedS} s, the runtime's log says ${logged} s`);
});

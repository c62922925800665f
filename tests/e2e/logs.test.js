// Endpoint logs, end to end: the runtime's stderr (its log) goes to runtime.log on the agent, the
// agent ships new lines with its heartbeats, the controller keeps the last lines per replica in
// PostgreSQL and streams them as server-sent events on GET /v1/endpoints/{id}/logs. We deploy,
// read the runtime's start-up lines from the stream, make a request so the runtime logs more,
// resume with Last-Event-ID and get only the newer lines, and check that another account (by key
// or by the console's session cookie) gets a 404 and that bad parameters get a 400.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Platform, waitFor } from './harness.js';

const P = new Platform();
let epId;

before(async () => {
  await P.start({ cpuSlots: 2 });
  epId = await P.deploy('logs-ep');
}, { timeout: 120000 });

after(async () => {
  if (process.exitCode) console.error(P.log('controller').slice(-4000));
  await P.stop();
});

// Opens the stream and collects events until stop(events) says so (or timeoutMs passes). Returns
// { status, headers, events, comments, text }.
async function readStream(path, { headers = {}, stop = () => false, timeoutMs = 15000 } = {}) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  const res = await fetch(`${P.apiUrl}${path}`, {
    headers: { Authorization: `Bearer ${P.adminKey}`, ...headers }, signal: ac.signal,
  });
  const out = { status: res.status, headers: res.headers, events: [], comments: [], text: '' };
  if (res.status !== 200) {
    out.text = await res.text();
    clearTimeout(timer);
    return out;
  }
  const dec = new TextDecoder();
  let pending = '';
  try {
    for await (const chunk of res.body) {
      pending += dec.decode(chunk, { stream: true });
      let k;
      while ((k = pending.indexOf('\n\n')) >= 0) {
        const block = pending.slice(0, k);
        pending = pending.slice(k + 2);
        if (block.startsWith(':')) { out.comments.push(block); continue; }
        const ev = {};
        for (const line of block.split('\n')) {
          const c = line.indexOf(': ');
          ev[line.slice(0, c)] = line.slice(c + 2);
        }
        out.events.push({ id: Number(ev.id), event: ev.event, data: JSON.parse(ev.data), rawId: ev.id });
      }
      if (stop(out.events)) break;
    }
  } catch (e) {
    if (e.name !== 'AbortError') throw e;
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  return out;
}

function checkEvents(events) {
  let prev = 0;
  for (const e of events) {
    assert.equal(e.event, 'log');
    assert.match(e.rawId, /^\d+$/);
    assert.ok(e.id > prev, `ids increase (${e.id} after ${prev})`);
    prev = e.id;
    assert.deepEqual(Object.keys(e.data).sort(), ['line', 'replica_id', 'stream', 'time']);
    assert.match(e.data.replica_id, /^[0-9a-f-]{36}$/);
    assert.ok(['stdout', 'stderr'].includes(e.data.stream));
    assert.match(e.data.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(typeof e.data.line, 'string');
  }
}

test('the stream shows the runtime start-up lines, resumes after Last-Event-ID, follows new lines', { timeout: 90000 }, async () => {
  const first = await readStream(`/v1/endpoints/${epId}/logs`, {
    stop: (ev) => ev.some((e) => /listening on .*serving 'logs-ep'/.test(e.data.line)),
  });
  assert.equal(first.status, 200, first.text);
  assert.match(first.headers.get('content-type'), /^text\/event-stream/);
  checkEvents(first.events);
  const lines = first.events.map((e) => e.data.line);
  assert.ok(lines.some((l) => /loading the model from /.test(l)), lines.join('\n'));
  assert.ok(lines.some((l) => /listening on .*serving 'logs-ep'/.test(l)), lines.join('\n'));
  assert.ok(first.events.every((e) => e.data.stream === 'stderr'), 'the runtime logs to stderr');
  const replicaId = first.events[0].data.replica_id;
  const rep = await P.db.query('SELECT endpoint_id FROM replicas WHERE id = $1', [replicaId]);
  assert.equal(rep.rows[0].endpoint_id, epId);
  const lastSeen = first.events.at(-1).id;

  // The runtime logs each completion: a new line after the ones we saw.
  const chat = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${P.adminKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'logs-ep', messages: [{ role: 'user', content: 'hello logs' }], max_tokens: 4 }),
  });
  assert.equal(chat.status, 200);

  const resumed = await readStream(`/v1/endpoints/${epId}/logs`, {
    headers: { 'Last-Event-ID': String(lastSeen) },
    stop: (ev) => ev.some((e) => /chat completion: \d+ prompt \+ \d+ completion tokens/.test(e.data.line)),
  });
  assert.equal(resumed.status, 200, resumed.text);
  checkEvents(resumed.events);
  assert.ok(resumed.events.length > 0);
  assert.ok(resumed.events.every((e) => e.id > lastSeen), 'only lines after Last-Event-ID');
  assert.ok(resumed.events.some((e) => /chat completion: /.test(e.data.line)),
    resumed.events.map((e) => e.data.line).join('\n'));
  assert.ok(!resumed.events.some((e) => /loading the model from /.test(e.data.line)), 'no old lines again');

  // ?after= does the same as the header; ?tail=N gives the last N; ?replica= filters.
  const viaQuery = await readStream(`/v1/endpoints/${epId}/logs?after=${lastSeen}`, { stop: (ev) => ev.length > 0 });
  assert.equal(viaQuery.events[0].id, resumed.events[0].id);
  const all = await P.db.query('SELECT id FROM replica_logs WHERE endpoint_id = $1 ORDER BY id', [epId]);
  const tail2 = await readStream(`/v1/endpoints/${epId}/logs?tail=2`, { stop: (ev) => ev.length >= 2, timeoutMs: 3000 });
  assert.deepEqual(tail2.events.map((e) => e.id), all.rows.slice(-2).map((r) => Number(r.id)));
  const other = '00000000-0000-4000-8000-000000000000';
  const filtered = await readStream(`/v1/endpoints/${epId}/logs?replica=${other}`, { timeoutMs: 2000 });
  assert.equal(filtered.status, 200);
  assert.equal(filtered.events.length, 0, 'no line of another replica');

  // Stored once per position: the agent's resends (and restarts) add no duplicates.
  const dup = await P.db.query(
    'SELECT count(*)::int AS n, count(DISTINCT (replica_id, epoch, stream, pos))::int AS d FROM replica_logs');
  assert.equal(dup.rows[0].n, dup.rows[0].d);
});

test('a live stream receives lines as they arrive', { timeout: 60000 }, async () => {
  const streaming = readStream(`/v1/endpoints/${epId}/logs?tail=1`, {
    stop: (ev) => ev.some((e) => /chat completion: 5 prompt|chat completion: \d+ prompt \+ 3 completion/.test(e.data.line)),
    timeoutMs: 20000,
  });
  await new Promise((r) => setTimeout(r, 1000));
  const chat = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${P.adminKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'logs-ep', messages: [{ role: 'user', content: 'live' }], max_tokens: 3, ignore_eos: true }),
  });
  assert.equal(chat.status, 200);
  const got = await streaming;
  assert.equal(got.status, 200);
  checkEvents(got.events);
  assert.ok(got.events.some((e) => /\+ 3 completion tokens/.test(e.data.line)),
    got.events.map((e) => e.data.line).join('\n'));
});

test('a `: keepalive` comment every 15 s', { timeout: 40000 }, async () => {
  const t0 = Date.now();
  const got = await readStream(`/v1/endpoints/${epId}/logs?tail=1`, { timeoutMs: 17000, stop: () => false });
  assert.equal(got.status, 200);
  assert.ok(got.comments.includes(': keepalive'), JSON.stringify(got.comments));
  assert.ok(Date.now() - t0 >= 15000);
});

test('another account gets 404, by key and by session cookie; bad parameters get 400', { timeout: 30000 }, async () => {
  const otherKey = P.newAccountKey('logs-other@example.com');
  const byKey = await fetch(`${P.apiUrl}/v1/endpoints/${epId}/logs`, { headers: { Authorization: `Bearer ${otherKey}` } });
  assert.equal(byKey.status, 404);
  const body = await byKey.json();
  assert.equal(body.error.code, 'endpoint_not_found');
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);

  const signup = await fetch(`${P.apiUrl}/v1/auth/signup`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email: 'logs-cookie@example.com', password: 'correct horse battery', account_name: 'cookie' }),
  });
  assert.equal(signup.status, 201, await signup.clone().text());
  const cookie = signup.headers.get('set-cookie').split(';')[0];
  const byCookie = await fetch(`${P.apiUrl}/v1/endpoints/${epId}/logs`, { headers: { Cookie: cookie } });
  assert.equal(byCookie.status, 404, 'the cookie authenticates (no 401) but the endpoint is not theirs');

  const none = await fetch(`${P.apiUrl}/v1/endpoints/${epId}/logs`);
  assert.equal(none.status, 401);
  for (const [q, h, param] of [['?after=abc', {}, 'after'], ['?after=-1', {}, 'after'], ['?tail=0', {}, 'tail'],
    ['?tail=2001', {}, 'tail'], ['?replica=nope', {}, 'replica'], ['', { 'Last-Event-ID': 'x1' }, 'Last-Event-ID']]) {
    const r = await fetch(`${P.apiUrl}/v1/endpoints/${epId}/logs${q}`, { headers: { Authorization: `Bearer ${P.adminKey}`, ...h } });
    assert.equal(r.status, 400, q);
    assert.equal((await r.json()).error.param, param);
  }
  const missing = await fetch(`${P.apiUrl}/v1/endpoints/not-a-uuid/logs`, { headers: { Authorization: `Bearer ${P.adminKey}` } });
  assert.equal(missing.status, 404);
});

test('at most 8 log streams per account: the ninth gets 429', { timeout: 60000 }, async () => {
  // The streams the tests above closed are noticed within a poll (the controller peeks at the
  // suspended connection's socket), so all 8 places are free again.
  await new Promise((r) => setTimeout(r, 1500));
  const acs = [];
  const open = [];
  for (let i = 0; i < 8; i++) {
    const ac = new AbortController();
    acs.push(ac);
    const r = await fetch(`${P.apiUrl}/v1/endpoints/${epId}/logs?tail=1`, { headers: { Authorization: `Bearer ${P.adminKey}` }, signal: ac.signal });
    assert.equal(r.status, 200);
    open.push(r);
  }
  const ninth = await fetch(`${P.apiUrl}/v1/endpoints/${epId}/logs`, { headers: { Authorization: `Bearer ${P.adminKey}` } });
  assert.equal(ninth.status, 429);
  assert.equal((await ninth.json()).error.code, 'too_many_log_streams');
  for (const ac of acs) ac.abort();
  // Closed streams are noticed and their places freed.
  await waitFor('a stream place to be free again', async () => {
    const r = await fetch(`${P.apiUrl}/v1/endpoints/${epId}/logs?tail=1`, { headers: { Authorization: `Bearer ${P.adminKey}` } });
    const ok = r.status === 200;
    try { await r.body.cancel(); } catch { /* closed */ }
    return ok;
  }, 5000, 300);
});

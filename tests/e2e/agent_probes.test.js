// Readiness means a real completion, end to end: the agent marks a replica ready only after a
// one-token completion through the runtime's OpenAI API succeeded, keeps probing while it runs,
// and a replica that stops answering (SIGSTOP: alive, but mute) is no longer ready — not routed,
// its ready interval (what time billing charges) closed — and is killed and restarted after
// --unready-restart-s. The probes' own usage is never shipped, so nobody is billed for them.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Platform, bin, runtimesUnder, sleep, waitFor } from './harness.js';

const P = new Platform();
let epId;
let stateDir;

before(async () => {
  await P.start({ cpuSlots: 1 });
  // The harness's agent again (same name and state), probing completions every 2 s and restarting
  // a replica that is not ready again within 4 s.
  const first = P.procs.find((p) => p.name === 'agent');
  const args = [...first.spawnargs.slice(1), '--completion-probe-s', '2', '--unready-restart-s', '4'];
  stateDir = args[args.indexOf('--state-dir') + 1];
  const gone = new Promise((r) => first.once('exit', r));
  first.kill('SIGTERM');
  await gone;
  P.spawn('agent-probes', bin.agent, args);
  epId = await P.deploy('probed');
}, { timeout: 120000 });

after(async () => {
  if (process.exitCode) console.error(P.log('agent-probes').slice(-5000));
  await P.stop();
});

const replica = async () => (await P.db.query(
  'SELECT id::text, state, reason, epoch::int AS epoch, restarts FROM replicas WHERE endpoint_id = $1', [epId])).rows[0];

test('ready only after a completion; the probes go on and are never billed', { timeout: 60000 }, async () => {
  const r = await replica();
  assert.equal(r.state, 'ready');
  assert.equal(r.reason, 'completion probe passed');
  const [pid] = runtimesUnder(stateDir);
  const journal = `${stateDir}/replicas/${r.id}-${r.epoch}/usage.jsonl`;
  // A few probes later the runtime's journal holds their lines (probe-… ids) …
  const probes = await waitFor('several completion probes', async () => {
    const lines = fs.existsSync(journal) ? fs.readFileSync(journal, 'utf8').trim().split('\n') : [];
    const ids = lines.filter(Boolean).map((l) => JSON.parse(l).request_id).filter((id) => id.startsWith('probe-'));
    return ids.length >= 3 ? ids : false;
  }, 20000, 500);
  assert.deepEqual(runtimesUnder(stateDir), [pid], 'probing does not restart anything');
  // … and a customer's request next to them is stored, the probes are not.
  const c = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${P.adminKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'probed', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
  });
  assert.equal(c.status, 200);
  const rid = (await c.json()).id.replace(/^chatcmpl-/, '');
  await waitFor('the request\'s usage', async () =>
    (await P.db.query('SELECT 1 FROM usage_events WHERE request_id = $1', [rid])).rows.length === 1, 15000);
  const billed = await P.db.query("SELECT count(*)::int AS n FROM usage_events WHERE request_id LIKE 'probe-%'");
  assert.equal(billed.rows[0].n, 0, `none of ${probes.length} probes is stored as usage`);
});

test('a replica that stops answering is no longer ready (nor billed), then restarted', { timeout: 90000 }, async () => {
  const before = await replica();
  const [pid] = runtimesUnder(stateDir);
  process.kill(pid, 'SIGSTOP');
  const unready = await waitFor('the replica to be no longer ready', async () => {
    const r = await replica();
    return r.state === 'starting' ? r : false;
  }, 20000, 100);
  assert.match(unready.reason, /^(health check|completion probe) failed \d+ times/);
  const open = await P.db.query('SELECT count(*)::int AS n FROM ready_intervals WHERE replica_id = $1 AND ended_at IS NULL', [before.id]);
  assert.equal(open.rows[0].n, 0, 'its ready interval is closed: time billing stopped');

  const back = await waitFor('the replica to be restarted and ready again', async () => {
    const r = await replica();
    return r.state === 'ready' && r.restarts === before.restarts + 1 ? r : false;
  }, 40000, 200);
  assert.equal(back.epoch, before.epoch, 'restarted in place, same placement');
  assert.ok(!runtimesUnder(stateDir).includes(pid), 'the mute process was killed');
  assert.match(P.log('agent-probes'), /not ready again within 4\.0 s: SIGKILL/);
  await sleep(500);
  const c = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${P.adminKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'probed', messages: [{ role: 'user', content: 'again' }], max_tokens: 2 }),
  });
  assert.equal(c.status, 200);
});

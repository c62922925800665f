// Host liveness, end to end, with three agents on loopback (one CPU slot each) and a 3 s liveness
// timeout: one agent that goes silent (SIGSTOP: alive but mute, like a cut link) is marked lost and
// its replica is placed again with a new epoch; two of three going silent at once means the
// controller's own network is suspect, so none is marked lost and nothing moves. SIGCONT brings
// them back.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Platform, sleep, waitFor } from './harness.js';

const LIVENESS_MS = 3000;
const P = new Platform();
const agents = [];
let epId;

before(async () => {
  await P.start({ cpuSlots: 1, controllerArgs: ['--liveness-timeout-ms', String(LIVENESS_MS)] });
  agents.push(P.procs.find((p) => p.name === 'agent'));
  agents.push(P.spawnAgent('live-b'), P.spawnAgent('live-c'));
  await waitFor('three hosts', async () =>
    (await P.db.query("SELECT count(*)::int AS n FROM hosts WHERE state = 'ready'")).rows[0].n === 3, 20000);
  epId = await P.deploy('live', { replicas: 2 });
}, { timeout: 120000 });

after(async () => {
  for (const a of agents) { try { a.kill('SIGCONT'); } catch { /* gone */ } }
  await P.stop();
});

const hostStates = async () => Object.fromEntries((await P.db.query(
  'SELECT name, state FROM hosts ORDER BY name')).rows.map((r) => [r.name, r.state]));
const replicas = async () => (await P.db.query(
  `SELECT r.id::text, r.state, r.epoch::int AS epoch, h.name AS host FROM replicas r
   LEFT JOIN hosts h ON h.id = r.host_id WHERE r.endpoint_id = $1 ORDER BY r.ordinal`, [epId])).rows;
const nameOf = (p) => (p.name === 'agent' ? 'e2e-host' : p.name.replace(/^agent-/, ''));

test('two of three hosts silent at once: none is marked lost, no replica moves', { timeout: 60000 }, async () => {
  const before = await replicas();
  const busy = new Set(before.map((r) => r.host));
  const silent = agents.filter((a) => busy.has(nameOf(a)));
  assert.equal(silent.length, 2);
  for (const a of silent) a.kill('SIGSTOP');
  await sleep(LIVENESS_MS * 2 + 1000);
  const states = await hostStates();
  assert.deepEqual(Object.values(states).sort(), ['ready', 'ready', 'ready'], JSON.stringify(states));
  assert.deepEqual(await replicas(), before, 'nothing was placed again');
  assert.match(P.log('controller'), /2 of 3 hosts are silent at once: not marking any lost/);
  for (const a of silent) a.kill('SIGCONT');
  await sleep(1500);
});

test('one host silent: it is marked lost and its replica placed again with a new epoch', { timeout: 60000 }, async () => {
  const before = await replicas();
  const victim = agents.find((a) => nameOf(a) === before[0].host);
  victim.kill('SIGSTOP');
  const moved = await waitFor('the replica to be placed elsewhere', async () => {
    const r = (await replicas())[0];
    return r.epoch > before[0].epoch && r.host !== before[0].host ? r : false;
  }, LIVENESS_MS + 15000, 200);
  assert.equal((await hostStates())[before[0].host], 'lost');
  assert.notEqual(moved.host, before[1].host);
  victim.kill('SIGCONT');
  // Back: the host is ready again, and its stale runtime is stopped (no longer desired).
  await waitFor('the host to be ready again', async () => (await hostStates())[before[0].host] === 'ready', 15000, 200);
});

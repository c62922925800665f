// Runtimes survive their agent, and the agent's next run adopts them (docs/contracts.md,
// "Reconcile"). One host, an agent running its runtimes as the unprivileged user `nobody`, each in
// its own cgroup v2 where the machine has one:
//   - the runtime runs as nobody, in <cgroup2>/orp-agent/<scope>/<replica>-<epoch>;
//   - SIGKILL the agent: the runtime keeps serving through the gateway meanwhile; the restarted
//     agent adopts it (same pid, same epoch, no restart) and it is ready again;
//   - SIGKILL the agent, delete the endpoint while it is down: the restarted agent kills the
//     runtime the controller no longer wants, and nothing is left running or in its cgroup.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Platform, bin, runtimesUnder, sleep, waitFor } from './harness.js';

const P = new Platform();
let agentArgs;
let agent;
let epId;

function startAgent(tag) {
  agent = P.spawn(`agent-${tag}`, bin.agent, agentArgs);
  return agent;
}

async function killAgent() {
  const gone = new Promise((r) => agent.once('exit', r));
  agent.kill('SIGKILL');
  await gone;
}

const stateDir = () => agentArgs[agentArgs.indexOf('--state-dir') + 1];
const replicaRow = async () => (await P.db.query(
  'SELECT id::text, state, epoch::int AS epoch, restarts, reason FROM replicas WHERE endpoint_id = $1', [epId])).rows[0];

function uidOf(pid) {
  const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/^Uid:\s+(\d+)/m);
  return Number(m[1]);
}

function cgroupOf(pid) {
  const line = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
  return line ? line.slice(3) : null;
}

async function chat(content) {
  const r = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${P.adminKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'adopt', messages: [{ role: 'user', content }], max_tokens: 3 }),
  });
  return r.status;
}

before(async () => {
  await P.start({ cpuSlots: 1 });
  // The harness's agent again, with the same name and state directory, running runtimes as nobody.
  const first = P.procs.find((p) => p.name === 'agent');
  agentArgs = [...first.spawnargs.slice(1), '--runtime-user', 'nobody'];
  const gone = new Promise((r) => first.once('exit', r));
  first.kill('SIGTERM');
  await gone;
  startAgent('nobody');
  epId = await P.deploy('adopt');
}, { timeout: 120000 });

after(async () => {
  if (process.exitCode) console.error(P.log(`agent-again`).slice(-4000), P.log('agent-nobody').slice(-4000));
  await P.stop();
});

test('the runtime runs as the runtime user, in its own cgroup where there is cgroup v2', async () => {
  const [pid] = runtimesUnder(stateDir());
  assert.ok(pid, 'a runtime runs');
  // Only an agent running as root switches users; otherwise the runtime runs as we do.
  assert.equal(uidOf(pid), process.getuid() === 0 ? 65534 : process.getuid(), 'nobody');
  const rep = await replicaRow();
  const log = P.log('agent-nobody');
  const m = log.match(/cgroups: runtimes in (\S+)\/<replica>-<epoch>/);
  if (m) {
    const cg = cgroupOf(pid);
    assert.ok(cg && cg.endsWith(`/orp-agent/${m[1].split('/').pop()}/${rep.id}-${rep.epoch}`), `cgroup ${cg}`);
    const procs = fs.readFileSync(`${m[1]}/${rep.id}-${rep.epoch}/cgroup.procs`, 'utf8').trim().split('\n').map(Number);
    assert.ok(procs.includes(pid));
  } else {
    assert.match(log, /cgroups: (no cgroup v2 hierarchy|cannot create|off)/, 'the agent says why there is no cgroup');
    console.log('no writable cgroup v2 here: membership not checked');
  }
});

test('SIGKILL the agent: the runtime keeps serving; the restarted agent adopts it (same pid)', { timeout: 60000 }, async () => {
  const [pid] = runtimesUnder(stateDir());
  const before = await replicaRow();
  assert.equal(before.state, 'ready');
  await killAgent();
  // Meanwhile (well within the liveness timeout) the runtime still serves through the gateway.
  for (let i = 0; i < 5; i++) {
    assert.equal(await chat(`while the agent is down ${i}`), 200);
    await sleep(200);
  }
  assert.deepEqual(runtimesUnder(stateDir()), [pid], 'the runtime outlived its agent');

  startAgent('again');
  await waitFor('the restarted agent to adopt the runtime', async () =>
    /adopted pid (\d+)/.test(P.log('agent-again')), 20000, 100);
  assert.equal(Number(P.log('agent-again').match(/adopted pid (\d+)/)[1]), pid);
  const after = await waitFor('the replica to be ready again', async () => {
    const r = await replicaRow();
    return r.state === 'ready' ? r : false;
  }, 20000, 100);
  assert.equal(after.epoch, before.epoch, 'the same placement');
  assert.equal(after.restarts, before.restarts, 'not restarted');
  assert.deepEqual(runtimesUnder(stateDir()), [pid], 'still the same single process');
  assert.equal(await chat('after the adoption'), 200);
});

test('a replica no longer desired when the agent comes back is stopped: no orphan', { timeout: 60000 }, async () => {
  const [pid] = runtimesUnder(stateDir());
  const rep = await replicaRow();
  await killAgent();
  assert.equal((await P.api('DELETE', `/v1/endpoints/${epId}`)).status, 200);
  assert.deepEqual(runtimesUnder(stateDir()), [pid], 'nobody stops it while the agent is down');
  startAgent('back');
  await waitFor('the leftover runtime to be killed', async () => runtimesUnder(stateDir()).length === 0, 20000, 100);
  assert.ok(!fs.existsSync(`/proc/${pid}/cmdline`) || !runtimesUnder(stateDir()).includes(pid));
  await waitFor('the replica to be stopped', async () => (await replicaRow()).state === 'stopped', 20000, 200);
  assert.match(P.log('agent-back'), new RegExp(`killing runtime pid ${pid} left by a previous run`));
  const m = P.log('agent-back').match(/cgroups: runtimes in (\S+)\/<replica>-<epoch>/);
  // The agent removes the cgroup once the killed runtime has left it, after the process is gone.
  if (m) await waitFor('its cgroup to be gone', async () => !fs.existsSync(`${m[1]}/${rep.id}-${rep.epoch}`), 5000, 50);
});

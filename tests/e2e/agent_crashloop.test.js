// Crash-loop reasons, end to end: the catalog has a model whose config.json lacks a required
// field (made here from the demo model). Deployed, its runtime exits during every load; the agent
// restarts it with backoff (1 s, 2 s, …), counts the exits, and reports the replica `failed` with a
// reason that names the crash loop, the file and the field (the last lines of runtime.log). The
// customer reads it on GET /v1/endpoints/{id} within a few seconds, without access to the host.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Platform, bin, waitFor } from './harness.js';

const P = new Platform();

before(async () => {
  await P.start({ cpuSlots: 2 });
  const broken = path.join(P.tmp, 'broken-model');
  fs.cpSync(P.modelDir, broken, { recursive: true });
  const cfgPath = path.join(broken, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
  delete cfg.hidden_size;
  fs.writeFileSync(cfgPath, JSON.stringify(cfg));
  P.run(bin.controller, ['model', 'add', '--name', 'broken-tiny', '--source', broken, '--family', 'llama',
    '--context', '1024', '--device-kinds', 'cpu', '--database-url', P.dbUrl]);
}, { timeout: 120000 });

after(async () => {
  if (process.exitCode) console.error(P.log('agent').slice(-4000));
  await P.stop();
});

test('a model that cannot load: the replica is failed with a crash-loop reason naming the file and field', { timeout: 60000 }, async () => {
  const r = await P.api('POST', '/v1/endpoints', { body: { name: 'broken', model: 'broken-tiny' } });
  assert.equal(r.status, 201, r.text);
  const t0 = Date.now();
  // Exits at about 0 s, 1 s and 3 s (backoff 1 s, then 2 s): the third makes it a crash loop.
  const ep = await waitFor('a crash-loop reason', async () => {
    const g = await P.api('GET', `/v1/endpoints/${r.json.id}`);
    const rep = g.json.replica_states[0];
    return rep.state === 'failed' && /^crash loop: /.test(rep.reason) ? g.json : false;
  }, 15000, 100);
  const took = Date.now() - t0;
  const rep = ep.replica_states[0];
  console.log(`crash loop reported ${took} ms after the deploy: ${rep.reason}`);
  assert.match(rep.reason, /^crash loop: exit 1 [3-9] times in 2 min; runtime\.log: /);
  assert.match(rep.reason, /broken-model\/config\.json: missing field "hidden_size"/);
  assert.ok(Buffer.byteLength(rep.reason.replace(/^.*?runtime\.log: /, '')) <= 300, 'the log tail is bounded');
  assert.ok(!/\d{4}-\d\d-\d\dT\d\d:/.test(rep.reason), 'log timestamps are dropped');
  assert.ok(took < 12000, `within a few seconds (${took} ms)`);
  assert.equal(ep.status, 'failed');

  // The same reason is what the customer's listing shows, and nothing is routed to it.
  const l = await P.api('GET', '/v1/endpoints');
  assert.match(l.json.data.find((e) => e.id === r.json.id).replica_states[0].reason, /hidden_size/);

  // Deleting it stops the loop: the replica is stopped and its slot free again.
  assert.equal((await P.api('DELETE', `/v1/endpoints/${r.json.id}`)).status, 200);
  await waitFor('the replica to be stopped', async () => {
    const q = await P.db.query('SELECT state FROM replicas WHERE endpoint_id = $1', [r.json.id]);
    return q.rows[0].state === 'stopped';
  }, 20000, 200);
});

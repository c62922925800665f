// The weights cache, end to end: a catalog model whose source is an http:// URL with a sha256
// manifest. A small HTTP server in this test serves the demo model's files with Range support,
// slowly, and drops the connection halfway through model.safetensors the first time. The agent
// reports the replica `downloading` with "downloading weights: N %" (the endpoint `deploying`), resumes the broken file with a
// Range request from the partial size, verifies every file, renames the entry into its cache and
// starts the runtime on it; the endpoint answers a chat completion. A second model served with a
// corrupted config.json fails its replica with "config.json: sha256 mismatch".
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { Platform, bin, sleep, waitFor } from './harness.js';

const P = new Platform();
let server;
const seen = []; // { file, range, status, dropped }
let dropped = false;

const sha256 = (buf) => crypto.createHash('sha256').update(buf).digest('hex');

function manifestOf(dir) {
  const files = fs.readdirSync(dir).sort().map((name) => {
    const data = fs.readFileSync(path.join(dir, name));
    return { path: name, size: data.length, sha256: sha256(data) };
  });
  return { files };
}

// GET /good/<file> and /bad/<file> (config.json altered); Range: bytes=N- answered 206.
function serve(req, res) {
  const m = /^\/(good|bad)\/([A-Za-z0-9_.-]+)$/.exec(req.url);
  if (!m) { res.writeHead(404).end(); return; }
  const [, kind, file] = m;
  let data;
  try { data = fs.readFileSync(path.join(P.modelDir, file)); } catch { res.writeHead(404).end(); return; }
  if (kind === 'bad' && file === 'config.json') { // same size, one byte changed
    data = Buffer.from(data);
    data[1] = data[1] === 0x20 ? 0x0a : 0x20;
  }
  const range = req.headers.range;
  let start = 0;
  let status = 200;
  if (range) {
    const r = /^bytes=(\d+)-$/.exec(range);
    start = r ? Number(r[1]) : 0;
    if (start >= data.length) { res.writeHead(416).end(); return; }
    status = 206;
  }
  const body = data.subarray(start);
  const headers = { 'Content-Length': String(body.length), 'Content-Type': 'application/octet-stream', 'Accept-Ranges': 'bytes' };
  if (status === 206) headers['Content-Range'] = `bytes ${start}-${data.length - 1}/${data.length}`;
  const entry = { kind, file, range: range || null, status, dropped: false };
  seen.push(entry);
  res.writeHead(status, headers);
  // The big file goes slowly (16 KiB every 40 ms), so the progress can be seen; the first time, the
  // connection is cut halfway through.
  const dropAt = kind === 'good' && file === 'model.safetensors' && !dropped ? Math.floor(data.length / 2) : -1;
  if (file !== 'model.safetensors') { res.end(body); return; }
  let off = 0;
  const step = () => {
    if (res.destroyed) return;
    if (dropAt >= 0 && off >= dropAt) {
      dropped = true;
      entry.dropped = true;
      req.socket.destroy();
      return;
    }
    if (off >= body.length) { res.end(); return; }
    const n = Math.min(16384, body.length - off, dropAt >= 0 ? dropAt - off : Infinity);
    res.write(body.subarray(off, off + n));
    off += n;
    setTimeout(step, 40);
  };
  step();
}

before(async () => {
  await P.start({ cpuSlots: 2 });
  server = http.createServer(serve);
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${server.address().port}`;
  const man = path.join(P.tmp, 'manifest.json');
  fs.writeFileSync(man, JSON.stringify(manifestOf(P.modelDir)));
  for (const [name, kind] of [['web-tiny', 'good'], ['bad-tiny', 'bad']])
    P.run(bin.controller, ['model', 'add', '--name', name, '--source', `${base}/${kind}/`, '--manifest', man,
      '--family', 'llama', '--context', '1024', '--device-kinds', 'cpu', '--database-url', P.dbUrl]);
  // A model whose manifest says it is bigger than any disk (1 PB): never placed.
  const huge = path.join(P.tmp, 'huge-manifest.json');
  const hm = manifestOf(P.modelDir);
  hm.files[0].size = 1e15;
  fs.writeFileSync(huge, JSON.stringify(hm));
  P.run(bin.controller, ['model', 'add', '--name', 'huge-tiny', '--source', `${base}/good/`, '--manifest', huge,
    '--family', 'llama', '--context', '1024', '--device-kinds', 'cpu', '--database-url', P.dbUrl]);
}, { timeout: 120000 });

after(async () => {
  if (process.exitCode) console.error(P.log('agent').slice(-6000));
  server?.closeAllConnections?.();
  server?.close();
  await P.stop();
});

test('model add computes the manifest of a local source', async () => {
  const q = await P.db.query("SELECT manifest FROM models WHERE name = 'demo-tiny'");
  assert.deepEqual(q.rows[0].manifest, manifestOf(P.modelDir));
  const w = await P.db.query("SELECT source, manifest FROM models WHERE name = 'web-tiny'");
  assert.match(w.rows[0].source, /^http:\/\/127\.0\.0\.1:\d+\/good\/$/);
  assert.equal(w.rows[0].manifest.files.length, manifestOf(P.modelDir).files.length);
});

test('an http source: a broken download resumes with Range, verifies, and the endpoint answers', { timeout: 90000 }, async () => {
  const r = await P.api('POST', '/v1/endpoints', { body: { name: 'web', model: 'web-tiny' } });
  assert.equal(r.status, 201, r.text);
  const progress = new Set();
  const ep = await waitFor('the endpoint to be ready', async () => {
    const g = await P.api('GET', `/v1/endpoints/${r.json.id}`);
    const rep = g.json.replica_states?.[0];
    if (rep?.state === 'downloading') {
      assert.match(rep.reason, /^downloading weights: \d+ %$/);
      assert.equal(g.json.status, 'deploying');
      progress.add(rep.reason);
    }
    return g.json.status === 'ready' ? g.json : false;
  }, 60000, 50);
  console.log(`progress seen: ${[...progress].join(', ')}`);
  assert.ok(progress.size >= 1, 'the replica showed the download progress');

  const big = seen.filter((s) => s.kind === 'good' && s.file === 'model.safetensors');
  assert.ok(big.length >= 2, JSON.stringify(big));
  assert.equal(big[0].dropped, true);
  assert.equal(big[0].range, null);
  const resumed = big[big.length - 1];
  assert.match(resumed.range, /^bytes=[1-9]\d*-$/, 'resumed from the partial size');
  assert.equal(resumed.status, 206);

  // The cache holds the verified files under <model>-<digest>, renamed into place.
  const cache = path.join(P.tmp, 'agent', 'models');
  const entries = fs.readdirSync(cache).filter((n) => n.startsWith('web-tiny-'));
  assert.equal(entries.length, 1, fs.readdirSync(cache).join(','));
  const cached = fs.readFileSync(path.join(cache, entries[0], 'model.safetensors'));
  assert.equal(sha256(cached), sha256(fs.readFileSync(path.join(P.modelDir, 'model.safetensors'))));
  assert.ok(!fs.existsSync(path.join(cache, '.partial', entries[0])), 'the partial directory was renamed');

  const res = await fetch(`${P.gatewayUrl}/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${P.adminKey}` },
    body: JSON.stringify({ model: 'web', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }),
  });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  assert.ok(JSON.parse(text).choices[0].message.content.length >= 0);
  assert.equal(ep.status, 'ready');
});

test('a corrupted file: the replica fails with the sha256 mismatch reason', { timeout: 60000 }, async () => {
  const r = await P.api('POST', '/v1/endpoints', { body: { name: 'bad', model: 'bad-tiny' } });
  assert.equal(r.status, 201, r.text);
  let last;
  const rep = await waitFor("the sha256 mismatch reason", async () => {
    const g = await P.api('GET', `/v1/endpoints/${r.json.id}`);
    const s = g.json.replica_states?.[0];
    last = s;
    return s?.state === "failed" && /sha256 mismatch/.test(s.reason) ? s : false;
  }, 30000, 100).catch((e) => { throw new Error(`${e.message}; replica: ${JSON.stringify(last)}`); });
  assert.equal(rep.reason, 'config.json: sha256 mismatch');
  const cache = path.join(P.tmp, 'agent', 'models');
  assert.equal(fs.readdirSync(cache).filter((n) => n.startsWith('bad-tiny-')).length, 0, 'nothing bad is cached');
  assert.equal((await P.api('DELETE', `/v1/endpoints/${r.json.id}`)).status, 200);
  await sleep(10);
});

test('the agent reports its cache; a model too big for any host\'s disk stays pending, saying so', { timeout: 30000 }, async () => {
  // After the test above, web-tiny is cached, and the agent says so with its room left.
  const seen = await waitFor('the disk report', async () => {
    const q = await P.db.query('SELECT disk_free_bytes::text AS free, cached_models FROM host_seen');
    return q.rows[0]?.cached_models.includes('web-tiny') ? q.rows[0] : false;
  }, 10000, 200);
  assert.ok(Number(seen.free) > 0, JSON.stringify(seen));
  assert.ok(!seen.cached_models.includes('bad-tiny'));

  const r = await P.api('POST', '/v1/endpoints', { body: { name: 'huge', model: 'huge-tiny' } });
  assert.equal(r.status, 201, r.text);
  const rep = await waitFor('the disk reason', async () => {
    const g = await P.api('GET', `/v1/endpoints/${r.json.id}`);
    const s = g.json.replica_states?.[0];
    return s?.state === 'pending' && /free disk/.test(s.reason) ? s : false;
  }, 15000, 200);
  assert.match(rep.reason, /^no capacity: needs 931322\.6 GiB of free disk for the weights of huge-tiny; the hosts have at most [\d.]+ GiB$/);
  assert.equal((await P.api('DELETE', `/v1/endpoints/${r.json.id}`)).status, 200);
});


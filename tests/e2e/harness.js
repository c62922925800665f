// The end-to-end harness: a throwaway PostgreSQL (ops/pg in a temp dir), the real
// orp-controller and orp-agent binaries on free loopback ports, and a demo model made by
// orp-runtime make-model. Everything is stopped and deleted by stop().
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const here = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(here, '../..');
export const buildDir = process.env.ORP_BUILD_DIR || path.join(root, 'build');
export const bin = {
  controller: path.join(buildDir, 'controller/orp-controller'),
  agent: path.join(buildDir, 'agent/orp-agent'),
  runtime: path.join(buildDir, 'runtime/orp-runtime'),
};

// docs/openapi.json, and its schemas: openapiSchema('#/components/schemas/Balance') is a
// validator; $refs inside resolve against the document itself.
export const openapi = JSON.parse(fs.readFileSync(path.join(root, 'docs/openapi.json'), 'utf8'));
const DOC_ID = 'https://openrunpod.invalid/openapi.json';
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addSchema({ ...openapi, $id: DOC_ID });
export const openapiSchema = (ref = '') => ajv.compile({ $ref: `${DOC_ID}${ref}` });

// Checks a reply (from Platform.call) against docs/openapi.json: its status is documented for the
// route; a JSON body validates against that status's schema (whose objects admit no field they
// do not name); a reply of another documented type has that Content-Type, and an event stream's
// events validate against the document's x-orp-event-data. Returns the JSON body.
export function checkReply(method, route, r) {
  const op = openapi.paths[route]?.[method.toLowerCase()];
  assert.ok(op, `${method} ${route} is documented`);
  let resp = op.responses[String(r.status)];
  assert.ok(resp, `${method} ${route}: status ${r.status} is documented (${r.text.slice(0, 300)})`);
  if (resp.$ref) resp = openapi.components.responses[resp.$ref.split('/').pop()];
  const types = Object.keys(resp.content ?? {});
  assert.ok(types.length, `${method} ${route} ${r.status} documents its body`);
  const schema = resp.content['application/json']?.schema;
  if (!schema) {
    assert.ok(types.some((t) => r.headers.get('content-type')?.startsWith(t)), `${method} ${route} ${r.status}: ${r.headers.get('content-type')} is one of ${types}`);
    const event = resp.content['text/event-stream']?.['x-orp-event-data'];
    if (event) {
      const v = openapiSchema(event.$ref);
      for (const [, data] of r.text.matchAll(/^data: (.*)$/gm))
        assert.ok(v(JSON.parse(data)), `${method} ${route} event: ${ajv.errorsText(v.errors)}\n${data.slice(0, 500)}`);
    }
    return r.json;
  }
  assert.ok(r.json !== undefined, `${method} ${route} answered JSON: ${r.text.slice(0, 300)}`);
  const v = openapiSchema(schema.$ref);
  assert.ok(v(r.json), `${method} ${route} ${r.status}: ${ajv.errorsText(v.errors)}\n${JSON.stringify(r.json, null, 1).slice(0, 2000)}`);
  return r.json;
}

// The routes docs/openapi.json documents: { route, method, key: 'METHOD /path', op, gateway }.
export function documentedRoutes() {
  const out = [];
  for (const [route, item] of Object.entries(openapi.paths))
    for (const m of ['get', 'post', 'put', 'patch', 'delete'])
      if (item[m]) out.push({ route, method: m.toUpperCase(), key: `${m.toUpperCase()} ${route}`, op: item[m], gateway: item['x-orp-listener'] === 'gateway' });
  return out;
}

// The session of a sign-up or log-in reply: { token, cookie, csrf }.
export function sessionOf(r) {
  const c = r.cookies.find((x) => x.startsWith('orp_session='));
  assert.ok(c, `a session cookie in ${JSON.stringify(r.cookies)}: ${r.text}`);
  return { token: c.split(';')[0].slice('orp_session='.length), cookie: c, csrf: r.json.csrf_token };
}

// An event stream stays open: what it sends until its first blank line (or for 2 s), then the
// connection is closed.
async function firstEvent(res, ac) {
  const dec = new TextDecoder();
  const timer = setTimeout(() => ac.abort(), 2000);
  let text = '';
  try {
    for await (const chunk of res.body) {
      text += dec.decode(chunk, { stream: true });
      if (text.includes('\n\n')) break;
    }
  } catch (e) {
    if (e.name !== 'AbortError') throw e;
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  return text;
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(what, fn, timeoutMs = 60000, everyMs = 200) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out waiting for ${what}; last: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
}

// Pids of live orp-runtime processes whose command line mentions dir (an agent's state directory:
// every runtime it starts gets --usage-log under it; or a test's temporary directory).
export function runtimesUnder(dir) {
  const pids = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let argv;
    try { argv = fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0'); } catch { continue; }
    if (argv[0] && path.basename(argv[0]) === 'orp-runtime' && argv.some((a) => a.startsWith(dir + '/'))) {
      let state = '';
      try { state = fs.readFileSync(`/proc/${e}/stat`, 'utf8').replace(/^.*\) /, '')[0]; } catch { continue; }
      if (state !== 'Z') pids.push(Number(e));
    }
  }
  return pids;
}

export class Platform {
  constructor() {
    this.procs = [];
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'orp-e2e-'));
    fs.chmodSync(this.tmp, 0o755);
  }

  run(file, args, opts = {}) {
    return execFileSync(file, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts }).trim();
  }

  spawn(name, file, args, env = {}) {
    const log = fs.openSync(path.join(this.tmp, `${name}.log`), 'a');
    const p = spawn(file, args, { stdio: ['ignore', log, log], env: { ...process.env, ...env } });
    p.name = name;
    this.procs.push(p);
    return p;
  }

  log(name) {
    try {
      return fs.readFileSync(path.join(this.tmp, `${name}.log`), 'utf8');
    } catch {
      return '';
    }
  }

  async start({ cpuSlots = 2, controllerArgs = [] } = {}) {
    const db = await this.startDatabase();

    for (let attempt = 0; ; attempt++) {
      this.ports = { api: await freePort(), gateway: await freePort(), agent: await freePort() };
      this.agentToken = 'e2e-agent-token';
      this.controllerArgs = ['serve', ...db,
        '--api-port', String(this.ports.api), '--gateway-port', String(this.ports.gateway),
        '--agent-port', String(this.ports.agent), '--agent-token', this.agentToken,
        '--heartbeat-ms', '500', '--scheduler-interval-ms', '300', '--liveness-timeout-ms', '5000',
        '--log-level', 'debug', ...controllerArgs];
      this.apiUrl = `http://127.0.0.1:${this.ports.api}`;
      this.gatewayUrl = `http://127.0.0.1:${this.ports.gateway}/v1`;
      try {
        await this.startController();
        break;
      } catch (e) {
        // A port freePort() found free was taken before the controller bound it (by another
        // process's outgoing connection): new ports, once. Any other failure is the test's.
        if (attempt > 0 || !/cannot listen on/.test(this.log('controller'))) throw e;
      }
    }

    this.spawn('agent', bin.agent, ['--controller', `http://127.0.0.1:${this.ports.agent}`,
      '--token', this.agentToken, '--name', 'e2e-host', '--cpu-slots', String(cpuSlots),
      '--state-dir', path.join(this.tmp, 'agent'), '--heartbeat-ms', '500',
      '--port-base', String(20000 + Math.floor(Math.random() * 20000)), '--log-level', 'debug']);
    await waitFor('the agent to register', async () =>
      (await this.db.query("SELECT count(*)::int AS n FROM gpus")).rows[0].n === cpuSlots, 20000);
    return this;
  }

  // A throwaway PostgreSQL, migrated, with the demo model in the catalog and an operator account
  // (adminKey). Returns the --database-url arguments for the controller.
  async startDatabase() {
    const pgPort = await freePort();
    this.pgDir = path.join(this.tmp, 'pg');
    this.run(path.join(root, 'ops/pg'), ['init', this.pgDir, String(pgPort)]);
    this.run(path.join(root, 'ops/pg'), ['start', this.pgDir]);
    this.dbUrl = this.run(path.join(root, 'ops/pg'), ['url', this.pgDir]);
    this.db = new pg.Pool({ host: this.pgDir, port: pgPort, user: 'orp', database: 'openrunpod', max: 2 });

    this.modelDir = path.join(this.tmp, 'demo-model');
    this.run(bin.runtime, ['make-model', '--out', this.modelDir]);

    const db = ['--database-url', this.dbUrl];
    this.run(bin.controller, ['migrate', ...db]);
    this.run(bin.controller, ['model', 'add', '--name', 'demo-tiny', '--source', this.modelDir,
      '--family', 'llama', '--context', '1024', '--device-kinds', 'cpu', ...db]);
    this.adminKey = this.run(bin.controller, ['admin', 'create', '--email', 'admin@example.com', ...db]);
    return db;
  }

  // Starts the controller and waits for its /healthz; when it exits or does not answer, the
  // error carries its exit status and the end of its log.
  async startController() {
    const p = this.spawn('controller', bin.controller, this.controllerArgs);
    this.controller = p;
    const exited = () => p.exitCode !== null || p.signalCode !== null;
    try {
      await waitFor('controller /healthz', async () => exited() || (await fetch(`${this.apiUrl}/healthz`)).ok, 20000, 100);
      if (exited()) throw new Error(`the controller exited (${p.exitCode ?? p.signalCode}) before answering /healthz`);
    } catch (e) {
      const tail = this.log('controller').split('\n').slice(-15).join('\n');
      throw new Error(`${e.message}\ncontroller log, last lines:\n${tail}`);
    }
  }

  // Kills the controller the hard way (no cleanup of any kind) and waits until it is gone.
  async killController() {
    const p = this.controller;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
  }

  // New token prices (micro-units per million tokens) for the demo model, the way an operator
  // sets them (the database versions them).
  priceDemoModel(inPrice, outPrice) {
    this.run(bin.controller, ['model', 'add', '--name', 'demo-tiny', '--source', this.modelDir,
      '--family', 'llama', '--context', '1024', '--device-kinds', 'cpu',
      '--input-price-micros-per-mtok', String(inPrice),
      '--output-price-micros-per-mtok', String(outPrice), '--database-url', this.dbUrl]);
  }

  // Another customer account (its owner's key), made the way an operator does today.
  newAccountKey(email) {
    return this.run(bin.controller, ['account', 'create', '--email', email, '--database-url', this.dbUrl]);
  }

  // Another orp-agent on this machine (loopback), with its own name, token and state directory,
  // e.g. one enrolled with a one-time enrollment token. Its log is `${logName}.log`.
  spawnAgent(name, { token = this.agentToken, cpuSlots = 1, stateDir, logName } = {}) {
    const dir = stateDir || path.join(this.tmp, `agent-${name}`);
    const p = this.spawn(logName || `agent-${name}`, bin.agent, ['--controller', `http://127.0.0.1:${this.ports.agent}`,
      '--token', token, '--name', name, '--cpu-slots', String(cpuSlots), '--state-dir', dir,
      '--heartbeat-ms', '500', '--port-base', String(20000 + Math.floor(Math.random() * 20000)),
      '--log-level', 'debug']);
    p.stateDir = dir;
    return p;
  }

  // A raw call to the agent API (register, heartbeat) with a bearer credential.
  async agentApi(p, bearer, body) {
    const res = await fetch(`http://127.0.0.1:${this.ports.agent}${p}`, {
      method: 'POST', headers: { Authorization: `Bearer ${bearer}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    let json;
    try { json = JSON.parse(text); } catch { json = undefined; }
    return { status: res.status, json, text };
  }

  // One request: a key, or a session (its cookie, and its CSRF token unless csrf is false), a JSON
  // body or raw text, to the API (the gateway with gw; another listener with base). Returns
  // { status, json, text, headers, cookies }; an event stream's text is its first event.
  async call(method, p, { key, session, csrf = true, body, raw, headers = {}, gw = false, base } = {}) {
    const h = { ...headers };
    if (key) h.Authorization = `Bearer ${key}`;
    if (session) {
      h.Cookie = `orp_session=${session.token}`;
      if (csrf && session.csrf) h['X-CSRF-Token'] = session.csrf;
    }
    if (body !== undefined || raw !== undefined) h['Content-Type'] ??= 'application/json';
    const url = (base ?? (gw ? `http://127.0.0.1:${this.ports.gateway}` : this.apiUrl)) + p;
    const ac = new AbortController();
    const res = await fetch(url, { method, headers: h, body: raw !== undefined ? raw : body === undefined ? undefined : JSON.stringify(body), signal: ac.signal });
    const text = /^text\/event-stream/.test(res.headers.get('content-type') ?? '') ? await firstEvent(res, ac) : await res.text();
    let json;
    try { json = JSON.parse(text); } catch { json = undefined; }
    return { status: res.status, json, text, headers: res.headers, cookies: res.headers.getSetCookie() };
  }

  async api(method, p, { body, key = this.adminKey, raw } = {}) {
    const headers = {};
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(`${this.apiUrl}${p}`, {
      method, headers, body: raw !== undefined ? raw : body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json;
    try { json = JSON.parse(text); } catch { json = undefined; }
    return { status: res.status, json, text, headers: res.headers };
  }

  async deploy(name, extra = {}) {
    const r = await this.api('POST', '/v1/endpoints', { body: { name, model: 'demo-tiny', ...extra } });
    if (r.status !== 201) throw new Error(`deploy failed: ${r.status} ${r.text}`);
    const id = r.json.id;
    await waitFor(`endpoint ${name} to be ready`, async () => {
      const g = await this.api('GET', `/v1/endpoints/${id}`);
      return g.json?.status === 'ready' ? g.json : false;
    }, 90000, 300);
    return id;
  }

  async stop() {
    for (const p of this.procs.reverse()) {
      if (p.exitCode === null && p.signalCode === null) {
        p.kill('SIGTERM');
        await Promise.race([new Promise((r) => p.once('exit', r)), sleep(8000)]);
        if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
      }
    }
    // Runtimes outlive a SIGKILLed agent (its next run adopts them): one a test left behind dies here.
    for (const pid of runtimesUnder(this.tmp)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    if (this.db) await this.db.end().catch(() => {});
    if (this.pgDir) {
      try { this.run(path.join(root, 'ops/pg'), ['stop', this.pgDir]); } catch { /* already gone */ }
    }
    if (!process.env.ORP_KEEP_TMP) fs.rmSync(this.tmp, { recursive: true, force: true });
    else console.error(`kept ${this.tmp}`);
  }
}

// The registration body of an 8-GPU host of one model (two NUMA nodes, all NVLinked), for suites
// that register GPU hosts through the agent API where no GPU is.
export function gpuHost(name, model, memory_mib) {
  const uuids = Array.from({ length: 8 }, (_, i) => `GPU-${name}-${i}`);
  return {
    name, address: '127.0.0.1', agent_version: 'e2e',
    devices: uuids.map((uuid, i) => ({ index: i, uuid, kind: 'gpu', model, memory_mib, numa_node: i < 4 ? 0 : 1,
      nvlink_peers: uuids.filter((u) => u !== uuid), healthy: true })),
  };
}

// Every route of the API and the gateway, from one table: the route list is read from
// docs/openapi.json, so a documented route without a row here fails the suite. For each row: the
// happy path (validated against the document's schema); each class of bad input the route has
// (missing, wrong type, out of range, too long, unknown field); no credentials, a wrong key, a
// malformed key, a revoked key, an expired key, a key without the scope, a suspended account's
// key; another account's ids on every route that takes one (404, never the object); admin routes
// as a customer (403); and SQL-injection and control-character strings in every string field and
// query parameter (a 4xx or stored as plain text; never a 5xx, never SQL error text). Then the
// new admin routes' behaviour: suspension, catalog retirement, versioned GPU type prices,
// enrollment token revocation, endpoint pagination and filters. One platform for the file.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { Platform, bin, checkReply as check, documentedRoutes as documented, freePort, sessionOf, sleep, waitFor } from './harness.js';

const P = new Platform();

let seq = 0;
const uniq = (p) => `${p}-${process.pid % 1000}-${++seq}`;

const call = (method, p, opts) => P.call(method, p, opts);

function err(r, status, code, what = '') {
  assert.equal(r.status, status, `${what}: ${r.text.slice(0, 400)}`);
  assert.ok(r.json?.error?.message, `${what}: an error body: ${r.text.slice(0, 300)}`);
  for (const k of ['message', 'type', 'param', 'code']) assert.ok(k in r.json.error, `${what}: error.${k}`);
  if (code) assert.equal(r.json.error.code, code, `${what}: ${r.text.slice(0, 300)}`);
}

const SQL_ERROR = /SQLSTATE|syntax error|ERROR:|violates|duplicate key|relation "|column "|invalid input syntax|PQ|libpq|unterminated/i;
// Strings that break naive SQL, JSON, logs and terminals.
const EVIL = [
  "' OR '1'='1", "'; DROP TABLE accounts; --", '" OR ""="', '\\', "%_%", '$1', "x'); SELECT pg_sleep(5); --",
  '\u0000', '\u0001\u001b[31m\u007f', '\r\nX-Injected: 1', '😀 ünïcödé', '\ud800', 'a'.repeat(5000),
  '<script>alert(1)</script>', '${jndi:ldap://x}', '{"$gt": ""}',
];

// In a URL: percent-encoded UTF-8, or for a lone surrogate (no UTF-8 form) bytes that are not UTF-8.
const enc = (s) => { try { return encodeURIComponent(s); } catch { return '%ff%fe'; } };

const ctx = {};
const chat = (model) => ({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });

async function account(email, creditMicros = 100_000_000) {
  const key = P.newAccountKey(email);
  const me = await call('GET', '/v1/auth/me', { key });
  assert.equal(me.status, 200, me.text);
  const acct = me.json.account.id;
  if (creditMicros) {
    const r = await call('POST', `/v1/admin/accounts/${acct}/credits`, { key: P.adminKey, body: { amount_micros: creditMicros, idempotency_key: uniq('c') } });
    assert.equal(r.status, 201, r.text);
  }
  return { key, acct };
}

async function newEndpoint(who, extra = {}) {
  const r = await call('POST', '/v1/endpoints', { key: who.key, body: { name: uniq('ep'), model: 'demo-tiny', ...extra } });
  assert.equal(r.status, 201, r.text);
  return r.json;
}

// One endpoint of the operator's own account, stopped (it holds no device).
async function adminEndpoint() {
  if (ctx.adminEp) return ctx.adminEp;
  await call('POST', `/v1/admin/accounts/${ctx.adminAcct}/credits`, { key: P.adminKey, body: { amount_micros: 1000000, idempotency_key: uniq('cr') } });
  const r = await call('POST', '/v1/endpoints', { key: P.adminKey, body: { name: uniq('ep'), model: 'demo-tiny' } });
  assert.equal(r.status, 201, r.text);
  assert.equal((await call('POST', `/v1/endpoints/${r.json.id}/stop`, { key: P.adminKey })).status, 200);
  ctx.adminEp = r.json;
  return ctx.adminEp;
}

async function newKey(who, body = {}) {
  const r = await call('POST', '/v1/api-keys', { key: who.key, body: { name: uniq('k'), ...body } });
  assert.equal(r.status, 201, r.text);
  return r.json;
}

// A host that exists only as rows (registered through the agent API; no agent behind it). Its one
// device is a GPU, so no CPU endpoint of this suite is ever placed there.
async function fakeHost() {
  const name = uniq('fake');
  const r = await P.agentApi('/agent/v1/register', P.agentToken, { name, address: '127.0.0.1', agent_version: 't',
    devices: [{ index: 0, uuid: `GPU-${name}`, kind: 'gpu', model: 'fake', memory_mib: 1 }] });
  assert.equal(r.status, 200, r.text);
  return r.json.host_id;
}

async function newToken() {
  const r = await call('POST', '/v1/admin/enrollment-tokens', { key: P.adminKey, body: { ttl_s: 600 } });
  assert.equal(r.status, 201, r.text);
  return r.json.id;
}

async function newModel(extra = {}) {
  const r = await call('POST', '/v1/admin/catalog', { key: P.adminKey,
    body: { name: uniq('m'), family: 'llama', source: P.modelDir, context_length: 1024, device_kinds: ['cpu'], ...extra } });
  assert.equal(r.status, 201, r.text);
  return r.json;
}

async function signup() {
  const email = `${uniq('u')}@example.com`;
  const r = await call('POST', '/v1/auth/signup', { body: { email, password: 'long enough pw', account_name: 'acme' } });
  assert.equal(r.status, 201, r.text);
  return { email, session: sessionOf(r), acct: r.json.account.id };
}

// ---- the table: one row per documented route ----
// who: none | key (a customer) | admin | session; path(): the happy path (async: may make a fresh
// object, for routes that use one up); body(): the happy body; ok: the happy status; foreign():
// the same route on another account's object (expect 404); bad: [label, {path, body, raw, headers},
// status, code]; strs: string fields of the body; qstrs: string query parameters; gw: the gateway;
// expect(reply): more to check of the happy reply.
const A = () => ctx.A;
const ROWS = {
  'GET /': { who: 'none', path: () => '/', ok: 200 },
  'GET /healthz': { who: 'none', path: () => '/healthz', ok: 200 },
  'GET /v1/openapi.json': { who: 'none', path: () => '/v1/openapi.json', ok: 200 },
  'GET /v1/catalog': { who: 'key', path: () => '/v1/catalog', ok: 200 },
  'POST /v1/endpoints': {
    who: 'key', path: () => '/v1/endpoints', body: () => ({ name: uniq('ep'), model: 'demo-tiny' }), ok: 201,
    bad: [['missing name', { body: { model: 'demo-tiny' } }, 400, 'missing_parameter'],
      ['name of the wrong type', { body: { name: 7, model: 'demo-tiny' } }, 400, 'invalid_parameter'],
      ['replicas out of range', { body: { name: 'x', model: 'demo-tiny', replicas: 17 } }, 400, 'invalid_parameter'],
      ['replicas a float', { body: { name: 'x', model: 'demo-tiny', replicas: 1.5 } }, 400, 'invalid_parameter'],
      ['name too long', { body: { name: 'a'.repeat(64), model: 'demo-tiny' } }, 400, 'invalid_parameter'],
      ['unknown field', { body: { name: 'x', model: 'demo-tiny', gpus: 1 } }, 400, 'unknown_parameter'],
      ['model not in the catalog', { body: { name: 'x', model: 'nope' } }, 400, 'model_not_found'],
      ['malformed JSON', { raw: '{"name": ' }, 400, 'invalid_json'],
      ['duplicate key', { raw: '{"name":"a","name":"b","model":"demo-tiny"}' }, 400, 'invalid_json'],
      ['an array body', { raw: '[]' }, 400, 'invalid_json'],
      ['host_selector not an object', { body: { name: 'x', model: 'demo-tiny', host_selector: ['zone=eu'] } }, 400, 'invalid_parameter'],
      ['host_selector value too long', { body: { name: 'x', model: 'demo-tiny', host_selector: { zone: 'e'.repeat(64) } } }, 400, 'invalid_parameter']],
    strs: ['name', 'model', 'pool', 'device_kind', 'billing_mode'],
  },
  'GET /v1/endpoints': {
    who: 'key', path: () => '/v1/endpoints', ok: 200,
    bad: [['limit 0', { path: '/v1/endpoints?limit=0' }, 400, 'invalid_parameter'],
      ['limit over the cap', { path: '/v1/endpoints?limit=201' }, 400, 'invalid_parameter'],
      ['limit not a number', { path: '/v1/endpoints?limit=ten' }, 400, 'invalid_parameter'],
      ['unknown state', { path: '/v1/endpoints?state=sleeping' }, 400, 'invalid_parameter'],
      ['cursor not an id', { path: '/v1/endpoints?starting_after=7' }, 400, 'invalid_parameter'],
      ['name too long', { path: `/v1/endpoints?name=${'a'.repeat(64)}` }, 400, 'invalid_parameter']],
    qstrs: ['state', 'model', 'name', 'starting_after'],
  },
  'GET /v1/endpoints/{id}': {
    who: 'key', path: () => `/v1/endpoints/${A().ep.id}`, ok: 200, foreign: () => `/v1/endpoints/${A().ep.id}`,
    bad: [['not a uuid', { path: '/v1/endpoints/123' }, 404, 'endpoint_not_found'],
      ['no such endpoint', { path: '/v1/endpoints/00000000-0000-0000-0000-000000000000' }, 404, 'endpoint_not_found']],
  },
  'DELETE /v1/endpoints/{id}': {
    who: 'key', path: async () => `/v1/endpoints/${(await newEndpoint(A())).id}`, ok: 200,
    foreign: () => `/v1/endpoints/${A().spare.id}`,
  },
  'PATCH /v1/endpoints/{id}': {
    who: 'key', path: () => `/v1/endpoints/${A().spare.id}`, body: () => ({ replicas: 1 }), ok: 200,
    foreign: () => `/v1/endpoints/${A().spare.id}`,
    bad: [['missing replicas', { body: {} }, 400, 'missing_parameter'],
      ['replicas of the wrong type', { body: { replicas: '2' } }, 400, 'invalid_parameter'],
      ['replicas out of range', { body: { replicas: 0 } }, 400, 'invalid_parameter'],
      ['unknown field', { body: { replicas: 1, name: 'x' } }, 400, 'unknown_parameter'],
      ['host_selector with a bad name', { body: { host_selector: { '-zone': 'eu' } } }, 400, 'invalid_parameter']],
  },
  'POST /v1/endpoints/{id}/stop': { who: 'key', path: () => `/v1/endpoints/${A().spare.id}/stop`, ok: 200, foreign: () => `/v1/endpoints/${A().spare.id}/stop` },
  'POST /v1/endpoints/{id}/start': { who: 'key', path: () => `/v1/endpoints/${A().spare.id}/start`, ok: 200, foreign: () => `/v1/endpoints/${A().spare.id}/start` },
  'GET /v1/endpoints/{id}/replicas': {
    who: 'key', path: () => `/v1/endpoints/${A().ep.id}/replicas`, ok: 200, foreign: () => `/v1/endpoints/${A().ep.id}/replicas`,
    bad: [['include_stopped not a boolean', { path: `/v1/endpoints/${'0'.repeat(8)}-0000-0000-0000-${'0'.repeat(12)}/replicas?include_stopped=maybe` }, 400, 'invalid_parameter']],
    qstrs: ['include_stopped'],
  },
  'GET /v1/endpoints/{id}/stats': {
    who: 'key', path: () => `/v1/endpoints/${A().ep.id}/stats`, ok: 200, foreign: () => `/v1/endpoints/${A().ep.id}/stats`,
    bad: [['unknown granularity', { path: `/v1/endpoints/${'0'.repeat(8)}-0000-0000-0000-${'0'.repeat(12)}/stats?granularity=week` }, 400, 'invalid_parameter'],
      ['not a uuid', { path: '/v1/endpoints/123/stats' }, 404, 'endpoint_not_found'],
      ['no such endpoint', { path: '/v1/endpoints/00000000-0000-0000-0000-000000000000/stats' }, 404, 'endpoint_not_found']],
    qstrs: ['granularity'],
  },
  'GET /v1/endpoints/{id}/logs': {
    who: 'key', path: () => `/v1/endpoints/${A().ep.id}/logs?tail=5`, ok: 200, foreign: () => `/v1/endpoints/${A().ep.id}/logs`,
    expect: (r) => assert.match(r.text, /^id: \d+\nevent: log\ndata: \{.*\}\n\n/, 'a stored line first'),
    bad: [['not a uuid', { path: '/v1/endpoints/123/logs' }, 404, 'endpoint_not_found'],
      ['no such endpoint', { path: '/v1/endpoints/00000000-0000-0000-0000-000000000000/logs' }, 404, 'endpoint_not_found'],
      ['tail 0', { path: () => `/v1/endpoints/${A().ep.id}/logs?tail=0` }, 400, 'invalid_parameter'],
      ['tail over the cap', { path: () => `/v1/endpoints/${A().ep.id}/logs?tail=2001` }, 400, 'invalid_parameter'],
      ['tail not a number', { path: () => `/v1/endpoints/${A().ep.id}/logs?tail=all` }, 400, 'invalid_parameter'],
      ['after negative', { path: () => `/v1/endpoints/${A().ep.id}/logs?after=-1` }, 400, 'invalid_parameter'],
      ['after past int64', { path: () => `/v1/endpoints/${A().ep.id}/logs?after=99999999999999999999` }, 400, 'invalid_parameter'],
      ['Last-Event-ID not a number', { path: () => `/v1/endpoints/${A().ep.id}/logs`, headers: { 'Last-Event-ID': '1e3' } }, 400, 'invalid_parameter'],
      ['replica not a uuid', { path: () => `/v1/endpoints/${A().ep.id}/logs?replica=1` }, 400, 'invalid_parameter']],
    qstrs: ['after', 'tail', 'replica'],
  },
  'GET /v1/catalog/presets': { who: 'key', path: () => '/v1/catalog/presets', ok: 200, qstrs: ['pool'] },
  'GET /v1/quotas': { who: 'key', path: () => '/v1/quotas', ok: 200 },
  'GET /v1/billing/balance': { who: 'key', path: () => '/v1/billing/balance', ok: 200 },
  'GET /v1/billing/ledger': {
    who: 'key', path: () => '/v1/billing/ledger', ok: 200,
    bad: [['limit 0', { path: '/v1/billing/ledger?limit=0' }, 400, 'invalid_parameter'],
      ['cursor not a number', { path: '/v1/billing/ledger?starting_after=x' }, 400, 'invalid_parameter']],
  },
  'GET /v1/billing/usage': {
    who: 'key', path: () => '/v1/billing/usage', ok: 200,
    bad: [['unknown granularity', { path: '/v1/billing/usage?granularity=week' }, 400, 'invalid_parameter']],
    qstrs: ['granularity'],
  },
  'GET /v1/billing/statements/{month}': {
    who: 'key', path: () => `/v1/billing/statements/${new Date().toISOString().slice(0, 7)}`, ok: 200,
    bad: [['month 13', { path: '/v1/billing/statements/2026-13' }, 404, 'statement_not_found'],
      ['unknown format', { path: `/v1/billing/statements/${new Date().toISOString().slice(0, 7)}?format=xml` }, 400, 'invalid_parameter']],
    qstrs: ['format'],
  },
  'POST /v1/admin/accounts/{id}/credits': {
    who: 'admin', path: () => `/v1/admin/accounts/${ctx.B.acct}/credits`, body: () => ({ amount_micros: 1000, idempotency_key: uniq('cr') }), ok: 201,
    bad: [['amount 0', { body: { amount_micros: 0, idempotency_key: 'k' } }, 400, 'invalid_parameter'],
      ['amount of the wrong type', { body: { amount_micros: '5', idempotency_key: 'k' } }, 400, 'invalid_parameter'],
      ['missing key', { body: { amount_micros: 5 } }, 400, 'missing_parameter'],
      ['memo too long', { body: { amount_micros: 5, idempotency_key: 'k', memo: 'm'.repeat(201) } }, 400, 'invalid_parameter'],
      ['unknown field', { body: { amount_micros: 5, idempotency_key: 'k', x: 1 } }, 400, 'unknown_parameter'],
      ['no such account', { path: '/v1/admin/accounts/999999/credits', body: { amount_micros: 5, idempotency_key: 'k' } }, 404, 'account_not_found']],
    strs: ['idempotency_key', 'memo'],
  },
  'GET /v1/admin/accounts/{id}/quotas': { who: 'admin', path: () => `/v1/admin/accounts/${ctx.B.acct}/quotas`, ok: 200 },
  'PUT /v1/admin/accounts/{id}/quotas': {
    who: 'admin', path: () => `/v1/admin/accounts/${ctx.B.acct}/quotas`, ok: 200,
    body: () => ({ max_devices: 16, max_endpoints: 10, requests_per_min: 600, requests_burst: 60 }),
    bad: [['negative', { body: { max_devices: -1 } }, 400, 'invalid_parameter'],
      ['zero tokens per minute', { body: { tokens_per_min: 0 } }, 400, 'invalid_parameter'],
      ['unknown field', { body: { max_gpus: 1 } }, 400, 'unknown_parameter']],
  },
  'PUT /v1/admin/endpoints/{id}/shared': {
    who: 'admin', path: () => `/v1/admin/endpoints/${ctx.valueEp.id}/shared`, body: () => ({ shared: true }), ok: 200,
    bad: [['missing shared', { body: {} }, 400, 'missing_parameter'],
      ['shared of the wrong type', { body: { shared: 'yes' } }, 400, 'invalid_parameter'],
      ['unknown field', { body: { shared: true, name: 'x' } }, 400, 'unknown_parameter'],
      ['malformed JSON', { raw: '{"shared": ' }, 400, 'invalid_json'],
      ['a time-billed endpoint', { path: () => `/v1/admin/endpoints/${ctx.timeEp.id}/shared`, body: { shared: true } }, 409, 'not_value_billed'],
      ["a customer's endpoint", { path: () => `/v1/admin/endpoints/${A().spare.id}/shared`, body: { shared: true } }, 404, 'not_found'],
      ['not a uuid', { path: '/v1/admin/endpoints/123/shared', body: { shared: true } }, 404, 'not_found'],
      ['no such endpoint', { path: '/v1/admin/endpoints/00000000-0000-0000-0000-000000000000/shared', body: { shared: true } }, 404, 'not_found']],
  },
  'GET /v1/admin/hosts': { who: 'admin', path: () => '/v1/admin/hosts', ok: 200 },
  'DELETE /v1/admin/hosts/{id}': {
    who: 'admin', path: async () => `/v1/admin/hosts/${await fakeHost()}`, ok: 200,
    bad: [['no such host', { path: '/v1/admin/hosts/999999' }, 404, 'not_found'], ['not an id', { path: '/v1/admin/hosts/abc' }, 404, 'not_found']],
  },
  'POST /v1/admin/hosts/{id}/cordon': { who: 'admin', path: () => `/v1/admin/hosts/${ctx.host}/cordon`, ok: 200, bad: [['no such host', { path: '/v1/admin/hosts/999999/cordon' }, 404, 'not_found']] },
  'POST /v1/admin/hosts/{id}/uncordon': { who: 'admin', path: () => `/v1/admin/hosts/${ctx.host}/uncordon`, ok: 200 },
  'POST /v1/admin/hosts/{id}/drain': { who: 'admin', path: () => `/v1/admin/hosts/${ctx.host}/drain`, ok: 200 },
  'PUT /v1/admin/hosts/{id}/labels': {
    who: 'admin', path: () => `/v1/admin/hosts/${ctx.host}/labels`, body: () => ({ labels: { zone: 'eu', 'example.com/rack': 'r1' } }), ok: 200,
    bad: [['no such host', { path: '/v1/admin/hosts/999999/labels', body: { labels: {} } }, 404, 'not_found'],
      ['missing labels', { body: {} }, 400, 'missing_parameter'],
      ['labels not an object', { body: { labels: 'zone=eu' } }, 400, 'invalid_parameter'],
      ['a value not a string', { body: { labels: { zone: 1 } } }, 400, 'invalid_parameter'],
      ['a name with "="', { body: { labels: { 'zo=ne': 'eu' } } }, 400, 'invalid_parameter'],
      ['17 labels', { body: { labels: Object.fromEntries([...Array(17).keys()].map((i) => [`k${i}`, 'v'])) } }, 400, 'invalid_parameter'],
      ['unknown field', { body: { labels: {}, pool: 'x' } }, 400, 'unknown_parameter']],
  },
  'POST /v1/admin/enrollment-tokens': {
    who: 'admin', path: () => '/v1/admin/enrollment-tokens', body: () => ({ ttl_s: 60 }), ok: 201,
    bad: [['ttl 0', { body: { ttl_s: 0 } }, 400, 'invalid_parameter'], ['ttl over a week', { body: { ttl_s: 604801 } }, 400, 'invalid_parameter'],
      ['pool with spaces', { body: { pool: 'a b' } }, 400, 'invalid_parameter'], ['unknown field', { body: { uses: 2 } }, 400, 'unknown_parameter']],
    strs: ['pool'],
  },
  'GET /v1/admin/enrollment-tokens': { who: 'admin', path: () => '/v1/admin/enrollment-tokens', ok: 200, bad: [['limit 0', { path: '/v1/admin/enrollment-tokens?limit=0' }, 400, 'invalid_parameter']] },
  'DELETE /v1/admin/enrollment-tokens/{id}': {
    who: 'admin', path: async () => `/v1/admin/enrollment-tokens/${await newToken()}`, ok: 200,
    bad: [['no such token', { path: '/v1/admin/enrollment-tokens/999999' }, 404, 'not_found'], ['not an id', { path: '/v1/admin/enrollment-tokens/x' }, 404, 'not_found']],
  },
  'POST /v1/auth/signup': {
    who: 'none', path: () => '/v1/auth/signup', ok: 201,
    body: () => ({ email: `${uniq('s')}@example.com`, password: 'long enough pw', account_name: 'acme' }),
    bad: [['missing email', { body: { password: 'long enough pw', account_name: 'a' } }, 400, 'missing_parameter'],
      ['password too short', { body: { email: 'short@example.com', password: 'short', account_name: 'a' } }, 400, 'invalid_parameter'],
      ['email of the wrong type', { body: { email: 1, password: 'long enough pw', account_name: 'a' } }, 400, 'invalid_parameter'],
      ['password too long', { body: { email: 'long@example.com', password: 'p'.repeat(257), account_name: 'a' } }, 400, 'invalid_parameter'],
      ['unknown field', { body: { email: 'u@example.com', password: 'long enough pw', account_name: 'a', role: 'admin' } }, 400, 'unknown_parameter']],
    strs: ['email', 'account_name', 'password'],
  },
  'POST /v1/auth/login': {
    who: 'none', path: () => '/v1/auth/login', ok: 200, body: () => ({ email: ctx.user.email, password: 'long enough pw' }),
    bad: [['missing password', { body: { email: 'x@example.com' } }, 400, 'missing_parameter'],
      ['wrong password', { body: { email: 'x@example.com', password: 'not the one' } }, 401],
      ['unknown field', { body: { email: 'x@example.com', password: 'x', remember: true } }, 400, 'unknown_parameter']],
    strs: ['email', 'password'],
  },
  'POST /v1/auth/logout': { who: 'session', session: async () => (await signup()).session, path: () => '/v1/auth/logout', ok: 200 },
  'POST /v1/auth/password': {
    who: 'session', session: async () => (await signup()).session, path: () => '/v1/auth/password', ok: 200,
    body: () => ({ current_password: 'long enough pw', new_password: 'another long one' }),
    bad: [['new password too short', { body: { current_password: 'long enough pw', new_password: 'x' } }, 400, 'invalid_parameter'],
      ['missing new password', { body: { current_password: 'long enough pw' } }, 400, 'missing_parameter']],
  },
  'GET /v1/auth/me': { who: 'key', path: () => '/v1/auth/me', ok: 200 },
  'POST /v1/api-keys': {
    who: 'key', path: () => '/v1/api-keys', body: () => ({ name: uniq('k') }), ok: 201,
    bad: [['unknown scope', { body: { scopes: ['root'] } }, 400, 'invalid_parameter'],
      ['expiry not a time', { body: { expires_at: 'tomorrow' } }, 400, 'invalid_parameter'],
      ['expiry in the past', { body: { expires_at: '2001-01-01T00:00:00Z' } }, 400, 'invalid_parameter'],
      ['name too long', { body: { name: 'n'.repeat(101) } }, 400, 'invalid_parameter'],
      ['scopes of the wrong type', { body: { scopes: 'manage' } }, 400, 'invalid_parameter'],
      ['unknown field', { body: { admin: true } }, 400, 'unknown_parameter']],
    strs: ['name', 'expires_at'],
  },
  'GET /v1/api-keys': { who: 'key', path: () => '/v1/api-keys', ok: 200 },
  'DELETE /v1/api-keys/{id}': {
    who: 'key', path: async () => `/v1/api-keys/${(await newKey(A())).id}`, ok: 200, foreign: () => `/v1/api-keys/${A().spareKey.id}`,
    bad: [['not an id', { path: '/v1/api-keys/abc' }, 404, 'api_key_not_found']],
  },
  'GET /v1/audit-log': {
    who: 'key', path: () => '/v1/audit-log', ok: 200,
    bad: [['limit 0', { path: '/v1/audit-log?limit=0' }, 400, 'invalid_parameter'],
      ["another account's log", { path: () => `/v1/audit-log?account_id=${ctx.B.acct}` }, 403, 'admin_only']],
  },
  'GET /v1/admin/accounts': {
    who: 'admin', path: () => '/v1/admin/accounts', ok: 200,
    bad: [['suspended not a boolean', { path: '/v1/admin/accounts?suspended=maybe' }, 400, 'invalid_parameter'],
      ['limit over the cap', { path: '/v1/admin/accounts?limit=201' }, 400, 'invalid_parameter']],
    qstrs: ['suspended'],
  },
  'GET /v1/admin/accounts/{id}': {
    who: 'admin', path: () => `/v1/admin/accounts/${ctx.B.acct}`, ok: 200,
    bad: [['no such account', { path: '/v1/admin/accounts/999999' }, 404, 'account_not_found'], ['not an id', { path: '/v1/admin/accounts/0x1' }, 404, 'account_not_found']],
  },
  'POST /v1/admin/accounts/{id}/suspend': {
    who: 'admin', path: async () => `/v1/admin/accounts/${(await signup()).acct}/suspend`, body: () => ({ reason: 'unpaid invoice' }), ok: 200,
    bad: [['reason of the wrong type', { path: () => `/v1/admin/accounts/${ctx.B.acct}/suspend`, body: { reason: 5 } }, 400, 'invalid_parameter'],
      ['reason too long', { path: () => `/v1/admin/accounts/${ctx.B.acct}/suspend`, body: { reason: 'r'.repeat(201) } }, 400, 'invalid_parameter'],
      ['unknown field', { path: () => `/v1/admin/accounts/${ctx.B.acct}/suspend`, body: { until: 'x' } }, 400, 'unknown_parameter'],
      ["the operator's own account", { path: () => `/v1/admin/accounts/${ctx.adminAcct}/suspend`, body: {} }, 409, 'operator_account'],
      ['no such account', { path: '/v1/admin/accounts/999999/suspend', body: {} }, 404, 'account_not_found']],
    strs: ['reason'],
  },
  'POST /v1/admin/accounts/{id}/unsuspend': { who: 'admin', path: () => `/v1/admin/accounts/${ctx.B.acct}/unsuspend`, ok: 200 },
  'GET /v1/admin/catalog': { who: 'admin', path: () => '/v1/admin/catalog', ok: 200 },
  'POST /v1/admin/catalog': {
    who: 'admin', path: () => '/v1/admin/catalog', ok: 201,
    body: () => ({ name: uniq('m'), family: 'llama', source: P.modelDir, context_length: 1024, parameter_count: 1000000, device_kinds: ['cpu'],
      sha256: 'a'.repeat(64), gpu_requirements: { [ctx.gpuType]: { min: 1, recommended: 2 } }, input_price_micros_per_mtok: 100, output_price_micros_per_mtok: 200 }),
    bad: [['missing family', { body: { name: 'm1', source: '/x', context_length: 1 } }, 400, 'missing_parameter'],
      ['context length 0', { body: { name: 'm1', family: 'f', source: '/x', context_length: 0 } }, 400, 'invalid_parameter'],
      ['context length of the wrong type', { body: { name: 'm1', family: 'f', source: '/x', context_length: '1k' } }, 400, 'invalid_parameter'],
      ['sha256 not hex', { body: { name: 'm1', family: 'f', source: '/x', context_length: 1, sha256: 'xyz' } }, 400, 'invalid_parameter'],
      ['name with a slash', { body: { name: 'a/b', family: 'f', source: '/x', context_length: 1 } }, 400, 'invalid_parameter'],
      ['family too long', { body: { name: 'm1', family: 'f'.repeat(51), source: '/x', context_length: 1 } }, 400, 'invalid_parameter'],
      ['unknown device kind', { body: { name: 'm1', family: 'f', source: '/x', context_length: 1, device_kinds: ['tpu'] } }, 400, 'invalid_parameter'],
      ['unknown GPU type', { body: { name: 'm1', family: 'f', source: '/x', context_length: 1, gpu_requirements: { nope: { min: 1 } } } }, 400, 'invalid_parameter'],
      ['recommended below min', { body: { name: 'm1', family: 'f', source: '/x', context_length: 1, gpu_requirements: { nope: { min: 4, recommended: 2 } } } }, 400, 'invalid_parameter'],
      ['negative price', { body: { name: 'm1', family: 'f', source: '/x', context_length: 1, input_price_micros_per_mtok: -1 } }, 400, 'invalid_parameter'],
      ['name taken', { body: { name: 'demo-tiny', family: 'f', source: '/x', context_length: 1 } }, 409, 'name_taken'],
      ['unknown field', { body: { name: 'm1', family: 'f', source: '/x', context_length: 1, license: 'mit' } }, 400, 'unknown_parameter']],
    strs: ['name', 'family', 'source', 'sha256'],
  },
  'PATCH /v1/admin/catalog/{name}': {
    who: 'admin', path: () => `/v1/admin/catalog/${ctx.model.id}`, body: () => ({ parameter_count: 2000000 }), ok: 200,
    bad: [['no such model', { path: '/v1/admin/catalog/nope', body: {} }, 404, 'not_found'],
      ['context length negative', { body: { context_length: -1 } }, 400, 'invalid_parameter'],
      ['renaming', { body: { name: 'other' } }, 400, 'unknown_parameter']],
    strs: ['family', 'source'],
  },
  'POST /v1/admin/catalog/{name}/retire': {
    who: 'admin', path: async () => `/v1/admin/catalog/${(await newModel()).id}/retire`, ok: 200,
    bad: [['no such model', { path: '/v1/admin/catalog/nope/retire' }, 404, 'not_found']],
  },
  'GET /v1/admin/gpu-types': { who: 'admin', path: () => '/v1/admin/gpu-types', ok: 200 },
  'POST /v1/admin/gpu-types': {
    who: 'admin', path: () => '/v1/admin/gpu-types', ok: 201,
    body: () => ({ name: uniq('h100'), micros_per_gpu_hour: 2_000_000, model_match: 'NVIDIA H100 80GB HBM3', memory_mib: 81559 }),
    bad: [['missing price', { body: { name: 'g1' } }, 400, 'missing_parameter'],
      ['negative price', { body: { name: 'g1', micros_per_gpu_hour: -1 } }, 400, 'invalid_parameter'],
      ['price of the wrong type', { body: { name: 'g1', micros_per_gpu_hour: '1' } }, 400, 'invalid_parameter'],
      ['upper-case name', { body: { name: 'H100', micros_per_gpu_hour: 1 } }, 400, 'invalid_parameter'],
      ['unknown device kind', { body: { name: 'g1', micros_per_gpu_hour: 1, device_kind: 'tpu' } }, 400, 'invalid_parameter'],
      ['name taken', { body: { name: 'taken-type', micros_per_gpu_hour: 1 } }, 409, 'name_taken'],
      ['unknown field', { body: { name: 'g1', micros_per_gpu_hour: 1, vendor: 'x' } }, 400, 'unknown_parameter']],
    strs: ['name', 'model_match', 'device_kind'],
  },
  'PATCH /v1/admin/gpu-types/{name}': {
    who: 'admin', path: () => `/v1/admin/gpu-types/${ctx.gpuType}`, body: () => ({ memory_mib: 81920 }), ok: 200,
    bad: [['no such type', { path: '/v1/admin/gpu-types/nope', body: {} }, 404, 'not_found'],
      ['changing the device kind', { body: { device_kind: 'cpu' } }, 400, 'unknown_parameter'],
      ['price of the wrong type', { body: { micros_per_gpu_hour: 1.5 } }, 400, 'invalid_parameter']],
    strs: ['model_match'],
  },
  'POST /v1/chat/completions': {
    who: 'key', gw: true, needsReady: true, path: () => '/v1/chat/completions', body: () => chat(A().ep.name), ok: 200,
    foreign: () => '/v1/chat/completions', foreignBody: () => chat(A().ep.name),
    bad: [['missing messages', { body: () => ({ model: A().ep.name }) }, 400], ['unsupported parameter', { body: () => ({ ...chat(A().ep.name), tools: [] }) }, 400],
      ['malformed JSON', { raw: '{' }, 400, 'invalid_json']],
    strs: ['model'],
  },
  'POST /v1/completions': {
    who: 'key', gw: true, needsReady: true, path: () => '/v1/completions', body: () => ({ model: A().ep.name, prompt: 'hi', max_tokens: 2 }), ok: 200,
    foreign: () => '/v1/completions', foreignBody: () => ({ model: A().ep.name, prompt: 'hi', max_tokens: 2 }),
    bad: [['malformed JSON', { raw: '{' }, 400, 'invalid_json']],
    strs: ['model'],
  },
  'GET /v1/models': { who: 'key', gw: true, path: () => '/v1/models', ok: 200 },
};

const resolve = async (v) => (typeof v === 'function' ? v() : v);
const credential = (row, key) => (row.who === 'admin' ? key ?? P.adminKey : key ?? A().key);

before(async () => {
  await P.start({ cpuSlots: 2 });
  ctx.adminAcct = (await call('GET', '/v1/auth/me', { key: P.adminKey })).json.account.id;
  ctx.A = await account('a@example.com');
  ctx.B = await account('b@example.com');
  ctx.A.ep = await newEndpoint(ctx.A); // becomes ready while the table runs
  ctx.A.spare = await newEndpoint(ctx.A);
  ctx.A.spareKey = await newKey(ctx.A);
  ctx.A.inferenceKey = (await newKey(ctx.A, { scopes: ['inference'] })).key;
  ctx.A.manageKey = (await newKey(ctx.A, { scopes: ['manage'] })).key;
  const revoked = await newKey(ctx.A);
  assert.equal((await call('DELETE', `/v1/api-keys/${revoked.id}`, { key: ctx.A.key })).status, 200);
  ctx.A.revokedKey = revoked.key;
  ctx.A.expiredKey = (await newKey(ctx.A, { expires_at: new Date(Date.now() + 1500).toISOString() })).key;
  ctx.D = await account('d@example.com');
  const s = await call('POST', `/v1/admin/accounts/${ctx.D.acct}/suspend`, { key: P.adminKey, body: { reason: 'test' } });
  assert.equal(s.status, 200, s.text);
  ctx.host = await fakeHost();
  const g = await call('POST', '/v1/admin/gpu-types', { key: P.adminKey, body: { name: 'taken-type', micros_per_gpu_hour: 1 } });
  assert.equal(g.status, 201, g.text);
  ctx.gpuType = 'taken-type';
  ctx.model = await newModel();
  // The operator's own endpoints (stopped: they hold no device), one billed by value (shareable)
  // and one by time.
  const ac = await call('POST', `/v1/admin/accounts/${ctx.adminAcct}/credits`, { key: P.adminKey, body: { amount_micros: 100_000_000, idempotency_key: uniq('c') } });
  assert.equal(ac.status, 201, ac.text);
  const admin = { key: P.adminKey };
  ctx.valueEp = await newEndpoint(admin, { billing_mode: 'value' });
  ctx.timeEp = await newEndpoint(admin);
  for (const ep of [ctx.valueEp, ctx.timeEp]) assert.equal((await call('POST', `/v1/endpoints/${ep.id}/stop`, { key: P.adminKey })).status, 200);
  ctx.user = await signup();
  await sleep(1600); // the expired key's time runs out
}, { timeout: 180000 });

after(async () => { await P.stop(); });

test('every documented route has a row in this table, and every row a documented route', () => {
  const keys = documented().map((d) => d.key);
  assert.deepEqual(keys.filter((k) => !ROWS[k]), [], 'routes without a row');
  assert.deepEqual(Object.keys(ROWS).filter((k) => !keys.includes(k)), [], 'rows of no documented route');
});

async function happy(d, row) {
  const p = await resolve(row.path);
  const session = row.session ? await row.session() : undefined;
  const r = await call(d.method, p, { key: row.who === 'none' || session ? undefined : credential(row), session, body: row.body?.(), gw: row.gw, stream: row.stream });
  assert.equal(r.status, row.ok, `${d.key}: ${r.text.slice(0, 500)}`);
  check(d.method, d.route, r);
  row.expect?.(r);
  return r;
}

test('the happy path of every route', { timeout: 120000 }, async () => {
  await waitFor('the endpoint to be ready', async () => (await call('GET', `/v1/endpoints/${A().ep.id}`, { key: A().key })).json?.status === 'ready', 90000, 300);
  for (const d of documented()) await happy(d, ROWS[d.key]);
});

test('each class of bad input gets its 4xx with the error shape, on every route that takes input', async () => {
  for (const d of documented()) {
    const row = ROWS[d.key];
    for (const [label, spec, status, code] of row.bad ?? []) {
      const p = spec.path ? await resolve(spec.path) : await resolve(row.path);
      const session = row.session ? await row.session() : undefined;
      const r = await call(d.method, p, { key: row.who === 'none' || session ? undefined : credential(row), session, body: await resolve(spec.body), raw: spec.raw, headers: spec.headers, gw: row.gw });
      err(r, status, code, `${d.key} ${label}`);
      check(d.method, d.route, r);
    }
  }
});

test('credentials: none, wrong, malformed, revoked, expired, without the scope, suspended account', async () => {
  const wrong = 'orp_sk_' + '0'.repeat(48);
  const fixed = wrong + (await import('node:crypto')).createHash('sha256').update('0'.repeat(48)).digest('hex').slice(0, 8);
  for (const d of documented()) {
    const row = ROWS[d.key];
    if (row.who === 'none') continue;
    // Routes that use an object up get a made-up id: the credential is refused before any look-up.
    const path = row.path.constructor.name === 'AsyncFunction' ? d.route.replace(/\{[^}]*\}/g, '1') : await resolve(row.path);
    const body = row.body?.();
    const cases = [
      ['no credentials', undefined, 401],
      ['a malformed key', 'orp_sk_nope', 401],
      ['a well-formed unknown key', fixed, 401],
      ['a bad checksum', wrong + 'ffffffff', 401],
      ['a revoked key', A().revokedKey, 401],
      ['an expired key', A().expiredKey, 401],
      ["a suspended account's key", ctx.D.key, 403, 'account_suspended'],
      ['a key without the scope', row.gw ? A().manageKey : A().inferenceKey, 403, 'insufficient_scope'],
    ];
    for (const [label, key, status, code] of cases) {
      const r = await call(d.method, path, { key, body, gw: row.gw });
      err(r, status, code, `${d.key} with ${label}`);
      check(d.method, d.route, r);
    }
  }
});

test("another account's ids are 404 on every route that takes one, never the object", async () => {
  let n = 0;
  for (const d of documented()) {
    const row = ROWS[d.key];
    if (!row.foreign) continue;
    n++;
    const r = await call(d.method, await resolve(row.foreign), { key: ctx.B.key, body: row.foreignBody?.() ?? row.body?.(), gw: row.gw });
    assert.equal(r.status, 404, `${d.key} as B: ${r.text}`);
    assert.ok(r.json?.error && Object.keys(r.json).length === 1, `${d.key}: only an error: ${r.text}`);
    check(d.method, d.route, r);
  }
  assert.ok(n >= 9, `${n} routes take an id`);
  // The objects are untouched: A's endpoints are still there, not stopped, A's key still listed.
  const ep = await call('GET', `/v1/endpoints/${A().ep.id}`, { key: A().key });
  assert.equal(ep.json.status, 'ready', ep.text);
  assert.ok((await call('GET', '/v1/api-keys', { key: A().key })).json.data.some((k) => k.id === A().spareKey.id));
});

test('admin routes answer a customer 403 admin_only', async () => {
  let n = 0;
  for (const d of documented()) {
    const row = ROWS[d.key];
    if (row.who !== 'admin') continue;
    n++;
    const p = await resolve(row.path);
    const r = await call(d.method, p, { key: A().key, body: row.body?.() });
    err(r, 403, 'admin_only', `${d.key} as a customer`);
    check(d.method, d.route, r);
  }
  assert.ok(n >= 20, `${n} admin routes`);
});

test('SQL-injection and control-character strings: a 4xx or stored as plain text, never a 5xx or SQL error text', { timeout: 300000 }, async () => {
  // A customer with room for what these calls may create.
  const E = await account('e@example.com', 1_000_000_000);
  const q = await call('PUT', `/v1/admin/accounts/${E.acct}/quotas`, { key: P.adminKey, body: { max_devices: 100000, max_endpoints: 100000 } });
  assert.equal(q.status, 200, q.text);
  let stored = 0, refused = 0;
  const judge = (what, r, sent, field) => {
    assert.ok(r.status < 500, `${what}: ${r.status} ${r.text.slice(0, 300)}`);
    assert.doesNotMatch(r.text, SQL_ERROR, `${what}: SQL error text in ${r.text.slice(0, 300)}`);
    if (r.status < 300) {
      stored++;
      const echoed = r.json?.[field];
      if (typeof echoed === 'string' && field !== 'password') assert.equal(echoed, sent, `${what}: stored as sent`);
    } else {
      refused++;
      assert.ok(r.json?.error, `${what}: an error body`);
    }
  };
  for (const d of documented()) {
    const row = ROWS[d.key];
    if (row.needsReady && row.gw) continue; // the gateway's strings are below, without a runtime
    const key = row.who === 'admin' ? P.adminKey : E.key;
    for (const field of row.strs ?? []) {
      for (const s of EVIL) {
        const session = row.session ? await row.session() : undefined;
        const p = await resolve(row.path);
        if (p.includes(A().ep.id) || p.includes(A().spare.id)) continue;
        const body = { ...(row.body?.() ?? {}), [field]: s };
        const r = await call(d.method, p, { key: row.who === 'none' || session ? undefined : key, session, body, gw: row.gw });
        judge(`${d.key} ${field}=${JSON.stringify(s).slice(0, 40)}`, r, s, field);
      }
    }
    for (const name of row.qstrs ?? []) {
      for (const s of EVIL) {
        let base = await resolve(row.path);
        if (base.includes(A().ep.id)) base = base.replace(A().ep.id, (await newEndpoint(E)).id);
        const r = await call(d.method, `${base}${base.includes('?') ? '&' : '?'}${name}=${enc(s)}`, { key });
        judge(`${d.key} ?${name}=${JSON.stringify(s).slice(0, 40)}`, r, s, name);
      }
    }
  }
  // Path ids: every route with one, with each string in its place.
  for (const d of documented().filter((x) => x.route.includes('{'))) {
    const row = ROWS[d.key];
    const key = row.who === 'admin' ? P.adminKey : row.who === 'none' ? undefined : E.key;
    for (const s of EVIL) {
      const p = d.route.replace(/\{[^}]*\}/, enc(s)).replace(/\{[^}]*\}/g, '1');
      const r = await call(d.method, p, { key, body: row.body?.(), gw: row.gw });
      judge(`${d.key} path ${JSON.stringify(s).slice(0, 40)}`, r, s, 'id');
      assert.ok(r.status >= 400, `${d.key} path ${JSON.stringify(s).slice(0, 40)}: ${r.status}`);
    }
  }
  // The gateway's model names.
  for (const s of EVIL) {
    judge(`chat model ${JSON.stringify(s).slice(0, 40)}`, await call('POST', '/v1/chat/completions', { key: E.key, gw: true, body: chat(s) }), s, 'model');
  }
  assert.ok(stored > 10 && refused > 100, `stored ${stored}, refused ${refused}`);
  // What was stored reads back as the same text (an API key's name, an endpoint's pool).
  const keys = (await call('GET', '/v1/api-keys', { key: E.key })).json.data.map((k) => k.name);
  assert.ok(keys.includes("'; DROP TABLE accounts; --") && keys.includes('😀 ünïcödé'), JSON.stringify(keys).slice(0, 300));
  assert.ok((await P.db.query('SELECT count(*)::int AS n FROM accounts')).rows[0].n > 3, 'accounts still there');
});

// ---- what the new admin routes do ----

test('suspension: 403 account_suspended on the API and the gateway, for keys and sessions; endpoints stop with the reason; audit-logged; unsuspend', async () => {
  const u = await signup();
  const credit = await call('POST', `/v1/admin/accounts/${u.acct}/credits`, { key: P.adminKey, body: { amount_micros: 10_000_000, idempotency_key: uniq('c') } });
  assert.equal(credit.status, 201, credit.text);
  const ep = await call('POST', '/v1/endpoints', { session: u.session, body: { name: 'sus', model: 'demo-tiny' } });
  assert.equal(ep.status, 201, ep.text);
  const k = await call('POST', '/v1/api-keys', { session: u.session, body: { name: 'x' } });
  assert.equal((await call('GET', '/v1/endpoints', { key: k.json.key })).status, 200); // now in the key cache
  const s = await call('POST', `/v1/admin/accounts/${u.acct}/suspend`, { key: P.adminKey, body: { reason: 'chargeback' } });
  assert.equal(s.status, 200, s.text);
  assert.equal(s.json.suspended, true);
  assert.equal(s.json.suspend_reason, 'chargeback');
  assert.ok(s.json.suspended_at);
  for (const r of [await call('GET', '/v1/endpoints', { key: k.json.key }), await call('GET', '/v1/auth/me', { session: u.session }),
    await call('POST', '/v1/chat/completions', { key: k.json.key, gw: true, body: chat('sus') })]) {
    err(r, 403, 'account_suspended', 'suspended');
    assert.match(r.json.error.message, /suspended: chargeback/);
  }
  const row = (await P.db.query('SELECT state, state_reason FROM endpoints WHERE id = $1', [ep.json.id])).rows[0];
  assert.deepEqual(row, { state: 'stopped', state_reason: 'account suspended: chargeback' });
  err(await call('POST', '/v1/auth/login', { body: { email: u.email, password: 'long enough pw' } }), 403, 'account_suspended', 'log-in');
  err(await call('POST', '/v1/auth/login', { body: { email: u.email, password: 'wrong password' } }), 401, 'invalid_credentials', 'a wrong password says nothing of it');
  const audit = (await call('GET', `/v1/audit-log?account_id=${ctx.adminAcct}`, { key: P.adminKey })).json.data;
  assert.ok(audit.some((e) => e.route === '/v1/admin/accounts/{}/suspend' && e.object_id === String(u.acct)), 'the suspension is in the audit log');
  const listed = await call('GET', '/v1/admin/accounts?suspended=true', { key: P.adminKey });
  assert.ok(listed.json.data.some((a) => a.id === String(u.acct)));
  assert.ok(listed.json.data.every((a) => a.suspended));
  const un = await call('POST', `/v1/admin/accounts/${u.acct}/unsuspend`, { key: P.adminKey });
  assert.equal(un.json.suspended, false);
  const back = await call('GET', `/v1/endpoints/${ep.json.id}`, { key: k.json.key });
  assert.equal(back.status, 200, back.text);
  assert.equal(back.json.status, 'stopped');
  assert.equal(back.json.status_reason, 'account suspended: chargeback');
  assert.equal((await call('GET', '/v1/auth/me', { session: u.session })).status, 200);
});

test('admin accounts: cursor pagination over every account', async () => {
  const seen = [];
  let after = '';
  for (let i = 0; i < 50; i++) {
    const r = await call('GET', `/v1/admin/accounts?limit=2${after}`, { key: P.adminKey });
    assert.equal(r.status, 200, r.text);
    check('GET', '/v1/admin/accounts', r);
    seen.push(...r.json.data.map((a) => Number(a.id)));
    if (!r.json.has_more) break;
    after = `&starting_after=${r.json.next_starting_after}`;
  }
  const all = (await P.db.query('SELECT id FROM accounts ORDER BY id DESC')).rows.map((x) => Number(x.id));
  assert.deepEqual(seen, all);
  const one = await call('GET', `/v1/admin/accounts/${ctx.B.acct}`, { key: P.adminKey });
  assert.ok(one.json.balance_micros > 0 && /USD$/.test(one.json.balance_display), one.text);
});

test('catalog: created with its fields, shown to customers, updated (prices versioned), retired: hidden and not deployable, running endpoints untouched', async () => {
  const m = await newModel({ parameter_count: 8_000_000_000, sha256: 'b'.repeat(64), gpu_requirements: { [ctx.gpuType]: { min: 2, recommended: 4 } }, input_price_micros_per_mtok: 5 });
  assert.deepEqual(m.gpu_requirements, { [ctx.gpuType]: { min: 2, recommended: 4 } });
  const seen = (await call('GET', '/v1/catalog', { key: A().key })).json.data.find((x) => x.id === m.id);
  assert.equal(seen.parameter_count, 8_000_000_000);
  assert.equal(seen.sha256, 'b'.repeat(64));
  const up = await call('PATCH', `/v1/admin/catalog/${m.id}`, { key: P.adminKey, body: { input_price_micros_per_mtok: 7, context_length: 2048 } });
  assert.equal(up.status, 200, up.text);
  assert.equal(up.json.context_length, 2048);
  assert.equal(up.json.family, 'llama', 'fields not named stay');
  const prices = (await P.db.query('SELECT mp.input_price_micros_per_mtok AS p FROM model_prices mp JOIN models m ON m.id = mp.model_id WHERE m.name = $1 ORDER BY mp.id', [m.id])).rows.map((x) => Number(x.p));
  assert.deepEqual(prices, [5, 7]);
  const running = await newEndpoint(A(), { model: m.id });
  const ret = await call('POST', `/v1/admin/catalog/${m.id}/retire`, { key: P.adminKey });
  assert.ok(ret.json.retired_at, ret.text);
  assert.ok(!(await call('GET', '/v1/catalog', { key: A().key })).json.data.some((x) => x.id === m.id));
  assert.ok((await call('GET', '/v1/admin/catalog', { key: P.adminKey })).json.data.some((x) => x.id === m.id && x.retired_at));
  err(await call('POST', '/v1/endpoints', { key: A().key, body: { name: uniq('r'), model: m.id } }), 400, 'model_not_found');
  const still = await call('GET', `/v1/endpoints/${running.id}`, { key: A().key });
  assert.equal(still.status, 200);
  assert.notEqual(still.json.status, 'stopped');
  assert.equal((await call('DELETE', `/v1/endpoints/${running.id}`, { key: A().key })).status, 200);
});

test('GPU types: a price change is a new version, history is never rewritten', async () => {
  const name = uniq('a100');
  const c = await call('POST', '/v1/admin/gpu-types', { key: P.adminKey, body: { name, micros_per_gpu_hour: 1_500_000, memory_mib: 40960 } });
  assert.equal(c.status, 201, c.text);
  assert.equal(c.json.price_display, '1.500000 USD');
  const same = await call('PATCH', `/v1/admin/gpu-types/${name}`, { key: P.adminKey, body: { micros_per_gpu_hour: 1_500_000 } });
  assert.equal(same.json.price_history.length, 1, 'the same price again adds no version');
  const up = await call('PATCH', `/v1/admin/gpu-types/${name}`, { key: P.adminKey, body: { micros_per_gpu_hour: 1_800_000 } });
  assert.equal(up.status, 200, up.text);
  assert.equal(up.json.micros_per_gpu_hour, 1_800_000);
  assert.deepEqual(up.json.price_history.map((p) => p.micros_per_gpu_hour), [1_800_000, 1_500_000]);
  assert.equal(up.json.memory_mib, 40960);
  await assert.rejects(P.db.query('UPDATE gpu_type_prices SET micros_per_gpu_hour = 1'), /append-only/);
  await assert.rejects(P.db.query('DELETE FROM gpu_type_prices'), /append-only/);
  const list = await call('GET', '/v1/admin/gpu-types', { key: P.adminKey });
  assert.ok(list.json.data.some((g) => g.id === name && g.micros_per_gpu_hour === 1_800_000));
});

test('Idempotency-Key on the admin creating POSTs: same key and body → the same reply; another body → 409', async () => {
  for (const [p, body] of [['/v1/admin/gpu-types', { name: uniq('idem'), micros_per_gpu_hour: 1 }],
    ['/v1/admin/catalog', { name: uniq('idem'), family: 'f', source: '/x', context_length: 1 }]]) {
    const headers = { 'Idempotency-Key': uniq('ik') };
    const r1 = await call('POST', p, { key: P.adminKey, body, headers });
    const r2 = await call('POST', p, { key: P.adminKey, body, headers });
    assert.equal(r1.status, 201, r1.text);
    assert.equal(r2.status, 201, r2.text);
    assert.equal(r2.headers.get('idempotent-replayed'), 'true');
    assert.deepEqual(r2.json, r1.json);
    err(await call('POST', p, { key: P.adminKey, body: { ...body, name: uniq('other') }, headers }), 409, 'idempotency_key_reused');
  }
  // Enrollment tokens: the replay shows the token without its secret (only the hash exists).
  const headers = { 'Idempotency-Key': uniq('ik') };
  const t1 = await call('POST', '/v1/admin/enrollment-tokens', { key: P.adminKey, body: { ttl_s: 60 }, headers });
  const t2 = await call('POST', '/v1/admin/enrollment-tokens', { key: P.adminKey, body: { ttl_s: 60 }, headers });
  assert.equal(t1.status, 201, t1.text);
  assert.match(t1.json.token, /^orp_et_/);
  assert.equal(t2.status, 201, t2.text);
  assert.equal(t2.headers.get('idempotent-replayed'), 'true');
  assert.equal(t2.json.id, t1.json.id);
  assert.equal(t2.json.token, undefined);
  check('POST', '/v1/admin/enrollment-tokens', t2);
  err(await call('POST', '/v1/admin/enrollment-tokens', { key: P.adminKey, body: { ttl_s: 61 }, headers }), 409, 'idempotency_key_reused');
  const stored = (await P.db.query('SELECT body FROM idempotency_keys WHERE key = $1', [headers['Idempotency-Key']])).rows[0].body;
  assert.ok(!stored.includes(t1.json.token), 'no secret in the idempotency row');
  // Concurrent duplicates make one GPU type.
  const name = uniq('race');
  const race = { 'Idempotency-Key': uniq('ik') };
  const rs = await Promise.all(Array.from({ length: 20 }, () => call('POST', '/v1/admin/gpu-types', { key: P.adminKey, body: { name, micros_per_gpu_hour: 3 }, headers: race })));
  assert.ok(rs.every((r) => r.status === 201), rs.map((r) => r.status).join(','));
  assert.equal((await P.db.query('SELECT count(*)::int AS n FROM gpu_types WHERE name = $1', [name])).rows[0].n, 1);
});

test('enrollment tokens: listed with their state; a revoked token enrolls nothing; a used one cannot be revoked', async () => {
  const id = await newToken();
  const tok = (await call('GET', '/v1/admin/enrollment-tokens?limit=200', { key: P.adminKey })).json.data.find((t) => t.id === id);
  assert.equal(tok.state, 'active');
  const c = await call('POST', '/v1/admin/enrollment-tokens', { key: P.adminKey, body: {} });
  const del = await call('DELETE', `/v1/admin/enrollment-tokens/${c.json.id}`, { key: P.adminKey });
  assert.equal(del.json.state, 'revoked', del.text);
  const reg = await P.agentApi('/agent/v1/register', c.json.token, { name: uniq('h'), address: '127.0.0.1', agent_version: 't', devices: [] });
  assert.equal(reg.status, 401, reg.text);
  const used = await call('POST', '/v1/admin/enrollment-tokens', { key: P.adminKey, body: {} });
  const ok = await P.agentApi('/agent/v1/register', used.json.token, { name: uniq('h'), address: '127.0.0.1', agent_version: 't', devices: [] });
  assert.equal(ok.status, 200, ok.text);
  err(await call('DELETE', `/v1/admin/enrollment-tokens/${used.json.id}`, { key: P.adminKey }), 409, 'enrollment_token_used');
});

test('endpoints: cursor pagination with a limit cap, filters by state, model and name; replicas with state, reason, host and devices', async () => {
  const C = await account('c@example.com');
  const made = [];
  for (let i = 0; i < 5; i++) made.push(await newEndpoint(C));
  assert.equal((await call('POST', `/v1/endpoints/${made[1].id}/stop`, { key: C.key })).status, 200);
  const seen = [];
  let after = '';
  for (;;) {
    const r = await call('GET', `/v1/endpoints?limit=2${after}`, { key: C.key });
    check('GET', '/v1/endpoints', r);
    assert.ok(r.json.data.length <= 2);
    seen.push(...r.json.data.map((e) => e.id));
    if (!r.json.has_more) break;
    after = `&starting_after=${r.json.next_starting_after}`;
  }
  assert.deepEqual(seen, made.map((e) => e.id));
  // The listing cache: this API's own changes show at once (the stop above); a change made
  // elsewhere (here: straight in the database, as the scheduler would) shows within its TTL.
  const before = (await call('GET', `/v1/endpoints?name=${made[1].name}`, { key: C.key })).json.data[0];
  assert.equal(before.status_reason, 'stopped by its owner');
  await P.db.query("UPDATE endpoints SET state_reason = 'changed elsewhere' WHERE id = $1", [made[1].id]);
  await waitFor('the listing to show it', async () =>
    (await call('GET', `/v1/endpoints?name=${made[1].name}`, { key: C.key })).json.data[0].status_reason === 'changed elsewhere', 5000, 50);
  const stopped = await call('GET', '/v1/endpoints?state=stopped', { key: C.key });
  assert.deepEqual(stopped.json.data.map((e) => e.id), [made[1].id]);
  assert.deepEqual((await call('GET', `/v1/endpoints?name=${made[3].name}`, { key: C.key })).json.data.map((e) => e.id), [made[3].id]);
  assert.equal((await call('GET', '/v1/endpoints?model=demo-tiny', { key: C.key })).json.data.length, 5);
  assert.equal((await call('GET', '/v1/endpoints?model=nope', { key: C.key })).json.data.length, 0);
  // Another account's cursor shows nothing of it.
  assert.equal((await call('GET', `/v1/endpoints?starting_after=${made[0].id}`, { key: A().key })).json.data.length, 0);
  const reps = await call('GET', `/v1/endpoints/${A().ep.id}/replicas`, { key: A().key });
  check('GET', '/v1/endpoints/{id}/replicas', reps);
  assert.equal(reps.json.data[0].state, 'ready');
  assert.equal(reps.json.data[0].host, 'e2e-host');
  assert.equal(reps.json.data[0].devices.length, 1);
  const stoppedReps = await call('GET', `/v1/endpoints/${made[1].id}/replicas?include_stopped=true`, { key: C.key });
  assert.ok(stoppedReps.json.data.length >= 1 && stoppedReps.json.data.every((r) => ['stopped', 'stopping'].includes(r.state)), stoppedReps.text);
  assert.equal((await call('GET', `/v1/endpoints/${made[1].id}/replicas`, { key: C.key })).json.data.filter((r) => r.state === 'stopped').length, 0);
});

// ---- the HTTP front: libmicrohttpd's own TLS, idle timeout, memory per connection ----

function httpsCall(port, ca, method, p, body) {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, method, path: p, ca, headers: body ? { 'Content-Type': 'application/json' } : {} }, (res) => {
      let text = '';
      res.on('data', (c) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text, json: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end(body ? JSON.stringify(body) : undefined);
  });
}

test('TLS with --tls-cert/--tls-key: HTTPS only, Secure cookies; idle connections time out; oversized headers are refused; X-Request-Id echoed or made', { timeout: 60000 }, async () => {
  const cert = path.join(P.tmp, 'cert.pem'), keyFile = path.join(P.tmp, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile,
    '-out', cert, '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-days', '1'], { stdio: 'ignore' });
  const port = await freePort();
  const args = [...P.controllerArgs];
  args[args.indexOf('--api-port') + 1] = String(port);
  P.spawn('controller-tls', bin.controller, [...args, '--only', 'api', '--no-leader', '--tls-cert', cert, '--tls-key', keyFile,
    '--connection-timeout-s', '1']);
  const ca = fs.readFileSync(cert);
  await waitFor('the TLS listener', async () => (await httpsCall(port, ca, 'GET', '/healthz').catch(() => ({}))).status === 200, 20000, 100);
  const login = await httpsCall(port, ca, 'POST', '/v1/auth/login', { email: ctx.user.email, password: 'long enough pw' });
  assert.equal(login.status, 200, login.text);
  assert.match(login.headers['set-cookie'].join(';'), /orp_session=[0-9a-f]{64};.*HttpOnly; SameSite=Lax;.*Secure/);
  assert.ok(login.json.csrf_token);
  // Plain HTTP on the TLS port gets no HTTP answer.
  await assert.rejects(fetch(`http://127.0.0.1:${port}/healthz`));
  // An idle connection (TLS handshake done, no request) is closed after --connection-timeout-s.
  const closed = await new Promise((resolve) => {
    const t0 = Date.now();
    const sock = tls.connect({ port, host: '127.0.0.1', ca });
    sock.on('close', () => resolve(Date.now() - t0));
    sock.on('error', () => {});
    setTimeout(() => { sock.destroy(); resolve(-1); }, 10000);
  });
  assert.ok(closed > 0, 'the idle connection was closed by the server');
  // On plain HTTP, a connection that never sends a byte, or stops mid-header, is closed too.
  const plain = await freePort();
  const pargs = [...P.controllerArgs];
  pargs[pargs.indexOf('--api-port') + 1] = String(plain);
  P.spawn('controller-timeout', bin.controller, [...pargs, '--only', 'api', '--no-leader', '--connection-timeout-s', '1']);
  await waitFor('the plain listener', async () => (await fetch(`http://127.0.0.1:${plain}/healthz`).catch(() => ({}))).ok, 20000, 100);
  for (const partial of ['', 'GET /healthz HTTP/1.1\r\nHost: x\r\n']) {
    const gone = await new Promise((resolve) => {
      const sock = net.connect(plain, '127.0.0.1', () => { if (partial) sock.write(partial); });
      sock.on('close', () => resolve(true));
      sock.on('error', () => {});
      setTimeout(() => { sock.destroy(); resolve(false); }, 10000);
    });
    assert.ok(gone, `an idle connection (${JSON.stringify(partial)}) was closed by the server`);
  }
  // Headers beyond the per-connection memory (64 KiB) are refused, not buffered.
  const big = await fetch(`${P.apiUrl}/healthz`, { headers: { 'X-Big': 'x'.repeat(100 * 1024) } }).then((r) => r.status, () => 'closed');
  assert.ok([413, 431, 'closed'].includes(big), `oversized headers: ${big}`);
  assert.equal((await fetch(`${P.apiUrl}/healthz`, { headers: { 'X-Big': 'x'.repeat(16 * 1024) } })).status, 200, 'ordinary large headers pass');
  // X-Request-Id: a client's plain token is echoed (and is the audit row's request id); anything
  // else is replaced by one made here.
  const mine = await call('POST', '/v1/api-keys', { key: A().key, body: { name: 'rid' }, headers: { 'X-Request-Id': 'client-trace.42' } });
  assert.equal(mine.headers.get('x-request-id'), 'client-trace.42');
  const audit = (await call('GET', '/v1/audit-log?limit=5', { key: A().key })).json.data;
  assert.ok(audit.some((e) => e.request_id === 'client-trace.42'), JSON.stringify(audit).slice(0, 300));
  for (const bad of ['a b', 'x'.repeat(65), '<script>', 'é']) {
    const r = await fetch(`${P.apiUrl}/healthz`, { headers: { 'X-Request-Id': Buffer.from(bad).toString('latin1') } });
    assert.match(r.headers.get('x-request-id'), /^[0-9a-f]{16}$/, `${bad} is replaced`);
  }
  assert.match((await fetch(`${P.apiUrl}/healthz`)).headers.get('x-request-id'), /^[0-9a-f]{16}$/);
});

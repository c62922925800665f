// Accounts and credentials: sign-up, log-in, sessions (cookie flags, rotation, CSRF, idle end,
// log-out, password change), cookie auth on the API and the gateway, API keys (format and
// checksum, scopes, endpoint limits, expiry, revocation on the next request, listing without
// secrets, old sk-orp- keys), the sign-up switch and Secure cookies, and the audit log.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Platform, bin, freePort, sessionOf, sleep, waitFor } from './harness.js';

const P = new Platform();
let ctl2; // a second controller (api only) with --signup off --cookie-secure

before(async () => {
  await P.start({ cpuSlots: 2 });
  const port = await freePort();
  const args = [...P.controllerArgs];
  args[args.indexOf('--api-port') + 1] = String(port);
  ctl2 = `http://127.0.0.1:${port}`;
  P.spawn('controller2', bin.controller, [...args, '--only', 'api', '--no-leader', '--signup', 'off', '--cookie-secure']);
  await waitFor('controller2', async () => (await fetch(`${ctl2}/healthz`)).ok, 20000, 100);
}, { timeout: 180000 });

after(async () => { await P.stop(); });

// One request with optional key, session (cookie + CSRF token) and raw headers; base: another listener.
const call = (method, path, opts) => P.call(method, path, opts);

function err(r, status, code) {
  assert.equal(r.status, status, r.text);
  assert.ok(r.json?.error, r.text);
  if (code) assert.equal(r.json.error.code, code, r.text);
}

const chatBody = (model) => ({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });

let alice; // { session, account, user }
let aliceEndpoint, aliceEndpoint2;

test('sign-up makes an account with its owner, logged in; cookie flags and argon2id', async () => {
  const r = await call('POST', '/v1/auth/signup', { body: { email: 'Alice@Example.com', password: 'correct horse', account_name: 'Alice Inc' } });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.json.object, 'user');
  assert.equal(r.json.role, 'owner');
  assert.equal(r.json.account.name, 'Alice Inc');
  assert.match(r.json.csrf_token, /^[0-9a-f]{32}$/);
  const s = sessionOf(r);
  assert.match(s.token, /^[0-9a-f]{64}$/); // 256 random bits
  assert.match(s.cookie, /; HttpOnly/);
  assert.match(s.cookie, /; SameSite=Lax/);
  assert.match(s.cookie, /; Path=\//);
  assert.doesNotMatch(s.cookie, /Secure/);
  alice = { session: s, account: r.json.account.id, user: r.json.id };

  const u = await P.db.query("SELECT password_hash FROM users WHERE lower(email) = 'alice@example.com'");
  assert.match(u.rows[0].password_hash, /^\$argon2id\$v=19\$m=19456,t=2,p=1\$/);
  const sess = await P.db.query('SELECT token_hash FROM sessions');
  assert.ok(sess.rows.some((x) => x.token_hash === createHash('sha256').update(s.token).digest('hex')));
  assert.ok(!JSON.stringify(sess.rows).includes(s.token));

  // The same e-mail (any case) again is a 409; bad input is a 400 naming the field.
  err(await call('POST', '/v1/auth/signup', { body: { email: 'alice@example.COM', password: 'another one', account_name: 'x' } }), 409, 'email_taken');
  err(await call('POST', '/v1/auth/signup', { body: { email: 'nope', password: 'long enough', account_name: 'x' } }), 400, 'invalid_parameter');
  err(await call('POST', '/v1/auth/signup', { body: { email: 'b@example.com', password: 'short', account_name: 'x' } }), 400, 'invalid_parameter');
  err(await call('POST', '/v1/auth/signup', { body: { email: 'b@example.com', password: 'long enough' } }), 400, 'missing_parameter');
  err(await call('POST', '/v1/auth/signup', { body: { email: 'b@example.com', password: 'long enough', account_name: 'x', admin: true } }), 400, 'unknown_parameter');
  // A form post (another site's page) cannot sign anyone up or log anyone in.
  err(await call('POST', '/v1/auth/signup', { body: { email: 'b@example.com', password: 'long enough', account_name: 'x' }, headers: { 'Content-Type': 'text/plain' } }), 415);
  err(await call('POST', '/v1/auth/login', { body: { email: 'alice@example.com', password: 'correct horse' }, headers: { 'Content-Type': 'application/x-www-form-urlencoded' } }), 415);
});

test('the session cookie authenticates; state changes need its CSRF token', async () => {
  const me = await call('GET', '/v1/auth/me', { session: alice.session, csrf: false });
  assert.equal(me.status, 200, me.text);
  assert.equal(me.json.auth, 'session');
  assert.equal(me.json.user.email, 'Alice@Example.com');
  assert.equal(me.json.account.id, alice.account);
  assert.equal(me.json.csrf_token, alice.session.csrf);
  assert.deepEqual(me.json.scopes, ['inference', 'manage']);
  // Reads need no token; writes do, and a wrong one is as good as none.
  assert.equal((await call('GET', '/v1/endpoints', { session: alice.session, csrf: false })).status, 200);
  err(await call('POST', '/v1/api-keys', { session: alice.session, csrf: false, body: { name: 'x' } }), 403, 'csrf_token_invalid');
  err(await call('POST', '/v1/api-keys', { session: { ...alice.session, csrf: '0'.repeat(32) }, body: { name: 'x' } }), 403, 'csrf_token_invalid');
  assert.equal((await call('GET', '/v1/api-keys', { session: alice.session })).json.data.length, 0);
  // A made-up or malformed cookie is no session.
  err(await call('GET', '/v1/auth/me', { session: { token: 'f'.repeat(64) } }), 401, 'invalid_session');
  err(await call('GET', '/v1/auth/me', { headers: { Cookie: 'orp_session=../../etc' } }), 401, 'missing_api_key');
});

test('log-in: wrong password and unknown e-mail are the same 401; a good one rotates the session', async () => {
  const bad = await call('POST', '/v1/auth/login', { body: { email: 'alice@example.com', password: 'wrong horse' } });
  const unknown = await call('POST', '/v1/auth/login', { body: { email: 'nobody@example.com', password: 'wrong horse' } });
  err(bad, 401, 'invalid_credentials');
  err(unknown, 401, 'invalid_credentials');
  assert.equal(bad.json.error.message, unknown.json.error.message);
  assert.equal(bad.cookies.length, 0);

  const r = await call('POST', '/v1/auth/login', { session: alice.session, body: { email: 'ALICE@example.com', password: 'correct horse' } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.user.account.id, alice.account);
  const s = sessionOf(r);
  assert.notEqual(s.token, alice.session.token);
  assert.notEqual(s.csrf, alice.session.csrf);
  // The session the browser had before logging in is over.
  err(await call('GET', '/v1/auth/me', { session: alice.session }), 401, 'invalid_session');
  alice.session = s;
  assert.equal((await call('GET', '/v1/auth/me', { session: s })).status, 200);
});

test('sessions end after their idle time and at their expiry', async () => {
  const r = await call('POST', '/v1/auth/login', { body: { email: 'alice@example.com', password: 'correct horse' } });
  const s = sessionOf(r);
  const h = createHash('sha256').update(s.token).digest('hex');
  await P.db.query("UPDATE sessions SET last_seen_at = now() - interval '25 hours' WHERE token_hash = $1", [h]);
  err(await call('GET', '/v1/auth/me', { session: s }), 401, 'invalid_session');
  await P.db.query("UPDATE sessions SET last_seen_at = now(), expires_at = now() - interval '1 second' WHERE token_hash = $1", [h]);
  err(await call('GET', '/v1/auth/me', { session: s }), 401, 'invalid_session');
});

test('the operator can turn sign-up off; Secure cookies behind TLS', async () => {
  err(await call('POST', '/v1/auth/signup', { base: ctl2, body: { email: 'c@example.com', password: 'long enough', account_name: 'c' } }), 403, 'signup_disabled');
  const r = await call('POST', '/v1/auth/login', { base: ctl2, body: { email: 'alice@example.com', password: 'correct horse' } });
  assert.equal(r.status, 200, r.text);
  assert.match(sessionOf(r).cookie, /; Secure/);
});

test('cookie auth on the gateway (the console playground), with the CSRF token', async () => {
  const acct = alice.account;
  const cr = await P.api('POST', `/v1/admin/accounts/${acct}/credits`, { body: { amount_micros: 100000000, idempotency_key: 'alice-start' } });
  assert.equal(cr.status, 201, cr.text);
  const d = await call('POST', '/v1/endpoints', { session: alice.session, body: { name: 'alice-ep', model: 'demo-tiny' } });
  assert.equal(d.status, 201, d.text);
  aliceEndpoint = d.json.id;
  const d2 = await call('POST', '/v1/endpoints', { session: alice.session, body: { name: 'alice-ep2', model: 'demo-tiny' } });
  assert.equal(d2.status, 201, d2.text);
  aliceEndpoint2 = d2.json.id;
  for (const id of [aliceEndpoint, aliceEndpoint2])
    await waitFor('ready', async () => (await call('GET', `/v1/endpoints/${id}`, { session: alice.session })).json.status === 'ready', 90000, 300);
  const gw = P.gatewayUrl.replace(/\/v1$/, '');
  const ok = await call('POST', '/v1/chat/completions', { base: gw, session: alice.session, body: chatBody('alice-ep') });
  assert.equal(ok.status, 200, ok.text);
  assert.ok(ok.json.usage.completion_tokens >= 1);
  err(await call('POST', '/v1/chat/completions', { base: gw, session: alice.session, csrf: false, body: chatBody('alice-ep') }), 403, 'csrf_token_invalid');
  assert.equal((await call('GET', '/v1/models', { base: gw, session: alice.session, csrf: false })).status, 200);
});

let fullKey, inferKey, limitedKey;

test('API keys: orp_sk_ with a checksum, shown once, listed without the secret', async () => {
  const r = await call('POST', '/v1/api-keys', { session: alice.session, body: { name: 'ci' } });
  assert.equal(r.status, 201, r.text);
  fullKey = r.json.key;
  assert.match(fullKey, /^orp_sk_[0-9a-f]{56}$/);
  const random = fullKey.slice(7, 55);
  assert.equal(fullKey.slice(55), createHash('sha256').update(random).digest('hex').slice(0, 8));
  assert.equal(r.json.prefix, fullKey.slice(0, 14));
  assert.deepEqual(r.json.scopes, ['inference', 'manage']);
  assert.equal(r.json.endpoint_ids, null);
  assert.equal(r.json.expires_at, null);
  assert.match(r.json.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  assert.equal(typeof r.json.id, 'string');

  // It works, and its last use shows up.
  const me = await call('GET', '/v1/auth/me', { key: fullKey });
  assert.equal(me.status, 200, me.text);
  assert.equal(me.json.auth, 'api_key');
  assert.equal(me.json.user.id, alice.user);
  assert.equal(me.json.csrf_token, undefined);
  const l = await call('GET', '/v1/api-keys', { key: fullKey });
  assert.equal(l.status, 200);
  assert.equal(l.json.data.length, 1);
  assert.ok(l.json.data[0].last_used_at);
  assert.ok(!l.text.includes(fullKey) && !l.text.includes(random));
  const dump = JSON.stringify((await P.db.query('SELECT * FROM api_keys')).rows);
  assert.ok(!dump.includes(random));

  // One wrong character: refused (by the checksum, before any look-up).
  const typo = fullKey.slice(0, 20) + (fullKey[20] === 'a' ? 'b' : 'a') + fullKey.slice(21);
  err(await call('GET', '/v1/auth/me', { key: typo }), 401, 'invalid_api_key');

  // Bad input.
  err(await call('POST', '/v1/api-keys', { key: fullKey, body: { scopes: [] } }), 400, 'invalid_parameter');
  err(await call('POST', '/v1/api-keys', { key: fullKey, body: { scopes: ['admin'] } }), 400, 'invalid_parameter');
  err(await call('POST', '/v1/api-keys', { key: fullKey, body: { scopes: ['manage', 'manage'] } }), 400, 'invalid_parameter');
  err(await call('POST', '/v1/api-keys', { key: fullKey, body: { endpoint_ids: ['not-a-uuid'] } }), 400, 'invalid_parameter');
  err(await call('POST', '/v1/api-keys', { key: fullKey, body: { endpoint_ids: [aliceEndpoint], scopes: ['inference', 'manage'] } }), 400, 'invalid_parameter');
  err(await call('POST', '/v1/api-keys', { key: fullKey, body: { expires_at: 'tomorrow' } }), 400, 'invalid_parameter');
  err(await call('POST', '/v1/api-keys', { key: fullKey, body: { expires_at: '2030-02-31T00:00:00Z' } }), 400, 'invalid_parameter');
  err(await call('POST', '/v1/api-keys', { key: fullKey, body: { expires_at: '2001-01-01T00:00:00Z' } }), 400, 'invalid_parameter');
  err(await call('POST', '/v1/api-keys', { key: fullKey, body: { name: "x'; DROP TABLE api_keys; --\u0001" } }), 400, 'invalid_parameter');
  err(await call('POST', '/v1/api-keys', { key: fullKey, body: { secret: 'mine' } }), 400, 'unknown_parameter');
});

test('scopes: an inference-only key cannot manage; an endpoint-limited key calls only its endpoints', async () => {
  const gw = P.gatewayUrl.replace(/\/v1$/, '');
  let r = await call('POST', '/v1/api-keys', { key: fullKey, body: { name: 'app', scopes: ['inference'] } });
  assert.equal(r.status, 201, r.text);
  inferKey = r.json.key;
  err(await call('GET', '/v1/endpoints', { key: inferKey }), 403, 'insufficient_scope');
  err(await call('POST', '/v1/api-keys', { key: inferKey, body: {} }), 403, 'insufficient_scope');
  err(await call('DELETE', `/v1/endpoints/${aliceEndpoint}`, { key: inferKey }), 403, 'insufficient_scope');
  assert.equal((await call('POST', '/v1/chat/completions', { base: gw, key: inferKey, body: chatBody('alice-ep2') })).status, 200);

  r = await call('POST', '/v1/api-keys', { key: fullKey, body: { name: 'one', endpoint_ids: [aliceEndpoint] } });
  assert.equal(r.status, 201, r.text);
  assert.deepEqual(r.json.scopes, ['inference']);
  assert.deepEqual(r.json.endpoint_ids, [aliceEndpoint]);
  limitedKey = r.json.key;
  assert.equal((await call('POST', '/v1/chat/completions', { base: gw, key: limitedKey, body: chatBody('alice-ep') })).status, 200);
  const other = await call('POST', '/v1/chat/completions', { base: gw, key: limitedKey, body: chatBody('alice-ep2') });
  const missing = await call('POST', '/v1/chat/completions', { base: gw, key: limitedKey, body: chatBody('no-such') });
  err(other, 404, 'model_not_found');
  err(missing, 404, 'model_not_found');
  assert.equal(other.json.error.message.replace('alice-ep2', 'X'), missing.json.error.message.replace('no-such', 'X'));
  err(await call('GET', '/v1/billing/balance', { key: limitedKey }), 403, 'insufficient_scope');
});

test("revocation takes effect on the next request; another account's key is a 404", async () => {
  const r = await call('POST', '/v1/api-keys', { key: fullKey, body: { name: 'doomed' } });
  const k = r.json.key;
  assert.equal((await call('GET', '/v1/endpoints', { key: k })).status, 200);
  const bob = P.newAccountKey('bob@example.com');
  err(await call('DELETE', `/v1/api-keys/${r.json.id}`, { key: bob }), 404, 'api_key_not_found');
  err(await call('DELETE', '/v1/api-keys/not-a-number', { key: bob }), 404, 'api_key_not_found');
  assert.equal((await call('GET', '/v1/endpoints', { key: k })).status, 200);
  const del = await call('DELETE', `/v1/api-keys/${r.json.id}`, { key: fullKey });
  assert.equal(del.status, 200, del.text);
  assert.ok(del.json.revoked_at);
  err(await call('GET', '/v1/endpoints', { key: k }), 401, 'invalid_api_key');
  err(await call('POST', '/v1/chat/completions', { base: P.gatewayUrl.replace(/\/v1$/, ''), key: k, body: chatBody('alice-ep') }), 401, 'invalid_api_key');
  err(await call('DELETE', `/v1/api-keys/${r.json.id}`, { key: fullKey }), 404, 'api_key_not_found');
  assert.ok(!(await call('GET', '/v1/api-keys', { key: fullKey })).json.data.some((x) => x.id === r.json.id));
  // Bob cannot limit a key to Alice's endpoint either.
  err(await call('POST', '/v1/api-keys', { key: bob, body: { endpoint_ids: [aliceEndpoint] } }), 404, 'endpoint_not_found');
  // Nor see Alice's keys.
  assert.ok(!(await call('GET', '/v1/api-keys', { key: bob })).json.data.some((x) => x.name === 'ci'));
});

test('an expired key is refused', async () => {
  const at = new Date(Date.now() + 1500).toISOString();
  const r = await call('POST', '/v1/api-keys', { key: fullKey, body: { name: 'brief', expires_at: at } });
  assert.equal(r.status, 201, r.text);
  assert.ok(r.json.expires_at);
  assert.equal((await call('GET', '/v1/endpoints', { key: r.json.key })).status, 200);
  await sleep(2000);
  err(await call('GET', '/v1/endpoints', { key: r.json.key }), 401, 'invalid_api_key');
});

test('old sk-orp- keys keep working; the CLI still makes accounts', async () => {
  const old = 'sk-orp-' + '1234abcd'.repeat(6);
  await P.db.query("INSERT INTO api_keys (account_id, name, prefix, secret_hash) VALUES ($1, 'old', $2, $3)",
    [alice.account, old.slice(0, 14), createHash('sha256').update(old).digest('hex')]);
  const me = await call('GET', '/v1/auth/me', { key: old });
  assert.equal(me.status, 200, me.text);
  assert.deepEqual(me.json.scopes, ['inference', 'manage']);
  assert.match(P.adminKey, /^orp_sk_[0-9a-f]{56}$/);
  const admin = await call('GET', '/v1/auth/me', { key: P.adminKey });
  assert.equal(admin.json.user.role, 'admin');
  assert.equal(admin.json.user.has_password, false);
});

test('password change ends every other session; the CLI admin can set a first password', async () => {
  const other = sessionOf(await call('POST', '/v1/auth/login', { body: { email: 'alice@example.com', password: 'correct horse' } }));
  err(await call('POST', '/v1/auth/password', { session: alice.session, body: { current_password: 'wrong', new_password: 'battery staple' } }), 403, 'invalid_password');
  err(await call('POST', '/v1/auth/password', { session: alice.session, body: { new_password: 'battery staple' } }), 400, 'missing_parameter');
  err(await call('POST', '/v1/auth/password', { session: alice.session, body: { current_password: 'correct horse', new_password: 'short' } }), 400, 'invalid_parameter');
  const r = await call('POST', '/v1/auth/password', { session: alice.session, body: { current_password: 'correct horse', new_password: 'battery staple' } });
  assert.equal(r.status, 200, r.text);
  const fresh = sessionOf(r);
  err(await call('GET', '/v1/auth/me', { session: other }), 401, 'invalid_session');
  err(await call('GET', '/v1/auth/me', { session: alice.session }), 401, 'invalid_session');
  assert.equal((await call('GET', '/v1/auth/me', { session: fresh })).status, 200);
  alice.session = fresh;
  err(await call('POST', '/v1/auth/login', { body: { email: 'alice@example.com', password: 'correct horse' } }), 401);
  assert.equal((await call('POST', '/v1/auth/login', { body: { email: 'alice@example.com', password: 'battery staple' } })).status, 200);
  // API keys survive a password change.
  assert.equal((await call('GET', '/v1/auth/me', { key: fullKey })).status, 200);

  const set = await call('POST', '/v1/auth/password', { key: P.adminKey, body: { new_password: 'operator secret' } });
  assert.equal(set.status, 200, set.text);
  const login = await call('POST', '/v1/auth/login', { body: { email: 'admin@example.com', password: 'operator secret' } });
  assert.equal(login.status, 200, login.text);
  assert.equal(login.json.user.role, 'admin');
});

test('log-out ends the session and clears the cookie', async () => {
  const s = sessionOf(await call('POST', '/v1/auth/login', { body: { email: 'alice@example.com', password: 'battery staple' } }));
  err(await call('POST', '/v1/auth/logout', { session: s, csrf: false }), 403, 'csrf_token_invalid');
  const r = await call('POST', '/v1/auth/logout', { session: s });
  assert.equal(r.status, 200, r.text);
  assert.match(r.cookies[0], /^orp_session=; .*Max-Age=0/);
  err(await call('GET', '/v1/auth/me', { session: s }), 401, 'invalid_session');
  err(await call('POST', '/v1/auth/logout', { key: fullKey }), 400, 'not_a_session');
});

test('the audit log: every state change with who, what, when, where and the request id', async () => {
  const r = await call('POST', '/v1/api-keys', { key: fullKey, body: { name: 'audited' } });
  const rid = r.headers.get('x-request-id');
  const log = await call('GET', '/v1/audit-log?limit=200', { key: fullKey });
  assert.equal(log.status, 200, log.text);
  const e = log.json.data.find((x) => x.request_id === rid);
  assert.ok(e, `an entry for ${rid}`);
  assert.equal(e.object, 'audit_entry');
  assert.equal(e.method, 'POST');
  assert.equal(e.route, '/v1/api-keys');
  assert.equal(e.object_id, r.json.id);
  assert.equal(e.account_id, alice.account);
  assert.equal(e.user_id, alice.user);
  assert.ok(e.key_id);
  assert.equal(e.address, '127.0.0.1');
  assert.match(e.at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$/);
  const routes = new Set(log.json.data.map((x) => `${x.method} ${x.route}`));
  for (const want of ['POST /v1/auth/signup', 'POST /v1/auth/login', 'POST /v1/endpoints', 'DELETE /v1/api-keys/{}', 'POST /v1/auth/password', 'POST /v1/auth/logout'])
    assert.ok(routes.has(want), `${want} in ${[...routes]}`);
  const del = log.json.data.find((x) => x.route === '/v1/api-keys/{}');
  assert.match(del.object_id, /^\d+$/);
  // Reads and inference are not audited.
  assert.ok(!log.json.data.some((x) => x.method === 'GET' || x.route.includes('chat')));
  // Newest first, cursor pagination.
  const p1 = await call('GET', '/v1/audit-log?limit=2', { key: fullKey });
  assert.equal(p1.json.data.length, 2);
  assert.equal(p1.json.has_more, true);
  const p2 = await call('GET', `/v1/audit-log?limit=2&starting_after=${p1.json.next_starting_after}`, { key: fullKey });
  assert.ok(Number(p2.json.data[0].id) < Number(p1.json.data[1].id));
  err(await call('GET', '/v1/audit-log?limit=0', { key: fullKey }), 400, 'invalid_parameter');
  // Each account sees its own; only the operator picks another.
  const bob = P.newAccountKey('bob2@example.com');
  assert.ok(!(await call('GET', '/v1/audit-log', { key: bob })).json.data.some((x) => x.account_id === alice.account));
  err(await call('GET', `/v1/audit-log?account_id=${alice.account}`, { key: bob }), 403, 'admin_only');
  const adm = await call('GET', `/v1/audit-log?account_id=${alice.account}&limit=200`, { key: P.adminKey });
  assert.equal(adm.status, 200);
  assert.ok(adm.json.data.length > 0 && adm.json.data.every((x) => x.account_id === alice.account));
  assert.ok(adm.json.data.some((x) => x.request_id === rid));
  // Secrets never reach the audit log.
  const dump = JSON.stringify((await P.db.query('SELECT * FROM audit_log')).rows);
  assert.ok(!dump.includes(fullKey.slice(7, 55)) && !dump.includes('battery staple'));
});

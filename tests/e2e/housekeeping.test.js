// Housekeeping: expired sessions and idempotency keys past their replay window are deleted by the
// leader, live ones are kept.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Platform, waitFor } from './harness.js';

const P = new Platform();

before(async () => { await P.start({ cpuSlots: 1 }); }, { timeout: 120000 });
after(async () => { await P.stop(); });

test('expired rows go, live rows stay', { timeout: 60000 }, async () => {
  const user = (await P.db.query("SELECT id, account_id FROM users WHERE email = 'admin@example.com'")).rows[0];
  const rows = [
    ['expired', "now() + interval '1 day'", "now() - interval '1 hour'"],
    ['idle', "now() - interval '2 days'", "now() + interval '1 day'"],
    ['live', 'now()', "now() + interval '1 day'"],
  ];
  for (const [name, seen, expires] of rows) {
    await P.db.query(
      `INSERT INTO sessions (user_id, token_hash, last_seen_at, expires_at) VALUES ($1, $2, ${seen}, ${expires})`,
      [user.id, `hk-${name}`]);
  }
  await P.db.query(
    `INSERT INTO idempotency_keys (scope, key, account_id, request_hash, created_at)
     VALUES ($1, 'old', $2, 'x', now() - interval '25 hours'), ($1, 'new', $2, 'x', now())`,
    [`account:${user.account_id}`, user.account_id]);
  // The leader runs housekeeping when it starts leading, then once a minute.
  await P.killController();
  await P.startController();
  await waitFor('housekeeping', async () =>
    (await P.db.query("SELECT count(*)::int AS n FROM sessions WHERE token_hash LIKE 'hk-%'")).rows[0].n === 1, 20000, 200);
  const s = await P.db.query("SELECT token_hash FROM sessions WHERE token_hash LIKE 'hk-%'");
  assert.deepEqual(s.rows.map((r) => r.token_hash), ['hk-live']);
  const k = await P.db.query("SELECT key FROM idempotency_keys WHERE key IN ('old', 'new')");
  assert.deepEqual(k.rows.map((r) => r.key), ['new']);
});

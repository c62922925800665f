// The legacy text API, POST /v1/completions, through the gateway with the official client:
// streaming and not, usage metered under the gateway's request id, and its own bad input.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { Platform, waitFor } from './harness.js';

const P = new Platform();
let client;

before(async () => {
  await P.start({ cpuSlots: 1 });
  await P.deploy('texty');
  client = new OpenAI({ apiKey: P.adminKey, baseURL: P.gatewayUrl, maxRetries: 0 });
}, { timeout: 120000 });
after(async () => { await P.stop(); });

const usageOf = (rid) => waitFor(`usage of ${rid}`, async () =>
  (await P.db.query('SELECT * FROM usage_events WHERE request_id = $1', [rid])).rows[0], 20000);

test('a text completion, and its usage', async () => {
  const c = await client.completions.create({ model: 'texty', prompt: 'Once upon a time', max_tokens: 9, temperature: 0 });
  assert.equal(c.object, 'text_completion');
  assert.match(c.id, /^cmpl-req_[0-9a-f]{24}$/);
  assert.equal(c.choices.length, 1);
  assert.equal(typeof c.choices[0].text, 'string');
  assert.ok(['stop', 'length'].includes(c.choices[0].finish_reason));
  assert.ok(c.usage.prompt_tokens >= 2);
  assert.ok(c.usage.completion_tokens >= 1 && c.usage.completion_tokens <= 9);
  const row = await usageOf(c.id.replace(/^cmpl-/, ''));
  assert.equal(row.prompt_tokens, c.usage.prompt_tokens);
  assert.equal(row.completion_tokens, c.usage.completion_tokens);
  // The same greedy request through /v1/completions twice: the same text.
  const again = await client.completions.create({ model: 'texty', prompt: 'Once upon a time', max_tokens: 9, temperature: 0 });
  assert.equal(again.choices[0].text, c.choices[0].text);
});

test('a streamed text completion, with include_usage', async () => {
  const s = await client.completions.create({
    model: 'texty', prompt: ['A list of one prompt'], max_tokens: 12, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage;
  let id;
  for await (const ch of s) {
    id = ch.id;
    assert.equal(ch.object, 'text_completion');
    if (ch.choices.length) text += ch.choices[0].text;
    if (ch.usage) usage = ch.usage;
  }
  assert.ok(usage && usage.completion_tokens >= 1);
  assert.equal(typeof text, 'string');
  const row = await usageOf(id.replace(/^cmpl-/, ''));
  assert.equal(row.completion_tokens, usage.completion_tokens);
});

test('bad text completion requests get 400s naming the parameter', async () => {
  for (const [body, param] of [
    [{ model: 'texty' }, 'prompt'],
    [{ model: 'texty', prompt: 7 }, 'prompt'],
    [{ model: 'texty', prompt: ['a', 'b'] }, 'prompt'],
    [{ model: 'texty', prompt: 'x', suffix: 'y' }, 'suffix'],
    [{ model: 'texty', prompt: 'x', best_of: 2 }, 'best_of'],
    [{ model: 'texty', prompt: 'x', echo: true }, 'echo'],
    [{ model: 'texty', prompt: 'x', messages: [] }, 'messages'],
    [{ model: 'texty', prompt: 'x', max_tokens: 100000 }, 'max_tokens'],
  ]) {
    const res = await fetch(`${P.gatewayUrl}/completions`, {
      method: 'POST', headers: { Authorization: `Bearer ${P.adminKey}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const j = await res.json();
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(j.error.param, param, JSON.stringify(j));
  }
});

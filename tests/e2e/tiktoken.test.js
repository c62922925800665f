// The tokenizer against an independent implementation (issue 4): js-tiktoken's cl100k_base ranks
// are turned into a Hugging Face byte-level BPE tokenizer.json (the standard conversion: GPT-2
// byte-to-unicode vocab, merges derived from the ranks, cl100k's regex, ignore_merges, special
// tokens); a deterministic corpus of more than 1 MB (code, prose in nine scripts, emoji with ZWJ
// sequences, whitespace runs, long numbers, seeded random Unicode, special-token strings) is
// encoded by both js-tiktoken and runtime/tokenizer.c (through tests/unit/runtime/tok_cli), with
// and without special tokens: the ids must agree for every document, and decoding our ids (with
// our decoder and with js-tiktoken's) must give every document back exactly.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tiktoken } from 'js-tiktoken/lite';
import cl100k from 'js-tiktoken/ranks/cl100k_base';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const buildDir = process.env.ORP_BUILD_DIR || path.join(root, 'build');
const tokCli = path.join(buildDir, 'tests/unit/runtime/tok_cli');

// cl100k's pre-tokenizer as Hugging Face writes it (js-tiktoken spells the case-insensitive
// contractions out instead of (?i:...)).
const CL100K_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// ---- tokenizer.json from the ranks ----

function byteToUnicode() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const map = new Array(256);
  for (const b of bs) map[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (map[b] === undefined) map[b] = String.fromCodePoint(256 + n++);
  return map;
}

export function tiktokenToHF(enc) {
  const b2u = byteToUnicode();
  const toStr = (bytes) => Array.from(bytes, (b) => b2u[b]).join('');
  const rankOf = enc.rankMap; // "b1,b2,..." -> rank
  const vocab = {};
  const byRank = [...enc.textMap.entries()].sort((a, b) => a[0] - b[0]);
  for (const [rank, bytes] of byRank) vocab[toStr(bytes)] = rank;
  // Every split of a token into two tokens is a merge, ranked by the token's rank, then by the
  // ranks of the two halves: BPE by pair rank then picks exactly what tiktoken picks (the
  // adjacent pair whose concatenation has the lowest rank).
  const merges = [];
  for (const [rank, bytes] of byRank) {
    if (bytes.length < 2) continue;
    const local = [];
    for (let i = 1; i < bytes.length; i++) {
      const l = rankOf.get(Array.from(bytes.subarray(0, i)).join(','));
      const r = rankOf.get(Array.from(bytes.subarray(i)).join(','));
      if (l !== undefined && r !== undefined) local.push([l, r, i]);
    }
    assert.ok(local.length > 0, `token ${rank} has no split into two tokens`);
    local.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    for (const [, , i] of local) merges.push([toStr(bytes.subarray(0, i)), toStr(bytes.subarray(i))]);
  }
  const added_tokens = Object.entries(enc.specialTokens)
    .sort((a, b) => a[1] - b[1])
    .map(([content, id]) => ({
      id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
    }));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens,
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: CL100K_PATTERN }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
      end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: true,
      vocab, merges,
    },
  };
}

// ---- the corpus ----

function mulberry32(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PROSE = {
  en: [
    "The quick brown fox jumps over the lazy dog. It's not what you'd expect, isn't it? We'll see; they've done it before, and I'm sure they'll do it again.",
    "In 1969, Apollo 11 landed on the Moon: Neil Armstrong's first words were \"That's one small step for [a] man, one giant leap for mankind.\"",
    "SHOUTING IN CAPITALS: DON'T, WON'T, SHE'LL, WE'VE, THEY'RE, I'D — and mixed Case'S like O'Neil's and rock'n'roll.",
    "Prices rose 3.75% year-over-year; the index closed at 12,345.67 points (up $0.89), while 2,000,000 shares changed hands.",
  ],
  de: [
    "Falsches Üben von Xylophonmusik quält jeden größeren Zwerg. Die Straße ist gesperrt, weil die Brücke über den Fluss erneuert wird.",
    "Donaudampfschifffahrtsgesellschaftskapitänsmütze ist ein langes Wort; „Anführungszeichen“ und ‚halbe‘ sehen so aus.",
  ],
  ru: [
    "Съешь же ещё этих мягких французских булок, да выпей чаю. Широкая электрификация южных губерний даст мощный толчок подъёму сельского хозяйства.",
    "В чащах юга жил бы цитрус? Да, но фальшивый экземпляр! «Ёлки-палки», — сказал он, — «это 100% правда».",
  ],
  el: [
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Τάχιστη αλώπηξ βαφής ψημένη γη, δρασκελίζει υπέρ νωθρού κυνός Τζάμπα.",
    "Ἐν ἀρχῇ ἦν ὁ λόγος, καὶ ὁ λόγος ἦν πρὸς τὸν θεόν; ἆρ᾽ οὖν; ΑΒΓΔ αβγδ.",
  ],
  ar: [
    "صِف خَلقَ خَودِ كَمِثلِ الشَمسِ إِذ بَزَغَت يَحظى الضَجيعُ بِها نَجلاءَ مِعطارِ. اللغة العربية جميلة جداً، أليس كذلك؟",
    "في عام ٢٠٢٤ بلغ عدد السكان ١٢٣٤٥٦٧٨٩ نسمة؛ وهذا رقم كبير.",
  ],
  hi: [
    "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले विष्णुवतार भगवान श्रीराम, अयोध्या के महाराज दशरथ के बड़े सपुत्र थे।",
    "हिन्दी भाषा में १२३४५ अंक और संयुक्ताक्षर क्ष, त्र, ज्ञ होते हैं।",
  ],
  ja: [
    "いろはにほへと ちりぬるを わかよたれそ つねならむ。東京都渋谷区で、カタカナのテキストと漢字を混ぜて書きました！",
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。ｶﾀｶﾅ半角と全角ＡＢＣ１２３も。",
  ],
  zh: [
    "我能吞下玻璃而不伤身体。中华人民共和国成立于1949年10月1日，首都是北京。",
    "天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。繁體中文：學習、電腦、網際網路。",
  ],
  ko: [
    "키스의 고유조건은 입술끼리 만나야 하고 특별한 기술은 필요치 않다. 다람쥐 헌 쳇바퀴에 타고파.",
    "대한민국의 수도는 서울특별시이며, 인구는 약 5,100만 명입니다. ㄱㄴㄷ ㅏㅑㅓ.",
  ],
};

const CODE = [
  `#include <stdio.h>\n\nint main(int argc, char **argv)\n{\n    for (int i = 0; i < argc; i++) {\n        printf("%d: %s\\n", i, argv[i]);\n    }\n    return 0;\n}\n`,
  `def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\nif __name__ == '__main__':\n    print([fib(i) for i in range(20)])\n`,
  `export async function fetchJson(url, { retries = 3 } = {}) {\n  for (let i = 0; i <= retries; i++) {\n    try {\n      const res = await fetch(url);\n      if (!res.ok) throw new Error(\`HTTP \${res.status}\`);\n      return await res.json();\n    } catch (e) {\n      if (i === retries) throw e;\n    }\n  }\n}\n`,
  `SELECT u.id, u.email, COUNT(o.id) AS orders\nFROM users u\nLEFT JOIN orders o ON o.user_id = u.id\nWHERE u.created_at >= '2024-01-01'::date\nGROUP BY u.id\nHAVING COUNT(o.id) > 10\nORDER BY orders DESC;\n`,
  `fn main() {\n    let v: Vec<u64> = (1..=10).map(|x| x * x).collect();\n    println!("{:?} sum={}", v, v.iter().sum::<u64>());\n}\n`,
  `{\n  "name": "example",\n  "version": "1.2.3",\n  "dependencies": { "left-pad": "^1.3.0" },\n  "scripts": { "test": "node --test" }\n}\n`,
  `<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>Test &amp; co</title></head>\n<body>\n\t<p class="x">Hello,&nbsp;world!</p>\n</body>\n</html>\n`,
  `#!/bin/sh\nset -eu\nfor f in *.log; do\n  grep -c 'ERROR' "$f" || true\ndone | awk '{ s += $1 } END { print s }'\n`,
];

const EMOJI = [
  '😀', '😂', '🥲', '👍', '👍🏽', '👍🏿', '❤️', '🔥', '✨', '🚀', '🇫🇷', '🇯🇵', '🇺🇸', '🏳️‍🌈', '🏴‍☠️',
  '👨‍👩‍👧‍👦', '👩‍💻', '🧑🏾‍🚀', '👁️‍🗨️', '❤️‍🔥', '🫠', '🦀', '🐍', '☕', '♀️', '1️⃣', '#️⃣', '©️', '™',
];

const SPECIALS = Object.keys(cl100k.special_tokens);

// Assigned ranges (so that JavaScript's and PCRE2's Unicode tables agree on their properties).
const RANGES = [
  [0x20, 0x7e], [0xa0, 0xff], [0x100, 0x24f], [0x370, 0x3ff], [0x400, 0x4ff], [0x591, 0x5f4],
  [0x621, 0x64a], [0x660, 0x669], [0x905, 0x939], [0x966, 0x96f], [0xe01, 0xe3a], [0x1100, 0x1112],
  [0x2000, 0x200a], [0x2010, 0x2027], [0x2030, 0x205e], [0x20a0, 0x20c0], [0x2190, 0x21ff],
  [0x2200, 0x22ff], [0x2460, 0x24ff], [0x2500, 0x257f], [0x3000, 0x303f], [0x3041, 0x3096],
  [0x30a1, 0x30fa], [0x4e00, 0x9fff], [0xac00, 0xd7a3], [0xff01, 0xff5e], [0x1d400, 0x1d4ff],
  [0x1f300, 0x1f5ff], [0x1f600, 0x1f64f], [0x1f900, 0x1f9ff], [0x0300, 0x036f],
];
// Whitespace where the engines' \s could disagree is put in on purpose but at known places.
const WS = [' ', '  ', '\t', '\n', '\r\n', '\n\n', ' \n ', '\u00a0', '\u3000', '\u2003', '\u202f', '\f', '\v'];

// Where regex engines' \s, case folding and Unicode tables could disagree (JavaScript's \s has
// U+FEFF but not U+0085; PCRE2's has U+0085; (?i) folds U+017F to s and U+212A to k).
const EDGE = [
  '', ' ', '\n', 'a', '1234', "'\u017f x'\u017f", "WE'\u017f HE'\u212a", 'a\u0085b', 'x\u0085\u0085\u0085y',
  'x \u0085\u0085\nz', '\u0085\n', 'x\u0085 \u0085 y', '\ufeff\ufeff\n', 'a\ufeff\ufeff b', 'a \ufeff\ufeff',
  'a\u180e\u180e\u180e b', '\u180e\n', 'x\u1680\u1680y', '\u205f\u205f\n', 'q\u00a0\u00a0\u00a0r',
  'x\u2028\u2028 y', '\u2029', '\v\v\f x', '\u001c\u001d\u001e\u001f', 'a\u001c\u001c b', 'a\u200bb',
  'a\u00adb', "\u0130stanbul'S", '\u01c5emal', '\u0345x', 'a\u{e0001}b', '\u0663\u0664\u0665', 'x\u00b2\u00b3',
  '\u216b', '\u2460\u2461', '\u{1d7d8}\u{1d7d9}\u{1d7da}', '\u{10fffd}', '  \n  x', '\r\r\n', '\r \r',
];

function buildCorpus(minBytes) {
  const rnd = mulberry32(0x4f525034);
  const pick = (a) => a[Math.floor(rnd() * a.length)];
  const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
  const digits = (n) => Array.from({ length: n }, () => String(int(0, 9))).join('');
  const randomUnicode = (n) => {
    let s = '';
    for (let i = 0; i < n; i++) {
      const [lo, hi] = pick(RANGES);
      s += String.fromCodePoint(int(lo, hi));
    }
    return s;
  };
  const langs = Object.keys(PROSE);
  const gens = [
    () => pick(PROSE[pick(langs)]),
    () => pick(PROSE[pick(langs)]).split(/(\s+)/).map((w) => (rnd() < 0.1 ? w.toUpperCase() : w)).join(''),
    () => pick(CODE),
    () => pick(CODE).replace(/ {4}/g, '\t'),
    () => Array.from({ length: int(1, 8) }, () => pick(EMOJI)).join(pick(['', ' ', '', '\u200d'])),
    () => ' '.repeat(int(1, 80)) + pick(['x', '\n', '', 'end']) + '\n'.repeat(int(0, 5)),
    () => Array.from({ length: int(1, 20) }, () => pick(WS)).join(''),
    () => digits(int(1, 200)),
    () => `${digits(int(1, 12))}.${digits(int(1, 12))}e-${int(1, 300)}, -${digits(int(4, 40))}`,
    () => randomUnicode(int(1, 60)),
    () => pick(SPECIALS) + pick(['', ' ', 'text', '\n']),
    () => "'" + pick(['s', 'S', 't', 're', 'RE', 'Ve', 'm', 'll', 'LL', 'd', 'D', 'x']) + pick([' ', 'abc', '', '\n']),
    () => `https://example.com/path/${digits(5)}?q=${randomUnicode(3)}&x=%E2%9C%93#frag`,
    () => '!!!???...---===***///\\\\|||@@@###$$$%%%^^^&&&(((\n)))[[[]]]{{{}}}~~~```'.slice(int(0, 30), int(31, 70)),
  ];
  const docs = [];
  let bytes = 0;
  while (bytes < minBytes) {
    const parts = [];
    const n = int(5, 60);
    for (let i = 0; i < n; i++) parts.push(pick(gens)());
    const doc = parts.join(pick(['', ' ', '\n', '\n\n', ' ']));
    docs.push(doc);
    bytes += Buffer.byteLength(doc) + 1;
  }
  docs.push(...EDGE, SPECIALS.join(''), ' '.repeat(5000), 'x'.repeat(3000), '\n'.repeat(2000),
    '漢字'.repeat(300), 'مرحبا'.repeat(100), '!?'.repeat(1000), ' \t'.repeat(1000) + 'z', '9'.repeat(10000),
    '👨‍👩‍👧‍👦'.repeat(300));
  return docs;
}

// ---- the comparison ----

let tmp;
let enc;
let tokPath;

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'orp-tiktoken-'));
  enc = new Tiktoken(cl100k);
  tokPath = path.join(tmp, 'tokenizer.json');
  fs.writeFileSync(tokPath, JSON.stringify(tiktokenToHF(enc)));
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

function runOurs(docs, special) {
  for (const d of docs) assert.ok(!d.includes('\0'));
  const corpus = path.join(tmp, 'corpus.txt');
  fs.writeFileSync(corpus, docs.join('\0'));
  const args = [tokPath, corpus];
  if (special) args.push('special');
  const r = spawnSync(tokCli, args, { maxBuffer: 1 << 28, encoding: 'utf8' });
  assert.equal(r.status, 0, `tok_cli failed (${r.signal ?? r.error}): ${r.stderr}`);
  const lines = r.stdout.split('\n');
  assert.equal(lines.pop(), '');
  assert.equal(lines.length, docs.length);
  const seconds = Number(/encoded in ([0-9.]+) s/.exec(r.stderr)[1]);
  return { ids: lines.map((l) => (l === '' ? [] : l.split(' ').map(Number))), stderr: r.stderr.trim(), seconds };
}

function compare(docs, special) {
  const ours = runOurs(docs, special);
  const t0 = performance.now();
  const theirs = docs.map((d) => (special ? enc.encode(d, 'all') : enc.encode(d, [], [])));
  const jsSeconds = (performance.now() - t0) / 1000;
  const bad = [];
  for (let i = 0; i < docs.length; i++) {
    const a = ours.ids[i];
    const b = theirs[i];
    if (a.length === b.length && a.every((x, k) => x === b[k])) {
      // js-tiktoken's own decode goes through TextDecoder, which drops a leading BOM: join its
      // token bytes instead.
      const bytes = Buffer.concat(a.map((id) => enc.textMap.get(id) ?? enc.inverseSpecialTokens[id]));
      if (!bytes.equals(Buffer.from(docs[i]))) bad.push(`document ${i}: our ids decode to other bytes`);
      continue;
    }
    let k = 0;
    while (k < a.length && k < b.length && a[k] === b[k]) k++;
    const show = (ids) => JSON.stringify(ids.slice(k, k + 4).map((id) => [id, enc.decode([id])]));
    bad.push(`document ${i} at token ${k}: ours ${show(a)} js-tiktoken ${show(b)}`);
  }
  return { ours, jsSeconds, bad };
}

test('cl100k_base: our tokenizer and js-tiktoken agree on a > 1 MB corpus', () => {
  const docs = buildCorpus(1 << 20);
  const size = docs.reduce((s, d) => s + Buffer.byteLength(d), 0);
  assert.ok(size >= 1 << 20);
  for (const special of [false, true]) {
    const { ours, jsSeconds, bad } = compare(docs, special);
    console.log(`# special=${special}: ${docs.length} documents, ${size} bytes; ${ours.stderr}; js-tiktoken ${jsSeconds.toFixed(2)} s`);
    assert.deepEqual(bad.slice(0, 20), [], `${bad.length} documents differ`);
    assert.ok(ours.seconds < 10, `encoding ${size} bytes took ${ours.seconds} s`);
  }
});

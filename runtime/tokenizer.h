/* tokenizer: byte-level BPE as Hugging Face's tokenizer.json describes it (GPT-2, Llama 3, Qwen 2).
 *
 * Encoding: added tokens (e.g. <|eot_id|>) are matched verbatim first when asked to; the text
 * between them is split by the pre-tokenizer's regex (PCRE2, UTF + UCP), and each piece, as raw
 * bytes, is merged by rank. Tokens are kept as raw bytes (the GPT-2 byte-to-unicode alphabet of
 * the file is undone at load), so decoding is concatenation. A loaded tokenizer is immutable and
 * safe to share between threads. */
#ifndef ORP_TOKENIZER_H
#define ORP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Llama 3's pre-tokenizer regex; make-model writes it, and tests use it. */
#define TOK_LLAMA3_PATTERN                                                                         \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "                     \
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

struct tok;

/* A growable array of token ids. */
struct tok_ids {
    int *v;
    size_t n, cap;
};
int tok_ids_push(struct tok_ids *a, int id); /* 0 or -1 (out of memory) */
void tok_ids_free(struct tok_ids *a);

/* Loads tokenizer.json. Returns a new tokenizer (free with tok_free) or NULL with err naming the
 * file and the field at fault. */
struct tok *tok_load(const char *path, char *err, size_t errlen);
void tok_free(struct tok *t); /* accepts NULL */

/* One past the largest id (vocab and added tokens). */
int tok_vocab_size(const struct tok *t);
/* The id of an added token by content, else of a vocab token by its raw bytes; -1 if none. */
int tok_find(const struct tok *t, const char *s);
int tok_is_special(const struct tok *t, int id);
/* The raw bytes of a token (borrowed); NULL for an id no token has. */
const char *tok_bytes(const struct tok *t, int id, size_t *len);

/* Appends the ids of text to out. allow_special: added tokens written in the text become their
 * ids (a prompt we build ourselves); otherwise they are ordinary text (client content). 0, or -1
 * with err (out of memory, or a regex failure). */
int tok_encode(const struct tok *t, const char *text, size_t len, int allow_special,
               struct tok_ids *out, char *err, size_t errlen);
/* Appends the raw bytes of ids to out (not necessarily valid UTF-8). Ids no token has are
 * skipped; so are special tokens when skip_special. 0 or -1 (out of memory). */
int tok_decode(const struct tok *t, const int *ids, size_t n, int skip_special, struct buf *out);

/* Streaming UTF-8 repair: feed decoded bytes as they come; out receives only complete, valid
 * UTF-8, with each invalid sequence replaced by U+FFFD (the "maximal subpart" rule); an
 * incomplete tail waits for the next feed. flush ends the stream (an incomplete tail becomes
 * U+FFFD). Both return 0 or -1 (out of memory). */
struct tok_utf8 {
    unsigned char pend[4];
    int npend;
};
int tok_utf8_feed(struct tok_utf8 *u, const void *data, size_t len, struct buf *out);
int tok_utf8_flush(struct tok_utf8 *u, struct buf *out);

/* The GPT-2 byte-to-unicode map: the code point that stands for byte b in tokenizer.json. */
unsigned tok_byte_to_unicode(unsigned char b);

/* A compiled pre-tokenizer regex, for make-model's BPE training as well as tok_encode. */
struct tok_regex;
struct tok_regex *tok_regex_new(const char *pattern, int literal, char *err, size_t errlen);
void tok_regex_free(struct tok_regex *re);
/* Calls fn for each piece of text: every match and every stretch between matches ("Isolated").
 * Stops and returns fn's value when nonzero; -1 on a regex failure; else 0. */
int tok_regex_split(const struct tok_regex *re, const char *text, size_t len,
                    int (*fn)(void *ctx, const char *piece, size_t n), void *ctx);

#endif

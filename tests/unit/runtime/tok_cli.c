/* tok_cli: drives the tokenizer from outside (tests/e2e/tiktoken.test.js compares it with
 * js-tiktoken). `tok_cli TOKENIZER_JSON CORPUS [special]`: CORPUS holds documents separated by
 * NUL bytes; prints one line of space-separated ids per document, checks that decoding gives each
 * document back byte for byte (exit 1 otherwise), and reports the encoding time on stderr. With
 * "special", added tokens written in the text become their ids. Without arguments (ctest) it
 * round-trips a little text through make-model's tokenizer. */
#include <time.h>

#include "rt_test.h"
#include "tokenizer.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int self_check(void)
{
    char dir[256], mdir[300], path[400], err[512];
    rt_tmpdir(dir, sizeof dir);
    snprintf(mdir, sizeof mdir, "%s/m", dir);
    rt_make_model(mdir, ST_BF16);
    snprintf(path, sizeof path, "%s/tokenizer.json", mdir);
    struct tok *t = tok_load(path, err, sizeof err);
    CHECK(t != NULL);
    const char *s = "tok_cli: 日本語 👨‍👩‍👧 1234567";
    struct tok_ids ids = {0};
    CHECK(tok_encode(t, s, strlen(s), 0, &ids, err, sizeof err) == 0);
    struct buf out = {0};
    CHECK(tok_decode(t, ids.v, ids.n, 0, &out) == 0);
    CHECK_STR_EQ(out.data, s);
    buf_free(&out);
    tok_ids_free(&ids);
    tok_free(t);
    rt_rmtree(dir);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 1) return self_check();
    if (argc < 3) {
        fprintf(stderr, "usage: tok_cli TOKENIZER_JSON CORPUS [special]\n");
        return 2;
    }
    char err[512];
    double t0 = now();
    struct tok *t = tok_load(argv[1], err, sizeof err);
    if (!t) {
        fprintf(stderr, "tok_cli: %s\n", err);
        return 1;
    }
    double t1 = now();
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    struct buf in = {0};
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        CHECK(buf_append(&in, chunk, got) == 0);
    fclose(f);
    int special = argc > 3 && strcmp(argv[3], "special") == 0, bad = 0;
    size_t ndocs = 0, ntok = 0;
    double enc = 0;
    struct buf line = {0};
    for (size_t pos = 0; pos <= in.len; ndocs++) {
        const char *doc = in.data ? in.data + pos : "";
        const char *nul = memchr(doc, '\0', in.len - pos);
        size_t n = nul ? (size_t)(nul - doc) : in.len - pos;
        struct tok_ids ids = {0};
        double a = now();
        if (tok_encode(t, doc, n, special, &ids, err, sizeof err) != 0) {
            fprintf(stderr, "tok_cli: document %zu: %s\n", ndocs, err);
            return 1;
        }
        enc += now() - a;
        ntok += ids.n;
        struct buf out = {0};
        CHECK(tok_decode(t, ids.v, ids.n, 0, &out) == 0);
        if (out.len != n || memcmp(out.data, doc, n) != 0) {
            fprintf(stderr, "tok_cli: document %zu does not round-trip\n", ndocs);
            bad = 1;
        }
        buf_free(&out);
        line.len = 0;
        for (size_t i = 0; i < ids.n; i++) {
            char num[16];
            int l = snprintf(num, sizeof num, i ? " %d" : "%d", ids.v[i]);
            CHECK(buf_append(&line, num, (size_t)l) == 0);
        }
        CHECK(buf_append(&line, "\n", 1) == 0);
        fwrite(line.data, 1, line.len, stdout);
        tok_ids_free(&ids);
        pos += n + 1;
    }
    fprintf(stderr, "tok_cli: load %.3f s; %zu documents, %zu bytes, %zu tokens encoded in %.3f s\n",
            t1 - t0, ndocs, in.len, ntok, enc);
    buf_free(&line);
    buf_free(&in);
    tok_free(t);
    return bad;
}

/* The weights cache (agent/weights.c): manifest parsing and its refusals, sha256 and size checks,
 * the least-recently-used eviction choice, and a whole fetch from a file:// source through the
 * background thread (progress, the atomic rename into CACHE_DIR/<entry>, reuse without fetching
 * again, a checksum mismatch reported as the replica's reason). Also that the controller's desired
 * entry for a remote source parses without model_path. */
#include "tmpdir.h"

#include <jansson.h>
#include <sys/stat.h>

#include "check.h"
#include "ctlclient.h"
#include "log.h"
#include "util.h"
#include "weights.h"

#define ABC_SHA "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

static json_t *parse(const char *txt)
{
    json_error_t je;
    json_t *o = json_loads(txt, 0, &je);
    CHECK(o != NULL);
    return o;
}

static void test_manifest(void)
{
    struct weights_manifest m;
    char err[256];
    json_t *o =
        parse("{\"files\":[{\"path\":\"config.json\",\"size\":3,\"sha256\":\"" ABC_SHA
              "\"},{\"path\":\"sub/model.safetensors\",\"size\":10,\"sha256\":\"" ABC_SHA "\"}]}");
    CHECK_INT_EQ(weights_manifest_parse(o, &m, err, sizeof err), 0);
    CHECK_INT_EQ(m.n, 2);
    CHECK_INT_EQ(m.total, 13);
    CHECK_STR_EQ(m.files[1].path, "sub/model.safetensors");
    CHECK_STR_EQ(m.files[0].sha256, ABC_SHA);
    weights_manifest_free(&m);
    json_decref(o);

    static const char *bad[] = {
        "{}",
        "{\"files\":[{\"path\":\"../etc/passwd\",\"size\":1,\"sha256\":\"" ABC_SHA "\"}]}",
        "{\"files\":[{\"path\":\"/abs\",\"size\":1,\"sha256\":\"" ABC_SHA "\"}]}",
        "{\"files\":[{\"path\":\"a//b\",\"size\":1,\"sha256\":\"" ABC_SHA "\"}]}",
        "{\"files\":[{\"path\":\"a\",\"size\":-1,\"sha256\":\"" ABC_SHA "\"}]}",
        "{\"files\":[{\"path\":\"a\",\"size\":1,\"sha256\":\"abc\"}]}",
        "{\"files\":[{\"path\":\"a\",\"size\":1,\"sha256\":\"" ABC_SHA
        "\"},{\"path\":\"a\",\"size\":1,\"sha256\":\"" ABC_SHA "\"}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o = parse(bad[i]);
        err[0] = '\0';
        CHECK_INT_EQ(weights_manifest_parse(o, &m, err, sizeof err), -1);
        CHECK(strstr(err, "manifest") != NULL);
        json_decref(o);
    }
    /* uppercase hex is accepted and stored lowercase */
    o = parse("{\"files\":[{\"path\":\"x\",\"size\":0,\"sha256\":"
              "\"BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD\"}]}");
    CHECK_INT_EQ(weights_manifest_parse(o, &m, err, sizeof err), 0);
    CHECK_STR_EQ(m.files[0].sha256, ABC_SHA);
    weights_manifest_free(&m);
    json_decref(o);
}

static void test_verify(const char *dir)
{
    char p[512], hex[65], err[256];
    snprintf(p, sizeof p, "%s/abc", dir);
    write_text(p, "abc", "w");
    CHECK_INT_EQ(weights_sha256_file(p, hex), 0);
    CHECK_STR_EQ(hex, ABC_SHA);
    struct weights_file f = {.path = "config.json", .size = 3, .sha256 = ABC_SHA};
    CHECK_INT_EQ(weights_verify_file(p, &f, err, sizeof err), 0);
    f.size = 4;
    CHECK_INT_EQ(weights_verify_file(p, &f, err, sizeof err), -1);
    CHECK_STR_EQ(err, "config.json: size 3, expected 4");
    write_text(p, "abd", "w");
    f.size = 3;
    CHECK_INT_EQ(weights_verify_file(p, &f, err, sizeof err), -1);
    CHECK_STR_EQ(err, "config.json: sha256 mismatch");
    snprintf(p, sizeof p, "%s/nope", dir);
    CHECK_INT_EQ(weights_verify_file(p, &f, err, sizeof err), -1);
    CHECK_STR_EQ(err, "config.json: missing");
}

static void test_lru(void)
{
    struct weights_entry e[4] = {
        {.bytes = 100, .last_used = 5, .in_use = 0},
        {.bytes = 100, .last_used = 1, .in_use = 1}, /* oldest, but in use: kept */
        {.bytes = 100, .last_used = 3, .in_use = 0}, /* oldest unused: first to go */
        {.bytes = 100, .last_used = 9, .in_use = 0},
    };
    int v[4];
    /* 400 cached + 50 needed under 500: nothing to evict */
    CHECK_INT_EQ(weights_lru_choose(e, 4, 50, 500, v), 0);
    CHECK(!v[0] && !v[1] && !v[2] && !v[3]);
    /* + 150 needed: one must go, the least recently used unused one */
    CHECK_INT_EQ(weights_lru_choose(e, 4, 150, 500, v), 1);
    CHECK(v[2] && !v[0] && !v[1] && !v[3]);
    /* + 250: two go, in LRU order */
    CHECK_INT_EQ(weights_lru_choose(e, 4, 250, 500, v), 2);
    CHECK(v[2] && v[0] && !v[1] && !v[3]);
    /* more than fits even without every unused one */
    CHECK_INT_EQ(weights_lru_choose(e, 4, 450, 500, v), -1);
    CHECK(v[0] && !v[1] && v[2] && v[3]);
    /* no limit */
    CHECK_INT_EQ(weights_lru_choose(e, 4, 1 << 30, 0, v), 0);
}

/* Polls until the fetch settles; returns the status. */
static enum weights_status wait_fetch(struct weights *w, const char *model, const char *source,
                                      json_t *man, char *path, char *err)
{
    int pct = -1;
    enum weights_status st;
    for (int i = 0; i < 500; i++) {
        st = weights_ensure(w, model, source, man, path, 512, &pct, err, 256);
        if (st != WEIGHTS_PENDING) return st;
        CHECK(pct >= 0 && pct <= 99);
        util_sleep_ms(10);
    }
    CHECK(!"fetch did not settle");
    return st;
}

static void test_fetch(const char *dir)
{
    char src[512], cache[512], p[1200], url[600], path[512], err[256];
    snprintf(src, sizeof src, "%s/src", dir);
    snprintf(cache, sizeof cache, "%s/cache", dir);
    snprintf(p, sizeof p, "%s/sub", src);
    CHECK_INT_EQ(util_mkdirs(p, 0755), 0);
    CHECK_INT_EQ(util_mkdirs(cache, 0755), 0);
    snprintf(p, sizeof p, "%s/config.json", src);
    write_text(p, "abc", "w");
    snprintf(p, sizeof p, "%s/sub/w.bin", src);
    write_text(p, "abc", "w");
    snprintf(url, sizeof url, "file://%s", src);
    json_t *man = parse("{\"files\":[{\"path\":\"config.json\",\"size\":3,\"sha256\":\"" ABC_SHA
                        "\"},{\"path\":\"sub/w.bin\",\"size\":3,\"sha256\":\"" ABC_SHA "\"}]}");
    struct weights *w = weights_new(cache, 0);
    CHECK(w != NULL);
    CHECK_INT_EQ(wait_fetch(w, "demo/tiny", url, man, path, err), WEIGHTS_READY);
    char name[256];
    weights_entry_name("demo/tiny", man, name, sizeof name);
    CHECK(strncmp(name, "demo_tiny-", 10) == 0);
    snprintf(p, sizeof p, "%s/%s", cache, name);
    CHECK_STR_EQ(path, p);
    snprintf(p, sizeof p, "%s/sub/w.bin", path);
    struct stat st;
    CHECK_INT_EQ(stat(p, &st), 0);
    CHECK_INT_EQ(st.st_size, 3);
    /* Cached: ready at once, without a thread. */
    int pct;
    CHECK_INT_EQ(weights_ensure(w, "demo/tiny", url, man, path, sizeof path, &pct, err, sizeof err),
                 WEIGHTS_READY);

    /* A corrupted source: the fetch fails with the file's name, once; nothing is renamed. */
    snprintf(p, sizeof p, "%s/sub/w.bin", src);
    write_text(p, "abd", "w");
    json_t *man2 =
        parse("{\"files\":[{\"path\":\"sub/w.bin\",\"size\":3,\"sha256\":\"" ABC_SHA "\"}]}");
    CHECK_INT_EQ(wait_fetch(w, "other", url, man2, path, err), WEIGHTS_FAILED);
    CHECK_STR_EQ(err, "sub/w.bin: sha256 mismatch");
    weights_entry_name("other", man2, name, sizeof name);
    snprintf(p, sizeof p, "%s/%s", cache, name);
    CHECK(stat(p, &st) != 0);
    /* The next call starts over (and fails the same way). */
    CHECK_INT_EQ(weights_ensure(w, "other", url, man2, path, sizeof path, &pct, err, sizeof err),
                 WEIGHTS_PENDING);
    CHECK_INT_EQ(wait_fetch(w, "other", url, man2, path, err), WEIGHTS_FAILED);
    weights_free(w);

    /* Eviction: a 3-byte limit leaves room for one model; the unused one goes. */
    snprintf(p, sizeof p, "%s/sub/w.bin", src);
    write_text(p, "abc", "w");
    w = weights_new(cache, 6);
    weights_begin_uses(w);
    CHECK_INT_EQ(wait_fetch(w, "other", url, man2, path, err), WEIGHTS_READY);
    weights_entry_name("demo/tiny", man, name, sizeof name);
    snprintf(p, sizeof p, "%s/%s", cache, name);
    CHECK(stat(p, &st) != 0); /* 6 (demo) + 3 > 6: demo, unused, was evicted */
    weights_free(w);
    json_decref(man);
    json_decref(man2);
}

static void test_desired_remote(void)
{
    const char *body =
        "{\"desired\":[{\"replica_id\":\"r1\",\"epoch\":1,\"model\":\"m\",\"source\":"
        "\"http://127.0.0.1:1/m/\",\"manifest\":{\"files\":[]},\"served_name\":\"e\","
        "\"devices\":[\"CPU-a-0\"],\"device_kind\":\"cpu\",\"secret\":\"s\",\"tp\":1}],"
        "\"usage_acked\":0,\"heartbeat_ms\":1000}";
    struct ctl_reply r;
    char err[256];
    CHECK_INT_EQ(ctl_parse_reply(body, strlen(body), &r, err, sizeof err), 0);
    CHECK_INT_EQ(r.ndesired, 1);
    CHECK_STR_EQ(r.desired[0].source, "http://127.0.0.1:1/m/");
    CHECK(json_is_object(r.desired[0].manifest));
    CHECK(sup_spec_needs_fetch(&r.desired[0]));
    ctl_reply_free(&r);
    /* without a manifest, a remote source is not enough */
    const char *bad =
        "{\"desired\":[{\"replica_id\":\"r1\",\"epoch\":1,\"source\":\"http://h/m/\","
        "\"served_name\":\"e\",\"devices\":[],\"device_kind\":\"cpu\",\"secret\":\"s\"}],"
        "\"usage_acked\":0}";
    CHECK_INT_EQ(ctl_parse_reply(bad, strlen(bad), &r, err, sizeof err), -1);
}

int main(void)
{
    log_init("test", "error");
    char dir[256];
    CHECK(tmpdir_make(dir, sizeof dir) != NULL);
    test_manifest();
    test_verify(dir);
    test_lru();
    test_fetch(dir);
    test_desired_remote();
    tmpdir_remove(dir);
    return 0;
}

/* weights: the per-host model weights cache (see weights.h). */
#include "weights.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* A broken transfer is resumed this many times before the download fails. */
#define WEIGHTS_ATTEMPTS 6
#define WEIGHTS_RETRY_MS 500

/* snprintf, for messages and paths whose truncation is acceptable (or checked by the caller). */
__attribute__((format(printf, 3, 4))) static void fmt(char *out, size_t n, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(out, n, f, ap);
    va_end(ap);
}

/* ---- manifest ---- */

static int safe_relpath(const char *p)
{
    if (!p[0] || p[0] == '/') return 0;
    const char *c = p;
    while (*c) {
        const char *e = strchr(c, '/');
        size_t len = e ? (size_t)(e - c) : strlen(c);
        if (len == 0 || (len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.'))
            return 0;
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)c[i] < 0x20) return 0;
        if (!e) break;
        c = e + 1;
    }
    return p[strlen(p) - 1] != '/';
}

int weights_manifest_parse(json_t *o, struct weights_manifest *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    json_t *files = json_is_object(o) ? json_object_get(o, "files") : NULL;
    if (!json_is_array(files)) {
        fmt(err, errlen, "manifest: \"files\" must be an array");
        return -1;
    }
    m->files = calloc(json_array_size(files) + 1, sizeof *m->files);
    if (!m->files) {
        fmt(err, errlen, "out of memory");
        return -1;
    }
    size_t i;
    json_t *f;
    json_array_foreach(files, i, f)
    {
        const char *path = json_string_value(json_object_get(f, "path"));
        json_t *size = json_object_get(f, "size");
        const char *sha = json_string_value(json_object_get(f, "sha256"));
        if (!path || strlen(path) >= WEIGHTS_PATH_MAX || !safe_relpath(path)) {
            fmt(err, errlen, "manifest: files[%zu].path must be a relative path", i);
            goto bad;
        }
        if (!json_is_integer(size) || json_integer_value(size) < 0) {
            fmt(err, errlen, "manifest: files[%zu].size must be a byte count", i);
            goto bad;
        }
        if (!sha || strlen(sha) != 64 || strspn(sha, "0123456789abcdefABCDEF") != 64) {
            fmt(err, errlen, "manifest: files[%zu].sha256 must be 64 hex digits", i);
            goto bad;
        }
        struct weights_file *wf = &m->files[m->n++];
        fmt(wf->path, sizeof wf->path, "%s", path);
        wf->size = (int64_t)json_integer_value(size);
        for (int k = 0; k < 64; k++)
            wf->sha256[k] = (char)(sha[k] >= 'A' && sha[k] <= 'F' ? sha[k] - 'A' + 'a' : sha[k]);
        wf->sha256[64] = '\0';
        for (size_t k = 0; k + 1 < m->n; k++)
            if (!strcmp(m->files[k].path, wf->path)) {
                fmt(err, errlen, "manifest: %s is listed twice", wf->path);
                goto bad;
            }
        m->total += wf->size;
    }
    return 0;
bad:
    weights_manifest_free(m);
    return -1;
}

void weights_manifest_free(struct weights_manifest *m)
{
    free(m->files);
    memset(m, 0, sizeof *m);
}

/* ---- checking files ---- */

int weights_sha256_file(const char *path, char out[65])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    static __thread unsigned char buf[1 << 16];
    ssize_t got;
    while ((got = read(fd, buf, sizeof buf)) != 0) {
        if (got < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            EVP_MD_CTX_free(ctx);
            close(fd);
            errno = e;
            return -1;
        }
        EVP_DigestUpdate(ctx, buf, (size_t)got);
    }
    close(fd);
    unsigned char md[32];
    unsigned mdlen = 0;
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

int weights_verify_file(const char *path, const struct weights_file *f, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fmt(err, errlen, "%s: missing", f->path);
        return -1;
    }
    if ((int64_t)st.st_size != f->size) {
        fmt(err, errlen, "%s: size %lld, expected %lld", f->path, (long long)st.st_size,
            (long long)f->size);
        return -1;
    }
    char hex[65];
    if (weights_sha256_file(path, hex) != 0) {
        fmt(err, errlen, "%s: cannot read: %s", f->path, strerror(errno));
        return -1;
    }
    if (strcmp(hex, f->sha256) != 0) {
        fmt(err, errlen, "%s: sha256 mismatch", f->path);
        return -1;
    }
    return 0;
}

/* ---- eviction ---- */

int weights_lru_choose(const struct weights_entry *e, size_t n, int64_t need, int64_t max_bytes,
                       int *victim)
{
    int64_t total = need;
    for (size_t i = 0; i < n; i++) {
        victim[i] = 0;
        total += e[i].bytes;
    }
    if (max_bytes <= 0) return 0;
    int chosen = 0;
    while (total > max_bytes) {
        size_t best = n;
        for (size_t i = 0; i < n; i++)
            if (!victim[i] && !e[i].in_use && (best == n || e[i].last_used < e[best].last_used))
                best = i;
        if (best == n) return -1;
        victim[best] = 1;
        total -= e[best].bytes;
        chosen++;
    }
    return chosen;
}

void weights_entry_name(const char *model, json_t *manifest, char *out, size_t n)
{
    char *txt = json_dumps(manifest, JSON_COMPACT | JSON_SORT_KEYS);
    char hex[65];
    util_sha256_hex(txt ? txt : "", txt ? strlen(txt) : 0, hex);
    free(txt);
    char safe[200];
    size_t k = 0;
    for (const char *p = model; *p && k + 1 < sizeof safe; p++) {
        int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                 *p == '-' || *p == '_' || (*p == '.' && k > 0);
        safe[k++] = ok ? *p : '_';
    }
    safe[k] = '\0';
    fmt(out, n, "%s-%.16s", k ? safe : "model", hex);
}

/* ---- the cache and its download threads ---- */

enum job_state { JOB_RUNNING, JOB_DONE, JOB_FAILED };

struct job {
    struct weights *w;
    char name[256];
    char source[PATH_MAX];
    struct weights_manifest m;
    pthread_t thread;
    _Atomic int state;
    _Atomic int64_t done_bytes;
    char err[512]; /* written by the thread before state leaves JOB_RUNNING */
    struct job *next;
};

#define WEIGHTS_USES_MAX 256

struct weights {
    char dir[PATH_MAX];
    int64_t max_bytes;
    _Atomic int stop;
    pthread_mutex_t mu; /* guards uses[] */
    char uses[2][WEIGHTS_USES_MAX][256];
    size_t nuses[2];
    int cur;
    struct job *jobs; /* only the agent's loop touches the list */
};

struct weights *weights_new(const char *cache_dir, int64_t max_bytes)
{
    struct weights *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    fmt(w->dir, sizeof w->dir, "%s", cache_dir);
    w->max_bytes = max_bytes;
    pthread_mutex_init(&w->mu, NULL);
    return w;
}

static void job_free(struct job *j)
{
    pthread_join(j->thread, NULL);
    weights_manifest_free(&j->m);
    free(j);
}

void weights_free(struct weights *w)
{
    if (!w) return;
    atomic_store(&w->stop, 1);
    while (w->jobs) {
        struct job *j = w->jobs;
        w->jobs = j->next;
        job_free(j);
    }
    pthread_mutex_destroy(&w->mu);
    free(w);
}

void weights_begin_uses(struct weights *w)
{
    pthread_mutex_lock(&w->mu);
    w->cur ^= 1;
    w->nuses[w->cur] = 0;
    pthread_mutex_unlock(&w->mu);
}

void weights_use(struct weights *w, const char *model, json_t *manifest)
{
    char name[256];
    weights_entry_name(model, manifest, name, sizeof name);
    pthread_mutex_lock(&w->mu);
    if (w->nuses[w->cur] < WEIGHTS_USES_MAX)
        fmt(w->uses[w->cur][w->nuses[w->cur]++], 256, "%s", name);
    pthread_mutex_unlock(&w->mu);
}

static int in_use(struct weights *w, const char *name)
{
    int found = 0;
    pthread_mutex_lock(&w->mu);
    for (int k = 0; k < 2 && !found; k++)
        for (size_t i = 0; i < w->nuses[k] && !found; i++)
            found = !strcmp(w->uses[k][i], name);
    pthread_mutex_unlock(&w->mu);
    return found;
}

static _Thread_local int64_t du_total;
static int du_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)p, (void)f;
    if (flag == FTW_F) du_total += (int64_t)st->st_size;
    return 0;
}
static int64_t du(const char *path)
{
    du_total = 0;
    nftw(path, du_cb, 16, FTW_PHYS);
    return du_total;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)f;
    if (flag == FTW_DP)
        rmdir(p);
    else
        unlink(p);
    return 0;
}
static void rm_rf(const char *path)
{
    nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

void weights_disk(struct weights *w, int64_t *free_bytes, json_t *cached)
{
    struct statvfs sv;
    *free_bytes = -1;
    if (statvfs(w->dir, &sv) != 0) return;
    int64_t fs = (int64_t)sv.f_bavail * (int64_t)sv.f_frsize, used = 0, unused = 0;
    DIR *d = opendir(w->dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        char p[PATH_MAX + 300];
        struct stat st;
        fmt(p, sizeof p, "%s/%s", w->dir, de->d_name);
        if (de->d_name[0] == '.' || stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
        int64_t bytes = du(p);
        if (in_use(w, de->d_name))
            used += bytes;
        else
            unused += bytes;
        /* "<model>-<16 hex>": the model's name is what comes before the digest. */
        char name[256];
        fmt(name, sizeof name, "%s", de->d_name);
        char *dash = strrchr(name, '-');
        if (!dash || strlen(dash + 1) != 16) continue;
        *dash = '\0';
        size_t i;
        json_t *v;
        int seen = 0;
        json_array_foreach(cached, i, v) seen |= !strcmp(json_string_value(v), name);
        if (!seen) json_array_append_new(cached, json_string(name));
    }
    if (d) closedir(d);
    int64_t room = fs;
    if (w->max_bytes > 0) {
        room = fs + unused;
        if (w->max_bytes - used < room) room = w->max_bytes - used;
        if (room < 0) room = 0;
    }
    *free_bytes = room;
}

/* Evicts least recently used entries nobody uses until need more bytes fit. */
static void evict_for(struct weights *w, const char *self, int64_t need)
{
    if (w->max_bytes <= 0) return;
    DIR *d = opendir(w->dir);
    if (!d) return;
    struct weights_entry e[256];
    char names[256][256];
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 256) {
        if (de->d_name[0] == '.' || !strcmp(de->d_name, self)) continue;
        char p[PATH_MAX + 300];
        struct stat st;
        fmt(p, sizeof p, "%s/%s", w->dir, de->d_name);
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
        fmt(names[n], sizeof names[n], "%s", de->d_name);
        e[n].bytes = du(p);
        e[n].last_used = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        e[n].in_use = in_use(w, de->d_name);
        n++;
    }
    closedir(d);
    int victim[256];
    if (weights_lru_choose(e, n, need, w->max_bytes, victim) < 0)
        log_warn("weights %s: %lld bytes do not fit in --cache-max-bytes %lld even after evicting "
                 "every unused model",
                 self, (long long)need, (long long)w->max_bytes);
    for (size_t i = 0; i < n; i++)
        if (victim[i]) {
            char p[PATH_MAX + 300];
            fmt(p, sizeof p, "%s/%s", w->dir, names[i]);
            log_info("weights: evicting %s (%lld bytes, least recently used)", names[i],
                     (long long)e[i].bytes);
            rm_rf(p);
        }
}

struct xfer {
    struct job *j;
    int fd;
    int64_t offset; /* bytes of the file present when the request was made */
    int64_t base;   /* job bytes before this file */
    int64_t written;
    int checked;
    int restart; /* the server ignored our Range: start the file over */
    CURL *h;
};

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * nmemb;
    if (atomic_load(&x->j->w->stop)) return 0;
    if (!x->checked) {
        long code = 0;
        curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
        x->checked = 1;
        if (code == 200 && x->offset > 0) { /* a full body: the server ignored Range */
            if (ftruncate(x->fd, 0) != 0 || lseek(x->fd, 0, SEEK_SET) != 0) return 0;
            x->offset = 0;
        } else if (code != 200 && code != 206) {
            return 0;
        }
    }
    size_t off = 0;
    while (off < len) {
        ssize_t wr = write(x->fd, ptr + off, len - off);
        if (wr < 0) {
            if (errno == EINTR) continue;
            return 0;
        }
        off += (size_t)wr;
    }
    x->written += (int64_t)len;
    atomic_store(&x->j->done_bytes, x->base + x->offset + x->written);
    return len;
}

/* Aborts a transfer when the agent stops, even one that receives nothing. */
static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt, (void)dn, (void)ut, (void)un;
    struct xfer *x = arg;
    return atomic_load(&x->j->w->stop) ? 1 : 0;
}

/* Fetches url into dst, resuming from dst's size. 0, or -1 with err set. */
static int fetch_http(struct job *j, const char *url, const char *dst, const struct weights_file *f,
                      int64_t base, char *err, size_t errlen)
{
    for (int attempt = 1; attempt <= WEIGHTS_ATTEMPTS; attempt++) {
        if (atomic_load(&j->w->stop)) {
            fmt(err, errlen, "agent stopping");
            return -1;
        }
        struct stat st;
        int64_t have = stat(dst, &st) == 0 ? (int64_t)st.st_size : 0;
        if (have > f->size) {
            if (truncate(dst, 0) != 0) have = 0;
            have = 0;
        }
        if (have == f->size) return 0;
        int fd = open(dst, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd < 0) {
            fmt(err, errlen, "%s: cannot write %s: %s", f->path, dst, strerror(errno));
            return -1;
        }
        CURL *h = curl_easy_init();
        if (!h) {
            close(fd);
            fmt(err, errlen, "out of memory");
            return -1;
        }
        struct xfer x = {.j = j, .fd = fd, .offset = have, .base = base, .h = h};
        char range[48];
        fmt(range, sizeof range, "%lld-", (long long)have);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 30L);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &x);
        if (have > 0) curl_easy_setopt(h, CURLOPT_RANGE, range);
        CURLcode rc = curl_easy_perform(h);
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_cleanup(h);
        close(fd);
        if (rc == CURLE_OK && (code == 200 || code == 206)) return 0;
        if (code == 416) return 0; /* nothing left to send: the size check decides */
        if (code >= 400 && code != 408 && code != 429 && code < 500) {
            fmt(err, errlen, "%s: HTTP %ld from %s", f->path, code, url);
            return -1;
        }
        fmt(err, errlen, "%s: %s", f->path,
            rc != CURLE_OK ? curl_easy_strerror(rc) : "unexpected HTTP status");
        log_warn("weights %s: %s (attempt %d, %lld of %lld bytes): resuming", j->name, err, attempt,
                 (long long)(have + x.written), (long long)f->size);
        util_sleep_ms(WEIGHTS_RETRY_MS);
    }
    return -1;
}

static int copy_file(struct job *j, const char *src, const char *dst, const struct weights_file *f,
                     int64_t base, char *err, size_t errlen)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        fmt(err, errlen, "%s: cannot read %s: %s", f->path, src, strerror(errno));
        return -1;
    }
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        fmt(err, errlen, "%s: cannot write %s: %s", f->path, dst, strerror(errno));
        close(in);
        return -1;
    }
    static __thread char buf[1 << 16];
    int64_t done = 0;
    ssize_t got;
    int rc = 0;
    while ((got = read(in, buf, sizeof buf)) != 0) {
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 || write(out, buf, (size_t)got) != got || atomic_load(&j->w->stop)) {
            fmt(err, errlen, "%s: copy failed: %s", f->path, strerror(errno));
            rc = -1;
            break;
        }
        done += got;
        atomic_store(&j->done_bytes, base + done);
    }
    close(in);
    close(out);
    return rc;
}

static void mkparents(const char *path)
{
    char d[PATH_MAX + 600];
    fmt(d, sizeof d, "%s", path);
    char *slash = strrchr(d, '/');
    if (slash) {
        *slash = '\0';
        util_mkdirs(d, 0755);
    }
}

static int run_job(struct job *j)
{
    struct weights *w = j->w;
    char partial[PATH_MAX + 300], final[PATH_MAX + 300];
    fmt(partial, sizeof partial, "%s/.partial/%s", w->dir, j->name);
    fmt(final, sizeof final, "%s/%s", w->dir, j->name);
    evict_for(w, j->name, j->m.total);
    if (util_mkdirs(partial, 0755) != 0) {
        fmt(j->err, sizeof j->err, "cannot create %s: %s", partial, strerror(errno));
        return -1;
    }
    int is_file = !strncmp(j->source, "file://", 7);
    const char *root = is_file ? j->source + 7 : j->source;
    size_t rl = strlen(root);
    const char *sep = rl && root[rl - 1] == '/' ? "" : "/";
    int64_t base = 0;
    for (size_t i = 0; i < j->m.n; i++) {
        const struct weights_file *f = &j->m.files[i];
        char dst[PATH_MAX + 900], src[PATH_MAX + 600];
        fmt(dst, sizeof dst, "%s/%s", partial, f->path);
        fmt(src, sizeof src, "%s%s%s", root, sep, f->path);
        mkparents(dst);
        char why[512];
        /* A file left complete by an earlier try is kept; anything else is fetched (again). */
        if (weights_verify_file(dst, f, why, sizeof why) != 0) {
            int rc = is_file ? copy_file(j, src, dst, f, base, j->err, sizeof j->err)
                             : fetch_http(j, src, dst, f, base, j->err, sizeof j->err);
            if (rc != 0) return -1;
            if (weights_verify_file(dst, f, j->err, sizeof j->err) != 0) {
                unlink(dst); /* a wrong file is not resumed from */
                return -1;
            }
        }
        base += f->size;
        atomic_store(&j->done_bytes, base);
    }
    if (rename(partial, final) != 0) {
        if (errno == EEXIST || errno == ENOTEMPTY) {
            rm_rf(partial); /* someone else completed it first: theirs is as good */
            return 0;
        }
        fmt(j->err, sizeof j->err, "cannot rename %s into place: %s", partial, strerror(errno));
        return -1;
    }
    return 0;
}

static void *job_main(void *arg)
{
    struct job *j = arg;
    int64_t t0 = util_now_ms();
    int rc = run_job(j);
    if (rc == 0)
        log_info("weights %s: %zu files, %lld bytes verified in %lld ms", j->name, j->m.n,
                 (long long)j->m.total, (long long)(util_now_ms() - t0));
    else
        log_warn("weights %s: %s", j->name, j->err);
    atomic_store(&j->state, rc == 0 ? JOB_DONE : JOB_FAILED);
    return NULL;
}

enum weights_status weights_ensure(struct weights *w, const char *model, const char *source,
                                   json_t *manifest, char *path, size_t pathlen, int *percent,
                                   char *err, size_t errlen)
{
    char name[256], final[PATH_MAX + 300];
    weights_entry_name(model, manifest, name, sizeof name);
    fmt(final, sizeof final, "%s/%s", w->dir, name);
    *percent = 0;
    struct job **pp = &w->jobs;
    while (*pp && strcmp((*pp)->name, name) != 0)
        pp = &(*pp)->next;
    struct job *j = *pp;
    if (j) {
        int st = atomic_load(&j->state);
        if (st == JOB_RUNNING) {
            int64_t done = atomic_load(&j->done_bytes);
            *percent = j->m.total > 0 ? (int)(done * 100 / j->m.total) : 0;
            if (*percent > 99) *percent = 99;
            return WEIGHTS_PENDING;
        }
        *pp = j->next;
        if (st == JOB_FAILED) {
            fmt(err, errlen, "%s", j->err);
            job_free(j);
            return WEIGHTS_FAILED;
        }
        job_free(j);
    }
    struct stat st;
    if (stat(final, &st) == 0 && S_ISDIR(st.st_mode)) {
        utimensat(AT_FDCWD, final, NULL, 0); /* its use time, for eviction */
        fmt(path, pathlen, "%s", final);
        return WEIGHTS_READY;
    }
    j = calloc(1, sizeof *j);
    if (!j) {
        fmt(err, errlen, "out of memory");
        return WEIGHTS_FAILED;
    }
    if (weights_manifest_parse(manifest, &j->m, err, errlen) != 0) {
        free(j);
        return WEIGHTS_FAILED;
    }
    j->w = w;
    fmt(j->name, sizeof j->name, "%s", name);
    fmt(j->source, sizeof j->source, "%s", source);
    atomic_store(&j->state, JOB_RUNNING);
    if (pthread_create(&j->thread, NULL, job_main, j) != 0) {
        fmt(err, errlen, "cannot start a download thread");
        weights_manifest_free(&j->m);
        free(j);
        return WEIGHTS_FAILED;
    }
    log_info("weights %s: fetching %zu files, %lld bytes, from %s", name, j->m.n,
             (long long)j->m.total, source);
    j->next = w->jobs;
    w->jobs = j;
    return WEIGHTS_PENDING;
}

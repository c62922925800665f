/* safetensors: owns the read-only mappings of checkpoint files and the validated tensor table that
 * points into them (see safetensors.h for the format). Nothing else in the runtime parses a
 * safetensors header or computes an offset into a mapping: the model asks for tensors by name and
 * gets bounds-checked views. Validation follows the reference implementation (the Rust crate):
 * the header must fit in the file, every tensor's byte range must match dtype * shape, and the
 * ranges must tile the data buffer with neither overlaps nor holes. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* A header larger than this is refused before it is read: the reference implementation uses the
 * same bound, and a checkpoint with so many tensors that its index needs more is not a model we
 * can serve; otherwise a corrupt length field would make us allocate gigabytes. */
#define ST_MAX_HEADER (100u * 1024 * 1024)

/* A sharded checkpoint with more files than this is refused (real ones have tens). */
#define ST_MAX_SHARDS 4096

struct st_file {
    char *path;
    void *map;
    size_t size;
};

struct st_set {
    struct st_file *files;
    size_t nfiles;
    struct st_tensor *tensors; /* sorted by name */
    size_t ntensors;
    json_t *metadata; /* new reference or NULL */
};

__attribute__((format(printf, 3, 4))) static void seterr(char *err, size_t errlen, const char *fmt,
                                                         ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *st_dtype_name(enum st_dtype d)
{
    switch (d) {
    case ST_F32:
        return "F32";
    case ST_F16:
        return "F16";
    case ST_BF16:
        return "BF16";
    }
    return "?";
}

size_t st_dtype_size(enum st_dtype d)
{
    return d == ST_F32 ? 4 : 2;
}

static int dtype_parse(const char *s, enum st_dtype *out)
{
    static const enum st_dtype all[] = {ST_F32, ST_F16, ST_BF16};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcmp(s, st_dtype_name(all[i])) == 0) {
            *out = all[i];
            return 0;
        }
    return -1;
}

float st_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13); /* inf or NaN */
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else { /* subnormal: renormalize */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400));
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t st_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

uint16_t st_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return sign | 0x7e00;  /* NaN */
    if (abs >= 0x477ff000u) return sign | 0x7c00; /* rounds past 65504: inf */
    if (abs < 0x33000001u) return sign;           /* below half the smallest subnormal */
    float af;
    memcpy(&af, &abs, 4);
    if (abs < 0x38800000u) { /* subnormal half: scale so the integer part is the mantissa */
        return sign | (uint16_t)lrintf(af * 16777216.0f);
    }
    uint32_t exp = (abs >> 23) - 112, man = abs & 0x7fffff;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return sign | (uint16_t)h;
}

void st_to_f32(const struct st_tensor *t, float *out)
{
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        memcpy(out, p, (size_t)t->numel * 4);
        break;
    case ST_BF16:
        for (int64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = st_bf16_to_f32(h);
        }
        break;
    case ST_F16:
        for (int64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = st_f16_to_f32(h);
        }
        break;
    }
}

static int map_file(const char *path, struct st_file *f, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        seterr(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    f->size = (size_t)sb.st_size;
    if (f->size < 8) {
        seterr(err, errlen, "%s: truncated: %zu bytes, shorter than the 8-byte header length", path,
               f->size);
        close(fd);
        return -1;
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        seterr(err, errlen, "%s: mmap failed: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Parses "shape" into t; the element count must not overflow. */
static int parse_shape(json_t *shape, struct st_tensor *t, const char *path, char *err,
                       size_t errlen)
{
    if (!json_is_array(shape) || json_array_size(shape) > ST_MAX_DIMS) {
        seterr(err, errlen, "%s: tensor '%s': \"shape\" must be an array of at most %d integers",
               path, t->name, ST_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)json_array_size(shape);
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        json_t *v = json_array_get(shape, (size_t)d);
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            seterr(err, errlen, "%s: tensor '%s': shape[%d] must be a non-negative integer", path,
                   t->name, d);
            return -1;
        }
        t->shape[d] = json_integer_value(v);
        if (t->shape[d] && t->numel > INT64_MAX / 4 / t->shape[d]) {
            seterr(err, errlen, "%s: tensor '%s': shape is too large", path, t->name);
            return -1;
        }
        t->numel *= t->shape[d];
    }
    return 0;
}

/* Fills t from one header entry; data_offsets are checked against the data buffer size. */
static int parse_entry(const char *path, const char *name, json_t *v, const unsigned char *data,
                       size_t data_size, struct st_tensor *t, char *err, size_t errlen)
{
    t->name = name;
    if (!json_is_object(v)) {
        seterr(err, errlen, "%s: tensor '%s': header entry must be an object", path, name);
        return -1;
    }
    const char *key;
    json_t *fv;
    json_object_foreach(v, key, fv)
    {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets")) {
            seterr(err, errlen, "%s: tensor '%s': unknown field \"%s\"", path, name, key);
            return -1;
        }
    }
    json_t *dt = json_object_get(v, "dtype");
    if (!json_is_string(dt)) {
        seterr(err, errlen, "%s: tensor '%s': \"dtype\" is missing or not a string", path, name);
        return -1;
    }
    if (dtype_parse(json_string_value(dt), &t->dtype) != 0) {
        seterr(err, errlen, "%s: tensor '%s': dtype \"%s\" is not supported (F32, F16, BF16)", path,
               name, json_string_value(dt));
        return -1;
    }
    if (parse_shape(json_object_get(v, "shape"), t, path, err, errlen) != 0) return -1;
    json_t *off = json_object_get(v, "data_offsets");
    json_t *b = json_array_get(off, 0), *e = json_array_get(off, 1);
    if (!json_is_array(off) || json_array_size(off) != 2 || !json_is_integer(b) ||
        !json_is_integer(e)) {
        seterr(err, errlen, "%s: tensor '%s': \"data_offsets\" must be [begin, end]", path, name);
        return -1;
    }
    json_int_t begin = json_integer_value(b), end = json_integer_value(e);
    if (begin < 0 || end < begin || (uint64_t)end > data_size) {
        seterr(err, errlen,
               "%s: tensor '%s': data_offsets [%lld, %lld] are out of bounds (data is %zu bytes)",
               path, name, (long long)begin, (long long)end, data_size);
        return -1;
    }
    size_t want = (size_t)t->numel * st_dtype_size(t->dtype);
    if ((size_t)(end - begin) != want) {
        seterr(err, errlen,
               "%s: tensor '%s': data_offsets span %lld bytes but %s x %lld elements need %zu",
               path, name, (long long)(end - begin), st_dtype_name(t->dtype), (long long)t->numel,
               want);
        return -1;
    }
    t->data = data + begin;
    t->nbytes = want;
    return 0;
}

static const unsigned char *tensor_end(const struct st_tensor *t)
{
    return t->data + t->nbytes;
}

static int cmp_by_offset(const void *a, const void *b)
{
    const struct st_tensor *x = a, *y = b;
    if (x->data != y->data) return x->data < y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* The ranges of one file's tensors (at *ts, n of them) must tile its data buffer exactly. */
static int check_tiling(const char *path, struct st_tensor *ts, size_t n, const unsigned char *data,
                        size_t data_size, char *err, size_t errlen)
{
    if (n) qsort(ts, n, sizeof *ts, cmp_by_offset);
    const unsigned char *at = data;
    for (size_t i = 0; i < n; i++) {
        if (ts[i].data < at) {
            seterr(err, errlen, "%s: tensor '%s' overlaps tensor '%s' in the data buffer", path,
                   ts[i].name, ts[i - 1].name);
            return -1;
        }
        if (ts[i].data > at) {
            seterr(err, errlen,
                   "%s: tensor '%s' starts at %zu, leaving a hole after byte %zu of the data", path,
                   ts[i].name, (size_t)(ts[i].data - data), (size_t)(at - data));
            return -1;
        }
        at = tensor_end(&ts[i]);
    }
    if (at != data + data_size) {
        seterr(err, errlen, "%s: the data buffer has %zu bytes no tensor uses", path,
               (size_t)(data + data_size - at));
        return -1;
    }
    return 0;
}

static int add_tensors(struct st_set *s, size_t more)
{
    struct st_tensor *p = realloc(s->tensors, (s->ntensors + more + 1) * sizeof *p);
    if (!p) return -1;
    s->tensors = p;
    return 0;
}

/* Parses and validates one mapped file's header; appends its tensors to s. */
static int parse_file(struct st_set *s, struct st_file *f, char *err, size_t errlen)
{
    const unsigned char *m = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | m[i];
    if (hlen > ST_MAX_HEADER || hlen > f->size - 8) {
        seterr(err, errlen, "%s: header length %llu does not fit in the file (%zu bytes)", f->path,
               (unsigned long long)hlen, f->size);
        return -1;
    }
    if (hlen < 2 || m[8] != '{') {
        seterr(err, errlen, "%s: header is not a JSON object", f->path);
        return -1;
    }
    json_error_t je;
    json_t *h = json_loadb((const char *)m + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!h || !json_is_object(h)) {
        seterr(err, errlen, "%s: header is not valid JSON: %s (column %d)", f->path,
               h ? "not an object" : je.text, je.column);
        json_decref(h);
        return -1;
    }
    const unsigned char *data = m + 8 + hlen;
    size_t data_size = f->size - 8 - (size_t)hlen;
    size_t first = s->ntensors;
    if (add_tensors(s, json_object_size(h)) != 0) {
        json_decref(h);
        seterr(err, errlen, "%s: out of memory", f->path);
        return -1;
    }
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(h, key, v)
    {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(v)) {
                seterr(err, errlen, "%s: \"__metadata__\" must be an object", f->path);
                rc = -1;
                break;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv)
            {
                if (!json_is_string(mv)) {
                    seterr(err, errlen, "%s: __metadata__ field \"%s\" must be a string", f->path,
                           mk);
                    rc = -1;
                }
            }
            if (rc) break;
            if (!s->metadata) s->metadata = json_incref(v);
            continue;
        }
        struct st_tensor *t = &s->tensors[s->ntensors];
        memset(t, 0, sizeof *t);
        t->file = f->path;
        char *name = strdup(key);
        if (!name) {
            rc = -1;
            break;
        }
        if (parse_entry(f->path, name, v, data, data_size, t, err, errlen) != 0) {
            free(name);
            rc = -1;
            break;
        }
        s->ntensors++;
    }
    json_decref(h);
    if (rc) return -1;
    return check_tiling(f->path, s->tensors + first, s->ntensors - first, data, data_size, err,
                        errlen);
}

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(((const struct st_tensor *)a)->name, ((const struct st_tensor *)b)->name);
}

static int open_one(struct st_set *s, const char *path, char *err, size_t errlen)
{
    struct st_file *p = realloc(s->files, (s->nfiles + 1) * sizeof *p);
    if (!p) return -1;
    s->files = p;
    struct st_file *f = &s->files[s->nfiles];
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return -1;
    s->nfiles++;
    if (map_file(path, f, err, errlen) != 0) return -1;
    return parse_file(s, f, err, errlen);
}

static int file_already_open(const struct st_set *s, const char *path)
{
    for (size_t i = 0; i < s->nfiles; i++)
        if (strcmp(s->files[i].path, path) == 0) return 1;
    return 0;
}

/* Opens every shard named by index.json's weight_map, then checks that each name it lists is in
 * the shard it says. */
static int open_index(struct st_set *s, const char *dir, const char *ipath, char *err,
                      size_t errlen)
{
    json_error_t je;
    json_t *idx = json_load_file(ipath, JSON_REJECT_DUPLICATES, &je);
    if (!idx) {
        if (json_error_code(&je) == json_error_cannot_open_file)
            seterr(err, errlen, "%s: cannot open: %s", ipath, strerror(errno));
        else
            seterr(err, errlen, "%s: not valid JSON: %s (line %d)", ipath, je.text, je.line);
        return -1;
    }
    json_t *wm = json_object_get(idx, "weight_map");
    int rc = 0;
    if (!json_is_object(wm)) {
        seterr(err, errlen, "%s: \"weight_map\" is missing or not an object", ipath);
        rc = -1;
    }
    const char *name;
    json_t *v;
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        json_object_foreach(wm, name, v)
        {
            const char *fn = json_string_value(v);
            if (!fn || !*fn || strchr(fn, '/') || strcmp(fn, "..") == 0) {
                seterr(err, errlen, "%s: weight_map[\"%s\"] must be a plain file name", ipath,
                       name);
                rc = -1;
                break;
            }
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", dir, fn);
            if (pass == 0) {
                if (file_already_open(s, path)) continue;
                if (s->nfiles >= ST_MAX_SHARDS) {
                    seterr(err, errlen, "%s: more than %d shards", ipath, ST_MAX_SHARDS);
                    rc = -1;
                } else if (open_one(s, path, err, errlen) != 0) {
                    rc = -1;
                }
                if (rc) break;
            } else {
                const struct st_tensor *t = st_find(s, name);
                if (!t || strcmp(t->file, path) != 0) {
                    seterr(err, errlen, "%s: tensor '%s' is not in %s as weight_map says", ipath,
                           name, fn);
                    rc = -1;
                    break;
                }
            }
        }
        if (pass == 0 && rc == 0 && s->ntensors)
            qsort(s->tensors, s->ntensors, sizeof *s->tensors, cmp_by_name);
    }
    json_decref(idx);
    return rc;
}

struct st_set *st_open(const char *path, char *err, size_t errlen)
{
    struct st_set *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    struct stat sb;
    int rc;
    seterr(err, errlen, "%s: out of memory", path);
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        char ipath[4096], fpath[4096];
        snprintf(ipath, sizeof ipath, "%s/model.safetensors.index.json", path);
        snprintf(fpath, sizeof fpath, "%s/model.safetensors", path);
        if (access(ipath, F_OK) == 0)
            rc = open_index(s, path, ipath, err, errlen);
        else
            rc = open_one(s, fpath, err, errlen);
    } else {
        rc = open_one(s, path, err, errlen);
    }
    if (rc == 0) {
        if (s->ntensors) qsort(s->tensors, s->ntensors, sizeof *s->tensors, cmp_by_name);
        for (size_t i = 1; i < s->ntensors; i++)
            if (strcmp(s->tensors[i].name, s->tensors[i - 1].name) == 0) {
                seterr(err, errlen, "%s and %s: tensor '%s' appears twice", s->tensors[i - 1].file,
                       s->tensors[i].file, s->tensors[i].name);
                rc = -1;
                break;
            }
    }
    if (rc != 0) {
        st_close(s);
        return NULL;
    }
    return s;
}

void st_close(struct st_set *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->ntensors; i++)
        free((char *)s->tensors[i].name);
    for (size_t i = 0; i < s->nfiles; i++) {
        if (s->files[i].map) munmap(s->files[i].map, s->files[i].size);
        free(s->files[i].path);
    }
    free(s->tensors);
    free(s->files);
    json_decref(s->metadata);
    free(s);
}

size_t st_count(const struct st_set *s)
{
    return s->ntensors;
}

const struct st_tensor *st_at(const struct st_set *s, size_t i)
{
    return i < s->ntensors ? &s->tensors[i] : NULL;
}

const struct st_tensor *st_find(const struct st_set *s, const char *name)
{
    struct st_tensor key = {.name = name};
    if (!s->ntensors) return NULL;
    return bsearch(&key, s->tensors, s->ntensors, sizeof key, cmp_by_name);
}

json_t *st_metadata(const struct st_set *s)
{
    return s->metadata;
}

/* ---- writer ---- */

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static json_t *build_header(const struct st_wtensor *t, size_t n, json_t *metadata)
{
    json_t *h = json_object();
    if (metadata) json_object_set(h, "__metadata__", metadata);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t numel = 1;
        json_t *shape = json_array();
        for (int d = 0; d < t[i].ndim; d++) {
            numel *= t[i].shape[d];
            json_array_append_new(shape, json_integer(t[i].shape[d]));
        }
        uint64_t nb = (uint64_t)numel * st_dtype_size(t[i].dtype);
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(st_dtype_name(t[i].dtype)));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets",
                            json_pack("[II]", (json_int_t)off, (json_int_t)(off + nb)));
        json_object_set_new(h, t[i].name, e);
        off += nb;
    }
    return h;
}

static int write_tensor(int fd, const struct st_wtensor *t)
{
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; d++)
        numel *= t->shape[d];
    if (t->dtype == ST_F32) return write_all(fd, t->data, (size_t)numel * 4);
    enum { CHUNK = 4096 };
    uint16_t out[CHUNK];
    for (int64_t i = 0; i < numel; i += CHUNK) {
        int64_t k = numel - i < CHUNK ? numel - i : CHUNK;
        for (int64_t j = 0; j < k; j++)
            out[j] = t->dtype == ST_BF16 ? st_f32_to_bf16(t->data[i + j])
                                         : st_f32_to_f16(t->data[i + j]);
        if (write_all(fd, out, (size_t)k * 2) != 0) return -1;
    }
    return 0;
}

int st_write(const char *path, const struct st_wtensor *t, size_t n, json_t *metadata, char *err,
             size_t errlen)
{
    json_t *h = build_header(t, n, metadata);
    char *hs = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    if (!hs) {
        seterr(err, errlen, "%s: cannot serialize the header", path);
        return -1;
    }
    /* Pad the header with spaces so the data buffer starts 8-byte aligned, as the reference
     * writer does. */
    size_t hl = strlen(hs), padded = (hl + 7) & ~(size_t)7;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc = fd < 0 ? -1 : 0;
    if (rc == 0) {
        unsigned char len8[8];
        for (int i = 0; i < 8; i++)
            len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
        rc = write_all(fd, len8, 8) || write_all(fd, hs, hl) ||
             write_all(fd, "        ", padded - hl);
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = write_tensor(fd, &t[i]);
        if (rc == 0) rc = fsync(fd);
        if (close(fd) != 0) rc = -1;
        if (rc == 0) rc = rename(tmp, path);
    }
    free(hs);
    if (rc != 0) {
        seterr(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

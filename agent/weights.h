/* weights: the per-host model weights cache. A catalog model whose source is a URI (file:///dir or
 * http(s)://host/dir/) comes with a manifest, a list of files with their size and sha256; this
 * module makes sure every file of it lies, verified, in CACHE_DIR/<model>-<manifest digest>/ before
 * a runtime is started on it. Fetching runs in one background thread per model (the agent's loop
 * only polls weights_ensure), so that replicas of one model share one download; each file is
 * written to CACHE_DIR/.partial/<entry>/ and a broken HTTP transfer resumes with a Range request
 * from the partial file's size. Once every file is checked the directory is renamed into place in
 * one step, so a directory that exists under its final name is complete. Before a download, the
 * least recently used entries that no desired replica uses are evicted until the new one fits in
 * --cache-max-bytes. */
#ifndef ORP_AGENT_WEIGHTS_H
#define ORP_AGENT_WEIGHTS_H

#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#define WEIGHTS_PATH_MAX 512 /* a manifest file's relative path */

struct weights_file {
    char path[WEIGHTS_PATH_MAX];
    int64_t size;
    char sha256[65]; /* lowercase hex */
};

struct weights_manifest {
    struct weights_file *files; /* owned */
    size_t n;
    int64_t total; /* sum of sizes */
};

/* Parses {"files":[{"path":…,"size":N,"sha256":"…"},…]}: paths relative, no "..", no empty
 * component; sizes >= 0; sha256 64 hex digits (stored lowercase). 0, or -1 with err set. */
int weights_manifest_parse(json_t *o, struct weights_manifest *m, char *err, size_t errlen);
void weights_manifest_free(struct weights_manifest *m);

/* sha256 of a whole file as lowercase hex. 0, or -1 (errno set) when it cannot be read. */
int weights_sha256_file(const char *path, char out[65]);

/* Checks path against f: "<f->path>: missing", "<f->path>: size N, expected M",
 * "<f->path>: sha256 mismatch". 0 when it matches, -1 with err set otherwise. */
int weights_verify_file(const char *path, const struct weights_file *f, char *err, size_t errlen);

/* One cache entry, for the eviction choice. */
struct weights_entry {
    int64_t bytes;
    int64_t last_used; /* any monotonic order: larger is more recent */
    int in_use;
};

/* Chooses what to evict so that `need` more bytes fit under max_bytes: entries not in use, least
 * recently used first, until the rest plus need fits. Sets victim[i] = 1 for those chosen.
 * Returns how many were chosen, or -1 when even evicting all unused ones would not make it fit
 * (then victim[] marks them all: evicting them is still the best one can do). max_bytes <= 0:
 * unlimited, nothing chosen. */
int weights_lru_choose(const struct weights_entry *e, size_t n, int64_t need, int64_t max_bytes,
                       int *victim);

/* The key of a model's cache entry: "<model>-<first 16 hex of sha256(manifest text)>", with
 * characters unsafe in a file name replaced by '_'. */
void weights_entry_name(const char *model, json_t *manifest, char *out, size_t n);

struct weights;

/* cache_dir is copied; max_bytes <= 0 means no limit. NULL when out of memory. */
struct weights *weights_new(const char *cache_dir, int64_t max_bytes);
/* Waits for every download thread to finish (each is told to stop), then frees. */
void weights_free(struct weights *w);

enum weights_status { WEIGHTS_READY, WEIGHTS_PENDING, WEIGHTS_FAILED };

/* Where model's weights are, starting their download when they are neither cached nor being
 * fetched. READY: path gets the directory (its use time is refreshed). PENDING: *percent gets
 * the progress (0–100). FAILED: err gets why (a file's checksum, a transport error); the failure
 * is reported once, and the next call starts again. Never blocks on the network. */
enum weights_status weights_ensure(struct weights *w, const char *model, const char *source,
                                   json_t *manifest, char *path, size_t pathlen, int *percent,
                                   char *err, size_t errlen);

/* What the scheduler needs to know of this cache (sent with each heartbeat): *free_bytes, the room
 * for a new model (the file system's free space; with --cache-max-bytes, at most the limit minus
 * the entries in use, counting unused entries as room since they would be evicted), -1 when the
 * cache directory cannot be examined; and in cached (an array, appended to) the names of the models
 * whose entries are complete here, each once. */
void weights_disk(struct weights *w, int64_t *free_bytes, json_t *cached);

/* Eviction protects the entries marked in use since the last weights_begin_uses(): call it, then
 * weights_use() for each model a desired replica needs, once per loop turn. */
void weights_begin_uses(struct weights *w);
void weights_use(struct weights *w, const char *model, json_t *manifest);

#endif

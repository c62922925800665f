/* fingerprint: the deployment fingerprint (see fingerprint.h). */
#include "fingerprint.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "util.h"

/* sha256 of a whole file, through a read-only mapping (the model's mapping shares its pages). */
static int file_sha256(const char *path, char out[65])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        close(fd);
        return -1;
    }
    size_t n = (size_t)sb.st_size;
    void *p = n ? mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    close(fd);
    if (n && p == MAP_FAILED) return -1;
    if (n) madvise(p, n, MADV_SEQUENTIAL);
    util_sha256_hex(p ? p : "", n, out);
    if (n) munmap(p, n);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

int rt_fingerprint_compute(const char *dir, int tp, const char *backend, struct rt_fingerprint *fp,
                           char *err, size_t errlen)
{
    if (errlen) err[0] = '\0';
    struct st_set *set = st_open(dir, err, errlen);
    if (!set) return -1;
    size_t n = st_count(set), nfiles = 0;
    const char **files = calloc(n ? n : 1, sizeof *files);
    int rc = files ? 0 : -1;
    size_t bytes[3] = {0}; /* per st_dtype */
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const struct st_tensor *t = st_at(set, i);
        if ((unsigned)t->dtype < 3) bytes[t->dtype] += t->nbytes;
        size_t k = 0;
        while (k < nfiles && strcmp(files[k], t->file) != 0)
            k++;
        if (k == nfiles) files[nfiles++] = t->file;
    }
    if (rc == 0) qsort(files, nfiles, sizeof *files, cmp_str);
    struct buf lines = {0};
    for (size_t k = 0; rc == 0 && k < nfiles; k++) {
        char hex[65];
        if (file_sha256(files[k], hex) != 0) {
            snprintf(err, errlen, "%s: cannot read: %s", files[k], strerror(errno));
            rc = -1;
        } else if (buf_printf(&lines, "%s %s\n", base_name(files[k]), hex) != 0) {
            rc = -1;
        }
    }
    if (rc == 0) {
        util_sha256_hex(lines.data ? lines.data : "", lines.len, fp->weights);
        char lower[8];
        int most = ST_F32;
        for (int d = ST_F16; d <= ST_BF16; d++)
            if (bytes[d] > bytes[most]) most = d;
        snprintf(lower, sizeof lower, "%s", st_dtype_name((enum st_dtype)most));
        for (char *c = lower; *c; c++)
            *c = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
        snprintf(fp->header, sizeof fp->header,
                 "weights=sha256:%.16s; dtype=%s; tp=%d; backend=%s; version=%s", fp->weights,
                 lower, tp, backend, RT_VERSION);
        char h[65];
        util_sha256_hex(fp->header, strlen(fp->header), h);
        snprintf(fp->system, sizeof fp->system, "fp_%.12s", h);
    } else if (!err[0]) {
        snprintf(err, errlen, "%s: out of memory while fingerprinting", dir);
    }
    buf_free(&lines);
    free(files);
    st_close(set);
    return rc;
}

/* tmpdir: a temporary directory per test (mkdtemp) and its recursive removal. */
#ifndef ORP_TEST_AGENT_TMPDIR_H
#define ORP_TEST_AGENT_TMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static inline char *tmpdir_make(char *buf, size_t n)
{
    const char *base = getenv("TMPDIR");
    snprintf(buf, n, "%s/orp-agent-test-XXXXXX", base && base[0] ? base : "/tmp");
    return mkdtemp(buf);
}

/* A temporary directory with an empty replicas/ in it, as an agent's state directory has; exits
 * the test when it cannot be made. */
static inline void tmpdir_make_state(char *root, size_t n)
{
    char rdir[600];
    if (!tmpdir_make(root, n)) {
        fprintf(stderr, "mkdtemp failed\n");
        exit(1);
    }
    snprintf(rdir, sizeof rdir, "%s/replicas", root);
    if (mkdir(rdir, 0755) != 0) {
        fprintf(stderr, "cannot create %s\n", rdir);
        exit(1);
    }
}

static int tmpdir_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline void tmpdir_remove(const char *dir)
{
    nftw(dir, tmpdir_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static inline void write_text(const char *path, const char *text, const char *mode)
{
    FILE *f = fopen(path, mode);
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

#endif

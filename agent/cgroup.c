/* cgroup: see cgroup.h. */
#include "cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* cpu.max's period: the kernel's default, 100 ms. */
#define CG_CPU_PERIOD_US 100000

static int is_cgroup2(const char *dir)
{
    struct statfs sf;
    return statfs(dir, &sf) == 0 && sf.f_type == CGROUP2_SUPER_MAGIC;
}

/* Writes text to dir/file. 0 or -1 with errno. */
static int put(const char *dir, const char *file, const char *text)
{
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t w = write(fd, text, strlen(text));
    int e = errno;
    close(fd);
    errno = e;
    return w == (ssize_t)strlen(text) ? 0 : -1;
}

/* 1 when the space-separated list in dir/file names word. */
static int lists(const char *dir, const char *file, const char *word)
{
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    char *txt = util_read_file(p, NULL);
    if (!txt) return 0;
    int found = 0;
    for (char *save = NULL, *t = strtok_r(txt, " \n", &save); t && !found;
         t = strtok_r(NULL, " \n", &save))
        found = !strcmp(t, word);
    free(txt);
    return found;
}

/* Makes controller ctl available to the children of dir (and so to dir itself, from its parent). */
static int enable(const char *parent, const char *dir, const char *ctl)
{
    char plus[32];
    snprintf(plus, sizeof plus, "+%s", ctl);
    if (!lists(parent, "cgroup.subtree_control", ctl) &&
        (!lists(parent, "cgroup.controllers", ctl) ||
         put(parent, "cgroup.subtree_control", plus) != 0))
        return 0;
    if (!lists(dir, "cgroup.subtree_control", ctl) && put(dir, "cgroup.subtree_control", plus) != 0)
        return 0;
    return 1;
}

void cg_init(struct cg *c, const char *root, const char *scope)
{
    memset(c, 0, sizeof *c);
    if (root && !strcmp(root, "off")) {
        log_info("cgroups: off (--cgroup-root off): runtimes get no memory or CPU limit");
        return;
    }
    static const char *const candidates[] = {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"};
    const char *found = NULL;
    if (root && root[0])
        found = is_cgroup2(root) ? root : NULL;
    else
        for (size_t i = 0; i < sizeof candidates / sizeof candidates[0] && !found; i++)
            if (is_cgroup2(candidates[i])) found = candidates[i];
    if (!found) {
        log_warn("cgroups: no cgroup v2 hierarchy at %s: runtimes run without their own cgroup "
                 "(no memory or CPU limit)",
                 root && root[0] ? root : "/sys/fs/cgroup or /sys/fs/cgroup/unified");
        return;
    }
    char top[PATH_MAX - 80], dir[PATH_MAX];
    snprintf(top, sizeof top, "%.3000s/orp-agent", found);
    snprintf(dir, sizeof dir, "%s/%.64s", top, scope);
    if ((mkdir(top, 0755) != 0 && errno != EEXIST) || (mkdir(dir, 0755) != 0 && errno != EEXIST)) {
        log_warn("cgroups: cannot create %s (%s): runtimes run without their own cgroup", dir,
                 strerror(errno));
        return;
    }
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    c->memory = enable(found, top, "memory") && enable(top, dir, "memory");
    c->cpu = enable(found, top, "cpu") && enable(top, dir, "cpu");
    log_info("cgroups: runtimes in %s/<replica>-<epoch>%s%s", dir,
             c->memory ? ""
                       : "; no memory controller in this cgroup v2 hierarchy: memory.max not set",
             c->cpu ? "" : "; no cpu controller in this cgroup v2 hierarchy: cpu.max not set");
}

void cg_path(const struct cg *c, const char *name, char *path, size_t n)
{
    if (!c->dir[0])
        snprintf(path, n, "%s", "");
    else
        snprintf(path, n, "%s/%s", c->dir, name);
}

int cg_prepare(const struct cg *c, const char *name, int64_t memory_max, int64_t cpu_millis,
               char *path, size_t n)
{
    cg_path(c, name, path, n);
    if (!path[0]) return -1;
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        log_warn("cgroups: cannot create %s: %s", path, strerror(errno));
        path[0] = '\0';
        return -1;
    }
    char v[64];
    if (c->memory) {
        if (memory_max > 0)
            snprintf(v, sizeof v, "%lld", (long long)memory_max);
        else
            snprintf(v, sizeof v, "max");
        if (put(path, "memory.max", v) != 0)
            log_warn("cgroups: %s/memory.max = %s: %s", path, v, strerror(errno));
    }
    if (c->cpu) {
        if (cpu_millis > 0)
            snprintf(v, sizeof v, "%lld %d", (long long)cpu_millis * CG_CPU_PERIOD_US / 1000,
                     CG_CPU_PERIOD_US);
        else
            snprintf(v, sizeof v, "max %d", CG_CPU_PERIOD_US);
        if (put(path, "cpu.max", v) != 0)
            log_warn("cgroups: %s/cpu.max = %s: %s", path, v, strerror(errno));
    }
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/cgroup.procs", path);
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        log_warn("cgroups: cannot open %s: %s", p, strerror(errno));
        path[0] = '\0';
    }
    return fd;
}

/* The pids in path/cgroup.procs: a new array (caller frees) and its length in *n. */
static pid_t *members(const char *path, size_t *n)
{
    *n = 0;
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/cgroup.procs", path);
    char *txt = util_read_file(p, NULL);
    if (!txt) return NULL;
    size_t cap = 0;
    pid_t *v = NULL;
    for (char *save = NULL, *t = strtok_r(txt, "\n", &save); t; t = strtok_r(NULL, "\n", &save)) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            pid_t *nv = realloc(v, cap * sizeof *v);
            if (!nv) break;
            v = nv;
        }
        v[(*n)++] = (pid_t)atoi(t);
    }
    free(txt);
    return v;
}

int cg_has(const char *path, pid_t pid)
{
    if (!path[0]) return 0;
    size_t n;
    pid_t *v = members(path, &n);
    int found = 0;
    for (size_t i = 0; i < n && !found; i++)
        found = v[i] == pid;
    free(v);
    return found;
}

int cg_kill_all(const char *path)
{
    if (!path[0]) return 0;
    size_t n;
    pid_t *v = members(path, &n);
    if (n && put(path, "cgroup.kill", "1") != 0)
        for (size_t i = 0; i < n; i++)
            if (v[i] > 1) kill(v[i], SIGKILL);
    free(v);
    return (int)n;
}

void cg_remove(const char *path)
{
    /* EBUSY: a process killed a moment ago has not left yet; the next start reuses the cgroup. */
    if (path[0] && rmdir(path) != 0 && errno != ENOENT && errno != EBUSY)
        log_warn("cgroups: cannot remove %s: %s", path, strerror(errno));
}

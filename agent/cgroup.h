/* cgroup: one cgroup v2 per runtime, so that a runtime's memory and CPU are capped, and so that
 * every process it started can be found (and killed) by the agent, even one that left its process
 * group, and even by the next run of the agent.
 *
 * The agent makes ROOT/orp-agent/SCOPE/ (ROOT: the cgroup2 mount, /sys/fs/cgroup on a unified
 * host or /sys/fs/cgroup/unified on a hybrid one; SCOPE: a digest of the agent's state directory,
 * so that two agents on one machine, as in the tests, never take each other's runtimes for
 * strays), enables the memory and cpu controllers for its children where the parent offers them,
 * and gives each runtime SCOPE/<replica>-<epoch>/ with memory.max and cpu.max from the agent's
 * options. Where there is no cgroup2 mount, or it is
 * not writable (not root, a container), or a controller is missing, it says so once in its log
 * and goes on without that part: a runtime without a cgroup still runs. This module is the only
 * writer under ROOT/orp-agent. */
#ifndef ORP_AGENT_CGROUP_H
#define ORP_AGENT_CGROUP_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct cg {
    char dir[PATH_MAX]; /* ROOT/orp-agent/SCOPE; "" when cgroups are not used */
    int memory;         /* memory.max can be set in a child */
    int cpu;            /* cpu.max can be set in a child */
};

/* Finds the cgroup2 mount (root "" : look in the usual places; "off": don't use cgroups), makes
 * its orp-agent/scope directory and enables what it can. Logs what is missing. Never fails: c->dir
 * is "" when cgroups cannot be used. */
void cg_init(struct cg *c, const char *root, const char *scope);

/* Makes the runtime cgroup NAME (or reuses it), writes memory.max (bytes, 0: no limit) and
 * cpu.max (cpu_millis thousandths of a CPU, 0: no limit) where the controllers exist, and opens its
 * cgroup.procs for writing. Returns that descriptor (O_CLOEXEC; the child writes "0" to it to move
 * itself in before exec) and the cgroup's path in path, or -1 (logged) when it cannot. */
int cg_prepare(const struct cg *c, const char *name, int64_t memory_max, int64_t cpu_millis,
               char *path, size_t n);

/* 1 when pid is in the cgroup at path. */
int cg_has(const char *path, pid_t pid);
/* SIGKILLs every process in the cgroup at path (cgroup.kill where the kernel has it). Returns how
 * many processes were still in it. */
int cg_kill_all(const char *path);
/* Removes the (empty) cgroup at path; quiet when it is gone already. */
void cg_remove(const char *path);
/* The path of runtime cgroup NAME (whether or not it exists); "" without cgroups. */
void cg_path(const struct cg *c, const char *name, char *path, size_t n);

#endif

/* supervisor: see supervisor.h.
 *
 * Process handling, and why it is done this way:
 *  - Each runtime is the leader of its own process group, so a stop reaches whatever it forked
 *    too. Both parent and child call setpgid(), which closes the window in which the parent could
 *    signal a group that does not exist yet.
 *  - A runtime outlives its agent: a killed or upgraded agent must not take serving replicas down.
 *    The next run of the agent adopts those still desired and kills the others (below), so none is
 *    left holding GPUs. Each runtime runs in its own cgroup where there is cgroup v2 (cgroup.h),
 *    which also finds whatever it forked, and as --runtime-user when the agent runs as root.
 *  - Everything the child needs (argv, envp, paths) is built before fork(); between fork() and
 *    exec() the child makes only async-signal-safe calls.
 *  - Exits are noticed with waitid(WNOWAIT): the dead leader stays a zombie while we SIGKILL what
 * is left of its group, so its pid (the group id) cannot have been reused by then. Only then is it
 *    reaped.
 *  - pid files hold "pid starttime port": a leftover is killed at start only if /proc says the
 *    same process (same start time) still lives, never a stranger that inherited the number.
 *  - Leftovers are settled by the first desired list: one whose replica and epoch are listed is
 *    adopted (supervised again, same pid and port), the others are killed. An adopted runtime
 *    may not be our child (then it cannot be waited for): its exit is noticed through /proc, with
 *    the same start-time check, and its exit status is unknown. */
#include "supervisor.h"
#include "weights.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <grp.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "httpc.h"
#include "log.h"
#include "util.h"

extern char **environ;

/* Ports are searched from port_base upwards over this many numbers: room for every replica a
 * host can run (8 GPUs + CPU slots) many times over, while a misconfigured base fails quickly. */
#define SUP_PORT_SPAN 1000
/* Consecutive failed probes before a ready replica counts as not ready: one slow answer under
 * load must not take it out of routing. Five (about 7 s of silence with the 1 s timeout and 0.5 s
 * interval): since the controller honours "not ready" (routing and time billing stop), a runtime
 * starved of CPU for a few seconds on a loaded host must not flap. */
#define SUP_HEALTH_FAIL_LIMIT 5
/* Consecutive failed completion probes before a ready replica counts as not ready: they run 15 s
 * apart, so two is half a minute of a runtime that answers /health but cannot generate. */
#define SUP_COMPLETION_FAIL_LIMIT 2
/* While a loaded runtime has not passed its first completion probe, it is tried this often. */
#define SUP_COMPLETION_RETRY_MS 1000
/* A runtime that ran this long before exiting was healthy: its next restart waits only the initial
 * backoff again, instead of the doubled delay earned by a crash loop. */
#define SUP_BACKOFF_RESET_MS 60000
/* How long sup_stop_all waits past the SIGKILL for the kernel to let processes go. */
#define SUP_STOP_ALL_EXTRA_MS 5000

static void cprobe_drop(struct sup_replica *r);

void sup_config_defaults(struct sup_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->runtime_bin = "orp-runtime";
    cfg->runtime_host = "127.0.0.1";
    cfg->state_dir = "./var/agent";
    cfg->port_base = 20000;
    cfg->start_timeout_ms = 300000;
    cfg->stop_grace_ms = 5000;
    cfg->backoff_initial_ms = 1000;
    cfg->backoff_max_ms = 30000;
    cfg->probe_interval_ms = 500;
    cfg->probe_timeout_ms = 1000;
    cfg->runtime_uid = -1;
    cfg->runtime_gid = -1;
    cfg->completion_interval_ms = 15000;
    cfg->completion_timeout_ms = 10000;
    cfg->unready_restart_ms = 30000;
}

static const char *const state_names[] = {
    [SUP_NEW] = "new",
    [SUP_STARTING] = "starting",
    [SUP_READY] = "ready",
    [SUP_BACKOFF] = "failed",
    [SUP_STOPPING] = "stopping",
    [SUP_STOPPED] = "stopped",
    [SUP_FETCHING] = "downloading",
};

const char *sup_state_name(enum sup_state st)
{
    return state_names[st];
}

#define BIT(s) (1u << (s))
/* legal[from] is the set of states one may go to from `from`. */
static const unsigned legal[] = {
    [SUP_NEW] = BIT(SUP_STARTING) | BIT(SUP_BACKOFF) | BIT(SUP_STOPPED) | BIT(SUP_FETCHING),
    [SUP_STARTING] = BIT(SUP_READY) | BIT(SUP_BACKOFF) | BIT(SUP_STOPPING),
    [SUP_READY] = BIT(SUP_STARTING) | BIT(SUP_BACKOFF) | BIT(SUP_STOPPING),
    [SUP_BACKOFF] = BIT(SUP_STARTING) | BIT(SUP_BACKOFF) | BIT(SUP_STOPPED) | BIT(SUP_FETCHING),
    [SUP_STOPPING] = BIT(SUP_STOPPED) | BIT(SUP_BACKOFF),
    [SUP_STOPPED] = BIT(SUP_STARTING) | BIT(SUP_BACKOFF) | BIT(SUP_FETCHING),
    [SUP_FETCHING] = BIT(SUP_STARTING) | BIT(SUP_BACKOFF) | BIT(SUP_STOPPED),
};

/* The only writer of r->state and r->reason. Returns 0, or -1 (logged as a bug) when the
 * transition is not legal, in which case nothing changes. */
__attribute__((format(printf, 3, 4))) static int set_state(struct sup_replica *r, enum sup_state to,
                                                           const char *fmt, ...)
{
    if (!(legal[r->state] & BIT(to))) {
        log_error("replica %s/%lld: illegal transition %s -> %s", r->spec.replica_id,
                  (long long)r->spec.epoch, state_names[r->state], state_names[to]);
        return -1;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
    enum log_level lvl = to == SUP_BACKOFF ? LOG_LEVEL_WARN : LOG_LEVEL_INFO;
    LOG_AT(lvl, "replica %s/%lld: %s -> %s (%s)", r->spec.replica_id, (long long)r->spec.epoch,
           state_names[r->state], state_names[to], r->reason[0] ? r->reason : "-");
    r->state = to;
    r->state_since_ms = util_now_ms();
    if (to != SUP_STOPPED) r->reported_stopped = 0;
    return 0;
}

struct sup *sup_new(const struct sup_config *cfg)
{
    struct sup *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->cfg = *cfg;
    return s;
}

void sup_free(struct sup *s)
{
    if (!s) return;
    struct sup_replica *r = s->list;
    while (r) {
        struct sup_replica *next = r->next;
        json_decref(r->spec.manifest);
        cprobe_drop(r);
        free(r);
        r = next;
    }
    free(s->leftovers);
    free(s);
}

struct sup_replica *sup_find(struct sup *s, const char *replica_id, int64_t epoch)
{
    for (struct sup_replica *r = s->list; r; r = r->next)
        if (r->spec.epoch == epoch && !strcmp(r->spec.replica_id, replica_id)) return r;
    return NULL;
}

/* ---- /proc and pid files ---- */

/* Reads the state letter and start time (clock ticks since boot) of pid. 0, or -1 if gone. */
static int proc_stat(pid_t pid, char *state, unsigned long long *starttime)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    char *txt = util_read_file(p, NULL);
    if (!txt) return -1;
    /* The command name is in parentheses and may itself hold spaces or ')': skip to the last. */
    char *rp = strrchr(txt, ')');
    int rc = -1;
    if (rp && rp[1] == ' ') {
        /* After ") " come fields 3 (state), 4, …; starttime is field 22. */
        char *f = rp + 2;
        *state = *f;
        for (int field = 3; field < 22 && f; field++) {
            f = strchr(f, ' ');
            if (f) f++;
        }
        if (f && sscanf(f, "%llu", starttime) == 1) rc = 0;
    }
    free(txt);
    return rc;
}

static void pidfile_path(char *out, size_t n, const char *dir)
{
    snprintf(out, n, "%s/pid", dir);
}

static void pidfile_write(struct sup_replica *r)
{
    char state, p[PATH_MAX + 8], txt[64];
    unsigned long long st = 0;
    if (proc_stat(r->pid, &state, &st) != 0) st = 0;
    int n = snprintf(txt, sizeof txt, "%d %llu %d\n", (int)r->pid, st, r->port);
    pidfile_path(p, sizeof p, r->dir);
    if (util_write_file_atomic(p, txt, (size_t)n, 0644) != 0)
        log_error("cannot write %s: %s (a crash of the agent now could leave this runtime behind)",
                  p, strerror(errno));
}

static void pidfile_remove(const char *dir)
{
    char p[PATH_MAX + 8];
    pidfile_path(p, sizeof p, dir);
    if (unlink(p) != 0 && errno != ENOENT) log_warn("cannot remove %s: %s", p, strerror(errno));
}

/* ---- ports and probes ---- */

/* 1 when we can bind host:port right now (the runtime binds with SO_REUSEADDR, as we do here). */
static int port_free(const char *host, int port)
{
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai;
    if (getaddrinfo(host, ps, &hints, &ai) != 0) return 0;
    int ok = 0;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        ok = bind(fd, ai->ai_addr, ai->ai_addrlen) == 0;
        close(fd);
    }
    freeaddrinfo(ai);
    return ok;
}

static int port_taken_by_us(struct sup *s, const struct sup_replica *self, int port)
{
    for (struct sup_replica *r = s->list; r; r = r->next)
        if (r != self && r->pid > 0 && r->port == port) return 1;
    return 0;
}

/* A free port for r: its previous one if still free (a restart keeps its address), else the
 * first free one from port_base. 0 when none. */
static int pick_port(struct sup *s, struct sup_replica *r)
{
    if (r->port > 0 && !port_taken_by_us(s, r, r->port) && port_free(s->cfg.runtime_host, r->port))
        return r->port;
    for (int p = s->cfg.port_base; p < s->cfg.port_base + SUP_PORT_SPAN && p < 65536; p++)
        if (!port_taken_by_us(s, r, p) && port_free(s->cfg.runtime_host, p)) return p;
    return 0;
}

/* The address to probe: a wildcard bind is reached through loopback. */
static void probe_url(const struct sup *s, int port, char *out, size_t n)
{
    const char *h = s->cfg.runtime_host;
    if (!strcmp(h, "0.0.0.0") || !h[0]) h = "127.0.0.1";
    if (!strcmp(h, "::")) h = "::1";
    if (strchr(h, ':'))
        snprintf(out, n, "http://[%s]:%d/health", h, port);
    else
        snprintf(out, n, "http://%s:%d/health", h, port);
}

/* ---- spawning ---- */

static void next_backoff(struct sup *s, struct sup_replica *r, int64_t *wait_ms)
{
    *wait_ms = r->backoff_ms > 0 ? r->backoff_ms : s->cfg.backoff_initial_ms;
    r->next_start_ms = util_now_ms() + *wait_ms;
    r->backoff_ms = *wait_ms * 2 > s->cfg.backoff_max_ms ? s->cfg.backoff_max_ms : *wait_ms * 2;
}

/* Moves r to BACKOFF after a failure that `why` describes, scheduling the next start. */
static void fail(struct sup *s, struct sup_replica *r, const char *why)
{
    int64_t wait;
    next_backoff(s, r, &wait);
    set_state(r, SUP_BACKOFF, "%s", why);
    log_info("replica %s/%lld: next start in %lld ms", r->spec.replica_id, (long long)r->spec.epoch,
             (long long)wait);
}

/* Builds the child's environment: ours, minus the variables we set, plus those. New array of
 * new strings; free with free_strv(). */
static char **child_env(const struct sup_replica *r)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 3, sizeof *env);
    if (!env) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!strncmp(environ[i], "ORP_REPLICA_SECRET=", 19) ||
            !strncmp(environ[i], "CUDA_VISIBLE_DEVICES=", 21))
            continue;
        env[k++] = strdup(environ[i]);
    }
    /* The secret goes through the environment, never argv, which every user can read in ps. */
    if (asprintf(&env[k++], "ORP_REPLICA_SECRET=%s", r->spec.secret) < 0) env[k - 1] = NULL;
    /* GPUs by UUID (CUDA's and NVML's index orders can differ). A CPU replica sees no GPU at all,
     * so it cannot take one that the controller gave to someone else. */
    const char *cvd = !strcmp(r->spec.device_kind, "gpu") ? r->spec.devices : "";
    if (asprintf(&env[k++], "CUDA_VISIBLE_DEVICES=%s", cvd) < 0) env[k - 1] = NULL;
    for (size_t i = 0; i < k; i++) {
        if (!env[i]) {
            for (size_t j = 0; j < k; j++)
                free(env[j]);
            free(env);
            return NULL;
        }
    }
    return env;
}

static void free_strv(char **v)
{
    if (!v) return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

/* What the child needs between fork and exec, all of it prepared before fork(). */
struct child_plan {
    const char *bin;
    char *const *argv;
    char *const *envp;
    const char *out_path, *err_path; /* stdout.log and runtime.log (stderr) */
    int cg_fd;                       /* the runtime's cgroup.procs, or -1 */
    int64_t uid, gid;                /* -1: keep the agent's */
};

/* In the child, between fork and exec: async-signal-safe calls only. Never returns. */
static void child_exec(const struct child_plan *cp)
{
    setpgid(0, 0);
    /* Into its cgroup before anything else runs: "0" is the writing process itself. */
    if (cp->cg_fd >= 0 && write(cp->cg_fd, "0", 1) != 1) {
        static const char msg[] = "orp-agent: cannot join the runtime's cgroup\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL); /* ignored dispositions survive exec; the agent ignores SIGPIPE */
    int in = open("/dev/null", O_RDONLY);
    int out = open(cp->out_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int err = open(cp->err_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
        _exit(125);
    if (cp->uid >= 0 &&
        (setgroups(0, NULL) != 0 || setgid((gid_t)cp->gid) != 0 || setuid((uid_t)cp->uid) != 0)) {
        static const char msg[] = "orp-agent: cannot switch to the runtime user\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(124);
    }
    if (close_range(3, ~0u, 0) != 0)
        for (int fd = 3; fd < 65536; fd++)
            close(fd); /* kernels before 5.9 */
    execve(cp->bin, cp->argv, cp->envp);
    static const char msg[] = "orp-agent: exec of the runtime failed\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(127);
}

/* The cgroup of r (named like its directory), "" without cgroups. */
static void replica_cgroup(const struct sup *s, const struct sup_replica *r, char *out, size_t n)
{
    const char *slash = strrchr(r->dir, '/');
    if (s->cfg.cg)
        cg_path(s->cfg.cg, slash ? slash + 1 : r->dir, out, n);
    else if (n)
        out[0] = '\0';
}

/* After r's process is gone: whatever is left in its cgroup is killed, the cgroup removed. */
static void release_cgroup(const struct sup *s, const struct sup_replica *r)
{
    char cgp[PATH_MAX];
    replica_cgroup(s, r, cgp, sizeof cgp);
    if (!cgp[0]) return;
    int left = cg_kill_all(cgp);
    if (left)
        log_warn("replica %s/%lld: killed %d process(es) left in its cgroup", r->spec.replica_id,
                 (long long)r->spec.epoch, left);
    else
        cg_remove(cgp);
}

static void spawn(struct sup *s, struct sup_replica *r);

/* 1 when the comma-joined device lists a and b share a device. */
static int devices_overlap(const char *a, const char *b)
{
    for (const char *p = a; *p;) {
        size_t n = strcspn(p, ",");
        for (const char *q = b; *q;) {
            size_t m = strcspn(q, ",");
            if (n == m && !strncmp(p, q, n)) return 1;
            q += m + (q[m] == ',');
        }
        p += n + (p[n] == ',');
    }
    return 0;
}

/* The replica still holding one of r's devices while it stops, or NULL. A new placement (often
 * the same replica with a new epoch) waits for it: two runtimes loading a 70B model on the same
 * GPUs at once would run out of memory. */
static const struct sup_replica *devices_held_by(const struct sup *s, const struct sup_replica *r)
{
    for (const struct sup_replica *q = s->list; q; q = q->next)
        if (q != r && q->pid > 0 && !q->desired &&
            devices_overlap(q->spec.devices, r->spec.devices))
            return q;
    return NULL;
}

/* Spawns r unless its devices are still held by a stopping replica (then it waits, and the next
 * tick tries again). */
static void spawn_when_free(struct sup *s, struct sup_replica *r)
{
    const struct sup_replica *q = devices_held_by(s, r);
    if (!q) {
        r->waiting_logged = 0;
        spawn(s, r);
    } else if (!r->waiting_logged) {
        r->waiting_logged = 1;
        log_info("replica %s/%lld: waiting for replica %s/%lld to release its devices",
                 r->spec.replica_id, (long long)r->spec.epoch, q->spec.replica_id,
                 (long long)q->spec.epoch);
    }
}

/* Starts r's runtime: NEW, BACKOFF or STOPPED → STARTING, or → BACKOFF when it cannot. */
int sup_spec_needs_fetch(const struct sup_spec *spec)
{
    return spec->manifest &&
           (!strncmp(spec->source, "file://", 7) || !strncmp(spec->source, "http://", 7) ||
            !strncmp(spec->source, "https://", 8));
}

/* For a replica whose weights come through the cache: 1 when they are in place (model_path set),
 * 0 when r waits for them (FETCHING, with the progress as its reason) or failed (BACKOFF). */
static int weights_in_place(struct sup *s, struct sup_replica *r)
{
    if (!sup_spec_needs_fetch(&r->spec)) return 1;
    if (!s->weights) {
        fail(s, r, "this agent has no weights cache");
        return 0;
    }
    char path[PATH_MAX], err[512];
    int pct = 0;
    switch (weights_ensure(s->weights, r->spec.model, r->spec.source, r->spec.manifest, path,
                           sizeof path, &pct, err, sizeof err)) {
    case WEIGHTS_READY:
        snprintf(r->spec.model_path, sizeof r->spec.model_path, "%s", path);
        return 1;
    case WEIGHTS_PENDING:
        if (r->state != SUP_FETCHING) {
            enum sup_state from = r->state;
            if (set_state(r, SUP_FETCHING, "downloading weights: %d %%", pct) == 0)
                r->fetch_from = from;
        } else {
            /* progress only: not a transition, so not logged */
            snprintf(r->reason, sizeof r->reason, "downloading weights: %d %%", pct);
        }
        return 0;
    case WEIGHTS_FAILED:
        fail(s, r, err);
        return 0;
    }
    return 0;
}

static void spawn(struct sup *s, struct sup_replica *r)
{
    if (!weights_in_place(s, r)) return;
    if (util_mkdirs(r->dir, 0755) != 0) {
        char why[PATH_MAX + 64];
        snprintf(why, sizeof why, "cannot create %s: %s", r->dir, strerror(errno));
        fail(s, r, why);
        return;
    }
    int port = pick_port(s, r);
    if (port == 0) {
        fail(s, r, "no free port");
        return;
    }
    char port_s[16], tp_s[24], usage_log[PATH_MAX + 16], log_path[PATH_MAX + 16],
        out_path[PATH_MAX + 16];
    snprintf(port_s, sizeof port_s, "%d", port);
    /* The replica's devices are its tensor-parallel ranks (GPUs, or CPU slots as threads). */
    snprintf(tp_s, sizeof tp_s, "%lld", (long long)(r->spec.tp > 0 ? r->spec.tp : 1));
    snprintf(usage_log, sizeof usage_log, "%s/usage.jsonl", r->dir);
    snprintf(log_path, sizeof log_path, "%s/runtime.log", r->dir);
    snprintf(out_path, sizeof out_path, "%s/stdout.log", r->dir);
    /* The runtime writes its usage journal into its directory; the agent reads it. */
    if (s->cfg.runtime_uid >= 0 &&
        chown(r->dir, (uid_t)s->cfg.runtime_uid, (gid_t)s->cfg.runtime_gid) != 0) {
        char why[PATH_MAX + 64];
        snprintf(why, sizeof why, "cannot give %s to the runtime user: %s", r->dir,
                 strerror(errno));
        fail(s, r, why);
        return;
    }
    char *argv[] = {(char *)s->cfg.runtime_bin,
                    "serve",
                    "--model",
                    r->spec.model_path,
                    "--port",
                    port_s,
                    "--host",
                    (char *)s->cfg.runtime_host,
                    "--name",
                    r->spec.served_name,
                    "--usage-log",
                    usage_log,
                    "--tp",
                    tp_s,
                    NULL};
    char **envp = child_env(r);
    if (!envp) {
        fail(s, r, "out of memory");
        return;
    }
    struct stat lst;
    int64_t log_start = stat(log_path, &lst) == 0 ? (int64_t)lst.st_size : 0;
    char cgp[PATH_MAX] = "";
    const char *slash = strrchr(r->dir, '/');
    int cg_fd = s->cfg.cg ? cg_prepare(s->cfg.cg, slash ? slash + 1 : r->dir, s->cfg.memory_max,
                                       s->cfg.cpu_millis, cgp, sizeof cgp)
                          : -1;
    struct child_plan plan = {
        s->cfg.runtime_bin, argv, envp, out_path, log_path, cg_fd, s->cfg.runtime_uid,
        s->cfg.runtime_gid};
    pid_t pid = fork();
    if (pid == 0) child_exec(&plan);
    int fork_errno = errno;
    if (cg_fd >= 0) close(cg_fd);
    free_strv(envp);
    if (pid < 0) {
        char why[128];
        snprintf(why, sizeof why, "fork failed: %s", strerror(fork_errno));
        fail(s, r, why);
        return;
    }
    setpgid(pid, pid); /* also done by the child; whichever runs first wins, both are fine */
    int first = r->state == SUP_NEW || (r->state == SUP_FETCHING && r->fetch_from == SUP_NEW);
    if (!first) r->restarts++;
    r->pid = pid;
    r->port = port;
    r->kill_at_ms = 0;
    r->kill_reason[0] = '\0';
    r->health_failures = 0;
    r->ready_once = 0;
    r->was_ready = 0;
    r->cprobe_failures = 0;
    r->next_cprobe_ms = 0;
    cprobe_drop(r);
    r->log_start = log_start;
    r->started_ms = util_now_ms();
    r->adopted = 0;
    r->next_probe_ms = util_now_ms() + 100;
    pidfile_write(r);
    if (first) {
        set_state(r, SUP_STARTING, "pid %d on port %d", (int)pid, port);
    } else if (r->state == SUP_BACKOFF && r->reason[0]) {
        /* The failure stays visible while the restart loads: a crash loop spends much of its
         * time starting, and "restart 4" alone would hide why. */
        char last[sizeof r->reason];
        snprintf(last, sizeof last, "%s", r->reason);
        set_state(r, SUP_STARTING, "pid %d on port %d, restart %lld; last: %.400s", (int)pid, port,
                  (long long)r->restarts, last);
    } else {
        set_state(r, SUP_STARTING, "pid %d on port %d, restart %lld", (int)pid, port,
                  (long long)r->restarts);
    }
}

/* ---- stopping and reaping ---- */

static void signal_group(const struct sup_replica *r, int sig)
{
    if (r->pid <= 0) return;
    if (kill(-r->pid, sig) != 0 && errno == ESRCH) kill(r->pid, sig);
}

static void begin_stop(struct sup *s, struct sup_replica *r, const char *why)
{
    signal_group(r, SIGTERM);
    r->kill_at_ms = util_now_ms() + s->cfg.stop_grace_ms;
    set_state(r, SUP_STOPPING, "%s", why);
}

/* ---- exit reasons ---- */

void sup_exit_cause(int code, int status, int by_us, char *out, size_t n)
{
    if (code == CLD_EXITED) {
        /* 137 = 128 + SIGKILL: what a shell or container wrapper reports when the kernel's OOM
         * killer took the process it ran. */
        snprintf(out, n, "exit %d%s", status,
                 status == 137 && !by_us ? " (killed: out of memory?)" : "");
        return;
    }
    static const struct {
        int sig;
        const char *what;
    } names[] = {
        {SIGSEGV, "SIGSEGV: crashed"},
        {SIGBUS, "SIGBUS: crashed"},
        {SIGILL, "SIGILL: crashed"},
        {SIGFPE, "SIGFPE: crashed"},
        {SIGABRT, "SIGABRT: aborted"},
        {SIGTERM, "SIGTERM"},
        {SIGINT, "SIGINT"},
    };
    const char *what = NULL;
    if (status == SIGKILL) what = by_us ? "SIGKILL" : "killed: out of memory?";
    for (size_t i = 0; !what && i < sizeof names / sizeof names[0]; i++)
        if (names[i].sig == status) what = names[i].what;
    const char *core = code == CLD_DUMPED ? ", core dumped" : "";
    if (what)
        snprintf(out, n, "signal %d (%s%s)", status, what, core);
    else
        snprintf(out, n, "signal %d%s%s%s", status, core[0] ? " (" : "", core[0] ? core + 2 : "",
                 core[0] ? ")" : "");
}

/* Length of the valid UTF-8 character at p (at most left bytes), or 0 when p does not start
 * one: overlong forms, surrogates and code points past U+10FFFF are not valid. *cp gets it. */
static size_t utf8_char(const unsigned char *p, size_t left, uint32_t *cp)
{
    size_t len;
    uint32_t c, min;
    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    } else if ((p[0] & 0xe0) == 0xc0) {
        len = 2, c = p[0] & 0x1f, min = 0x80;
    } else if ((p[0] & 0xf0) == 0xe0) {
        len = 3, c = p[0] & 0x0f, min = 0x800;
    } else if ((p[0] & 0xf8) == 0xf0) {
        len = 4, c = p[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > left) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        c = (c << 6) | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
    *cp = c;
    return len;
}

size_t sup_sanitize(const char *in, size_t len, char *out, size_t n)
{
    if (n == 0) return 0;
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t cl = utf8_char(p + i, len - i, &cp);
        const char *put = (const char *)p + i;
        size_t putlen = cl;
        if (cl == 0 || cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0)) {
            put = cl && cp == '\t' ? " " : "?";
            putlen = 1;
            if (cl == 0) cl = 1;
        }
        if (o + putlen >= n) break;
        memcpy(out + o, put, putlen);
        o += putlen;
        i += cl;
    }
    out[o] = '\0';
    return o;
}

/* Our log lines start "2025-01-31T12:00:00.123Z LEVEL ...": the time adds nothing to a reason
 * (the controller stamps the change) and takes a fifth of its room. Returns where the rest starts.
 */
static const char *skip_timestamp(const char *line, const char *end)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    size_t k = 0;
    for (; shape[k] && line + k < end; k++) {
        char c = line[k];
        if (shape[k] == 'd' ? !(c >= '0' && c <= '9') : c != shape[k]) return line;
    }
    if (shape[k]) return line;
    const char *sp = memchr(line, ' ', (size_t)(end - line));
    if (!sp || sp[-1] != 'Z') return line;
    while (sp < end && *sp == ' ')
        sp++;
    return sp;
}

size_t sup_log_tail(const char *path, int64_t since, size_t max, char *out, size_t n)
{
    if (n == 0) return 0;
    out[0] = '\0';
    if (max >= n) max = n - 1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char raw[SUP_LOG_TAIL_READ];
    off_t size = lseek(fd, 0, SEEK_END);
    if (since < 0 || since > size) since = 0; /* truncated or replaced meanwhile: all of it */
    off_t from = size - since > (off_t)sizeof raw ? size - (off_t)sizeof raw : since;
    ssize_t got = size > from ? pread(fd, raw, (size_t)(size - from), from) : 0;
    close(fd);
    if (got <= 0) return 0;
    /* Lines from the end backwards while they fit; `lines` holds their bounds, newest first. */
    struct {
        const char *b, *e;
    } lines[16];
    int nl = 0;
    size_t total = 0;
    const char *end = raw + got;
    while (end > raw && nl < (int)(sizeof lines / sizeof lines[0])) {
        while (end > raw && (end[-1] == '\n' || end[-1] == '\r'))
            end--;
        if (end == raw) break;
        const char *b = end;
        while (b > raw && b[-1] != '\n')
            b--;
        /* A first line cut by the read window is not quoted: it starts mid-way. */
        if (b == raw && from > since) break;
        const char *body = skip_timestamp(b, end);
        size_t len = (size_t)(end - body) + (nl ? 3 : 0);
        if (nl && total + len > max) break;
        lines[nl].b = body;
        lines[nl].e = end;
        nl++;
        total += len;
        end = b;
    }
    size_t o = 0;
    for (int i = nl - 1; i >= 0; i--) {
        if (o && o + 3 < n) {
            memcpy(out + o, " | ", 3);
            o += 3;
        }
        o += sup_sanitize(lines[i].b, (size_t)(lines[i].e - lines[i].b), out + o, n - o);
    }
    if (o > max) {
        /* Only one line, longer than max: keep its start (the message) and mark the cut. */
        size_t cut = max > 3 ? max - 3 : 0;
        while (cut > 0 && ((unsigned char)out[cut] & 0xc0) == 0x80)
            cut--;
        memcpy(out + cut, "...", 4);
        o = cut + 3;
    }
    return o;
}

/* Exits of r within the crash window that ends at now_ms. */
static int recent_exits(const struct sup_replica *r, int64_t now_ms)
{
    int k = 0, have = r->nexits < SUP_EXIT_HISTORY ? r->nexits : SUP_EXIT_HISTORY;
    for (int i = 0; i < have; i++)
        if (now_ms - r->exit_ms[i] < SUP_CRASH_WINDOW_MS) k++;
    return k;
}

void sup_exit_reason(struct sup_replica *r, int code, int status, int during_start, int64_t now_ms,
                     char *out, size_t n)
{
    r->exit_ms[r->nexits % SUP_EXIT_HISTORY] = now_ms;
    r->nexits++;
    char cause[96];
    sup_exit_cause(code, status, r->kill_reason[0] != '\0', cause, sizeof cause);
    struct buf b = {0};
    int loop = recent_exits(r, now_ms);
    if (loop >= SUP_CRASH_LOOP_EXITS)
        buf_printf(&b, "crash loop: %s%s%s %d times in %d min", r->kill_reason,
                   r->kill_reason[0] ? ": " : "", cause, loop, SUP_CRASH_WINDOW_MS / 60000);
    else
        buf_printf(&b, "%s%s%s%s", r->kill_reason, r->kill_reason[0] ? ": " : "", cause,
                   during_start ? " during start" : "");
    if (during_start) {
        char log_path[PATH_MAX + 16], tail[SUP_LOG_TAIL_MAX + 4];
        snprintf(log_path, sizeof log_path, "%s/runtime.log", r->dir);
        if (sup_log_tail(log_path, r->log_start, SUP_LOG_TAIL_MAX, tail, sizeof tail) > 0)
            buf_printf(&b, "; runtime.log: %s", tail);
    }
    snprintf(out, n, "%s", b.data ? b.data : cause);
    buf_free(&b);
}

/* Handles r's process having exited (si from waitid). */
static void handle_exit(struct sup *s, struct sup_replica *r, const siginfo_t *si)
{
    char why[sizeof r->reason];
    signal_group(r, SIGKILL); /* whatever it forked: the leader is still a zombie, see top */
    int status;
    while (waitpid(r->pid, &status, 0) < 0 && errno == EINTR) {
    }
    pidfile_remove(r->dir);
    release_cgroup(s, r);
    int64_t ran_ms = util_now_ms() - r->state_since_ms;
    r->pid = 0;
    r->adopted = 0;
    if (r->state == SUP_STOPPING) {
        sup_exit_cause(si->si_code, si->si_status, 1, why, sizeof why);
        if (r->desired) {
            r->next_start_ms = util_now_ms();
            set_state(r, SUP_BACKOFF, "%s while stopping; desired again", why);
        } else {
            set_state(r, SUP_STOPPED, "%s", why);
        }
        return;
    }
    sup_exit_reason(r, si->si_code, si->si_status, r->state == SUP_STARTING && !r->ready_once,
                    util_now_ms(), why, sizeof why);
    if (r->state == SUP_READY && ran_ms >= SUP_BACKOFF_RESET_MS) r->backoff_ms = 0;
    fail(s, r, why);
}

static int process_alive(pid_t pid, unsigned long long starttime);

/* An adopted runtime that is not our child: 0 while /proc shows it alive, else settles its exit
 * (status unknown) and returns 1. */
static int adopted_gone(struct sup *s, struct sup_replica *r)
{
    if (process_alive(r->pid, r->starttime)) return 0;
    signal_group(r, SIGKILL); /* whatever it forked; the group id is not reused while it has any */
    pidfile_remove(r->dir);
    release_cgroup(s, r);
    r->pid = 0;
    r->adopted = 0;
    if (r->state == SUP_STOPPING) {
        set_state(r, SUP_STOPPED, "exited (status unknown: adopted from a previous run)");
        return 1;
    }
    int64_t now = util_now_ms();
    r->exit_ms[r->nexits % SUP_EXIT_HISTORY] = now;
    r->nexits++;
    fail(s, r, "exited (status unknown: adopted from a previous run of the agent)");
    return 1;
}

static void reap(struct sup *s)
{
    for (struct sup_replica *r = s->list; r; r = r->next) {
        if (r->pid <= 0) continue;
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)r->pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
            if (errno != ECHILD) continue;
            if (r->adopted) {
                adopted_gone(s, r);
                continue;
            }
            /* Only we reap our children, so this is a bug; still, do not wait on it forever. */
            log_error("replica %s/%lld: pid %d is not our child any more", r->spec.replica_id,
                      (long long)r->spec.epoch, (int)r->pid);
            r->pid = 0;
            pidfile_remove(r->dir);
            release_cgroup(s, r);
            if (r->state == SUP_STOPPING)
                set_state(r, SUP_STOPPED, "process vanished");
            else
                fail(s, r, "process vanished");
            continue;
        }
        if (si.si_pid == 0) continue; /* still running */
        handle_exit(s, r, &si);
    }
}

/* ---- probes and timers ---- */

/* A completion probe: POST /v1/completions for one token with the replica's secret, on a thread of
 * its own (a busy runtime may take seconds, and the agent's loop must not wait on it). The replica
 * and the thread each hold a reference; whoever lets go last frees it, so a replica that is
 * stopped or forgotten meanwhile simply abandons its probe. Its request id starts with "probe-":
 * the usage journal's line for it is not shipped (usage.c), so nobody is billed for probes. */
struct sup_cprobe {
    pthread_mutex_t lock;
    int refs;
    int done;
    long status; /* 0: no HTTP answer */
    char err[160];
    char url[160];
    char auth[SUP_SECRET_MAX + 32];
    char rid[64];
    long timeout_ms;
};

static void cprobe_unref(struct sup_cprobe *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    int left = --p->refs;
    pthread_mutex_unlock(&p->lock);
    if (left) return;
    pthread_mutex_destroy(&p->lock);
    free(p);
}

static void *cprobe_run(void *arg)
{
    struct sup_cprobe *p = arg;
    static const char body[] = "{\"prompt\":\"ping\",\"max_tokens\":1,\"temperature\":0}";
    const char *headers[] = {p->auth, p->rid, "Content-Type: application/json", NULL};
    struct httpc_resp resp;
    char err[160] = "";
    int rc = httpc_request("POST", p->url, headers, body, sizeof body - 1, p->timeout_ms, 65536,
                           &resp, err, sizeof err);
    pthread_mutex_lock(&p->lock);
    p->status = rc == 0 ? resp.status : 0;
    snprintf(p->err, sizeof p->err, "%s", err);
    p->done = 1;
    pthread_mutex_unlock(&p->lock);
    if (rc == 0) buf_free(&resp.body);
    cprobe_unref(p);
    return NULL;
}

/* Starts a completion probe of r unless one is in flight. */
static void cprobe_start(struct sup *s, struct sup_replica *r)
{
    if (r->cprobe) return;
    struct sup_cprobe *p = calloc(1, sizeof *p);
    char hex[17];
    if (!p || util_random_hex(hex, 8) != 0) {
        free(p);
        return;
    }
    pthread_mutex_init(&p->lock, NULL);
    p->refs = 2;
    p->timeout_ms = s->cfg.completion_timeout_ms;
    char health[128];
    probe_url(s, r->port, health, sizeof health);
    snprintf(p->url, sizeof p->url, "%.*s/v1/completions", (int)(strlen(health) - 7), health);
    snprintf(p->auth, sizeof p->auth, "Authorization: Bearer %s", r->spec.secret);
    snprintf(p->rid, sizeof p->rid, "X-ORP-Request-Id: probe-%s", hex);
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &at, cprobe_run, p) != 0) {
        pthread_mutex_destroy(&p->lock);
        free(p);
        p = NULL;
    }
    pthread_attr_destroy(&at);
    r->cprobe = p;
}

/* Lets go of r's probe in flight, if any (its answer no longer matters). */
static void cprobe_drop(struct sup_replica *r)
{
    cprobe_unref(r->cprobe);
    r->cprobe = NULL;
}

/* Takes the answer of r's completion probe when it came: READY after the first one that passed;
 * after SUP_COMPLETION_FAIL_LIMIT failures in a row, a ready replica is no longer ready. */
static void cprobe_check(struct sup *s, struct sup_replica *r, int64_t now)
{
    if (!r->cprobe) return;
    pthread_mutex_lock(&r->cprobe->lock);
    int done = r->cprobe->done;
    long status = r->cprobe->status;
    char err[160];
    snprintf(err, sizeof err, "%s", r->cprobe->err);
    pthread_mutex_unlock(&r->cprobe->lock);
    if (!done) return;
    cprobe_drop(r);
    if (status == 200) {
        r->cprobe_failures = 0;
        r->next_cprobe_ms = now + s->cfg.completion_interval_ms;
        if (r->state == SUP_STARTING) {
            r->was_ready = 1;
            set_state(r, SUP_READY, "completion probe passed");
        }
        return;
    }
    r->cprobe_failures++;
    r->next_cprobe_ms =
        now + (r->state == SUP_READY ? s->cfg.completion_interval_ms : SUP_COMPLETION_RETRY_MS);
    if (r->state == SUP_READY && r->cprobe_failures >= SUP_COMPLETION_FAIL_LIMIT) {
        int n = r->cprobe_failures;
        r->cprobe_failures = 0;
        if (status)
            set_state(r, SUP_STARTING, "completion probe failed %d times (HTTP %ld)", n, status);
        else
            set_state(r, SUP_STARTING, "completion probe failed %d times (%s)", n, err);
    }
}

static void probe(struct sup *s, struct sup_replica *r, int64_t now)
{
    if (now < r->next_probe_ms) return;
    r->next_probe_ms = now + s->cfg.probe_interval_ms;
    char url[128], err[256] = "";
    probe_url(s, r->port, url, sizeof url);
    struct httpc_resp resp;
    int rc = httpc_request("GET", url, NULL, NULL, 0, s->cfg.probe_timeout_ms, 4096, &resp, err,
                           sizeof err);
    long status = rc == 0 ? resp.status : 0;
    if (rc == 0) buf_free(&resp.body);
    if (status == 200) {
        r->health_failures = 0;
        r->ready_once = 1;
        if (r->state != SUP_STARTING) return;
        if (s->cfg.completion_interval_ms <= 0) {
            r->was_ready = 1;
            set_state(r, SUP_READY, "health check passed");
        } else if (now >= r->next_cprobe_ms) {
            cprobe_start(s, r); /* ready once a completion passes (cprobe_check) */
            r->next_cprobe_ms = now + SUP_COMPLETION_RETRY_MS;
        }
        return;
    }
    if (r->state != SUP_READY) return; /* still loading: the start timeout bounds this */
    if (++r->health_failures >= SUP_HEALTH_FAIL_LIMIT) {
        char why[300];
        if (status)
            snprintf(why, sizeof why, "health check failed %d times (HTTP %ld)", r->health_failures,
                     status);
        else
            snprintf(why, sizeof why, "health check failed %d times (%s)", r->health_failures, err);
        r->health_failures = 0;
        set_state(r, SUP_STARTING, "%s", why);
    }
}

void sup_tick(struct sup *s)
{
    reap(s);
    for (struct sup_replica *r = s->list; r; r = r->next) {
        int64_t now = util_now_ms();
        switch (r->state) {
        case SUP_NEW:
            if (r->desired) spawn_when_free(s, r);
            break;
        case SUP_STARTING: {
            /* A replica that was ready and is not ready again gets less time than a first load:
             * it is not serving, and a restart is what usually brings it back. */
            int64_t limit = r->was_ready ? s->cfg.unready_restart_ms : s->cfg.start_timeout_ms;
            if (r->kill_at_ms == 0 && now - r->state_since_ms > limit) {
                snprintf(r->kill_reason, sizeof r->kill_reason, "%s within %.1f s",
                         r->was_ready ? "not ready again" : "not ready", (double)limit / 1000.0);
                log_warn("replica %s/%lld: %s: SIGKILL", r->spec.replica_id,
                         (long long)r->spec.epoch, r->kill_reason);
                signal_group(r, SIGKILL);
                r->kill_at_ms = now;
                cprobe_drop(r);
                break;
            }
        }
            /* fall through */
        case SUP_READY:
            if (r->kill_at_ms) break;
            cprobe_check(s, r, now);
            if (r->state == SUP_READY && s->cfg.completion_interval_ms > 0 &&
                now >= r->next_cprobe_ms)
                cprobe_start(s, r);
            probe(s, r, now);
            break;
        case SUP_BACKOFF:
            if (!r->desired)
                set_state(r, SUP_STOPPED, "no longer desired");
            else if (now >= r->next_start_ms)
                spawn_when_free(s, r);
            break;
        case SUP_STOPPING:
            if (r->kill_at_ms && now >= r->kill_at_ms) {
                log_warn("replica %s/%lld: still running %lld ms after SIGTERM: SIGKILL",
                         r->spec.replica_id, (long long)r->spec.epoch,
                         (long long)s->cfg.stop_grace_ms);
                signal_group(r, SIGKILL);
                r->kill_at_ms = 0;
            }
            break;
        case SUP_STOPPED:
            if (r->desired) spawn_when_free(s, r);
            break;
        case SUP_FETCHING:
            if (!r->desired)
                set_state(r, SUP_STOPPED, "no longer desired");
            else
                spawn_when_free(s, r);
            break;
        }
    }
    if (s->weights) {
        weights_begin_uses(s->weights);
        for (struct sup_replica *r = s->list; r; r = r->next)
            if (r->desired && sup_spec_needs_fetch(&r->spec))
                weights_use(s->weights, r->spec.model, r->spec.manifest);
    }
}

static int adopt(struct sup *s, struct sup_replica *r);
static void settle_leftovers(struct sup *s);

void sup_apply_desired(struct sup *s, const struct sup_spec *specs, size_t n)
{
    for (struct sup_replica *r = s->list; r; r = r->next)
        r->desired = 0;
    for (size_t i = 0; i < n; i++) {
        struct sup_replica *r = sup_find(s, specs[i].replica_id, specs[i].epoch);
        if (!r) {
            r = calloc(1, sizeof *r);
            if (!r) {
                log_error("out of memory: replica %s not started", specs[i].replica_id);
                continue;
            }
            r->spec = specs[i];
            if (r->spec.manifest) json_incref(r->spec.manifest);
            snprintf(r->dir, sizeof r->dir, "%s/replicas/%s-%lld", s->cfg.state_dir,
                     r->spec.replica_id, (long long)r->spec.epoch);
            r->state = SUP_NEW;
            r->state_since_ms = util_now_ms();
            if (s->leftovers_pending) adopt(s, r);
            /* Appended, so replicas keep the order the controller gave them. */
            struct sup_replica **tail = &s->list;
            while (*tail)
                tail = &(*tail)->next;
            *tail = r;
            log_info("replica %s/%lld: desired (model %s, %s devices %s)", r->spec.replica_id,
                     (long long)r->spec.epoch, r->spec.model, r->spec.device_kind, r->spec.devices);
        }
        r->desired = 1;
    }
    /* Before anything is spawned: a leftover nobody wants may hold a port or a device. */
    if (s->leftovers_pending) settle_leftovers(s);
    for (struct sup_replica *r = s->list; r; r = r->next) {
        if (r->desired) {
            if (r->state == SUP_NEW || r->state == SUP_STOPPED || r->state == SUP_FETCHING)
                spawn_when_free(s, r);
            continue;
        }
        switch (r->state) {
        case SUP_NEW:
        case SUP_BACKOFF:
        case SUP_FETCHING:
            set_state(r, SUP_STOPPED, "no longer desired");
            break;
        case SUP_STARTING:
        case SUP_READY:
            begin_stop(s, r, "no longer desired");
            break;
        case SUP_STOPPING:
        case SUP_STOPPED:
            break;
        }
    }
}

json_t *sup_report(struct sup *s)
{
    json_t *a = json_array();
    for (struct sup_replica *r = s->list; r; r = r->next) {
        /* NEW never lasts past the call that made it; STOPPING still holds its devices, so it is
         * reported only once it is really stopped. */
        if (r->state == SUP_NEW || r->state == SUP_STOPPING) continue;
        if (r->state == SUP_STOPPED) r->reported_stopped = 1;
        json_t *o = json_pack("{s:s, s:I, s:s, s:i, s:I, s:s}", "replica_id", r->spec.replica_id,
                              "epoch", (json_int_t)r->spec.epoch, "state", state_names[r->state],
                              "pid", (int)(r->pid > 0 ? r->pid : 0), "restarts",
                              (json_int_t)r->restarts, "reason", r->reason);
        /* No port yet (still downloading, or failed before the first start): left out, since the
         * controller accepts only a real one. */
        if (o && r->port > 0) json_object_set_new(o, "port", json_integer(r->port));
        json_array_append_new(a, o);
    }
    return a;
}

void sup_report_delivered(struct sup *s)
{
    struct sup_replica **pp = &s->list;
    while (*pp) {
        struct sup_replica *r = *pp;
        if (r->state == SUP_STOPPED && r->reported_stopped && !r->desired) {
            log_debug("replica %s/%lld: stop reported, forgotten", r->spec.replica_id,
                      (long long)r->spec.epoch);
            *pp = r->next;
            json_decref(r->spec.manifest);
            cprobe_drop(r);
            free(r);
        } else {
            pp = &r->next;
        }
    }
}

static int any_process(const struct sup *s)
{
    for (const struct sup_replica *r = s->list; r; r = r->next)
        if (r->pid > 0) return 1;
    return 0;
}

void sup_stop_all(struct sup *s)
{
    if (s->leftovers_pending) settle_leftovers(s);
    for (struct sup_replica *r = s->list; r; r = r->next) {
        r->desired = 0;
        if (r->state == SUP_STARTING || r->state == SUP_READY)
            begin_stop(s, r, "agent stopping");
        else if (r->state == SUP_NEW || r->state == SUP_BACKOFF || r->state == SUP_FETCHING)
            set_state(r, SUP_STOPPED, "agent stopping");
    }
    /* SIGKILL follows after the grace time; past that plus SUP_STOP_ALL_EXTRA_MS, a process stuck
     * in the kernel (D state) is given up on rather than keeping the agent from exiting. */
    int64_t give_up = util_now_ms() + s->cfg.stop_grace_ms + SUP_STOP_ALL_EXTRA_MS;
    while (any_process(s)) {
        sup_tick(s); /* reaps, and SIGKILLs whatever outlived its grace time */
        if (!any_process(s)) break;
        if (util_now_ms() >= give_up) {
            for (struct sup_replica *r = s->list; r; r = r->next)
                if (r->pid > 0)
                    log_error("replica %s/%lld: pid %d survives SIGKILL; leaving it",
                              r->spec.replica_id, (long long)r->spec.epoch, (int)r->pid);
            break;
        }
        util_sleep_ms(50);
    }
}

/* ---- leftovers of a previous run ---- */

struct sup_leftover {
    pid_t pid;
    unsigned long long starttime;
    int port;       /* 0: unknown (a pid file written before ports were), so it cannot be adopted */
    int adopted;    /* taken over by a desired replica: not to be killed */
    char name[256]; /* the replica directory's name, <replica_id>-<epoch> */
    char pidfile[PATH_MAX + 300];
};

static int process_alive(pid_t pid, unsigned long long starttime)
{
    char state;
    unsigned long long st;
    if (proc_stat(pid, &state, &st) != 0) return 0;
    return state != 'Z' && state != 'X' && st == starttime;
}

void sup_find_leftovers(struct sup *s)
{
    char rdir[PATH_MAX];
    snprintf(rdir, sizeof rdir, "%s/replicas", s->cfg.state_dir);
    DIR *d = opendir(rdir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        struct sup_leftover l = {0};
        snprintf(l.pidfile, sizeof l.pidfile, "%s/%s/pid", rdir, e->d_name);
        char *txt = util_read_file(l.pidfile, NULL);
        if (!txt) continue;
        int pid = 0, fields = sscanf(txt, "%d %llu %d", &pid, &l.starttime, &l.port);
        free(txt);
        l.pid = pid;
        if (fields < 3 || l.port < 1 || l.port > 65535) l.port = 0;
        if (fields < 2 || pid <= 1 || !process_alive(l.pid, l.starttime)) {
            unlink(l.pidfile);
            continue;
        }
        snprintf(l.name, sizeof l.name, "%s", e->d_name);
        struct sup_leftover *nl = realloc(s->leftovers, (s->nleftovers + 1) * sizeof *nl);
        if (!nl) break;
        s->leftovers = nl;
        s->leftovers[s->nleftovers++] = l;
        log_info("runtime pid %d (%s) is left from a previous run of the agent: adopted if the "
                 "controller still wants it, else stopped",
                 pid, e->d_name);
    }
    closedir(d);
    s->leftovers_pending = 1;
}

/* Takes r's runtime over when a leftover runs for the same replica and epoch. 1 when adopted. */
static int adopt(struct sup *s, struct sup_replica *r)
{
    const char *slash = strrchr(r->dir, '/');
    const char *name = slash ? slash + 1 : r->dir;
    for (size_t i = 0; i < s->nleftovers; i++) {
        struct sup_leftover *l = &s->leftovers[i];
        if (l->adopted || l->port == 0 || strcmp(l->name, name) != 0 ||
            !process_alive(l->pid, l->starttime))
            continue;
        char log_path[PATH_MAX + 16];
        struct stat lst;
        snprintf(log_path, sizeof log_path, "%s/runtime.log", r->dir);
        l->adopted = 1;
        r->pid = l->pid;
        r->starttime = l->starttime;
        r->port = l->port;
        r->adopted = 1;
        r->started_ms = util_now_ms(); /* its uptime counts from the adoption */
        r->log_start = stat(log_path, &lst) == 0 ? (int64_t)lst.st_size : 0;
        r->next_probe_ms = util_now_ms();
        /* STARTING until its /health answers: the next probe, a few hundred ms away. */
        set_state(r, SUP_STARTING, "adopted pid %d on port %d from a previous run of the agent",
                  (int)r->pid, r->port);
        return 1;
    }
    return 0;
}

/* Every runtime cgroup that no supervised replica owns holds what a previous run of the agent left
 * (a runtime whose pid file was lost, or something a runtime forked that left its process group):
 * it is killed and the cgroup removed, so nothing unsupervised keeps a device. */
static void kill_stray_cgroups(struct sup *s)
{
    if (!s->cfg.cg || !s->cfg.cg->dir[0]) return;
    DIR *d = opendir(s->cfg.cg->dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || e->d_type != DT_DIR) continue;
        int owned = 0;
        for (struct sup_replica *r = s->list; r && !owned; r = r->next) {
            const char *slash = strrchr(r->dir, '/');
            owned = r->pid > 0 && !strcmp(slash ? slash + 1 : r->dir, e->d_name);
        }
        if (owned) continue;
        char p[PATH_MAX];
        cg_path(s->cfg.cg, e->d_name, p, sizeof p);
        int n = cg_kill_all(p);
        if (n)
            log_warn("killed %d process(es) left in cgroup %s by a previous run of the agent", n,
                     p);
        for (int tries = 0; tries < 20 && rmdir(p) != 0 && errno == EBUSY; tries++)
            util_sleep_ms(25); /* the killed processes take a moment to leave it */
    }
    closedir(d);
}

/* Kills the leftovers nobody adopted (SIGTERM, SIGKILL after the grace time) and forgets them all.
 * Blocks for at most the grace time. */
static void settle_leftovers(struct sup *s)
{
    struct sup_leftover *lo = s->leftovers;
    size_t n = s->nleftovers;
    size_t killing = 0;
    for (size_t i = 0; i < n; i++) {
        if (lo[i].adopted) continue;
        if (!process_alive(lo[i].pid, lo[i].starttime)) {
            unlink(lo[i].pidfile);
            lo[i].adopted = 1; /* nothing left to do with it */
            continue;
        }
        log_warn("killing runtime pid %d left by a previous run of the agent (%s): not desired",
                 (int)lo[i].pid, lo[i].name);
        if (kill(-lo[i].pid, SIGTERM) != 0) kill(lo[i].pid, SIGTERM);
        killing++;
    }
    int64_t deadline = util_now_ms() + s->cfg.stop_grace_ms;
    while (killing) {
        size_t alive = 0;
        for (size_t i = 0; i < n; i++) {
            if (lo[i].adopted) continue;
            waitpid(lo[i].pid, NULL, WNOHANG); /* succeeds only where it is our child */
            if (process_alive(lo[i].pid, lo[i].starttime)) alive++;
        }
        if (!alive) break;
        if (util_now_ms() >= deadline) {
            for (size_t i = 0; i < n; i++)
                if (!lo[i].adopted && process_alive(lo[i].pid, lo[i].starttime) &&
                    kill(-lo[i].pid, SIGKILL) != 0)
                    kill(lo[i].pid, SIGKILL);
            util_sleep_ms(100);
            for (size_t i = 0; i < n; i++)
                if (!lo[i].adopted) waitpid(lo[i].pid, NULL, WNOHANG);
            break;
        }
        util_sleep_ms(50);
    }
    for (size_t i = 0; i < n; i++)
        if (!lo[i].adopted) unlink(lo[i].pidfile);
    kill_stray_cgroups(s);
    free(s->leftovers);
    s->leftovers = NULL;
    s->nleftovers = 0;
    s->leftovers_pending = 0;
}

void sup_kill_leftovers(struct sup *s)
{
    sup_find_leftovers(s);
    settle_leftovers(s);
}

/* supervisor: the runtimes this agent runs, one process per replica, and the replica state machine.
 *
 * The supervisor owns every child process: it alone forks, signals and reaps them, writes their
 * pid files, picks their ports and probes their health. The controller's desired list comes in
 * through sup_apply_desired() (level-triggered: the whole list each time; what is missing is
 * started, what is no longer listed is stopped), and sup_tick(), called often from the main loop,
 * does everything time-driven: reaping (waitpid WNOHANG, no SIGCHLD handler), health probes, the
 * start timeout, restart backoff and the SIGTERM → SIGKILL escalation. Every state change goes
 * through one function (set_state in supervisor.c), which checks that it is legal and logs why.
 *
 * States (what the controller sees in brackets):
 *   NEW       [—]        just created from the desired list; started at once, unless one of its
 *                        devices is still held by a replica being stopped (then at the tick after
 *                        that one is gone).
 *   STARTING  [starting] the process runs; /health has not answered 200 yet, or a completion
 *                        probe has not passed yet (or it stopped answering either for a while
 *                        after being ready: not routable until it does again, and killed and
 *                        restarted when that lasts unready_restart_ms).
 *   READY     [ready]    /health answered 200 and a one-token completion succeeded; /health is
 *                        probed every probe_interval_ms and a completion every
 *                        completion_interval_ms while it runs.
 *   BACKOFF   [failed]   no process: it exited, was killed or could not be spawned; it is started
 *                        again at next_start_ms (1 s doubling to 30 s).
 *   STOPPING  [—]        no longer desired; SIGTERM sent, SIGKILL follows after the grace time.
 *   STOPPED   [stopped]  no longer desired and its process is gone; reported in one successful
 *                        heartbeat, then forgotten. */
#ifndef ORP_AGENT_SUPERVISOR_H
#define ORP_AGENT_SUPERVISOR_H

#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cgroup.h"

/* Field sizes: replica ids and epochs become directory names, devices become
 * CUDA_VISIBLE_DEVICES; ctlclient rejects any desired entry that does not fit. */
#define SUP_ID_MAX 128
#define SUP_NAME_MAX 256
#define SUP_SECRET_MAX 256
#define SUP_DEVICES_MAX 1024

/* Crash loops. A replica that exited SUP_CRASH_LOOP_EXITS times within SUP_CRASH_WINDOW_MS is in a
 * crash loop, and its reason says so ("crash loop: exit 1 3 times in 2 min"): one exit can be bad
 * luck, three in two minutes is a broken model or a broken host, and the operator or customer
 * should be told which without reading the agent's log. SUP_EXIT_HISTORY exits are remembered:
 * with backoff doubling from 1 s, at most 7 exits fit in 2 minutes. */
#define SUP_CRASH_WINDOW_MS 120000
#define SUP_CRASH_LOOP_EXITS 3
#define SUP_EXIT_HISTORY 16
/* The part of runtime.log quoted in the reason of a runtime that exited during start: the last
 * lines (the load error is the last thing a failed runtime writes), sanitized to printable UTF-8.
 * Bounded so that a reason stays readable in a listing and well within the controller's limit
 * (1000 bytes per reason). */
#define SUP_LOG_TAIL_MAX 300
/* How much of the end of runtime.log is read to find those lines. */
#define SUP_LOG_TAIL_READ 4096

/* One desired replica, as the controller sent it. */
struct sup_spec {
    char replica_id[SUP_ID_MAX];
    int64_t epoch;
    char model[SUP_NAME_MAX];
    char model_path[PATH_MAX]; /* "" for a remote source until its weights are cached */
    char source[PATH_MAX];     /* the catalog source: a directory, file:///dir or http(s)://…/ */
    json_t *manifest; /* {"files":[…]} or NULL; a reference owned by whoever holds the spec */
    char served_name[SUP_NAME_MAX];
    char devices[SUP_DEVICES_MAX]; /* device uuids, comma-joined */
    char device_kind[8];           /* "gpu" or "cpu" */
    char secret[SUP_SECRET_MAX];
    int64_t tp;
};

/* SUP_FETCHING [downloading]: waiting for the weights cache to fetch the model (reason
 * "downloading weights: 37 %"); listed last so the other values keep their numbers. */
enum sup_state {
    SUP_NEW,
    SUP_STARTING,
    SUP_READY,
    SUP_BACKOFF,
    SUP_STOPPING,
    SUP_STOPPED,
    SUP_FETCHING
};

struct sup_replica {
    struct sup_spec spec;
    char dir[PATH_MAX]; /* STATE_DIR/replicas/<replica_id>-<epoch> */
    enum sup_state state;
    char reason[640];       /* room for an exit cause, a crash-loop count and SUP_LOG_TAIL_MAX */
    int64_t state_since_ms; /* monotonic */
    pid_t pid;              /* 0 when no process; also its process group id */
    int port;
    int64_t restarts;      /* spawns after the first */
    int64_t backoff_ms;    /* the next backoff to wait */
    int64_t next_start_ms; /* BACKOFF: when to spawn again */
    int64_t kill_at_ms;    /* STOPPING, or a killed stuck start: when SIGKILL follows */
    int64_t next_probe_ms;
    int health_failures;   /* consecutive failed probes while READY */
    char kill_reason[128]; /* why we killed it ourselves, reported instead of "killed by signal" */
    int desired;
    int reported_stopped;              /* STOPPED and included in the last report */
    int waiting_logged;                /* "waiting for devices" was logged for the current wait */
    int64_t exit_ms[SUP_EXIT_HISTORY]; /* monotonic times of the latest exits, a ring */
    int nexits;                        /* exits recorded so far (the ring holds the last 16) */
    int ready_once;                    /* the current process has answered /health */
    int was_ready;                     /* the current process has been READY */
    struct sup_cprobe *cprobe;         /* a completion probe in flight (shared with its thread) */
    int64_t next_cprobe_ms;
    int cprobe_failures; /* consecutive failed completion probes */
    int64_t log_start;   /* runtime.log's size when the current process started */
    int64_t started_ms;  /* monotonic: when the current process was started */
    int adopted;         /* pid was started by a previous run of the agent, see below */
    unsigned long long
        starttime;             /* adopted: pid's start time in /proc, to tell it from a stranger */
    enum sup_state fetch_from; /* FETCHING: the state it came from */
    struct sup_replica *next;
};

struct sup_config {
    const char *runtime_bin;
    const char *runtime_host; /* address runtimes bind to */
    const char *state_dir;
    int port_base;
    int64_t start_timeout_ms;   /* STARTING longer than this: killed and restarted */
    int64_t stop_grace_ms;      /* SIGTERM → SIGKILL */
    int64_t backoff_initial_ms; /* first restart delay, doubled on each failure */
    int64_t backoff_max_ms;
    int64_t probe_interval_ms;
    long probe_timeout_ms;
    /* Completion probes (a one-token completion, on a thread of its own): one must pass before a
     * replica is ready, and one runs every completion_interval_ms while it is; 0: /health only. */
    int64_t completion_interval_ms;
    long completion_timeout_ms;
    int64_t unready_restart_ms; /* a replica that was ready and is not ready again within this
                                   long is killed and restarted */
    const struct cg *cg;        /* borrowed, may be NULL: runtimes get no cgroup */
    int64_t memory_max;         /* each runtime's memory.max in bytes (0: no limit) */
    int64_t cpu_millis;         /* each runtime's cpu.max in thousandths of a CPU (0: no limit) */
    int64_t runtime_uid;        /* runtimes run as this user (-1: as the agent) */
    int64_t runtime_gid;
};

struct sup_leftover;
struct sup_cprobe;
struct weights;

struct sup {
    struct sup_config cfg;
    struct sup_replica *list;
    struct sup_leftover *leftovers; /* owned: found by sup_find_leftovers, settled by the first
                                       sup_apply_desired (or sup_stop_all) */
    size_t nleftovers;
    int leftovers_pending;
    struct weights *weights; /* borrowed, may be NULL: remote sources then fail */
};

/* Whether spec's weights come through the weights cache: a manifest and a file:// or http(s)://
 * source (a plain directory is used where it is, as before). */
int sup_spec_needs_fetch(const struct sup_spec *spec);

/* Fills cfg with the defaults (1 s → 30 s backoff, 5 s grace, 300 s start timeout). */
void sup_config_defaults(struct sup_config *cfg);

/* New supervisor; strings in cfg are borrowed and must outlive it. NULL when out of memory. */
struct sup *sup_new(const struct sup_config *cfg);
/* Frees the bookkeeping only; processes still running are left alone (call sup_stop_all first). */
void sup_free(struct sup *s);

/* Finds the runtimes a previous run of the agent left behind (STATE_DIR/replicas/x/pid naming a
 * process that still lives with the same start time) without touching them. The first
 * sup_apply_desired then adopts each one whose replica and epoch it lists (supervised again: the
 * same pid and port, probed, stopped when no longer desired; the spec and secret come from the
 * desired list, as for a new start) and kills the others, before it starts anything: a restarted
 * agent must never leave an orphan holding devices, and should not restart replicas that still
 * serve. sup_stop_all before that kills them all. */
void sup_find_leftovers(struct sup *s);
/* sup_find_leftovers, then kills every one at once. Blocks up to the stop grace time. */
void sup_kill_leftovers(struct sup *s);

/* Applies the controller's full desired list: starts what is new, stops what is not listed. */
void sup_apply_desired(struct sup *s, const struct sup_spec *specs, size_t n);

/* Reaps, probes, times out, restarts and escalates. Call every few hundred milliseconds. */
void sup_tick(struct sup *s);

/* New reference: the "replicas" array of a heartbeat. Marks the STOPPED ones it includes. */
json_t *sup_report(struct sup *s);
/* After a successful heartbeat: forgets the STOPPED replicas that the last report included. */
void sup_report_delivered(struct sup *s);

/* Stops every runtime (SIGTERM, SIGKILL after the grace time) and reaps them. Blocks. */
void sup_stop_all(struct sup *s);

/* Exit reasons, exposed for tests. */

/* What ended a process, from waitid's si_code (code) and si_status (status): "exit 1", "exit 137
 * (killed: out of memory?)", "signal 11 (SIGSEGV: crashed)". by_us: the agent sent the signal
 * itself (a stop or a start timeout), so "out of memory?" would mislead. */
void sup_exit_cause(int code, int status, int by_us, char *out, size_t n);

/* Copies in[0..len) to out as printable UTF-8: control characters and bytes that are not valid
 * UTF-8 become '?', tabs become spaces. Never splits a character; returns the length written. */
size_t sup_sanitize(const char *in, size_t len, char *out, size_t n);

/* The last lines of the log file at path written at or after byte offset since (what the current
 * process wrote: runtime.log is appended across restarts), oldest first, joined by " | ",
 * sanitized, without the timestamps our log lines start with, at most max bytes (a last line longer
 * than that is cut at the end, with "..."). out gets "" when the file is missing or empty. Returns
 * the length. */
size_t sup_log_tail(const char *path, int64_t since, size_t max, char *out, size_t n);

/* Records an exit of r at now_ms and composes its reason into out: the cause, "crash loop: … N
 * times in 2 min" when it is one, and for an exit during start the tail of r's runtime.log. */
void sup_exit_reason(struct sup_replica *r, int code, int status, int during_start, int64_t now_ms,
                     char *out, size_t n);

/* Looks up a replica (NULL if none). Borrowed. */
struct sup_replica *sup_find(struct sup *s, const char *replica_id, int64_t epoch);
const char *sup_state_name(enum sup_state st);

#endif

/* main: orp-agent's configuration and its one loop. The loop is single-threaded on purpose: it
 * heartbeats (which carries replica states and usage out, and brings the desired list back), hands
 * the desired list to the supervisor, ticks the supervisor a few times a second, takes the
 * inventory again every --inventory-interval-s (registering again when it changed), and publishes
 * a snapshot for /metrics (whose HTTP thread sees only that snapshot, never the supervisor).
 * Signal handlers only set a flag; the loop notices it, stops every runtime and exits 0. */
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pwd.h>
#include <unistd.h>

#include "cfg.h"
#include "cgroup.h"
#include "ctlclient.h"
#include "inventory.h"
#include "jsonx.h"
#include "logship.h"
#include "log.h"
#include "metrics.h"
#include "supervisor.h"
#include "weights.h"
#include "usage.h"
#include "util.h"

/* The supervisor is ticked this often: reaping, stop escalation and the 1 s first backoff need
 * sub-second resolution; health probes have their own, slower interval. */
#define AGENT_TICK_MS 200
/* Bounds on the heartbeat interval, whoever sets it: faster floods the controller, slower makes
 * the host look lost (the controller's liveness timeout is a few intervals). */
#define AGENT_HEARTBEAT_MIN_MS 100
#define AGENT_HEARTBEAT_MAX_MS 60000
/* GPU readings for /metrics are taken this often: Prometheus scrapes every 15 s or so, and NVML's
 * utilization is itself an average over the driver's last sample period. */
#define AGENT_GPU_SAMPLE_MS 1000
/* The inventory is an NVML init/enumerate/shutdown each time: once a second is the most that makes
 * sense; once a day the least that still notices a dying GPU. */
#define AGENT_INVENTORY_MIN_S 1
#define AGENT_INVENTORY_MAX_S 86400

struct agent_config {
    const char *controller;
    const char *token;
    const char *name;
    const char *advertise_addr;
    const char *runtime_host;
    const char *state_dir;
    const char *runtime_bin;
    const char *log_level;
    const char *metrics_host;
    const char *nvml_lib;
    const char *cache_dir;
    int64_t cache_max_bytes;
    int64_t metrics_port;
    int64_t inventory_interval_s;
    int64_t cpu_slots;
    int64_t heartbeat_ms;
    int64_t port_base;
    int64_t start_timeout_s;
    const char *runtime_user;
    const char *cgroup_root;
    int64_t runtime_memory_max;
    int64_t runtime_cpu_millis;
    int64_t log_max_bytes;
    int stop_runtimes_on_exit;
    int64_t completion_probe_s;
    int64_t unready_restart_s;
    int print_config;
};

#define OPT(n, t, d, h, f)                                                                         \
    {                                                                                              \
        n, t, d, h, offsetof(struct agent_config, f)                                               \
    }
static const struct cfg_opt options[] = {
    OPT("controller", CFG_STRING, NULL, "agent API base URL, e.g. http://127.0.0.1:8082",
        controller),
    OPT("token", CFG_STRING, NULL,
        "enrollment token: a one-time token (host token create), or the controller's --agent-token",
        token),
    OPT("name", CFG_STRING, NULL, "host name to register under [default: hostname]", name),
    OPT("advertise-addr", CFG_STRING, "127.0.0.1",
        "address the controller's gateway uses to reach this host's runtimes", advertise_addr),
    OPT("runtime-host", CFG_STRING, "127.0.0.1", "address runtimes bind to", runtime_host),
    OPT("state-dir", CFG_STRING, "./var/agent", "agent.json and replicas/<id>-<epoch>/ live here",
        state_dir),
    OPT("runtime-bin", CFG_STRING, NULL,
        "orp-runtime to launch [default: beside orp-agent, else ../runtime/orp-runtime]",
        runtime_bin),
    OPT("cpu-slots", CFG_INT, "0", "CPU slots to offer besides the GPUs", cpu_slots),
    OPT("heartbeat-ms", CFG_INT, "2000", "heartbeat interval (the controller may change it)",
        heartbeat_ms),
    OPT("port-base", CFG_INT, "20000", "runtimes get the first free port from here", port_base),
    OPT("start-timeout-s", CFG_INT, "300",
        "a runtime not ready after this long is killed and restarted", start_timeout_s),
    OPT("inventory-interval-s", CFG_INT, "60",
        "take the inventory again this often; register again when it changed",
        inventory_interval_s),
    OPT("metrics-port", CFG_INT, "0", "serve Prometheus GET /metrics on this port (0: off)",
        metrics_port),
    OPT("metrics-host", CFG_STRING, "127.0.0.1", "address /metrics binds to (IPv4)", metrics_host),
    OPT("cache-dir", CFG_STRING, NULL,
        "weights cache for models with a remote source [default: STATE_DIR/models]", cache_dir),
    OPT("cache-max-bytes", CFG_INT, "0",
        "evict least recently used unused models past this size (0: no limit)", cache_max_bytes),
    OPT("runtime-user", CFG_STRING, "orp-runtime",
        "when the agent runs as root, runtimes run as this user (ops/install-deps creates it; "
        "'-': as root)",
        runtime_user),
    OPT("cgroup-root", CFG_STRING, "",
        "cgroup v2 mount for the runtimes' cgroups ['': find it; 'off': none]", cgroup_root),
    OPT("runtime-memory-max", CFG_INT, "0", "each runtime's cgroup memory.max in bytes (0: none)",
        runtime_memory_max),
    OPT("runtime-cpu-millis", CFG_INT, "0",
        "each runtime's cgroup cpu.max in thousandths of a CPU (0: none)", runtime_cpu_millis),
    OPT("log-max-bytes", CFG_INT, "8388608",
        "a runtime's stdout.log / runtime.log is cut back to empty past this size", log_max_bytes),
    OPT("completion-probe-s", CFG_INT, "15",
        "a one-token completion must pass before a replica is ready, and runs this often while "
        "it is (0: /health only)",
        completion_probe_s),
    OPT("unready-restart-s", CFG_INT, "30",
        "a replica that was ready and is not ready again for this long is restarted",
        unready_restart_s),
    OPT("stop-runtimes-on-exit", CFG_BOOL, "true",
        "stop every runtime on SIGTERM; false leaves them for the next run to adopt (upgrades)",
        stop_runtimes_on_exit),
    OPT("nvml-lib", CFG_STRING, "libnvidia-ml.so.1", "the NVML library to load", nvml_lib),
    OPT("log-level", CFG_STRING, "info", "debug, info, warn or error", log_level),
    OPT("print-config", CFG_BOOL, "false", "print the effective configuration and exit",
        print_config),
};
#define NOPTIONS (sizeof options / sizeof options[0])

static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    stop_signal = sig;
}

/* orp-runtime beside our own binary, else ../runtime/orp-runtime (the build tree's layout). */
static void default_runtime_bin(char *out, size_t n)
{
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        snprintf(out, n, "orp-runtime");
        return;
    }
    self[len] = '\0';
    char *slash = strrchr(self, '/');
    if (slash) *slash = '\0';
    if (snprintf(out, n, "%s/orp-runtime", self) < (int)n && access(out, X_OK) == 0) return;
    char alt[PATH_MAX + 32];
    snprintf(alt, sizeof alt, "%s/../runtime/orp-runtime", self);
    char *real = realpath(alt, NULL);
    if (real && access(real, X_OK) == 0 && snprintf(out, n, "%s", real) < (int)n) {
        free(real);
        return;
    }
    free(real);
    if (snprintf(out, n, "%s/orp-runtime", self) >= (int)n) snprintf(out, n, "orp-runtime");
    log_warn("no orp-runtime beside %s or in ../runtime: replicas will fail until --runtime-bin "
             "points at one",
             self);
}

static int check_config(const struct agent_config *c, char *err, size_t n)
{
    if (!c->controller || !c->controller[0])
        snprintf(err, n, "--controller is required");
    else if (c->heartbeat_ms < AGENT_HEARTBEAT_MIN_MS || c->heartbeat_ms > AGENT_HEARTBEAT_MAX_MS)
        snprintf(err, n, "--heartbeat-ms must be between %d and %d", AGENT_HEARTBEAT_MIN_MS,
                 AGENT_HEARTBEAT_MAX_MS);
    else if (c->port_base < 1 || c->port_base > 65535)
        snprintf(err, n, "--port-base must be a TCP port");
    else if (c->cpu_slots < 0 || c->cpu_slots > 1024)
        snprintf(err, n, "--cpu-slots must be between 0 and 1024");
    else if (c->start_timeout_s < 1)
        snprintf(err, n, "--start-timeout-s must be positive");
    else if (c->runtime_memory_max < 0 || c->runtime_cpu_millis < 0)
        snprintf(err, n, "--runtime-memory-max and --runtime-cpu-millis must not be negative");
    else if (c->completion_probe_s < 0 || c->completion_probe_s > 3600 || c->unready_restart_s < 1)
        snprintf(err, n, "--completion-probe-s must be 0..3600 and --unready-restart-s positive");
    else if (c->log_max_bytes < 65536)
        snprintf(err, n, "--log-max-bytes must be at least 65536");
    else if (c->metrics_port < 0 || c->metrics_port > 65535)
        snprintf(err, n, "--metrics-port must be a TCP port, or 0 for none");
    else if (c->inventory_interval_s < AGENT_INVENTORY_MIN_S ||
             c->inventory_interval_s > AGENT_INVENTORY_MAX_S)
        snprintf(err, n, "--inventory-interval-s must be between %d and %d", AGENT_INVENTORY_MIN_S,
                 AGENT_INVENTORY_MAX_S);
    else
        return 0;
    return -1;
}

static int64_t clamp_heartbeat(int64_t ms)
{
    return ms < AGENT_HEARTBEAT_MIN_MS   ? AGENT_HEARTBEAT_MIN_MS
           : ms > AGENT_HEARTBEAT_MAX_MS ? AGENT_HEARTBEAT_MAX_MS
                                         : ms;
}

/* Sleeps up to ms, returning early when a signal arrives. */
static void nap(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Takes the inventory and builds the register request from it: *reg (new reference) and its
 * digest in fingerprint. 0, or -1 (logged). */
static int take_inventory(const struct agent_config *cfg, struct inv *inv, json_t **reg,
                          char fingerprint[65])
{
    if (inv_collect(inv, cfg->name, cfg->cpu_slots, cfg->nvml_lib) != 0) {
        log_error("out of memory taking the inventory");
        return -1;
    }
    *reg = json_pack("{s:s, s:s, s:s, s:o}", "name", cfg->name, "address", cfg->advertise_addr,
                     "agent_version", AGENT_VERSION, "devices", inv_to_json(inv));
    char *txt = *reg ? jsonx_dump(*reg) : NULL;
    if (!txt) {
        log_error("cannot build the register request (is --name valid UTF-8?)");
        json_decref(*reg);
        *reg = NULL;
        inv_free(inv);
        return -1;
    }
    util_sha256_hex(txt, strlen(txt), fingerprint);
    free(txt);
    return 0;
}

/* Takes the inventory again; when the register request it makes differs from *reg (a GPU gone,
 * unhealthy, its memory changed), replaces *reg, *inv and fingerprint and returns 1. */
static int inventory_changed(const struct agent_config *cfg, struct inv *inv, json_t **reg,
                             char fingerprint[65])
{
    struct inv fresh;
    json_t *fresh_reg;
    char fp[65];
    if (take_inventory(cfg, &fresh, &fresh_reg, fp) != 0) return 0;
    if (!strcmp(fp, fingerprint)) {
        json_decref(fresh_reg);
        inv_free(&fresh);
        return 0;
    }
    json_decref(*reg);
    inv_free(inv);
    *reg = fresh_reg;
    *inv = fresh;
    memcpy(fingerprint, fp, 65);
    return 1;
}

/* One heartbeat: report, receive the desired list, apply it, advance the usage journals. */
static enum ctl_rc heartbeat_once(struct ctl *ctl, struct sup *sup, const char *replicas_dir,
                                  int64_t log_max_bytes, struct weights *weights,
                                  int64_t *heartbeat_ms)
{
    /* Room for weights, and which models are cached: the scheduler places no replica on a host
     * that could not hold its model. */
    json_t *cached = json_array();
    int64_t free_bytes;
    weights_disk(weights, &free_bytes, cached);
    json_t *disk =
        json_pack("{s:I, s:o}", "free_bytes", (json_int_t)free_bytes, "cached_models", cached);
    json_t *replicas = sup_report(sup);
    json_t *usage = json_array();
    struct usage_batch batch;
    usage_collect(replicas_dir, USAGE_MAX_ITEMS, usage, &batch);
    json_t *logs = json_array();
    struct logship_batch lbatch;
    logship_collect(replicas_dir, log_max_bytes, LOGSHIP_MAX_ITEMS, logs, &lbatch);
    struct ctl_reply reply;
    enum ctl_rc rc = ctl_heartbeat(ctl, replicas, usage, logs, disk, &reply);
    json_decref(disk);
    json_decref(replicas);
    json_decref(usage);
    json_decref(logs);
    if (rc == CTL_OK) {
        /* Lines the controller did not take all of are sent again (it stores each position once).
         */
        if (reply.logs_acked == (int64_t)lbatch.items) logship_commit(&lbatch);
        sup_report_delivered(sup);
        sup_apply_desired(sup, reply.desired, reply.ndesired);
        if (reply.usage_acked == (int64_t)batch.items)
            usage_commit(&batch);
        else
            log_warn("controller stored %lld of %zu usage items: sending them again",
                     (long long)reply.usage_acked, batch.items);
        if (reply.heartbeat_ms > 0 && clamp_heartbeat(reply.heartbeat_ms) != *heartbeat_ms) {
            *heartbeat_ms = clamp_heartbeat(reply.heartbeat_ms);
            log_info("heartbeat interval is now %lld ms", (long long)*heartbeat_ms);
        }
        ctl_reply_free(&reply);
    }
    usage_batch_free(&batch);
    logship_batch_free(&lbatch);
    return rc;
}

int main(int argc, char **argv)
{
    struct agent_config cfg;
    char err[512];
    int prc = cfg_parse(options, NOPTIONS, &cfg, "ORP_AGENT", argc, argv, 1, err, sizeof err);
    if (prc == 1) {
        cfg_print_help(stdout, "usage: orp-agent --controller URL --token TOKEN [options]", options,
                       NOPTIONS, "ORP_AGENT");
        return 0;
    }
    if (prc != 0) {
        fprintf(stderr, "orp-agent: %s\n", err);
        return 2;
    }
    log_init("orp-agent", cfg.log_level);

    char hostname[256] = "localhost";
    if (!cfg.name || !cfg.name[0]) {
        if (gethostname(hostname, sizeof hostname - 1) != 0) log_warn("gethostname failed");
        hostname[sizeof hostname - 1] = '\0';
        cfg.name = hostname;
    }
    char runtime_bin[PATH_MAX];
    if (!cfg.runtime_bin || !cfg.runtime_bin[0]) {
        default_runtime_bin(runtime_bin, sizeof runtime_bin);
        cfg.runtime_bin = runtime_bin;
    }
    if (cfg.print_config) {
        cfg_print_effective(stdout, options, NOPTIONS, &cfg);
        return 0;
    }
    if (check_config(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "orp-agent: %s\n", err);
        return 2;
    }

    struct sigaction sa = {.sa_handler = on_stop_signal}; /* no SA_RESTART: wake the nap */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    char ctx[300];
    snprintf(ctx, sizeof ctx, "host=%s", cfg.name);
    log_set_context(ctx);

    char replicas_dir[PATH_MAX];
    snprintf(replicas_dir, sizeof replicas_dir, "%s/replicas", cfg.state_dir);
    if (util_mkdirs(replicas_dir, 0755) != 0) {
        log_error("cannot create %s: %s", replicas_dir, strerror(errno));
        return 1;
    }

    struct inv inv;
    json_t *reg;
    char fingerprint[65];
    if (take_inventory(&cfg, &inv, &reg, fingerprint) != 0) return 1;
    inv_log(&inv);

    struct sup_config scfg;
    sup_config_defaults(&scfg);
    scfg.runtime_bin = cfg.runtime_bin;
    scfg.runtime_host = cfg.runtime_host;
    scfg.state_dir = cfg.state_dir;
    scfg.port_base = (int)cfg.port_base;
    scfg.start_timeout_ms = cfg.start_timeout_s * 1000;
    scfg.completion_interval_ms = cfg.completion_probe_s * 1000;
    scfg.unready_restart_ms = cfg.unready_restart_s * 1000;
    struct cg cg;
    char scope[65], *state_real = realpath(cfg.state_dir, NULL);
    const char *sd = state_real ? state_real : cfg.state_dir;
    util_sha256_hex(sd, strlen(sd), scope);
    scope[16] = '\0';
    free(state_real);
    cg_init(&cg, cfg.cgroup_root, scope);
    scfg.cg = &cg;
    scfg.memory_max = cfg.runtime_memory_max;
    scfg.cpu_millis = cfg.runtime_cpu_millis;
    if (geteuid() == 0 && cfg.runtime_user && cfg.runtime_user[0] &&
        strcmp(cfg.runtime_user, "-")) {
        struct passwd *pw = getpwnam(cfg.runtime_user);
        if (pw) {
            scfg.runtime_uid = pw->pw_uid;
            scfg.runtime_gid = pw->pw_gid;
            log_info("runtimes run as %s (uid %lld)", cfg.runtime_user, (long long)pw->pw_uid);
        } else {
            log_warn("no user '%s' on this host (ops/install-deps creates it): runtimes run as "
                     "root",
                     cfg.runtime_user);
        }
    }
    struct sup *sup = sup_new(&scfg);
    if (!sup) {
        log_error("out of memory");
        return 1;
    }
    char cache_dir[PATH_MAX];
    snprintf(cache_dir, sizeof cache_dir, "%s", cfg.cache_dir ? cfg.cache_dir : "");
    if (!cfg.cache_dir) snprintf(cache_dir, sizeof cache_dir, "%s/models", cfg.state_dir);
    if (util_mkdirs(cache_dir, 0755) != 0) {
        log_error("cannot create %s: %s", cache_dir, strerror(errno));
        return 1;
    }
    struct weights *weights = weights_new(cache_dir, cfg.cache_max_bytes);
    if (!weights) {
        log_error("out of memory");
        return 1;
    }
    sup->weights = weights;
    /* Adopted or stopped once the controller's first desired list says which are still wanted. */
    sup_find_leftovers(sup);

    struct ctl ctl;
    ctl_init(&ctl, cfg.controller, cfg.token, cfg.state_dir);
    ctl_load_identity(&ctl, fingerprint);
    if (!ctl.registered && !ctl.host_key[0] && (!cfg.token || !cfg.token[0])) {
        log_error("not registered yet and no --token given");
        return 2;
    }
    log_info("orp-agent %s: controller %s, runtime %s, state %s, runtimes on %s from port %lld",
             AGENT_VERSION, cfg.controller, cfg.runtime_bin, cfg.state_dir, cfg.runtime_host,
             (long long)cfg.port_base);

    struct metrics_server *metrics = NULL;
    struct inv_nvml *nvml = NULL;
    if (cfg.metrics_port > 0) {
        metrics = metrics_start(cfg.metrics_host, (int)cfg.metrics_port, err, sizeof err);
        if (!metrics) {
            log_error("/metrics: %s", err);
            return 1;
        }
        nvml = inv_nvml_open(cfg.nvml_lib); /* NULL: no GPU readings, the rest is still served */
        log_info("metrics on http://%s:%d/metrics", cfg.metrics_host, metrics_port(metrics));
    }
    struct metrics_snapshot snap = {0};
    struct inv_gpu_sample *gpu_samples = NULL;
    size_t ngpu_samples = 0;
    int64_t next_gpu_sample = util_now_ms();

    int64_t heartbeat_ms = cfg.heartbeat_ms;
    int64_t next_hb = util_now_ms();
    int64_t next_inventory = util_now_ms() + cfg.inventory_interval_s * 1000;
    int revoked = 0;
    while (!stop_signal) {
        int64_t now = util_now_ms();
        if (now >= next_inventory) {
            next_inventory = now + cfg.inventory_interval_s * 1000;
            if (inventory_changed(&cfg, &inv, &reg, fingerprint)) {
                log_info("the inventory changed: registering again");
                inv_log(&inv);
                ctl_reregister(&ctl);
                next_hb = now;
            }
        }
        if (now >= next_hb) {
            int had_key = ctl.registered;
            if (!ctl.registered) {
                int64_t hb = 0;
                enum ctl_rc rc = ctl_register(&ctl, reg, fingerprint, &hb);
                if (rc == CTL_OK && hb > 0) heartbeat_ms = clamp_heartbeat(hb);
                /* Revoked: the controller placed our replicas elsewhere and will never list them
                 * for us again. Runtimes left running would hold devices and serve nobody. */
                if (rc == CTL_REVOKED && !revoked) {
                    log_error("this host was revoked by the operator: stopping every runtime; "
                              "enroll it again with a new enrollment token");
                    sup_apply_desired(sup, NULL, 0);
                }
                revoked = rc == CTL_REVOKED;
            }
            if (ctl.registered) {
                if (heartbeat_once(&ctl, sup, replicas_dir, cfg.log_max_bytes, weights,
                                   &heartbeat_ms) == CTL_OK) {
                    snap.heartbeat_ok++;
                    snap.last_heartbeat_ms = util_now_ms();
                } else {
                    snap.heartbeat_failed++;
                }
            }
            /* A 401 just cleared our key: register again at once rather than an interval later. */
            next_hb = had_key && !ctl.registered ? util_now_ms() : util_now_ms() + heartbeat_ms;
        }
        sup_tick(sup);
        if (metrics) {
            if (nvml && util_now_ms() >= next_gpu_sample) {
                next_gpu_sample = util_now_ms() + AGENT_GPU_SAMPLE_MS;
                free(gpu_samples);
                if (inv_nvml_sample(nvml, &gpu_samples, &ngpu_samples) != 0) ngpu_samples = 0;
            }
            if (metrics_snapshot_gpus(&snap, gpu_samples, ngpu_samples) == 0 &&
                metrics_snapshot_replicas(&snap, sup) == 0)
                metrics_publish(metrics, &snap);
        }
        if (stop_signal) break;
        int64_t wait = next_hb - util_now_ms();
        nap(wait < AGENT_TICK_MS ? (wait > 0 ? wait : 0) : AGENT_TICK_MS);
    }
    if (cfg.stop_runtimes_on_exit)
        log_info("signal %d: stopping every runtime", (int)stop_signal);
    else
        log_info("signal %d: leaving the runtimes running for the next run of the agent to adopt",
                 (int)stop_signal);
    metrics_stop(metrics);
    metrics_snapshot_free(&snap);
    free(gpu_samples);
    inv_nvml_close(nvml);
    if (cfg.stop_runtimes_on_exit) {
        sup_stop_all(sup);
        cg_remove(cg.dir); /* empty now; the next run makes it again */
    }
    sup_free(sup);
    weights_free(weights);
    json_decref(reg);
    inv_free(&inv);
    curl_global_cleanup();
    log_info("stopped");
    return 0;
}

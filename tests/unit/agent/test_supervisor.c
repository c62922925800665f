/* The supervisor with real child processes: a small shell script stands in for orp-runtime. It
 * records its arguments and environment, then (depending on flag files the test creates) exits
 * with status 3, ignores SIGTERM, serves GET /health and POST /v1/completions (the completion
 * probe; 500 while the flag nogen exists) with python3, or just sleeps. We check the
 * command line and environment contract, readiness, stopping and reaping, restart with doubling
 * backoff, SIGKILL after the grace time, the start timeout, killing leftovers of a previous
 * run, and adopting them: a runtime that outlives one supervisor is taken over by the next when
 * the first desired list still wants its replica and epoch (also one that is not our child, whose
 * exit is noticed through /proc), while the others are killed. */
#include "tmpdir.h"

#include <errno.h>
#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "check.h"
#include "log.h"
#include "supervisor.h"
#include "util.h"

static char root[256], flags[320], script[320];

static const char script_text[] =
    "#!/bin/sh\n"
    "F='%s'\n"
    "while [ $# -gt 0 ]; do case \"$1\" in --port) PORT=\"$2\"; shift;; esac; shift; done\n"
    "echo \"$ORP_REPLICA_SECRET\" > \"$F/secret\"\n"
    "echo \"${CUDA_VISIBLE_DEVICES-unset}\" > \"$F/cvd\"\n"
    "echo \"$PORT\" > \"$F/port\"\n"
    "echo started >> \"$F/starts\"\n"
    "[ -e \"$F/crash\" ] && exit 3\n"
    "[ -e \"$F/ignore_term\" ] && trap '' TERM\n"
    "if [ -e \"$F/serve\" ]; then exec python3 -c '\n"
    "import http.server, os, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200 if self.path == \"/health\" else 404)\n"
    "        self.end_headers()\n"
    "    def do_POST(self):\n"
    "        self.rfile.read(int(self.headers.get(\"Content-Length\", 0)))\n"
    "        ok = self.path == \"/v1/completions\" and self.headers.get(\"Authorization\") == "
    "\"Bearer \" + os.environ[\"ORP_REPLICA_SECRET\"]\n"
    "        with open(sys.argv[2] + \"/probes\", \"a\") as f: "
    "f.write(str(self.headers.get(\"X-ORP-Request-Id\")) + \"\\n\")\n"
    "        self.send_response(500 if not ok or os.path.exists(sys.argv[2] + \"/nogen\") else "
    "200)\n"
    "        self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer((\"127.0.0.1\", int(sys.argv[1])), H).serve_forever()\n"
    "' \"$PORT\" \"$F\"; fi\n"
    "exec sleep 1000\n";

static void flag(const char *name, int on)
{
    char p[400];
    snprintf(p, sizeof p, "%s/%s", flags, name);
    if (on)
        write_text(p, "", "w");
    else
        unlink(p);
}

static char *read_flag_file(const char *name)
{
    char p[400];
    snprintf(p, sizeof p, "%s/%s", flags, name);
    char *s = util_read_file(p, NULL);
    if (s && strchr(s, '\n')) *strchr(s, '\n') = '\0';
    return s;
}

/* Waits until the child has written its files (it runs asynchronously after fork). */
static char *wait_flag_file(const char *name)
{
    for (int i = 0; i < 500; i++) {
        char *s = read_flag_file(name);
        if (s && s[0]) return s;
        free(s);
        util_sleep_ms(10);
    }
    fprintf(stderr, "flag file %s never appeared\n", name);
    exit(1);
}

static int wait_state(struct sup *s, struct sup_replica *r, enum sup_state st, int64_t timeout_ms)
{
    int64_t end = util_now_ms() + timeout_ms;
    while (util_now_ms() < end) {
        sup_tick(s);
        if (r->state == st) return 1;
        util_sleep_ms(10);
    }
    fprintf(stderr, "replica %s: state %s, wanted %s (reason %s)\n", r->spec.replica_id,
            sup_state_name(r->state), sup_state_name(st), r->reason);
    return 0;
}

static int process_gone(pid_t pid)
{
    return kill(pid, 0) != 0 && errno == ESRCH;
}

static struct sup_spec spec(const char *id, int64_t epoch, const char *kind, const char *devices)
{
    struct sup_spec sp;
    memset(&sp, 0, sizeof sp);
    snprintf(sp.replica_id, sizeof sp.replica_id, "%s", id);
    sp.epoch = epoch;
    snprintf(sp.model, sizeof sp.model, "demo-tiny");
    snprintf(sp.model_path, sizeof sp.model_path, "/models/demo tiny");
    snprintf(sp.served_name, sizeof sp.served_name, "ep-%s", id);
    snprintf(sp.devices, sizeof sp.devices, "%s", devices);
    snprintf(sp.device_kind, sizeof sp.device_kind, "%s", kind);
    snprintf(sp.secret, sizeof sp.secret, "s3cret-%s", id);
    sp.tp = 1;
    return sp;
}

static json_t *find_report(json_t *arr, const char *id)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (!strcmp(json_string_value(json_object_get(v, "replica_id")), id)) return v;
    }
    return NULL;
}

static void test_start_ready_stop(struct sup *s, int have_python)
{
    /* Our own environment carries a secret and GPUs the child must not inherit. */
    setenv("ORP_REPLICA_SECRET", "inherited", 1);
    setenv("CUDA_VISIBLE_DEVICES", "GPU-inherited", 1);
    flag("serve", have_python);
    struct sup_spec a = spec("rep-a", 3, "cpu", "CPU-h-0");
    sup_apply_desired(s, &a, 1);
    struct sup_replica *r = sup_find(s, "rep-a", 3);
    CHECK(r != NULL);
    CHECK_INT_EQ(r->state, SUP_STARTING);
    CHECK(r->pid > 0);
    CHECK(r->port >= s->cfg.port_base);
    pid_t pid = r->pid;
    CHECK_INT_EQ(getpgid(pid), pid); /* its own process group */

    char *port = wait_flag_file("port"); /* written after the other two */
    char *sec = read_flag_file("secret"), *cvd = read_flag_file("cvd");
    CHECK_STR_EQ(sec, "s3cret-rep-a");
    CHECK_STR_EQ(cvd, ""); /* a CPU replica sees no GPU */
    CHECK_INT_EQ(atoi(port), r->port);
    free(sec);
    free(cvd);
    free(port);

    /* The command line, as /proc shows it: the contract's, and no secret on it. */
    char cmdline_path[64];
    snprintf(cmdline_path, sizeof cmdline_path, "/proc/%d/cmdline", (int)pid);
    size_t len;
    char *cl = util_read_file(cmdline_path, &len);
    CHECK(cl != NULL);
    for (size_t i = 0; i + 1 < len; i++)
        if (cl[i] == '\0') cl[i] = ' ';
    CHECK(strstr(cl, "s3cret") == NULL);
    if (!have_python) { /* still the shell running our script */
        char want[PATH_MAX + 256];
        snprintf(want, sizeof want,
                 "serve --model /models/demo tiny --port %d --host 127.0.0.1 --name ep-rep-a "
                 "--usage-log %s/usage.jsonl",
                 r->port, r->dir);
        if (!strstr(cl, want)) {
            fprintf(stderr, "cmdline '%s' lacks '%s'\n", cl, want);
            exit(1);
        }
    }
    free(cl);

    char pidfile[PATH_MAX + 8];
    snprintf(pidfile, sizeof pidfile, "%s/pid", r->dir);
    char *pf = util_read_file(pidfile, NULL);
    CHECK(pf != NULL);
    CHECK_INT_EQ(atoi(pf), pid);
    free(pf);

    if (have_python) {
        CHECK(wait_state(s, r, SUP_READY, 10000));
        CHECK_STR_EQ(r->reason, "completion probe passed");
        char *probes = read_flag_file("probes");
        CHECK(probes && !strncmp(probes, "probe-", 6)); /* its own request id: never billed */
        free(probes);
    } else {
        fprintf(stderr, "python3 not found: readiness not tested\n");
    }

    json_t *rep = sup_report(s);
    json_t *ra = find_report(rep, "rep-a");
    CHECK(ra != NULL);
    CHECK_STR_EQ(json_string_value(json_object_get(ra, "state")),
                 have_python ? "ready" : "starting");
    CHECK_INT_EQ(json_integer_value(json_object_get(ra, "epoch")), 3);
    CHECK_INT_EQ(json_integer_value(json_object_get(ra, "pid")), pid);
    CHECK_INT_EQ(json_integer_value(json_object_get(ra, "port")), r->port);
    CHECK_INT_EQ(json_integer_value(json_object_get(ra, "restarts")), 0);
    json_decref(rep);

    /* No longer desired: SIGTERM, reaped, reported "stopped" once, then forgotten. */
    sup_apply_desired(s, NULL, 0);
    CHECK_INT_EQ(r->state, SUP_STOPPING);
    rep = sup_report(s);
    CHECK(find_report(rep, "rep-a") == NULL); /* it still holds its devices */
    json_decref(rep);
    CHECK(wait_state(s, r, SUP_STOPPED, 3000));
    CHECK(process_gone(pid)); /* reaped, not a zombie */
    CHECK(access(pidfile, F_OK) != 0);
    rep = sup_report(s);
    ra = find_report(rep, "rep-a");
    CHECK(ra != NULL);
    CHECK_STR_EQ(json_string_value(json_object_get(ra, "state")), "stopped");
    CHECK_INT_EQ(json_integer_value(json_object_get(ra, "pid")), 0);
    json_decref(rep);
    sup_report_delivered(s);
    CHECK(sup_find(s, "rep-a", 3) == NULL);
    rep = sup_report(s);
    CHECK_INT_EQ(json_array_size(rep), 0);
    json_decref(rep);
    flag("serve", 0);
    unsetenv("ORP_REPLICA_SECRET");
    unsetenv("CUDA_VISIBLE_DEVICES");
}

static void test_restart_backoff_and_kill(struct sup *s)
{
    flag("crash", 1);
    struct sup_spec b = spec("rep-b", 1, "gpu", "GPU-aaa,GPU-bbb");
    sup_apply_desired(s, &b, 1);
    struct sup_replica *r = sup_find(s, "rep-b", 1);
    CHECK(r != NULL);
    CHECK(wait_state(s, r, SUP_BACKOFF, 3000));
    CHECK(!strncmp(r->reason, "exit 3 during start", 19));
    CHECK_INT_EQ(r->restarts, 0);
    CHECK_INT_EQ(r->pid, 0);
    char *cvd = read_flag_file("cvd");
    CHECK_STR_EQ(cvd, "GPU-aaa,GPU-bbb");
    free(cvd);
    json_t *rep = sup_report(s);
    CHECK_STR_EQ(json_string_value(json_object_get(find_report(rep, "rep-b"), "state")), "failed");
    CHECK_STR_EQ(json_string_value(json_object_get(find_report(rep, "rep-b"), "reason")),
                 r->reason);
    json_decref(rep);

    /* Backoff 200 ms, then 400 ms: measure the gaps between failure and the next start. */
    int64_t gaps[2];
    for (int i = 0; i < 2; i++) {
        int64_t failed_at = util_now_ms();
        CHECK(wait_state(s, r, SUP_STARTING, 3000));
        gaps[i] = util_now_ms() - failed_at;
        CHECK_INT_EQ(r->restarts, i + 1);
        CHECK(wait_state(s, r, SUP_BACKOFF, 3000));
    }
    fprintf(stderr, "restart gaps: %lld ms, %lld ms\n", (long long)gaps[0], (long long)gaps[1]);
    CHECK(gaps[0] >= 150 && gaps[0] < 1500);
    CHECK(gaps[1] >= 350 && gaps[1] < 2000);
    CHECK(gaps[1] > gaps[0]);
    CHECK_INT_EQ(r->backoff_ms, 800); /* doubled again, and capped at backoff_max_ms */

    /* Healthy again, but deaf to SIGTERM: the stop needs the SIGKILL after the grace time. */
    flag("crash", 0);
    flag("ignore_term", 1);
    CHECK(wait_state(s, r, SUP_STARTING, 3000));
    pid_t pid = r->pid;
    util_sleep_ms(300); /* let the script install its trap */
    /* Placed again (new epoch) on the same GPUs: the new runtime waits until the old one, which
     * needs the SIGKILL, is gone. */
    flag("ignore_term", 0);
    struct sup_spec b2 = spec("rep-b", 2, "gpu", "GPU-bbb");
    int64_t t0 = util_now_ms();
    sup_apply_desired(s, &b2, 1);
    struct sup_replica *r2 = sup_find(s, "rep-b", 2);
    CHECK(r2 != NULL);
    CHECK_INT_EQ(r->state, SUP_STOPPING);
    CHECK_INT_EQ(r2->state, SUP_NEW);
    CHECK_INT_EQ(r2->pid, 0);
    CHECK(wait_state(s, r, SUP_STOPPED, 5000));
    int64_t took = util_now_ms() - t0;
    CHECK(took >= 450);
    CHECK_STR_EQ(r->reason, "signal 9 (SIGKILL)");
    CHECK(process_gone(pid));
    CHECK(wait_state(s, r2, SUP_STARTING, 1000));
    json_t *rep2 = sup_report(s);
    CHECK_STR_EQ(json_string_value(json_object_get(find_report(rep2, "rep-b"), "state")),
                 "stopped");
    json_decref(rep2);
    sup_report_delivered(s);
    CHECK(sup_find(s, "rep-b", 1) == NULL);
    CHECK(sup_find(s, "rep-b", 2) == r2);
    sup_apply_desired(s, NULL, 0);
    CHECK(wait_state(s, r2, SUP_STOPPED, 3000));
    json_decref(sup_report(s));
    sup_report_delivered(s);
}

static void test_start_timeout(struct sup *s)
{
    int64_t saved = s->cfg.start_timeout_ms;
    s->cfg.start_timeout_ms = 300;
    struct sup_spec c = spec("rep-c", 9, "cpu", "CPU-h-1");
    sup_apply_desired(s, &c, 1);
    struct sup_replica *r = sup_find(s, "rep-c", 9);
    pid_t pid = r->pid;
    CHECK(wait_state(s, r, SUP_BACKOFF, 3000));
    CHECK(strstr(r->reason, "not ready within") != NULL);
    CHECK(strstr(r->reason, "signal 9 (SIGKILL)") != NULL);
    CHECK(process_gone(pid));
    s->cfg.start_timeout_ms = saved;
    CHECK(wait_state(s, r, SUP_STARTING, 3000)); /* and started again */
    sup_stop_all(s);
    CHECK_INT_EQ(r->state, SUP_STOPPED);
    CHECK_INT_EQ(r->pid, 0);
}

static void test_leftovers(const struct sup_config *cfg)
{
    /* A first "agent" starts a runtime and dies without stopping it. */
    struct sup *s1 = sup_new(cfg);
    struct sup_spec d = spec("rep-d", 2, "cpu", "CPU-h-0");
    sup_apply_desired(s1, &d, 1);
    pid_t pid = sup_find(s1, "rep-d", 2)->pid;
    CHECK(pid > 0);
    char pidfile[PATH_MAX + 8];
    snprintf(pidfile, sizeof pidfile, "%s/pid", sup_find(s1, "rep-d", 2)->dir);
    sup_free(s1);
    CHECK(kill(pid, 0) == 0);
    /* A stale pid file naming a process that is not ours (pid 1, wrong start time) is ignored. */
    char stale_dir[400], stale[420];
    snprintf(stale_dir, sizeof stale_dir, "%s/replicas/rep-old-1", root);
    CHECK(util_mkdirs(stale_dir, 0755) == 0);
    snprintf(stale, sizeof stale, "%s/pid", stale_dir);
    write_text(stale, "1 12345\n", "w");

    /* The next one kills it at start. */
    struct sup *s2 = sup_new(cfg);
    sup_kill_leftovers(s2);
    CHECK(process_gone(pid));
    CHECK(access(pidfile, F_OK) != 0);
    CHECK(access(stale, F_OK) != 0);
    CHECK(kill(1, 0) == 0);
    sup_free(s2);
}

/* A first "agent" runs two replicas and goes away without stopping them; the next adopts the one
 * still desired at the same epoch, kills the other, starts a new one, and stops the adopted one
 * when it is no longer desired. */
static void test_adopt_child(const struct sup_config *cfg, int have_python)
{
    flag("serve", have_python);
    struct sup *s1 = sup_new(cfg);
    struct sup_spec first[2] = {spec("rep-e", 5, "cpu", "CPU-h-0"),
                                spec("rep-f", 1, "cpu", "CPU-h-1")};
    sup_apply_desired(s1, first, 2);
    struct sup_replica *e1 = sup_find(s1, "rep-e", 5), *f1 = sup_find(s1, "rep-f", 1);
    if (have_python) CHECK(wait_state(s1, e1, SUP_READY, 10000));
    pid_t pe = e1->pid, pf = f1->pid;
    int port_e = e1->port;
    char pidfile_f[PATH_MAX + 8];
    snprintf(pidfile_f, sizeof pidfile_f, "%s/pid", f1->dir);
    CHECK(pe > 0 && pf > 0);
    sup_free(s1);

    struct sup *s2 = sup_new(cfg);
    sup_find_leftovers(s2);
    CHECK(kill(pe, 0) == 0 && kill(pf, 0) == 0); /* finding them touches nothing */
    struct sup_spec second[2] = {spec("rep-e", 5, "cpu", "CPU-h-0"),
                                 spec("rep-g", 1, "cpu", "CPU-h-1")};
    sup_apply_desired(s2, second, 2);
    struct sup_replica *e2 = sup_find(s2, "rep-e", 5), *g2 = sup_find(s2, "rep-g", 1);
    CHECK(e2 != NULL && g2 != NULL);
    CHECK_INT_EQ(e2->pid, pe);
    CHECK_INT_EQ(e2->port, port_e);
    CHECK_INT_EQ(e2->adopted, 1);
    CHECK_INT_EQ(e2->state, SUP_STARTING);
    CHECK(strstr(e2->reason, "adopted") != NULL);
    CHECK(process_gone(pf)); /* not desired: killed before anything was started */
    CHECK(access(pidfile_f, F_OK) != 0);
    CHECK_INT_EQ(g2->state, SUP_STARTING); /* CPU-h-1 was free again for the new one */
    CHECK(g2->pid > 0 && g2->pid != pf && g2->port != port_e);
    if (have_python) {
        CHECK(wait_state(s2, e2, SUP_READY, 5000));
        CHECK_INT_EQ(e2->pid, pe);
        CHECK_INT_EQ(e2->restarts, 0);
    }
    sup_apply_desired(s2, &second[1], 1);
    CHECK_INT_EQ(e2->state, SUP_STOPPING);
    CHECK(wait_state(s2, e2, SUP_STOPPED, 3000));
    CHECK(process_gone(pe));
    sup_stop_all(s2);
    sup_free(s2);
}

/* The start time of pid from /proc (field 22 of stat). */
static unsigned long long proc_starttime(pid_t pid)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    char *txt = util_read_file(p, NULL);
    CHECK(txt != NULL);
    char *f = strrchr(txt, ')') + 2;
    for (int field = 3; field < 22; field++)
        f = strchr(f, ' ') + 1;
    unsigned long long st = strtoull(f, NULL, 10);
    free(txt);
    return st;
}

/* A runtime that is not our child (its parent exited; we cannot wait for it): adopted all the
 * same, and when it dies its exit is noticed through /proc and it is started again. */
static void test_adopt_stranger(const struct sup_config *cfg)
{
    flag("serve", 0);
    char dir[400], pidfile[420], port_s[16];
    snprintf(dir, sizeof dir, "%s/replicas/rep-h-2", root);
    CHECK(util_mkdirs(dir, 0755) == 0);
    int port = cfg->port_base + 700;
    snprintf(port_s, sizeof port_s, "%d", port);
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t mid = fork();
    CHECK(mid >= 0);
    if (mid == 0) {
        pid_t g = fork();
        if (g == 0) {
            setpgid(0, 0);
            execl(script, script, "serve", "--port", port_s, (char *)NULL);
            _exit(127);
        }
        ssize_t w = write(fds[1], &g, sizeof g);
        _exit(w == sizeof g ? 0 : 1);
    }
    pid_t g = 0;
    CHECK(read(fds[0], &g, sizeof g) == sizeof g);
    close(fds[0]);
    close(fds[1]);
    int status;
    CHECK_INT_EQ(waitpid(mid, &status, 0), mid);
    CHECK(g > 0);
    char txt[96];
    snprintf(txt, sizeof txt, "%d %llu %d\n", (int)g, proc_starttime(g), port);
    snprintf(pidfile, sizeof pidfile, "%s/pid", dir);
    write_text(pidfile, txt, "w");

    struct sup *s = sup_new(cfg);
    sup_find_leftovers(s);
    struct sup_spec h = spec("rep-h", 2, "cpu", "CPU-h-3");
    sup_apply_desired(s, &h, 1);
    struct sup_replica *r = sup_find(s, "rep-h", 2);
    CHECK_INT_EQ(r->pid, g);
    CHECK_INT_EQ(r->adopted, 1);
    CHECK_INT_EQ(r->state, SUP_STARTING);
    sup_tick(s);
    CHECK_INT_EQ(r->state, SUP_STARTING); /* ECHILD, but /proc says it lives */
    CHECK(kill(g, SIGKILL) == 0);
    CHECK(wait_state(s, r, SUP_BACKOFF, 3000));
    CHECK(strstr(r->reason, "status unknown") != NULL);
    CHECK_INT_EQ(r->pid, 0);
    CHECK(access(pidfile, F_OK) != 0);
    CHECK(wait_state(s, r, SUP_STARTING, 3000)); /* restarted, now as our own child */
    CHECK(r->pid > 0 && r->pid != g && !r->adopted);
    sup_stop_all(s);
    CHECK_INT_EQ(r->state, SUP_STOPPED);
    sup_free(s);
}

/* A replica that answers /health but cannot generate: its completion probes fail, it is no longer
 * ready (so no longer routed or billed), it is killed and restarted after unready_restart_ms, and
 * it is ready again once generation works. */
static void test_completion_probe(struct sup *s)
{
    flag("serve", 1);
    flag("nogen", 0);
    struct sup_spec a = spec("rep-p", 9, "cpu", "CPU-h-0");
    sup_apply_desired(s, &a, 1);
    struct sup_replica *r = sup_find(s, "rep-p", 9);
    CHECK(wait_state(s, r, SUP_READY, 10000));
    pid_t pid = r->pid;
    flag("nogen", 1);
    CHECK(wait_state(s, r, SUP_STARTING, 5000));
    CHECK_STR_EQ(r->reason, "completion probe failed 2 times (HTTP 500)");
    CHECK(wait_state(s, r, SUP_BACKOFF, 5000));
    CHECK(strstr(r->reason, "not ready again within 1.0 s") != NULL);
    CHECK(process_gone(pid));
    flag("nogen", 0);
    CHECK(wait_state(s, r, SUP_READY, 10000));
    CHECK_INT_EQ(r->restarts, 1);
    CHECK(r->pid != pid);
    sup_apply_desired(s, NULL, 0);
    CHECK(wait_state(s, r, SUP_STOPPED, 3000));
    json_decref(sup_report(s));
    sup_report_delivered(s);
    flag("serve", 0); /* the tests that follow need a runtime that never becomes ready */
}

int main(void)
{
    log_init("test_agent_supervisor", "info");
    curl_global_init(CURL_GLOBAL_DEFAULT); /* before the probe threads use libcurl */
    CHECK(tmpdir_make(root, sizeof root));
    snprintf(flags, sizeof flags, "%s/flags", root);
    snprintf(script, sizeof script, "%s/fake-runtime", root);
    CHECK(mkdir(flags, 0755) == 0);
    char text[sizeof script_text + 512];
    snprintf(text, sizeof text, script_text, flags);
    write_text(script, text, "w");
    CHECK(chmod(script, 0755) == 0);
    int have_python = system("python3 -c 'import http.server' >/dev/null 2>&1") == 0;

    struct sup_config cfg;
    sup_config_defaults(&cfg);
    cfg.runtime_bin = script;
    cfg.state_dir = root;
    cfg.port_base = 21000 + (int)(getpid() % 5000);
    cfg.backoff_initial_ms = 200;
    cfg.backoff_max_ms = 800;
    cfg.stop_grace_ms = 500;
    cfg.probe_interval_ms = 50;
    cfg.probe_timeout_ms = 500;
    cfg.completion_interval_ms = 100;
    cfg.unready_restart_ms = 1000;
    struct sup *s = sup_new(&cfg);
    CHECK(s != NULL);

    test_start_ready_stop(s, have_python);
    if (have_python) test_completion_probe(s);
    test_restart_backoff_and_kill(s);
    test_start_timeout(s);
    sup_free(s);
    test_leftovers(&cfg);
    test_adopt_child(&cfg, have_python);
    test_adopt_stranger(&cfg);

    tmpdir_remove(root);
    printf("ok\n");
    return 0;
}

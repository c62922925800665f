/* Crash-loop reasons: the text an operator or customer reads when a runtime keeps dying. We check
 * the exit causes (status, signals, the out-of-memory hint only when the agent did not kill it),
 * the sanitizing of log text to printable UTF-8, the bounded tail of runtime.log without
 * timestamps, the count of exits within the two-minute window, and then the same with a real
 * child: a fake runtime that prints the runtime's load error for a broken config.json and exits 1,
 * supervised until its reason says "crash loop". */
#include "tmpdir.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "check.h"
#include "log.h"
#include "supervisor.h"
#include "util.h"

static char root[256];

#define LOAD_ERROR                                                                                 \
    "ERROR orp-runtime cannot load the model: /models/broken/config.json: missing field "          \
    "\"hidden_size\" (server.c:1086)"

static void test_exit_cause(void)
{
    char b[128];
    sup_exit_cause(CLD_EXITED, 1, 0, b, sizeof b);
    CHECK_STR_EQ(b, "exit 1");
    sup_exit_cause(CLD_EXITED, 137, 0, b, sizeof b);
    CHECK_STR_EQ(b, "exit 137 (killed: out of memory?)");
    sup_exit_cause(CLD_KILLED, SIGKILL, 0, b, sizeof b);
    CHECK_STR_EQ(b, "signal 9 (killed: out of memory?)");
    /* Our own SIGKILL (a stop, a start timeout) is no mystery. */
    sup_exit_cause(CLD_KILLED, SIGKILL, 1, b, sizeof b);
    CHECK_STR_EQ(b, "signal 9 (SIGKILL)");
    sup_exit_cause(CLD_DUMPED, SIGSEGV, 0, b, sizeof b);
    CHECK_STR_EQ(b, "signal 11 (SIGSEGV: crashed, core dumped)");
    sup_exit_cause(CLD_KILLED, SIGUSR2, 0, b, sizeof b);
    CHECK_STR_EQ(b, "signal 12");
    sup_exit_cause(CLD_DUMPED, SIGQUIT, 0, b, sizeof b);
    CHECK_STR_EQ(b, "signal 3 (core dumped)");
}

static void test_sanitize(void)
{
    char b[64];
    /* Valid multi-byte characters stay; controls, DEL and C1 controls become '?', tab a space. */
    const char in[] = "caf\xc3\xa9 \xf0\x9f\x94\xa5\tx\x01y\x7f\xc2\x85z";
    CHECK_INT_EQ(sup_sanitize(in, sizeof in - 1, b, sizeof b),
                 strlen("caf\xc3\xa9 \xf0\x9f\x94\xa5 x?y??z"));
    CHECK_STR_EQ(b, "caf\xc3\xa9 \xf0\x9f\x94\xa5 x?y??z");
    /* Not UTF-8: a lone continuation byte, an overlong '/', a surrogate, a cut sequence. */
    const char bad[] = "a\x80"
                       "b\xc0\xaf"
                       "c\xed\xa0\x80"
                       "d\xe2\x82";
    sup_sanitize(bad, sizeof bad - 1, b, sizeof b);
    CHECK_STR_EQ(b, "a?b??c???d??");
    /* A NUL inside is a control character, not the end. */
    sup_sanitize("a\0b", 3, b, sizeof b);
    CHECK_STR_EQ(b, "a?b");
    /* Never a split character at the bound. */
    CHECK_INT_EQ(sup_sanitize("ab\xc3\xa9", 4, b, 4), 2);
    CHECK_STR_EQ(b, "ab");
}

static void test_log_tail(void)
{
    char path[400], b[SUP_LOG_TAIL_MAX + 4];
    snprintf(path, sizeof path, "%s/tail.log", root);
    CHECK_INT_EQ(sup_log_tail(path, 0, SUP_LOG_TAIL_MAX, b, sizeof b), 0); /* missing */
    CHECK_STR_EQ(b, "");
    write_text(path,
               "2025-01-31T12:00:00.001Z INFO  orp-runtime loading /models/broken\n"
               "2025-01-31T12:00:00.002Z " LOAD_ERROR "\n\n",
               "w");
    sup_log_tail(path, 0, SUP_LOG_TAIL_MAX, b, sizeof b);
    CHECK_STR_EQ(b, "INFO  orp-runtime loading /models/broken | " LOAD_ERROR);

    /* Many lines: only the newest that fit in the bound, oldest first. */
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    for (int i = 0; i < 100; i++)
        fprintf(f, "2025-01-31T12:00:00.%03dZ INFO  line %d of a noisy start\n", i, i);
    fprintf(f, "not a log line \x1b[31mred\x1b[0m \xff\n");
    fclose(f);
    size_t n = sup_log_tail(path, 0, SUP_LOG_TAIL_MAX, b, sizeof b);
    fprintf(stderr, "tail (%zu bytes): %s\n", n, b);
    CHECK(n <= SUP_LOG_TAIL_MAX);
    CHECK_INT_EQ(strlen(b), n);
    CHECK(strstr(b, "line 99 of a noisy start | not a log line ?[31mred?[0m ?") != NULL);
    CHECK(strstr(b, "line 90 ") == NULL);
    CHECK(strstr(b, "2025-") == NULL);
    /* Only what was written since an offset. */
    struct stat st;
    CHECK(stat(path, &st) == 0);
    f = fopen(path, "a");
    CHECK(f != NULL);
    fprintf(f, "2025-01-31T12:00:01.000Z " LOAD_ERROR "\n");
    fclose(f);
    sup_log_tail(path, st.st_size, SUP_LOG_TAIL_MAX, b, sizeof b);
    CHECK_STR_EQ(b, LOAD_ERROR);
    CHECK_INT_EQ(sup_log_tail(path, st.st_size + 1000, SUP_LOG_TAIL_MAX, b, sizeof b) > 0, 1);

    /* One line longer than the bound: its start is kept, the cut is marked. */
    f = fopen(path, "w");
    CHECK(f != NULL);
    fprintf(f, "2025-01-31T12:00:00.000Z ERROR ");
    for (int i = 0; i < 200; i++)
        fprintf(f, "\xc3\xa9"); /* 400 bytes of 'é': the cut must not split one */
    fprintf(f, "\n");
    fclose(f);
    n = sup_log_tail(path, 0, SUP_LOG_TAIL_MAX, b, sizeof b);
    CHECK(n <= SUP_LOG_TAIL_MAX);
    CHECK(!strncmp(b, "ERROR \xc3\xa9", 8));
    CHECK(!strcmp(b + n - 3, "..."));
    CHECK((n - 3 - 6) % 2 == 0); /* whole characters before the dots */
}

static void test_exit_reason(void)
{
    struct sup_replica r;
    memset(&r, 0, sizeof r);
    snprintf(r.dir, sizeof r.dir, "%s/rep", root);
    CHECK(util_mkdirs(r.dir, 0755) == 0);
    char log_path[PATH_MAX + 16];
    snprintf(log_path, sizeof log_path, "%s/runtime.log", r.dir);
    write_text(log_path, "2025-01-31T12:00:00.002Z " LOAD_ERROR "\n", "w");
    char b[sizeof r.reason];
    int64_t t = 1000000;
    sup_exit_reason(&r, CLD_EXITED, 1, 1, t, b, sizeof b);
    CHECK_STR_EQ(b, "exit 1 during start; runtime.log: " LOAD_ERROR);
    sup_exit_reason(&r, CLD_EXITED, 1, 1, t + 1000, b, sizeof b);
    CHECK_STR_EQ(b, "exit 1 during start; runtime.log: " LOAD_ERROR);
    sup_exit_reason(&r, CLD_EXITED, 1, 1, t + 3000, b, sizeof b);
    CHECK_STR_EQ(b, "crash loop: exit 1 3 times in 2 min; runtime.log: " LOAD_ERROR);
    sup_exit_reason(&r, CLD_EXITED, 1, 1, t + 7000, b, sizeof b);
    CHECK_STR_EQ(b, "crash loop: exit 1 4 times in 2 min; runtime.log: " LOAD_ERROR);
    /* Exits older than the window no longer count. */
    sup_exit_reason(&r, CLD_EXITED, 1, 1, t + 7000 + SUP_CRASH_WINDOW_MS, b, sizeof b);
    CHECK_STR_EQ(b, "exit 1 during start; runtime.log: " LOAD_ERROR);

    /* A ready runtime killed by the kernel, three times: no log quoted (it served requests). */
    struct sup_replica q;
    memset(&q, 0, sizeof q);
    snprintf(q.dir, sizeof q.dir, "%s/rep", root);
    for (int i = 0; i < 3; i++)
        sup_exit_reason(&q, CLD_EXITED, 137, 0, t + i * 30000, b, sizeof b);
    CHECK_STR_EQ(b, "crash loop: exit 137 (killed: out of memory?) 3 times in 2 min");
    /* The ring keeps the newest SUP_EXIT_HISTORY exits. */
    for (int i = 0; i < 40; i++)
        sup_exit_reason(&q, CLD_KILLED, SIGSEGV, 0, t + 200000 + i, b, sizeof b);
    CHECK_STR_EQ(b, "crash loop: signal 11 (SIGSEGV: crashed) 16 times in 2 min");

    /* Our own kill at the start timeout says so first. */
    struct sup_replica k;
    memset(&k, 0, sizeof k);
    snprintf(k.dir, sizeof k.dir, "%s/none", root);
    snprintf(k.kill_reason, sizeof k.kill_reason, "not ready within 300.0 s");
    sup_exit_reason(&k, CLD_KILLED, SIGKILL, 1, t, b, sizeof b);
    CHECK_STR_EQ(b, "not ready within 300.0 s: signal 9 (SIGKILL) during start");
}

/* The supervisor with a runtime that fails to load, as orp-runtime does with a broken
 * config.json: its reason turns into a crash loop naming the file and the field. */
static void test_real_crash_loop(void)
{
    char script[400];
    snprintf(script, sizeof script, "%s/broken-runtime", root);
    write_text(script,
               "#!/bin/sh\n"
               "echo \"2025-01-31T12:00:00.000Z INFO  orp-runtime loading\" >&2\n"
               "echo '2025-01-31T12:00:00.001Z " LOAD_ERROR "' >&2\n"
               "exit 1\n",
               "w");
    CHECK(chmod(script, 0755) == 0);
    struct sup_config cfg;
    sup_config_defaults(&cfg);
    cfg.runtime_bin = script;
    cfg.state_dir = root;
    cfg.port_base = 26000 + (int)(getpid() % 5000);
    cfg.backoff_initial_ms = 50;
    cfg.backoff_max_ms = 200;
    struct sup *s = sup_new(&cfg);
    CHECK(s != NULL);
    struct sup_spec sp;
    memset(&sp, 0, sizeof sp);
    snprintf(sp.replica_id, sizeof sp.replica_id, "rep-loop");
    sp.epoch = 4;
    snprintf(sp.model_path, sizeof sp.model_path, "/models/broken");
    snprintf(sp.served_name, sizeof sp.served_name, "broken");
    snprintf(sp.device_kind, sizeof sp.device_kind, "cpu");
    snprintf(sp.devices, sizeof sp.devices, "CPU-h-0");
    snprintf(sp.secret, sizeof sp.secret, "s");
    sup_apply_desired(s, &sp, 1);
    struct sup_replica *r = sup_find(s, "rep-loop", 4);
    CHECK(r != NULL);
    int64_t end = util_now_ms() + 5000;
    while (util_now_ms() < end && !(r->state == SUP_BACKOFF && r->nexits >= 3)) {
        sup_tick(s);
        util_sleep_ms(10);
    }
    fprintf(stderr, "reason: %s\n", r->reason);
    CHECK_INT_EQ(r->state, SUP_BACKOFF);
    /* Only what the last attempt wrote, though runtime.log holds all three. */
    CHECK_STR_EQ(r->reason, "crash loop: exit 1 3 times in 2 min; runtime.log: INFO  orp-runtime "
                            "loading | " LOAD_ERROR);
    json_t *rep = sup_report(s);
    CHECK_STR_EQ(json_string_value(json_object_get(json_array_get(rep, 0), "state")), "failed");
    CHECK_STR_EQ(json_string_value(json_object_get(json_array_get(rep, 0), "reason")), r->reason);
    json_decref(rep);
    /* While the next attempt loads, the reason still says why the last one failed. */
    end = util_now_ms() + 2000;
    while (util_now_ms() < end && r->state != SUP_STARTING) {
        sup_tick(s);
        util_sleep_ms(5);
    }
    CHECK_INT_EQ(r->state, SUP_STARTING);
    CHECK(strstr(r->reason, "; last: crash loop: exit 1 3 times in 2 min") != NULL);
    sup_stop_all(s);
    sup_free(s);
}

int main(void)
{
    log_init("test_agent_crashloop", "info");
    CHECK(tmpdir_make(root, sizeof root));
    test_exit_cause();
    test_sanitize();
    test_log_tail();
    test_exit_reason();
    test_real_crash_loop();
    tmpdir_remove(root);
    printf("ok\n");
    return 0;
}

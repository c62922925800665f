/* The real orp-agent against a fake controller (our httpd on a free loopback port), with the fake
 * NVML as its GPUs: it registers with the enrollment token, heartbeats, and serves /metrics from
 * its loop's snapshot. Then the test makes GPU 0 report an uncorrected ECC error (the fake reads
 * FAKE_NVML_STATE at every call): at the next inventory (--inventory-interval-s 1) the agent
 * registers again, with its host key rather than the token, listing GPU 0 unhealthy, and goes on
 * heartbeating with the rotated key. An unchanged inventory registers nothing. SIGTERM ends it
 * with status 0. The heartbeats carry the fake's GPU readings ("gpus"). */
#include "tmpdir.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "check.h"
#include "httpc.h"
#include "httpd.h"
#include "log.h"
#include "util.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int registrations;
static char reg_bearer[8][64]; /* the credential each registration presented */
static json_t *reg_gpu0[8];    /* devices[0] of each registration */
static char current_key[64];
static int heartbeats_current_key; /* heartbeats with the key of the latest registration */
static json_t *last_gpus;          /* the latest heartbeat's "gpus" */

static void on_register(struct httpd_req *req)
{
    const char *h = httpd_header(req, "Authorization");
    json_t *b = json_loadb(req->body.data, req->body.len, 0, NULL);
    CHECK(b != NULL);
    pthread_mutex_lock(&mu);
    CHECK(registrations < 8);
    snprintf(reg_bearer[registrations], sizeof reg_bearer[0], "%s", h ? h : "");
    reg_gpu0[registrations] = json_incref(json_array_get(json_object_get(b, "devices"), 0));
    registrations++;
    snprintf(current_key, sizeof current_key, "key-%d", registrations);
    heartbeats_current_key = 0;
    json_t *r = json_pack("{s:s, s:s}", "host_id", "h-1", "host_key", current_key);
    pthread_mutex_unlock(&mu);
    json_decref(b);
    httpd_reply_json(req, 200, r);
}

static void on_heartbeat(struct httpd_req *req)
{
    const char *h = httpd_header(req, "Authorization");
    char want[80];
    pthread_mutex_lock(&mu);
    snprintf(want, sizeof want, "Bearer %s", current_key);
    int ok = h && !strcmp(h, want);
    if (ok) heartbeats_current_key++;
    json_t *b = json_loadb(req->body.data, req->body.len, 0, NULL);
    json_t *g = json_object_get(b, "gpus");
    if (g) {
        json_decref(last_gpus);
        last_gpus = json_incref(g);
    }
    json_decref(b);
    pthread_mutex_unlock(&mu);
    if (!ok) {
        httpd_error(req, 401, "unauthorized", NULL, "unknown host key");
        return;
    }
    static const char reply[] = "{\"desired\":[],\"usage_acked\":0}";
    httpd_reply_raw(req, 200, "application/json", reply, sizeof reply - 1);
}

static const struct httpd_route routes[] = {
    {"POST", "/agent/v1/register", on_register},
    {"POST", "/agent/v1/heartbeat", on_heartbeat},
};

/* Waits up to 15 s for at least `regs` registrations and `hbs` heartbeats after the latest. */
static int wait_for(int regs, int hbs)
{
    for (int i = 0; i < 1500; i++) {
        pthread_mutex_lock(&mu);
        int ok = registrations >= regs && heartbeats_current_key >= hbs;
        pthread_mutex_unlock(&mu);
        if (ok) return 1;
        util_sleep_ms(10);
    }
    return 0;
}

/* A port nobody listens on right now (the kernel's pick for port 0). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
          getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    close(fd);
    return ntohs(sa.sin_port);
}

int main(void)
{
    log_init("test_agent_reregister", "warn");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char root[256], state_dir[300], nvml_state[300];
    CHECK(tmpdir_make(root, sizeof root));
    snprintf(state_dir, sizeof state_dir, "%s/state", root);
    snprintf(nvml_state, sizeof nvml_state, "%s/nvml-state", root);
    write_text(nvml_state, "ecc0=0\n", "w");
    setenv("FAKE_NVML_STATE", nvml_state, 1);

    struct httpd_config hc = {.name = "fake-controller",
                              .host = "127.0.0.1",
                              .thread_per_connection = 1,
                              .conn_limit = 16,
                              .conn_timeout_s = 10,
                              .max_body = 1 << 20,
                              .routes = routes,
                              .nroutes = sizeof routes / sizeof routes[0]};
    char err[256];
    struct httpd_server *srv = httpd_start(&hc, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "httpd_start: %s\n", err);
        return 1;
    }
    char url[64], mport[16];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", httpd_port(srv));
    int metrics_port = free_port();
    snprintf(mport, sizeof mport, "%d", metrics_port);

    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        execl(ORP_AGENT_BIN, ORP_AGENT_BIN, "--controller", url, "--token", "enroll-tok", "--name",
              "host-a", "--state-dir", state_dir, "--nvml-lib", FAKE_NVML_PATH,
              "--inventory-interval-s", "1", "--heartbeat-ms", "200", "--runtime-bin", "/bin/false",
              "--metrics-port", mport, "--log-level", "warn", (char *)NULL);
        _exit(127);
    }

    CHECK(wait_for(1, 3));
    pthread_mutex_lock(&mu);
    CHECK_STR_EQ(reg_bearer[0], "Bearer enroll-tok");
    CHECK_STR_EQ(json_string_value(json_object_get(reg_gpu0[0], "uuid")), "GPU-fake-0");
    CHECK(json_is_true(json_object_get(reg_gpu0[0], "healthy")));
    /* The heartbeats carry the fake's readings: what NVML cannot give is left out. */
    CHECK(json_array_size(last_gpus) == 3);
    json_t *g0 = json_array_get(last_gpus, 0), *g1 = json_array_get(last_gpus, 1),
           *g2 = json_array_get(last_gpus, 2);
    CHECK_STR_EQ(json_string_value(json_object_get(g0, "uuid")), "GPU-fake-0");
    CHECK_INT_EQ(json_integer_value(json_object_get(g0, "utilization_percent")), 37);
    CHECK_INT_EQ(json_integer_value(json_object_get(g0, "memory_used_mib")), 1024);
    CHECK_INT_EQ(json_integer_value(json_object_get(g0, "temperature_c")), 45);
    CHECK_INT_EQ(json_integer_value(json_object_get(g1, "utilization_percent")), 5);
    CHECK(!json_object_get(g1, "memory_used_mib"));
    CHECK_INT_EQ(json_integer_value(json_object_get(g2, "memory_used_mib")), 0);
    CHECK(!json_object_get(g2, "temperature_c"));
    pthread_mutex_unlock(&mu);

    /* /metrics, served by the running agent from its loop's snapshot. */
    char murl[96];
    snprintf(murl, sizeof murl, "http://127.0.0.1:%d/metrics", metrics_port);
    struct httpc_resp r;
    CHECK_INT_EQ(httpc_request("GET", murl, NULL, NULL, 0, 5000, 1 << 20, &r, err, sizeof err), 0);
    CHECK_INT_EQ(r.status, 200);
    CHECK(strstr(r.body.data, "\norp_agent_gpu_power_watts{uuid=\"GPU-fake-0\",index=\"0\","
                              "model=\"NVIDIA H100 80GB HBM3\"} 350.500\n"));
    CHECK(strstr(r.body.data, "\norp_agent_heartbeat_failures_total 0\n"));
    CHECK(!strstr(r.body.data, "\norp_agent_heartbeat_successes_total 0\n"));
    CHECK(!strstr(r.body.data, "age_seconds +Inf"));
    buf_free(&r.body);

    /* The same inventory a few more times: nothing to register. */
    util_sleep_ms(2500);
    pthread_mutex_lock(&mu);
    CHECK_INT_EQ(registrations, 1);
    pthread_mutex_unlock(&mu);

    write_text(nvml_state, "ecc0=1\n", "w");
    CHECK(wait_for(2, 2));
    pthread_mutex_lock(&mu);
    CHECK_INT_EQ(registrations, 2);
    CHECK_STR_EQ(reg_bearer[1], "Bearer key-1"); /* the host key, not the spent token */
    CHECK_STR_EQ(json_string_value(json_object_get(reg_gpu0[1], "uuid")), "GPU-fake-0");
    CHECK(json_is_false(json_object_get(reg_gpu0[1], "healthy")));
    CHECK_INT_EQ(json_integer_value(json_object_get(reg_gpu0[1], "ecc_errors")), 1);
    pthread_mutex_unlock(&mu);

    CHECK_INT_EQ(kill(pid, SIGTERM), 0);
    int status;
    CHECK_INT_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status));
    CHECK_INT_EQ(WEXITSTATUS(status), 0);

    httpd_stop(srv);
    json_decref(last_gpus);
    for (int i = 0; i < registrations; i++)
        json_decref(reg_gpu0[i]);
    tmpdir_remove(root);
    curl_global_cleanup();
    return 0;
}

/* ctlclient against a fake controller (our own httpd on a free loopback port): register stores the
 * identity (mode 600) and it is reused; a 401 heartbeat clears it; the heartbeat body follows the
 * contract; a reply that breaks the contract is rejected whole. */
#include "tmpdir.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <sys/stat.h>

#include "check.h"
#include "ctlclient.h"
#include "httpd.h"
#include "log.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int registrations;
static char current_key[64];
static json_t *last_heartbeat;
static const char *desired_reply = "[]";

static int bearer_is(struct httpd_req *req, const char *want)
{
    const char *h = httpd_header(req, "Authorization");
    char exp[128];
    snprintf(exp, sizeof exp, "Bearer %s", want);
    return h && !strcmp(h, exp);
}

static void on_register(struct httpd_req *req)
{
    if (!bearer_is(req, "enroll-tok")) {
        httpd_error(req, 401, "unauthorized", NULL, "bad token");
        return;
    }
    json_t *b = json_loadb(req->body.data, req->body.len, 0, NULL);
    CHECK(b != NULL);
    CHECK_STR_EQ(json_string_value(json_object_get(b, "name")), "host-a");
    CHECK_STR_EQ(json_string_value(json_object_get(b, "address")), "10.0.0.5");
    CHECK(json_is_array(json_object_get(b, "devices")));
    json_decref(b);
    pthread_mutex_lock(&mu);
    registrations++;
    snprintf(current_key, sizeof current_key, "key-%d", registrations);
    json_t *r = json_pack("{s:s, s:s, s:i}", "host_id", "h-1", "host_key", current_key,
                          "heartbeat_ms", 1000);
    pthread_mutex_unlock(&mu);
    httpd_reply_json(req, 200, r);
}

static void on_heartbeat(struct httpd_req *req)
{
    pthread_mutex_lock(&mu);
    int ok = bearer_is(req, current_key);
    pthread_mutex_unlock(&mu);
    if (!ok) {
        httpd_error(req, 401, "unauthorized", NULL, "unknown host key");
        return;
    }
    json_t *b = json_loadb(req->body.data, req->body.len, 0, NULL);
    CHECK(b != NULL);
    size_t nusage = json_array_size(json_object_get(b, "usage"));
    pthread_mutex_lock(&mu);
    json_decref(last_heartbeat);
    last_heartbeat = b;
    char txt[4096];
    snprintf(txt, sizeof txt, "{\"desired\":%s,\"usage_acked\":%zu,\"heartbeat_ms\":750}",
             desired_reply, nusage);
    pthread_mutex_unlock(&mu);
    httpd_reply_raw(req, 200, "application/json", txt, strlen(txt));
}

static const struct httpd_route routes[] = {
    {"POST", "/agent/v1/register", on_register},
    {"POST", "/agent/v1/heartbeat", on_heartbeat},
};

#define GOOD_ENTRY                                                                                 \
    "{\"replica_id\":\"r-1\",\"epoch\":3,\"model\":\"demo-tiny\",\"model_path\":\"/abs/dir\","     \
    "\"served_name\":\"my-endpoint\",\"devices\":[\"GPU-a\",\"GPU-b\"],\"device_kind\":\"gpu\","   \
    "\"secret\":\"sss\",\"tp\":2}"

static void test_parse(void)
{
    struct ctl_reply r;
    char err[512];
    const char *good = "{\"desired\":[" GOOD_ENTRY "],\"usage_acked\":4,\"heartbeat_ms\":1000}";
    CHECK_INT_EQ(ctl_parse_reply(good, strlen(good), &r, err, sizeof err), 0);
    CHECK_INT_EQ(r.ndesired, 1);
    CHECK_STR_EQ(r.desired[0].replica_id, "r-1");
    CHECK_INT_EQ(r.desired[0].epoch, 3);
    CHECK_STR_EQ(r.desired[0].devices, "GPU-a,GPU-b");
    CHECK_STR_EQ(r.desired[0].device_kind, "gpu");
    CHECK_STR_EQ(r.desired[0].secret, "sss");
    CHECK_INT_EQ(r.desired[0].tp, 2);
    CHECK_INT_EQ(r.usage_acked, 4);
    CHECK_INT_EQ(r.heartbeat_ms, 1000);
    ctl_reply_free(&r);

    const char *bad[] = {
        "not json",
        "{\"usage_acked\":0}",
        "{\"desired\":{},\"usage_acked\":0}",
        "{\"desired\":[],\"usage_acked\":-1}",
        "{\"desired\":[" GOOD_ENTRY ",{\"replica_id\":\"../../etc\",\"epoch\":1}],"
        "\"usage_acked\":0}",
        "{\"desired\":[{\"replica_id\":\"x\",\"epoch\":1,\"model_path\":\"rel/dir\","
        "\"served_name\":\"n\",\"devices\":[],\"device_kind\":\"cpu\",\"secret\":\"s\"}],"
        "\"usage_acked\":0}",
        "{\"desired\":[{\"replica_id\":\"x\",\"epoch\":1,\"model_path\":\"/m\","
        "\"served_name\":\"n\",\"devices\":[\"a,b\"],\"device_kind\":\"cpu\",\"secret\":\"s\"}],"
        "\"usage_acked\":0}",
        "{\"desired\":[{\"replica_id\":\"x\",\"epoch\":1,\"model_path\":\"/m\","
        "\"served_name\":\"n\",\"devices\":[],\"device_kind\":\"tpu\",\"secret\":\"s\"}],"
        "\"usage_acked\":0}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        if (ctl_parse_reply(bad[i], strlen(bad[i]), &r, err, sizeof err) != -1) {
            fprintf(stderr, "accepted bad reply %zu: %s\n", i, bad[i]);
            exit(1);
        }
        CHECK(err[0] != '\0');
        CHECK(r.desired == NULL);
    }
}

int main(void)
{
    log_init("test_agent_ctlclient", "warn");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    test_parse();

    char root[256];
    CHECK(tmpdir_make(root, sizeof root));
    struct httpd_config hc = {.name = "fake-controller",
                              .host = "127.0.0.1",
                              .port = 0,
                              .threads = 1,
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
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", httpd_port(srv));

    json_t *reg = json_pack("{s:s, s:s, s:s, s:[]}", "name", "host-a", "address", "10.0.0.5",
                            "agent_version", AGENT_VERSION, "devices");
    struct ctl c;
    ctl_init(&c, url, "wrong-token", root);
    CHECK_INT_EQ(ctl_load_identity(&c, "fp1"), 0);
    int64_t hb = 0;
    CHECK_INT_EQ(ctl_register(&c, reg, "fp1", &hb), CTL_UNAUTHORIZED);
    CHECK_INT_EQ(c.registered, 0);

    ctl_init(&c, url, "enroll-tok", root);
    CHECK_INT_EQ(ctl_register(&c, reg, "fp1", &hb), CTL_OK);
    CHECK_INT_EQ(hb, 1000);
    CHECK_STR_EQ(c.host_id, "h-1");
    CHECK_STR_EQ(c.host_key, "key-1");
    struct stat st;
    CHECK(stat(c.state_path, &st) == 0);
    CHECK_INT_EQ(st.st_mode & 0777, 0600);

    /* A restart reuses the identity, unless the registration (fingerprint) or controller changed.
     */
    struct ctl c2;
    ctl_init(&c2, url, NULL, root);
    CHECK_INT_EQ(ctl_load_identity(&c2, "fp1"), 1);
    CHECK_STR_EQ(c2.host_key, "key-1");
    ctl_init(&c2, url, NULL, root);
    CHECK_INT_EQ(ctl_load_identity(&c2, "fp2"), 0);
    ctl_init(&c2, "http://elsewhere:1", NULL, root);
    CHECK_INT_EQ(ctl_load_identity(&c2, "fp1"), 0);

    /* Heartbeat: the body carries host_id, replicas and usage; the reply is parsed. */
    json_t *replicas =
        json_pack("[{s:s, s:i, s:s, s:i, s:i, s:i, s:s}]", "replica_id", "r-1", "epoch", 3, "state",
                  "ready", "port", 20001, "pid", 42, "restarts", 0, "reason", "");
    json_t *usage = json_pack("[{s:s, s:s, s:i, s:i, s:i, s:I}]", "request_id", "q1", "replica_id",
                              "r-1", "epoch", 3, "prompt_tokens", 1, "completion_tokens", 2,
                              "at_ms", (json_int_t)1763712000000);
    desired_reply = "[" GOOD_ENTRY "]";
    struct ctl_reply r;
    CHECK_INT_EQ(ctl_heartbeat(&c, replicas, usage, NULL, NULL, &r), CTL_OK);
    CHECK_INT_EQ(r.ndesired, 1);
    CHECK_STR_EQ(r.desired[0].served_name, "my-endpoint");
    CHECK_INT_EQ(r.usage_acked, 1);
    CHECK_INT_EQ(r.heartbeat_ms, 750);
    ctl_reply_free(&r);
    pthread_mutex_lock(&mu);
    CHECK_STR_EQ(json_string_value(json_object_get(last_heartbeat, "host_id")), "h-1");
    CHECK(json_equal(json_object_get(last_heartbeat, "replicas"), replicas));
    CHECK(json_equal(json_object_get(last_heartbeat, "usage"), usage));
    pthread_mutex_unlock(&mu);

    /* A contract-breaking reply is ignored whole. */
    desired_reply = "[{\"replica_id\":\"r-1\"}]";
    CHECK_INT_EQ(ctl_heartbeat(&c, replicas, usage, NULL, NULL, &r), CTL_BAD_REPLY);
    desired_reply = "[]";

    /* The controller forgot us (key rotated by another registration): 401, then register again. */
    pthread_mutex_lock(&mu);
    snprintf(current_key, sizeof current_key, "rotated");
    pthread_mutex_unlock(&mu);
    CHECK_INT_EQ(ctl_heartbeat(&c, replicas, usage, NULL, NULL, &r), CTL_UNAUTHORIZED);
    CHECK_INT_EQ(c.registered, 0);
    CHECK_INT_EQ(ctl_register(&c, reg, "fp1", &hb), CTL_OK);
    CHECK_STR_EQ(c.host_key, "key-2");
    CHECK_INT_EQ(ctl_heartbeat(&c, replicas, usage, NULL, NULL, &r), CTL_OK);
    ctl_reply_free(&r);

    httpd_stop(srv);
    /* Nobody listening (port 1 refuses): unreachable, not fatal, the key is kept. */
    c.base_url = "http://127.0.0.1:1";
    CHECK_INT_EQ(ctl_heartbeat(&c, replicas, usage, NULL, NULL, &r), CTL_UNREACHABLE);
    CHECK_INT_EQ(c.registered, 1);

    json_decref(replicas);
    json_decref(usage);
    json_decref(reg);
    json_decref(last_heartbeat);
    tmpdir_remove(root);
    curl_global_cleanup();
    printf("ok\n");
    return 0;
}

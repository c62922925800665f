/* ctlclient: see ctlclient.h. */
#include "ctlclient.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpc.h"
#include "jsonx.h"
#include "log.h"
#include "util.h"

/* Register can wait on the controller's database; a heartbeat must not hold the agent's loop (and
 * so its reaping and stop escalation) longer than a few seconds. */
#define CTL_REGISTER_TIMEOUT_MS 10000
#define CTL_HEARTBEAT_TIMEOUT_MS 5000
/* A desired list for a full 8-GPU host with CPU slots is a few KiB; 4 MiB is generous and bounded.
 */
#define CTL_MAX_REPLY ((size_t)4 * 1024 * 1024)
/* While the controller is unreachable, one warning per this many failed calls (a minute at the
 * default 2 s interval) instead of one per heartbeat. */
#define CTL_LOG_EVERY_FAILURES 30
/* More desired replicas than this on one host is a controller bug, not a plan. */
#define CTL_MAX_DESIRED 256

void ctl_init(struct ctl *c, const char *base_url, const char *token, const char *state_dir)
{
    memset(c, 0, sizeof *c);
    c->base_url = base_url;
    c->token = token;
    snprintf(c->state_path, sizeof c->state_path, "%s/agent.json", state_dir);
}

static void url_of(const struct ctl *c, const char *path, char *out, size_t n)
{
    size_t bl = strlen(c->base_url);
    while (bl > 0 && c->base_url[bl - 1] == '/')
        bl--;
    snprintf(out, n, "%.*s%s", (int)bl, c->base_url, path);
}

int ctl_load_identity(struct ctl *c, const char *fingerprint)
{
    size_t len;
    char *txt = util_read_file(c->state_path, &len);
    if (!txt) return 0;
    struct jsonx_err err;
    json_t *o = jsonx_parse_object(txt, len, &err);
    free(txt);
    if (!o) {
        log_warn("%s: %s; registering again", c->state_path, err.message);
        return 0;
    }
    const char *id, *key, *ctl = NULL, *fp = NULL;
    int ok = jsonx_get_string(o, "host_id", 1, &id, sizeof c->host_id - 1, &err) == JSONX_OK &&
             jsonx_get_string(o, "host_key", 1, &key, sizeof c->host_key - 1, &err) == JSONX_OK &&
             jsonx_get_string(o, "controller", 0, &ctl, 0, &err) != JSONX_BAD &&
             jsonx_get_string(o, "fingerprint", 0, &fp, 0, &err) != JSONX_BAD;
    if (!ok) {
        log_warn("%s: %s; registering again", c->state_path, err.message);
    } else if (!ctl || strcmp(ctl, c->base_url) != 0) {
        log_info("%s was written for another controller; registering again", c->state_path);
        ok = 0;
    } else if (!fp || strcmp(fp, fingerprint) != 0) {
        log_info("name, address or devices changed since the last registration; registering again");
        snprintf(c->host_key, sizeof c->host_key, "%s", key);
        ok = 0;
    } else {
        snprintf(c->host_id, sizeof c->host_id, "%s", id);
        snprintf(c->host_key, sizeof c->host_key, "%s", key);
        c->registered = 1;
        log_info("reusing host id %s from %s", c->host_id, c->state_path);
    }
    json_decref(o);
    return ok;
}

static int save_identity(const struct ctl *c, const char *fingerprint)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "host_id", c->host_id, "host_key", c->host_key,
                          "controller", c->base_url, "fingerprint", fingerprint);
    char *txt = o ? json_dumps(o, JSON_INDENT(2)) : NULL;
    json_decref(o);
    if (!txt) return -1;
    /* Mode 600: host_key lets anyone impersonate this host to the controller. */
    int rc = util_write_file_atomic(c->state_path, txt, strlen(txt), 0600);
    if (rc != 0) log_error("cannot write %s: %s", c->state_path, strerror(errno));
    free(txt);
    return rc;
}

/* POSTs body to path with a bearer credential. On a response, *status is set and the body is
 * returned in resp (caller frees with buf_free). */
static enum ctl_rc post(struct ctl *c, const char *path, const char *bearer, json_t *body,
                        long timeout_ms, struct httpc_resp *resp)
{
    char url[2048], auth[512], err[512];
    url_of(c, path, url, sizeof url);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", bearer);
    const char *headers[] = {auth, NULL};
    char *txt = jsonx_dump(body);
    if (!txt) {
        log_error("cannot serialize the %s request", path);
        return CTL_BAD_REPLY;
    }
    int rc = httpc_request("POST", url, headers, txt, strlen(txt), timeout_ms, CTL_MAX_REPLY, resp,
                           err, sizeof err);
    free(txt);
    if (rc != 0) {
        if (c->failures++ % CTL_LOG_EVERY_FAILURES == 0)
            log_warn("controller unreachable (%lld failed call(s)), replicas keep running: %s",
                     (long long)c->failures, err);
        return CTL_UNREACHABLE;
    }
    if (c->failures) {
        log_info("controller reachable again after %lld failed call(s)", (long long)c->failures);
        c->failures = 0;
    }
    if (resp->status == 401) {
        buf_free(&resp->body);
        return CTL_UNAUTHORIZED;
    }
    if (resp->status == 403 && strstr(path, "/register")) {
        log_error("POST %s: HTTP 403: %.300s", url, resp->body.data);
        buf_free(&resp->body);
        return CTL_REVOKED;
    }
    if (resp->status != 200) {
        log_warn("POST %s: HTTP %ld: %.300s", url, resp->status, resp->body.data);
        buf_free(&resp->body);
        return CTL_BAD_REPLY;
    }
    return CTL_OK;
}

enum ctl_rc ctl_register(struct ctl *c, json_t *register_body, const char *fingerprint,
                         int64_t *heartbeat_ms)
{
    struct httpc_resp resp;
    enum ctl_rc rc = CTL_UNAUTHORIZED;
    if (c->host_key[0]) {
        rc = post(c, "/agent/v1/register", c->host_key, register_body, CTL_REGISTER_TIMEOUT_MS,
                  &resp);
        if (rc == CTL_UNAUTHORIZED) {
            log_info("the controller no longer knows our host key; using the enrollment token");
            c->host_key[0] = '\0';
        }
    }
    if (rc == CTL_UNAUTHORIZED) {
        if (!c->token || !c->token[0]) {
            log_error("cannot register: no enrollment token (--token or ORP_AGENT_TOKEN)");
            return CTL_UNAUTHORIZED;
        }
        rc = post(c, "/agent/v1/register", c->token, register_body, CTL_REGISTER_TIMEOUT_MS, &resp);
        if (rc == CTL_UNAUTHORIZED)
            log_error("register refused: the enrollment token is not valid (expired, already "
                      "used, or not this controller's)");
    }
    if (rc != CTL_OK) return rc;
    struct jsonx_err err;
    json_t *o = jsonx_parse_object(resp.body.data, resp.body.len, &err);
    buf_free(&resp.body);
    const char *id, *key;
    int64_t hb = 0;
    if (!o || jsonx_get_string(o, "host_id", 1, &id, sizeof c->host_id - 1, &err) != JSONX_OK ||
        jsonx_get_string(o, "host_key", 1, &key, sizeof c->host_key - 1, &err) != JSONX_OK ||
        jsonx_get_int(o, "heartbeat_ms", 0, 1, 3600000, &hb, &err) == JSONX_BAD || !id[0] ||
        !key[0]) {
        log_warn("register: bad reply from the controller: %s",
                 err.message[0] ? err.message : "empty host_id or host_key");
        json_decref(o);
        return CTL_BAD_REPLY;
    }
    snprintf(c->host_id, sizeof c->host_id, "%s", id);
    snprintf(c->host_key, sizeof c->host_key, "%s", key);
    json_decref(o);
    c->registered = 1;
    if (hb > 0) *heartbeat_ms = hb;
    /* Not fatal: we keep the key in memory, and registering again after a restart rotates it. */
    save_identity(c, fingerprint);
    log_info("registered as host %s", c->host_id);
    return CTL_OK;
}

void ctl_reregister(struct ctl *c)
{
    /* host_key stays: ctl_register presents it first, as at start-up after a changed fingerprint.
     */
    c->registered = 0;
}

/* Identifiers that become file names or go into CUDA_VISIBLE_DEVICES: letters, digits, "_.-:",
 * not starting with '.'. */
static int safe_ident(const char *s)
{
    if (!s[0] || s[0] == '.') return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.' || *p == '-' || *p == ':'))
            return 0;
    return 1;
}

static int parse_desired(json_t *d, struct sup_spec *sp, char *err, size_t errlen)
{
    struct jsonx_err je = {{0}, {0}};
    const char *rid, *model = "", *path = "", *source = "", *name, *kind, *secret;
    int64_t tp = 1;
    memset(sp, 0, sizeof *sp);
    if (!json_is_object(d)) {
        snprintf(err, errlen, "entry is not an object");
        return -1;
    }
    if (jsonx_get_string(d, "replica_id", 1, &rid, SUP_ID_MAX - 1, &je) != JSONX_OK ||
        jsonx_get_int(d, "epoch", 1, 0, INT64_MAX, &sp->epoch, &je) != JSONX_OK ||
        jsonx_get_string(d, "model", 0, &model, SUP_NAME_MAX - 1, &je) == JSONX_BAD ||
        jsonx_get_string(d, "model_path", 0, &path, PATH_MAX - 1, &je) == JSONX_BAD ||
        jsonx_get_string(d, "source", 0, &source, PATH_MAX - 1, &je) == JSONX_BAD ||
        jsonx_get_string(d, "served_name", 1, &name, SUP_NAME_MAX - 1, &je) != JSONX_OK ||
        jsonx_get_string(d, "device_kind", 1, &kind, 7, &je) != JSONX_OK ||
        jsonx_get_string(d, "secret", 1, &secret, SUP_SECRET_MAX - 1, &je) != JSONX_OK ||
        jsonx_get_int(d, "tp", 0, 1, 64, &tp, &je) == JSONX_BAD) {
        snprintf(err, errlen, "%s", je.message);
        return -1;
    }
    if (!safe_ident(rid)) {
        snprintf(err, errlen, "replica_id '%s' has characters we cannot use in a path", rid);
        return -1;
    }
    json_t *manifest = json_object_get(d, "manifest");
    if (manifest && json_is_null(manifest)) manifest = NULL;
    if (manifest && !json_is_object(manifest)) {
        snprintf(err, errlen, "manifest must be an object");
        return -1;
    }
    /* model_path is what older controllers send; a remote source with a manifest needs none. */
    int remote = manifest && (!strncmp(source, "file://", 7) || !strncmp(source, "http://", 7) ||
                              !strncmp(source, "https://", 8));
    if (!remote && path[0] != '/') {
        snprintf(err, errlen, "model_path '%s' is not absolute", path);
        return -1;
    }
    if (!name[0]) {
        snprintf(err, errlen, "served_name is empty");
        return -1;
    }
    if (strcmp(kind, "gpu") != 0 && strcmp(kind, "cpu") != 0) {
        snprintf(err, errlen, "device_kind '%s' is neither gpu nor cpu", kind);
        return -1;
    }
    json_t *devs = json_object_get(d, "devices");
    if (!json_is_array(devs)) {
        snprintf(err, errlen, "devices must be an array");
        return -1;
    }
    size_t i, used = 0;
    json_t *v;
    json_array_foreach(devs, i, v)
    {
        const char *u = json_string_value(v);
        size_t ul = u ? strlen(u) : 0;
        if (!u || !safe_ident(u) || used + ul + 2 > sizeof sp->devices) {
            snprintf(err, errlen, "devices[%zu] is not a device uuid we can pass on", i);
            return -1;
        }
        if (used) sp->devices[used++] = ',';
        memcpy(sp->devices + used, u, ul + 1);
        used += ul;
    }
    snprintf(sp->replica_id, sizeof sp->replica_id, "%s", rid);
    snprintf(sp->model, sizeof sp->model, "%s", model);
    snprintf(sp->model_path, sizeof sp->model_path, "%s", path);
    snprintf(sp->source, sizeof sp->source, "%s", source);
    if (manifest) sp->manifest = json_incref(manifest);
    snprintf(sp->served_name, sizeof sp->served_name, "%s", name);
    snprintf(sp->device_kind, sizeof sp->device_kind, "%s", kind);
    snprintf(sp->secret, sizeof sp->secret, "%s", secret);
    sp->tp = tp;
    return 0;
}

int ctl_parse_reply(const char *body, size_t len, struct ctl_reply *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    struct jsonx_err je = {{0}, {0}};
    json_t *o = jsonx_parse_object(body, len, &je);
    if (!o) {
        snprintf(err, errlen, "%s", je.message);
        return -1;
    }
    int rc = -1;
    json_t *desired = json_object_get(o, "desired");
    out->logs_acked = -1;
    if (jsonx_get_int(o, "usage_acked", 1, 0, INT64_MAX, &out->usage_acked, &je) != JSONX_OK ||
        jsonx_get_int(o, "logs_acked", 0, 0, INT64_MAX, &out->logs_acked, &je) == JSONX_BAD ||
        jsonx_get_int(o, "heartbeat_ms", 0, 1, 3600000, &out->heartbeat_ms, &je) == JSONX_BAD) {
        snprintf(err, errlen, "%s", je.message);
        goto done;
    }
    if (!json_is_array(desired)) {
        snprintf(err, errlen, "desired must be an array");
        goto done;
    }
    size_t n = json_array_size(desired);
    if (n > CTL_MAX_DESIRED) {
        snprintf(err, errlen, "desired has %zu entries (at most %d)", n, CTL_MAX_DESIRED);
        goto done;
    }
    out->desired = calloc(n ? n : 1, sizeof *out->desired);
    if (!out->desired) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        char e[400];
        if (parse_desired(json_array_get(desired, i), &out->desired[i], e, sizeof e) != 0) {
            snprintf(err, errlen, "desired[%zu]: %s", i, e);
            goto done;
        }
        out->ndesired = i + 1; /* so that ctl_reply_free releases what was parsed */
    }
    out->ndesired = n;
    rc = 0;
done:
    json_decref(o);
    if (rc != 0) ctl_reply_free(out);
    return rc;
}

void ctl_reply_free(struct ctl_reply *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->ndesired; i++)
        json_decref(r->desired[i].manifest);
    free(r->desired);
    r->desired = NULL;
    r->ndesired = 0;
}

enum ctl_rc ctl_heartbeat(struct ctl *c, json_t *replicas, json_t *usage, json_t *logs,
                          json_t *disk, struct ctl_reply *out)
{
    memset(out, 0, sizeof *out);
    json_t *body =
        json_pack("{s:s, s:O, s:O}", "host_id", c->host_id, "replicas", replicas, "usage", usage);
    if (body && logs && json_array_size(logs)) json_object_set(body, "logs", logs);
    if (body && disk) json_object_set(body, "disk", disk);
    if (!body) {
        log_error("cannot build the heartbeat");
        return CTL_BAD_REPLY;
    }
    struct httpc_resp resp;
    enum ctl_rc rc =
        post(c, "/agent/v1/heartbeat", c->host_key, body, CTL_HEARTBEAT_TIMEOUT_MS, &resp);
    json_decref(body);
    if (rc == CTL_UNAUTHORIZED) {
        log_warn(
            "heartbeat refused (401): the controller does not know our key; registering again");
        c->registered = 0;
    }
    if (rc != CTL_OK) return rc;
    char err[512];
    int prc = ctl_parse_reply(resp.body.data, resp.body.len, out, err, sizeof err);
    buf_free(&resp.body);
    if (prc != 0) {
        log_warn("heartbeat: reply ignored, it breaks the contract: %s", err);
        return CTL_BAD_REPLY;
    }
    return CTL_OK;
}

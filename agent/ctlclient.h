/* ctlclient: the agent's side of the agent API (docs/contracts.md): register, heartbeat, and the
 * host identity kept in STATE_DIR/agent.json. It is the only code that speaks to the controller and
 * the only writer of agent.json. Everything the controller sends is validated here, and a reply
 * that does not validate is ignored whole: acting on part of a desired list would stop the
 * replicas it failed to mention. */
#ifndef ORP_AGENT_CTLCLIENT_H
#define ORP_AGENT_CTLCLIENT_H

#include <jansson.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "supervisor.h"

#define AGENT_VERSION "0.1.0"

enum ctl_rc {
    CTL_OK = 0,
    CTL_UNAUTHORIZED, /* 401: our key (or the enrollment token) is not known */
    CTL_UNREACHABLE,  /* no HTTP answer: retry at the next interval */
    CTL_BAD_REPLY,    /* another status, or a body that does not follow the contract */
    CTL_REVOKED,      /* 403 on register: an operator revoked this host */
};

struct ctl {
    const char *base_url; /* borrowed; e.g. http://127.0.0.1:8082 */
    const char *token;    /* borrowed; enrollment token, may be NULL once registered */
    char state_path[PATH_MAX];
    char host_id[128];
    char host_key[256]; /* also kept while not registered: re-registering tries it first */
    int registered;     /* host_id and host_key are valid */
    int64_t failures;   /* consecutive calls without an answer, to keep the log readable */
};

struct ctl_reply {
    struct sup_spec *desired; /* owned */
    size_t ndesired;
    int64_t usage_acked;
    int64_t logs_acked;   /* -1 when the reply did not say (a controller without log intake) */
    int64_t heartbeat_ms; /* 0 when the reply did not say */
};

void ctl_init(struct ctl *c, const char *base_url, const char *token, const char *state_dir);

/* Loads STATE_DIR/agent.json when it was written for this controller and this registration
 * (fingerprint: a digest of the register request, so a changed inventory, name or address registers
 * again). Returns 1 when loaded (c->registered set), 0 otherwise. A key written for this controller
 * under another fingerprint is kept in c->host_key: registering again presents it, which needs
 * no enrollment token (a one-time token is spent by then). */
int ctl_load_identity(struct ctl *c, const char *fingerprint);

/* POSTs register_body (borrowed) and on success stores the identity with fingerprint.
 * *heartbeat_ms is set when the reply carries one. Presents the host key we hold, if any, and when
 * the controller refuses it, the enrollment token. CTL_REVOKED: the operator revoked this host. */
enum ctl_rc ctl_register(struct ctl *c, json_t *register_body, const char *fingerprint,
                         int64_t *heartbeat_ms);

/* The register request changed (the inventory did): the next call should be ctl_register, which
 * presents the host key we hold (no enrollment token needed). Clears c->registered. */
void ctl_reregister(struct ctl *c);

/* POSTs a heartbeat with replicas, usage, logs and disk (all borrowed; logs and disk may be NULL:
 * none). On CTL_OK, out is filled (free with ctl_reply_free()). CTL_UNAUTHORIZED clears
 * c->registered. */
enum ctl_rc ctl_heartbeat(struct ctl *c, json_t *replicas, json_t *usage, json_t *logs,
                          json_t *disk, struct ctl_reply *out);

/* Parses and validates a heartbeat reply. 0, or -1 with a message in err. Exposed for tests. */
int ctl_parse_reply(const char *body, size_t len, struct ctl_reply *out, char *err, size_t errlen);
void ctl_reply_free(struct ctl_reply *r);

#endif

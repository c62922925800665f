/* ctl: the controller's shared context: its configuration, its pools and what every module
 * needs to reach. One struct ctl lives for the life of the process; each listener gets a struct
 * ctl_listener (its own pool) as the httpd app pointer. */
#ifndef ORP_CTL_H
#define ORP_CTL_H

#include <stdint.h>

#include "db.h"
#include "httpd.h"

struct ctl_config {
    const char *database_url;
    const char *listen_host;
    int64_t api_port, gateway_port, agent_port;
    const char *only; /* all | api | gateway | agent-api | none */
    const char *agent_token;
    const char *cors_origins; /* comma-separated origins allowed to call the gateway */
    const char *web_dir, *schema_dir;
    const char *openapi_file; /* served at GET /v1/openapi.json */
    int64_t threads, db_pool_size, db_timeout_ms, max_body, max_connections;
    int64_t per_ip_connections; /* connections one client address may hold per listener; 0: any */
    int64_t heartbeat_ms, liveness_timeout_ms, scheduler_interval_ms, stream_timeout_s, hold_s;
    int64_t replica_max_outstanding; /* gateway requests at one replica at once; 0: no limit */
    const char *log_level;
    int64_t billing_period_s, credit_grace_s;
    int64_t overdraft_micros;   /* how far value-billed requests may take a balance below zero */
    int64_t lease_ttl_s;        /* a balance lease's hold lapses this long after its renewal */
    int64_t lease_chunk_micros; /* how much of a balance a gateway reserves at a time */
    int no_leader;
    int unlocked_leader; /* tests only: run the leader loops without the election */
    const char *signup;  /* on | off: may anyone create an account with POST /v1/auth/signup */
    int cookie_secure;   /* session cookies get Secure (set it behind a TLS proxy) */
    const char *tls_cert, *tls_key; /* PEM files: the api and gateway listeners speak HTTPS */
    int64_t connection_timeout_s;   /* idle connections close after this */
    int64_t connection_memory_kib;  /* MHD's memory per connection (headers and buffers) */
    int64_t gateway_connection_memory_kib; /* the same, on the gateway listener */
    int64_t list_cache_ms; /* how long a GET /v1/endpoints page is reused (0: never) */
};

struct rl_table;
struct lease;

struct ctl {
    struct ctl_config cfg;
    struct rl_table *rl; /* request rate limits of this process's gateway */
    struct lease *lease; /* balance leases of this process's gateway (value-billed admission) */
};

struct ctl_listener {
    struct ctl *ctl;
    struct db_pool *pool;
};

/* Endpoints one API key may be limited to: kept in the auth context (and so in any cache of it)
 * so that the gateway checks them without a query. */
#define AUTH_KEY_ENDPOINTS_MAX 16

/* The account and key behind a request, filled by auth_require(). */
struct auth_ctx {
    int64_t account_id;
    int64_t key_id;
    char role[16]; /* admin | owner | member */
    char account_id_str[24];
    int64_t requests_per_min; /* 0: no limit */
    int64_t requests_burst;
    int64_t tokens_per_min;
    int64_t user_id;      /* 0: a key that belongs to no user */
    int64_t session_id;   /* non-zero when authenticated by a session cookie */
    unsigned scopes;      /* AUTH_SCOPE_* bits the key (or session: all) grants */
    int endpoint_limited; /* the key may call only the endpoints below (auth_endpoint_allowed) */
    int n_endpoint_ids;
    char endpoint_ids[AUTH_KEY_ENDPOINTS_MAX][37];
    int64_t audit_id; /* the audit_log row of this call (state-changing calls), else 0 */
};

/* Acquires a connection from the listener's pool or answers 503 and returns NULL. */
PGconn *ctl_db(struct httpd_req *req);
void ctl_db_done(struct httpd_req *req, PGconn *c);

#endif

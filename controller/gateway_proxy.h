/* gateway_proxy: the gateway's upstream side — carries a routed request to a runtime and the
 * reply back to the client, with no thread per request (see gateway_proxy.c).
 *
 * gateway.c authenticates, admits and routes; it hands the request over with gwp_start() and,
 * when libmicrohttpd calls its handler again after a resume, answers with gwp_respond(). The
 * types below are shared by the two files only. */
#ifndef ORP_GATEWAY_PROXY_H
#define ORP_GATEWAY_PROXY_H

#include <stdint.h>

#include "ctl.h"
#include "httpd.h"

#define GW_MAX_CANDIDATES 8 /* replicas tried per request: more would only delay the error */

struct gw_candidate {
    char replica_id[40];
    char url[256]; /* the runtime's base URL; the request's path is appended */
    char secret[80];
    int tried;
};

/* What the routing query found. */
enum gw_route_rc { ROUTE_OK, ROUTE_DB, ROUTE_NOT_FOUND, ROUTE_STOPPED, ROUTE_NO_FUNDS, ROUTE_CAP };

struct gw_route {
    char endpoint_id[40];
    char reason[200];
    struct gw_candidate cand[GW_MAX_CANDIDATES];
    int ncand;
    int value;  /* billing_mode 'value': admitted against a balance lease (lease.h) */
    int shared; /* another account's shared endpoint: the caller pays */
    int64_t spend_cap, month_spend; /* the caller's monthly cap (-1: none) and charges so far */
    int64_t in_price, out_price, context_length; /* micros per million tokens; tokens */
};

/* What gwp_start needs to know of the request besides its body (req->body, copied). */
struct gwp_request {
    const struct gw_route *route; /* copied; its candidates may be empty (the request is held) */
    const char *path;             /* the runtime route (static string) */
    const char *account_id;       /* as text, for re-routing while held */
    int64_t account_num;
    const char *model;
    const char *request_id; /* the server-made id billing uses */
    int leased;             /* a lease reservation (lease_admit) to end when the transfer is over */
    int64_t tokens;         /* charged to the account's tokens per minute (0: none); settled */
    int64_t tokens_per_min; /* the limit they were charged under */
};

/* Starts the gateway's loops, one per daemon of srv (the gateway listener, started with
 * external_loops): 0, or -1 after logging. gwp_loops_stop ends them (before httpd_stop(srv)). */
int gwp_loops_start(struct ctl_listener *l, struct httpd_server *srv);
void gwp_loops_stop(void);

/* Hands the request to its loop's upstream side and suspends the client's connection: 0; or -1
 * when it could not (out of memory, or not on a gateway loop), with nothing started and nothing
 * answered (the caller answers and returns the lease reservation). */
int gwp_start(struct httpd_req *req, const struct gwp_request *r);

/* The handler's re-entry after a resume (req->state is the proxy): answers, or suspends again. */
void gwp_respond(struct httpd_req *req);

/* Defined in gateway.c: the routing query, through the listener's pool (the hold re-asks it). */
enum gw_route_rc gw_route_db(struct ctl_listener *l, const char *account_id, const char *model,
                             struct gw_route *rt);

#endif

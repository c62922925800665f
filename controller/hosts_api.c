/* hosts_api: see hosts_api.h. Every route here is for admins only: a customer gets 403. */
#include "hosts_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "cfg.h"
#include "ctl.h"
#include "log.h"

/* One row per host, its devices aggregated: one query for the whole listing. */
#define HOSTS_QUERY                                                                                \
    "SELECT json_build_object('id', h.id::text, 'object', 'host', 'name', h.name, "                \
    "  'address', h.address, 'pool', h.pool, 'labels', h.labels, 'cordoned', h.cordoned, "         \
    "  'state', h.state, "                                                                         \
    "  'agent_version', h.agent_version, 'last_seen_at', s.seen_at, "                              \
    "  'devices', (SELECT COALESCE(json_agg(json_build_object('index', g.idx, 'uuid', g.uuid, "    \
    "     'kind', g.kind, 'model', g.model, 'memory_mib', g.memory_mib, 'healthy', g.healthy, "    \
    "     'numa_node', g.numa_node, 'pci_bus_id', g.pci_bus_id, 'nvlink_peers', g.nvlink_peers, "  \
    "     'ecc_errors', g.ecc_errors, 'retired_pages', g.retired_pages) "                          \
    "     ORDER BY g.kind, g.idx), '[]') FROM gpus g WHERE g.host_id = h.id)) "                    \
    "FROM hosts h LEFT JOIN host_seen s ON s.host_id = h.id ORDER BY h.name"

static void h_list_hosts(struct httpd_req *req)
{
    struct auth_ctx a;
    PGconn *c = auth_db(req, &a);
    if (!c) return;
    if (strcmp(a.role, "admin") != 0) {
        ctl_db_done(req, c);
        httpd_error(req, 403, "admin_only", NULL, "only the operator may list hosts");
        return;
    }
    PGresult *r;
    enum db_status st = db_exec(c, HOSTS_QUERY, 0, NULL, &r, NULL);
    ctl_db_done(req, c);
    if (st < 0) {
        httpd_error(req, 500, "internal_error", NULL, "could not list hosts");
        return;
    }
    json_t *data = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        json_error_t je;
        json_t *h = json_loads(PQgetvalue(r, i, 0), 0, &je);
        if (h) json_array_append_new(data, h);
    }
    PQclear(r);
    httpd_reply_json(req, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}

const struct httpd_route hosts_routes[] = {
    {"GET", "/v1/admin/hosts", h_list_hosts},
};
const size_t hosts_nroutes = sizeof hosts_routes / sizeof hosts_routes[0];

int hosts_cli(int argc, char **argv)
{
    struct {
        const char *database_url;
    } o;
    static const struct cfg_opt opts[] = {
        {"database-url", CFG_STRING, "postgresql:///openrunpod", "PostgreSQL connection string", 0},
    };
    char err[256];
    if (argc < 3 || strcmp(argv[2], "list") != 0) {
        fprintf(stderr, "usage: orp-controller host list [--database-url URL]\n");
        return 2;
    }
    int rc = cfg_parse(opts, 1, &o, "ORP", argc, argv, 3, err, sizeof err);
    if (rc == 1) {
        cfg_print_help(stdout, "orp-controller host list", opts, 1, "ORP");
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "orp-controller: %s\n", err);
        return 2;
    }
    log_init("controller", "warn");
    PGconn *c = PQconnectdb(o.database_url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "orp-controller: cannot connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return 1;
    }
    PGresult *r;
    enum db_status st = db_exec(c, HOSTS_QUERY, 0, NULL, &r, NULL);
    if (st >= 0) {
        for (int i = 0; i < PQntuples(r); i++)
            printf("%s\n", PQgetvalue(r, i, 0));
        PQclear(r);
    }
    PQfinish(c);
    return st < 0 ? 1 : 0;
}

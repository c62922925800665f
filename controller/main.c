/* orp-controller: the control plane. Subcommands:
 *   serve                 run the listeners (public API + console, gateway, agent API) and, when
 *                         it holds the leader lock, the scheduler and liveness loops
 *   migrate               apply pending schema migrations and exit
 *   admin create --email  create an operator account and print its API key once
 *   account create --email  create a customer account (its owner and a key, printed once)
 *   model add --name ...  add or update a catalog model
 * Configuration is one table (see `orp-controller serve --help`), from the command line or
 * ORP_* environment variables. */
#include <curl/curl.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/evp.h>
#include <libgen.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "accounts_api.h"
#include "admin_api.h"
#include "agentapi.h"
#include "api.h"
#include "audit.h"
#include "auth.h"
#include "billing_api.h"
#include "console_api.h"
#include "cfg.h"
#include "ctl.h"
#include "gateway.h"
#include "gateway_proxy.h"
#include "lease.h"
#include "hosts_api.h"
#include "leader.h"
#include "log.h"
#include "migrate.h"
#include "logs.h"
#include "openapi_api.h"
#include "presets.h"
#include "ratelimit.h"
#include "util.h"

#define O(f) offsetof(struct ctl_config, f)
static const struct cfg_opt serve_opts[] = {
    {"database-url", CFG_STRING, "postgresql:///openrunpod", "PostgreSQL connection string",
     O(database_url)},
    {"listen-host", CFG_STRING, "127.0.0.1", "address the listeners bind to", O(listen_host)},
    {"api-port", CFG_INT, "8080", "public API and console port", O(api_port)},
    {"gateway-port", CFG_INT, "8081", "OpenAI-compatible gateway port", O(gateway_port)},
    {"agent-port", CFG_INT, "8082", "agent API port", O(agent_port)},
    {"only", CFG_STRING, "all", "run one listener: all | api | gateway | agent-api | none",
     O(only)},
    {"agent-token", CFG_STRING, NULL,
     "static enrollment token for development; unset it to require one-time tokens",
     O(agent_token)},
    {"web-dir", CFG_STRING, NULL, "console files (default: web/ of the source tree)", O(web_dir)},
    {"schema-dir", CFG_STRING, NULL, "migrations (default: schema/ of the source tree)",
     O(schema_dir)},
    {"openapi-file", CFG_STRING, NULL,
     "OpenAPI document served at /v1/openapi.json (default: docs/openapi.json of the source tree)",
     O(openapi_file)},
    {"threads", CFG_INT, "4", "threads per listener", O(threads)},
    {"db-pool-size", CFG_INT, "8", "database connections per listener", O(db_pool_size)},
    {"db-timeout-ms", CFG_INT, "2000", "wait for a pooled connection before answering 503",
     O(db_timeout_ms)},
    {"max-body", CFG_INT, "1048576", "largest request body accepted (bytes)", O(max_body)},
    {"max-connections", CFG_INT, "4000", "connections per listener", O(max_connections)},
    /* 64 covers a browser (6 per host), an SDK's pool and a few proxies sharing one address; a
     * single client holding more is hoarding what --max-connections shares among everyone. */
    {"per-ip-connections", CFG_INT, "64", "connections one client address may hold (0: no limit)",
     O(per_ip_connections)},
    {"heartbeat-ms", CFG_INT, "2000", "heartbeat interval told to agents", O(heartbeat_ms)},
    {"liveness-timeout-ms", CFG_INT, "15000", "silence after which a host is lost",
     O(liveness_timeout_ms)},
    {"scheduler-interval-ms", CFG_INT, "1000", "leader loop period", O(scheduler_interval_ms)},
    {"stream-timeout-s", CFG_INT, "600", "longest proxied inference request", O(stream_timeout_s)},
    {"cors-origins", CFG_STRING, NULL,
     "origins (comma-separated, exact) allowed to call the gateway from a browser "
     "[default: the API listener's own origin, which serves the console]",
     O(cors_origins)},
    {"hold-s", CFG_INT, "30",
     "how long the gateway holds a request while its endpoint has no ready replica", O(hold_s)},
    /* 80 = what a runtime takes at once as the agent starts it (--max-batch 16 running plus
     * --queue-limit 64 waiting): past it a runtime answers 503, so the gateway waits instead. */
    {"replica-max-outstanding", CFG_INT, "80",
     "requests this gateway has at one replica at once; more wait in the gateway, in order, up "
     "to --hold-s (0: no limit)",
     O(replica_max_outstanding)},
    {"billing-period-s", CFG_INT, "60", "length of a billing period (closed and charged once)",
     O(billing_period_s)},
    {"credit-grace-s", CFG_INT, "300",
     "how long an account may stay overdrawn before its time-billed endpoints stop",
     O(credit_grace_s)},
    {"overdraft-micros", CFG_INT, "0",
     "how far below zero value-billed requests admitted together may take a balance",
     O(overdraft_micros)},
    {"lease-ttl-s", CFG_INT, "60",
     "a gateway's balance lease (its holds) lapses this long after its last renewal",
     O(lease_ttl_s)},
    {"lease-chunk-micros", CFG_INT, "1000000",
     "how much of an account's balance a gateway reserves at a time for value-billed requests",
     O(lease_chunk_micros)},
    {"no-leader", CFG_BOOL, "false", "never run the leader loops here", O(no_leader)},
    {"unlocked-leader", CFG_BOOL, "false",
     "TESTS ONLY: run the leader loops without election (proves metering is idempotent)",
     O(unlocked_leader)},
    {"log-level", CFG_STRING, "info", "debug | info | warn | error", O(log_level)},
    {"signup", CFG_STRING, "on", "on | off: may anyone create an account (POST /v1/auth/signup)",
     O(signup)},
    {"cookie-secure", CFG_BOOL, "false",
     "mark session cookies Secure (turn on behind a TLS-terminating proxy)", O(cookie_secure)},
    {"tls-cert", CFG_STRING, NULL,
     "PEM certificate (chain): with --tls-key, the api and gateway listeners speak HTTPS only",
     O(tls_cert)},
    {"tls-key", CFG_STRING, NULL, "PEM private key of --tls-cert", O(tls_key)},
    {"connection-timeout-s", CFG_INT, "60", "idle connections close after this many seconds",
     O(connection_timeout_s)},
    {"connection-memory-kib", CFG_INT, "64",
     "memory per connection for its request line, headers and buffers (larger headers: 431)",
     O(connection_memory_kib)},
    /* The gateway's clients are API clients and the console's playground: their headers are a
     * key or a session cookie, and libmicrohttpd clears a connection's whole memory between two
     * requests (9 % of the gateway's throughput at 64 KiB, docs/benchmarks.md). 16 KiB holds
     * about 8 KiB of request line and headers. */
    {"gateway-connection-memory-kib", CFG_INT, "16",
     "memory per gateway connection for its request line, headers and buffers (larger headers: "
     "431)",
     O(gateway_connection_memory_kib)},
    {"list-cache-ms", CFG_INT, "250",
     "reuse an account's GET /v1/endpoints page this long (0: off); this API's own changes "
     "empty it at once",
     O(list_cache_ms)},
};
#define NOPTS (sizeof serve_opts / sizeof serve_opts[0])

static volatile sig_atomic_t quit;
static void on_signal(int sig)
{
    (void)sig;
    quit = 1;
}

/* Default data directories: <exe>/../../<name> (the build tree), else
 * <exe>/../share/openrunpod/<name> (an install). Returns a static string, one of DEFAULT_DIRS
 * kept at once: one per caller in parse(). */
#define DEFAULT_DIRS 3
static const char *default_dir(const char *name)
{
    static char out[DEFAULT_DIRS][4096];
    static int which;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return name;
    exe[n] = '\0';
    char *dir = dirname(exe);
    char *o = out[which++ % DEFAULT_DIRS];
    snprintf(o, sizeof out[0], "%s/../../%s", dir, name);
    if (access(o, R_OK) == 0) return o;
    snprintf(o, sizeof out[0], "%s/../share/openrunpod/%s", dir, name);
    return o;
}

static int parse(struct ctl_config *cfg, int argc, char **argv, int first, const char *usage)
{
    char err[256];
    int rc = cfg_parse(serve_opts, NOPTS, cfg, "ORP", argc, argv, first, err, sizeof err);
    if (rc == 1) {
        cfg_print_help(stdout, usage, serve_opts, NOPTS, "ORP");
        exit(0);
    }
    if (rc < 0) {
        fprintf(stderr, "orp-controller: %s\n", err);
        return -1;
    }
    if (!cfg->web_dir) cfg->web_dir = default_dir("web");
    if (!cfg->schema_dir) cfg->schema_dir = default_dir("schema");
    if (!cfg->openapi_file) cfg->openapi_file = default_dir("docs/openapi.json");
    if (!cfg->tls_cert != !cfg->tls_key) {
        fprintf(stderr, "orp-controller: --tls-cert and --tls-key go together\n");
        return -1;
    }
    if (cfg->tls_cert) cfg->cookie_secure = 1; /* served over TLS: cookies never travel in clear */
    if (cfg->connection_timeout_s < 1 || cfg->connection_memory_kib < 16 ||
        cfg->gateway_connection_memory_kib < 16) {
        fprintf(stderr, "orp-controller: --connection-timeout-s must be >= 1, and "
                        "--connection-memory-kib and --gateway-connection-memory-kib >= 16\n");
        return -1;
    }
    log_init("controller", cfg->log_level);
    return 0;
}

static PGconn *connect_or_die(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "orp-controller: cannot connect to the database: %s", PQerrorMessage(c));
        PQfinish(c);
        exit(1);
    }
    db_quiet_notices(c);
    return c;
}

static int cmd_migrate(struct ctl_config *cfg)
{
    PGconn *c = connect_or_die(cfg->database_url);
    int n = migrate_run(c, cfg->schema_dir);
    PQfinish(c);
    if (n < 0) return 1;
    printf("%d migration(s) applied\n", n);
    return 0;
}

/* ---- admin create, account create ---- */

struct admin_new {
    const char *role; /* admin (the operator) or owner (a customer account's owner) */
    const char *email;
    const char *credit;
    char key[AUTH_KEY_LEN + 1];
};

static enum db_status admin_txn(PGconn *c, void *arg)
{
    struct admin_new *an = arg;
    PGresult *r;
    const char *pa[] = {an->email};
    enum db_status st =
        db_exec(c, "INSERT INTO accounts (name) VALUES ($1) RETURNING id", 1, pa, &r, NULL);
    if (st < 0) return st;
    char acct[24];
    snprintf(acct, sizeof acct, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    const char *pu[] = {acct, an->email, an->role};
    st = db_exec(c,
                 "INSERT INTO users (account_id, email, role) VALUES ($1::bigint, $2, $3) "
                 "RETURNING id",
                 3, pu, &r, NULL);
    if (st < 0) return st;
    int64_t user = db_int(r, 0, 0);
    PQclear(r);
    if ((st = auth_create_key(c, strtoll(acct, NULL, 10), user, "admin", an->key)) < 0) return st;
    char idem[64];
    snprintf(idem, sizeof idem, "initial-credit:%s", acct);
    return billing_credit(c, strtoll(acct, NULL, 10), strtoll(an->credit, NULL, 10), idem,
                          "initial credit");
}

static int cmd_admin(int argc, char **argv)
{
    struct {
        const char *email, *credit, *database_url, *log_level;
    } o;
    static const struct cfg_opt opts[] = {
        {"email", CFG_STRING, NULL, "the operator's e-mail", 0},
        {"credit-micros", CFG_STRING, "100000000", "initial credit in micro-units", sizeof(char *)},
        {"database-url", CFG_STRING, "postgresql:///openrunpod", "PostgreSQL connection string",
         2 * sizeof(char *)},
        {"log-level", CFG_STRING, "warn", "log level", 3 * sizeof(char *)},
    };
    char err[256];
    const char *what = argv[1]; /* "admin" or "account" */
    if (argc < 3 || strcmp(argv[2], "create") != 0) {
        fprintf(stderr, "usage: orp-controller %s create --email E [--credit-micros N]\n", what);
        return 2;
    }
    int rc = cfg_parse(opts, 4, &o, "ORP", argc, argv, 3, err, sizeof err);
    if (rc == 1) {
        cfg_print_help(stdout, "orp-controller admin|account create --email E", opts, 4, "ORP");
        return 0;
    }
    if (rc < 0 || !o.email || !strchr(o.email, '@')) {
        fprintf(stderr, "orp-controller: %s\n", rc < 0 ? err : "--email E is required");
        return 2;
    }
    char *end;
    long long credit = strtoll(o.credit, &end, 10);
    if (*end || credit < 0) {
        fprintf(stderr, "orp-controller: --credit-micros must be a non-negative integer\n");
        return 2;
    }
    log_init("controller", o.log_level);
    PGconn *c = connect_or_die(o.database_url);
    struct admin_new an = {!strcmp(what, "admin") ? "admin" : "owner", o.email, o.credit, {0}};
    enum db_status st = db_txn_run(c, admin_txn, &an);
    PQfinish(c);
    if (st < 0) {
        fprintf(stderr, "orp-controller: could not create the account (does %s exist already?)\n",
                o.email);
        return 1;
    }
    printf("%s\n", an.key);
    return 0;
}

/* ---- model add ---- */

/* The manifest of a local checkpoint: every regular file under the directory (recursively, sorted
 * by path) with its size and sha256. Agents verify what they fetch against it. */
static json_t *manifest_files; /* nftw has no user argument */
static size_t manifest_root_len;

static int sha256_file(const char *path, char out[65])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    static unsigned char buf[1 << 16];
    ssize_t got;
    while ((got = read(fd, buf, sizeof buf)) > 0)
        EVP_DigestUpdate(ctx, buf, (size_t)got);
    close(fd);
    unsigned char md[32];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx, md, &len);
    EVP_MD_CTX_free(ctx);
    if (got < 0) return -1;
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

static int manifest_visit(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)f;
    if (flag != FTW_F || !S_ISREG(st->st_mode)) return 0;
    char hex[65];
    if (sha256_file(path, hex) != 0) {
        fprintf(stderr, "orp-controller: cannot read %s\n", path);
        return 1;
    }
    json_array_append_new(manifest_files,
                          json_pack("{s:s, s:I, s:s}", "path", path + manifest_root_len + 1, "size",
                                    (json_int_t)st->st_size, "sha256", hex));
    return 0;
}

static int cmp_path(const void *a, const void *b)
{
    return strcmp(json_string_value(json_object_get(*(json_t *const *)a, "path")),
                  json_string_value(json_object_get(*(json_t *const *)b, "path")));
}

static json_t *manifest_of_dir(const char *dir)
{
    char root[PATH_MAX];
    snprintf(root, sizeof root, "%s", dir);
    size_t n = strlen(root);
    while (n > 1 && root[n - 1] == '/')
        root[--n] = '\0';
    manifest_files = json_array();
    manifest_root_len = n;
    if (nftw(root, manifest_visit, 16, FTW_PHYS) != 0) {
        json_decref(manifest_files);
        return NULL;
    }
    size_t count = json_array_size(manifest_files);
    json_t **items = calloc(count + 1, sizeof *items);
    for (size_t i = 0; i < count; i++)
        items[i] = json_incref(json_array_get(manifest_files, i));
    qsort(items, count, sizeof *items, cmp_path);
    json_t *files = json_array();
    for (size_t i = 0; i < count; i++)
        json_array_append_new(files, items[i]);
    free(items);
    json_decref(manifest_files);
    return json_pack("{s:o}", "files", files);
}

static int cmd_model(int argc, char **argv)
{
    struct {
        const char *name, *source, *family, *context, *min_devices, *kinds, *in_price, *out_price,
            *database_url, *manifest;
    } o;
    static const struct cfg_opt opts[] = {
        {"name", CFG_STRING, NULL, "catalog name", 0},
        {"source", CFG_STRING, NULL,
         "checkpoint: a directory on the hosts, file:///dir or http(s)://host/dir/",
         1 * sizeof(char *)},
        {"family", CFG_STRING, "llama", "architecture family", 2 * sizeof(char *)},
        {"context", CFG_STRING, "4096", "context length", 3 * sizeof(char *)},
        {"min-devices", CFG_STRING, "1", "devices needed per replica", 4 * sizeof(char *)},
        {"device-kinds", CFG_STRING, "gpu", "comma list: gpu,cpu", 5 * sizeof(char *)},
        {"input-price-micros-per-mtok", CFG_STRING, "0", "price per million input tokens",
         6 * sizeof(char *)},
        {"output-price-micros-per-mtok", CFG_STRING, "0", "price per million output tokens",
         7 * sizeof(char *)},
        {"database-url", CFG_STRING, "postgresql:///openrunpod", "PostgreSQL connection string",
         8 * sizeof(char *)},
        {"manifest", CFG_STRING, NULL,
         "JSON file {\"files\":[{\"path\",\"size\",\"sha256\"}]} [default: computed from a "
         "local or file:// source; required for http(s)]",
         9 * sizeof(char *)},
    };
    char err[256];
    if (argc < 3 || strcmp(argv[2], "add") != 0) {
        fprintf(stderr, "usage: orp-controller model add --name N --source URI [...]\n");
        return 2;
    }
    int rc = cfg_parse(opts, 10, &o, "ORP", argc, argv, 3, err, sizeof err);
    if (rc == 1) {
        cfg_print_help(stdout, "orp-controller model add --name N --source URI", opts, 10, "ORP");
        return 0;
    }
    if (rc < 0 || !o.name || !o.source) {
        fprintf(stderr, "orp-controller: %s\n", rc < 0 ? err : "--name and --source are required");
        return 2;
    }
    log_init("controller", "warn");
    const char *src_dir = !strncmp(o.source, "file://", 7) ? o.source + 7 : o.source;
    int remote = !strncmp(o.source, "http://", 7) || !strncmp(o.source, "https://", 8);
    if (!remote && src_dir[0] != '/') {
        fprintf(stderr, "orp-controller: --source must be an absolute directory, file:///dir or "
                        "http(s)://host/dir/\n");
        return 2;
    }
    json_t *manifest = NULL;
    if (o.manifest) {
        json_error_t je;
        manifest = json_load_file(o.manifest, 0, &je);
        if (!manifest || !json_is_array(json_object_get(manifest, "files"))) {
            fprintf(stderr, "orp-controller: %s: not a manifest (%s)\n", o.manifest,
                    manifest ? "no \"files\" array" : je.text);
            json_decref(manifest);
            return 2;
        }
    } else if (remote) {
        fprintf(stderr, "orp-controller: an http(s) source needs --manifest FILE.json\n");
        return 2;
    } else if (!(manifest = manifest_of_dir(src_dir))) {
        fprintf(stderr, "orp-controller: cannot compute the manifest of %s\n", src_dir);
        return 1;
    }
    char *manifest_txt = json_dumps(manifest, JSON_COMPACT);
    json_decref(manifest);
    char kinds[64];
    snprintf(kinds, sizeof kinds, "{%s}", o.kinds);
    PGconn *c = connect_or_die(o.database_url);
    const char *p[] = {o.name, o.family,   o.source,    o.context,   o.min_devices,
                       kinds,  o.in_price, o.out_price, manifest_txt};
    enum db_status st = db_cmd(
        c,
        "INSERT INTO models (name, family, source, context_length, min_devices, device_kinds, "
        "  input_price_micros_per_mtok, output_price_micros_per_mtok, manifest) "
        "VALUES ($1, $2, $3, $4::int, $5::int, $6::text[], $7::bigint, $8::bigint, $9::jsonb) "
        "ON CONFLICT (name) DO UPDATE SET family = $2, source = $3, context_length = $4::int, "
        "  min_devices = $5::int, device_kinds = $6::text[], "
        "  input_price_micros_per_mtok = $7::bigint, output_price_micros_per_mtok = $8::bigint, "
        "  manifest = $9::jsonb",
        9, p);
    PQfinish(c);
    free(manifest_txt);
    if (st < 0) {
        fprintf(stderr, "orp-controller: could not add model %s (bad values?)\n", o.name);
        return 1;
    }
    printf("model %s added\n", o.name);
    return 0;
}

/* ---- serve ---- */

/* A listener's routes come from several modules' tables, each owned by its module; they are
 * joined in order at start (the API's static-file catch-all must stay last). */
struct route_table {
    const struct httpd_route *routes;
    const size_t *n;
};

struct listener_spec {
    const char *name;
    const struct route_table *tables;
    size_t ntables;
    int64_t port;
};

static const struct route_table api_tables[] = {
    {presets_routes, &presets_nroutes}, {console_routes, &console_nroutes},
    {logs_routes, &logs_nroutes},       {hosts_routes, &hosts_nroutes},
    {billing_routes, &billing_nroutes}, {accounts_routes, &accounts_nroutes},
    {audit_routes, &audit_nroutes},     {openapi_routes, &openapi_nroutes},
    {admin_routes, &admin_nroutes},     {api_routes, &api_nroutes}};
static const struct route_table gateway_tables[] = {{gateway_routes, &gateway_nroutes}};
static const struct route_table agent_tables[] = {{agentapi_routes, &agentapi_nroutes}};
#define NTABLES(t) (sizeof(t) / sizeof((t)[0]))

/* A new array holding every route of the spec's tables (caller frees). */
static struct httpd_route *join_routes(const struct listener_spec *spec, size_t *n_out)
{
    size_t n = 0;
    for (size_t t = 0; t < spec->ntables; t++)
        n += *spec->tables[t].n;
    struct httpd_route *all = calloc(n, sizeof *all);
    if (!all) return NULL;
    size_t k = 0;
    for (size_t t = 0; t < spec->ntables; t++)
        for (size_t i = 0; i < *spec->tables[t].n; i++)
            all[k++] = spec->tables[t].routes[i];
    *n_out = n;
    return all;
}

static int cmd_serve(struct ctl_config *cfg)
{
    PGconn *c = connect_or_die(cfg->database_url);
    int n = migrate_run(c, cfg->schema_dir);
    PQfinish(c);
    if (n < 0) return 1;

    static struct ctl ctl;
    ctl.cfg = *cfg;
    ctl.rl = rl_new();
    if (!strcmp(cfg->only, "all") || !strcmp(cfg->only, "gateway")) {
        struct lease_config lc = {cfg->database_url, cfg->lease_ttl_s, cfg->lease_chunk_micros,
                                  cfg->overdraft_micros, cfg->billing_period_s};
        ctl.lease = lease_new(&lc);
        if (!ctl.lease) log_error("cannot start the balance leases: value-billed requests get 503");
    }
    struct listener_spec specs[] = {
        {"api", api_tables, NTABLES(api_tables), cfg->api_port},
        {"gateway", gateway_tables, NTABLES(gateway_tables), cfg->gateway_port},
        {"agent-api", agent_tables, NTABLES(agent_tables), cfg->agent_port},
    };
    /* TLS material is read once; the listeners keep pointing at it until they stop. */
    char *tls_cert = NULL, *tls_key = NULL;
    if (cfg->tls_cert) {
        size_t len;
        tls_cert = util_read_file(cfg->tls_cert, &len);
        tls_key = util_read_file(cfg->tls_key, &len);
        if (!tls_cert || !tls_key) {
            log_error("cannot read --tls-cert %s or --tls-key %s", cfg->tls_cert, cfg->tls_key);
            free(tls_cert);
            free(tls_key);
            return 1;
        }
    }
    struct httpd_route *routes[3] = {0};
    struct ctl_listener lis[3];
    struct httpd_server *srv[3] = {0};
    int started = 0;
    for (int i = 0; i < 3; i++) {
        lis[i].ctl = &ctl;
        lis[i].pool = NULL;
        if (strcmp(cfg->only, "all") && strcmp(cfg->only, specs[i].name)) continue;
        if (!strcmp(specs[i].name, "agent-api") && !cfg->agent_token)
            log_warn("no --agent-token: agents cannot register");
        size_t nroutes = 0;
        routes[i] = join_routes(&specs[i], &nroutes);
        lis[i].pool = db_pool_new(cfg->database_url, (int)cfg->db_pool_size,
                                  (int)cfg->db_timeout_ms, specs[i].name);
        struct httpd_config hc = {
            .name = specs[i].name,
            .host = cfg->listen_host,
            .port = (int)specs[i].port,
            .threads = (int)cfg->threads,
            .conn_limit = (unsigned)cfg->max_connections,
            .per_ip_limit = (unsigned)cfg->per_ip_connections,
            .conn_timeout_s = (unsigned)cfg->connection_timeout_s,
            .max_body = (size_t)cfg->max_body,
            .conn_memory_limit =
                (size_t)(i == 1 ? cfg->gateway_connection_memory_kib : cfg->connection_memory_kib) *
                1024,
            /* Agents talk to the agent listener on the operators' own network (docs). */
            .tls_cert_pem = i < 2 ? tls_cert : NULL,
            .tls_key_pem = i < 2 ? tls_key : NULL,
            .routes = routes[i],
            .nroutes = nroutes,
            .app = &lis[i],
            /* The gateway's threads are its loops (gateway_proxy.c): each serves its clients and
             * their upstream transfers without handing a request to another thread. */
            .external_loops = i == 1,
        };
        char err[256];
        srv[i] = httpd_start(&hc, err, sizeof err);
        if (srv[i] && i == 1 && gwp_loops_start(&lis[i], srv[i]) != 0) {
            snprintf(err, sizeof err, "gateway listener: cannot start its loops");
            gwp_loops_stop();
            httpd_stop(srv[i]);
            srv[i] = NULL;
        }
        if (!srv[i]) {
            log_error("%s", err);
            for (int j = 0; j < i; j++)
                httpd_stop(srv[j]);
            return 1;
        }
        log_info("%s listener on %s://%s:%d", specs[i].name, tls_cert && i < 2 ? "https" : "http",
                 cfg->listen_host, httpd_port(srv[i]));
        started++;
    }
    if (!started && strcmp(cfg->only, "none") != 0) {
        log_error("--only %s matches no listener", cfg->only);
        return 2;
    }
    if (!cfg->no_leader && leader_start(&ctl) != 0) log_error("cannot start the leader loop");
    while (!quit)
        util_sleep_ms(200);
    log_info("stopping");
    leader_stop();
    if (srv[1]) gwp_loops_stop(); /* before its listener stops (httpd.h) */
    for (int i = 0; i < 3; i++) {
        httpd_stop(srv[i]);
        db_pool_free(lis[i].pool);
        free(routes[i]);
    }
    lease_free(ctl.lease); /* after the listeners: no request is left to end its reservation */
    rl_free(ctl.rl);
    free(tls_cert);
    free(tls_key);
    return 0;
}

int main(int argc, char **argv)
{
    const char *usage = "usage: orp-controller serve|migrate [options]\n"
                        "       orp-controller admin|account create --email E [--credit-micros N]\n"
                        "       orp-controller model add --name N --source URI [options]\n"
                        "       orp-controller host list | token create [--ttl-s N] [--pool P]\n"
                        "       orp-controller host revoke|cordon|uncordon|drain ID | drain-step";
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        puts(usage);
        return argc < 2 ? 2 : 0;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct ctl_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int rc;
    if (!strcmp(argv[1], "serve")) {
        rc = parse(&cfg, argc, argv, 2, "usage: orp-controller serve [options]");
        if (rc == 0) rc = cmd_serve(&cfg);
    } else if (!strcmp(argv[1], "migrate")) {
        rc = parse(&cfg, argc, argv, 2, "usage: orp-controller migrate [options]");
        if (rc == 0) rc = cmd_migrate(&cfg);
    } else if (!strcmp(argv[1], "admin") || !strcmp(argv[1], "account")) {
        rc = cmd_admin(argc, argv);
    } else if (!strcmp(argv[1], "model")) {
        rc = cmd_model(argc, argv);
    } else if (!strcmp(argv[1], "host")) {
        rc = hosts_cli(argc, argv);
    } else {
        fprintf(stderr, "orp-controller: unknown command '%s'\n%s\n", argv[1], usage);
        rc = 2;
    }
    curl_global_cleanup();
    return rc < 0 ? 2 : rc;
}

/* ctl: see ctl.h. */
#include "ctl.h"

PGconn *ctl_db(struct httpd_req *req)
{
    struct ctl_listener *l = req->app;
    PGconn *c = db_acquire(l->pool);
    if (!c) {
        req->retry_after = 1;
        httpd_error(req, 503, "database_unavailable", NULL,
                    "the database is busy or unreachable; retry shortly");
    }
    return c;
}

void ctl_db_done(struct httpd_req *req, PGconn *c)
{
    struct ctl_listener *l = req->app;
    db_release(l->pool, c);
}

/* httpd_internal: the pieces of httpd.c that tests reach without a socket (tests/fuzz). Nothing
 * outside common/httpd.c and the tests may include this header; handlers see only httpd.h. */
#ifndef ORP_HTTPD_INTERNAL_H
#define ORP_HTTPD_INTERNAL_H

#include "httpd.h"

/* 1 when path matches pattern (see struct httpd_route), writing the captured segments into
 * req->params and their count into req->nparams; 0 otherwise (req->params may then hold partial
 * captures). Only params and nparams of req are touched. */
int httpd_match_route(const char *pattern, const char *path, struct httpd_req *req);

#endif

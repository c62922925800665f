/* gateway: the OpenAI-compatible inference listener (/v1/chat/completions, /v1/models). It
 * authenticates the caller, resolves the `model` field to one of the caller's endpoints, picks a
 * ready replica of the current epoch, makes the request id that billing will use, and proxies
 * the request to that replica's runtime, streaming the reply back as it arrives.
 *
 * Threads: a proxied request is carried by one proxy thread running a blocking libcurl transfer;
 * the client's connection is suspended in libmicrohttpd while it waits, and resumed when bytes
 * arrive. The proxy struct is shared by the two sides and freed by whichever lets go last
 * (a reference count under its mutex). No database connection is held while waiting on a
 * runtime. */
#ifndef ORP_GATEWAY_H
#define ORP_GATEWAY_H

#include "httpd.h"

extern const struct httpd_route gateway_routes[];
extern const size_t gateway_nroutes;

#endif

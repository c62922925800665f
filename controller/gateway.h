/* gateway: the OpenAI-compatible inference listener (/v1/chat/completions, /v1/models). It
 * authenticates the caller, resolves the `model` field to one of the caller's endpoints, picks a
 * ready replica of the current epoch, makes the request id that billing will use, and proxies
 * the request to that replica's runtime, streaming the reply back as it arrives.
 *
 * Threads: the handler runs on the listener's libmicrohttpd threads and never blocks on a
 * runtime; the transfer to the runtime runs on an upstream event loop (gateway_proxy.c), and the
 * client's connection is suspended in libmicrohttpd while it waits, and resumed when bytes
 * arrive. No database connection is held while waiting on a
 * runtime. */
#ifndef ORP_GATEWAY_H
#define ORP_GATEWAY_H

#include "httpd.h"

extern const struct httpd_route gateway_routes[];
extern const size_t gateway_nroutes;

#endif

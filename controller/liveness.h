/* liveness: decides which hosts are lost. Run by the leader; the only code that marks a host
 * lost. */
#ifndef ORP_LIVENESS_H
#define ORP_LIVENESS_H

#include <stdint.h>

#include "db.h"

/* One liveness pass: hosts silent longer than timeout_ms are marked lost and their replicas go
 * back to pending, unless most hosts went silent at once (then the controller's own network is
 * at fault and nobody is marked lost). Returns the number of hosts marked lost or -1. */
int liveness_pass(PGconn *c, int64_t timeout_ms);

#endif

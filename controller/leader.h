/* leader: the loops that must run in one controller at a time (scheduler, host liveness). A
 * controller becomes leader by holding a session-level advisory lock on a dedicated connection
 * with TCP keepalives (so a dead leader's lock is released in seconds, not hours); each pass is
 * idempotent, so a pass repeated by a new leader changes nothing. */
#ifndef ORP_LEADER_H
#define ORP_LEADER_H

#include "ctl.h"

int leader_start(struct ctl *ctl); /* starts the thread; 0 or -1 */
void leader_stop(void);

/* One liveness pass: hosts silent longer than timeout_ms are marked lost and their replicas go
 * back to pending, unless most hosts went silent at once (then the controller's own network is
 * at fault and nobody is marked lost). Returns the number of hosts marked lost or -1. */
int leader_liveness_pass(PGconn *c, int64_t timeout_ms);

#endif

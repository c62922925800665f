/* leader: the loops that must run in one controller at a time (scheduler, host liveness). A
 * controller becomes leader by holding a session-level advisory lock on a dedicated connection
 * with TCP keepalives (so a dead leader's lock is released in seconds, not hours); each pass is
 * idempotent, so a pass repeated by a new leader changes nothing. */
#ifndef ORP_LEADER_H
#define ORP_LEADER_H

#include "ctl.h"

int leader_start(struct ctl *ctl); /* starts the thread; 0 or -1 */
void leader_stop(void);

#endif

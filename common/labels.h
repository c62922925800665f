/* labels: the one definition of a label set, shared by the three places that take one: a host's
 * labels (the agent's --labels, PUT /v1/admin/hosts/{id}/labels) and an endpoint's host_selector
 * (POST and PATCH /v1/endpoints), which the scheduler matches by equality, each pair required on
 * the host, like a Kubernetes nodeSelector. The character sets keep '=' and ',' out of both sides,
 * so "k=v,k2=v2" on the command line and the scheduler's "\nk=v\n" lines cannot be ambiguous. */
#ifndef ORP_LABELS_H
#define ORP_LABELS_H

#include <jansson.h>

#include "jsonx.h"

/* At most 16 pairs: a handful describe a host (zone, rack, gpu class, interconnect); the bound
 * keeps a host's labels inside the scheduler's fixed per-host buffer (SCHED_LABELS_MAX). */
#define LABELS_MAX 16
/* Kubernetes' limit for a name and a value: 63 characters each. */
#define LABELS_KEY_MAX 63
#define LABELS_VALUE_MAX 63

/* 0 when v is a valid label set: a JSON object of at most LABELS_MAX pairs, each key 1..63 of
 * [A-Za-z0-9._/-] beginning with a letter or digit, each value a string of 0..63 of
 * [A-Za-z0-9._-]. Otherwise -1 with err naming param (and the key at fault). */
int labels_check(const json_t *v, const char *param, struct jsonx_err *err);

/* "k=v,k2=v2" (the agent's --labels; "" is no labels) as a checked label set: a new reference, or
 * NULL with err. */
json_t *labels_parse(const char *spec, struct jsonx_err *err);

#endif

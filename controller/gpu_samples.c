/* gpu_samples: see gpu_samples.h. */
#include "gpu_samples.h"

#include <stdio.h>

#include "db.h"
#include "jsonx.h"
#include "log.h"
#include "util.h"

/* A reading as the contract allows it, or -1 with why in je. Absent (or null) values are kept as
 * null: the GPU could not give that reading. */
static int pick(json_t *g, json_t *out, struct jsonx_err *je)
{
    const char *uuid;
    int64_t v;
    if (!json_is_object(g)) {
        snprintf(je->message, sizeof je->message, "not an object");
        return -1;
    }
    if (jsonx_get_string(g, "uuid", 1, &uuid, 96, je) != JSONX_OK) return -1;
    json_t *o = json_pack("{s:s}", "uuid", uuid);
    static const struct {
        const char *key;
        int64_t min, max;
    } fields[] = {{"utilization_percent", 0, 100},
                  {"memory_used_mib", 0, INT64_C(1) << 40},
                  {"temperature_c", -100, 200}};
    for (size_t i = 0; o && i < sizeof fields / sizeof fields[0]; i++) {
        enum jsonx_rc rc = jsonx_get_int(g, fields[i].key, 0, fields[i].min, fields[i].max, &v, je);
        if (rc == JSONX_BAD) {
            json_decref(o);
            return -1;
        }
        json_object_set_new(o, fields[i].key, rc == JSONX_OK ? json_integer(v) : json_null());
    }
    if (!o || json_array_append_new(out, o) != 0) {
        snprintf(je->message, sizeof je->message, "out of memory");
        return -1;
    }
    return 0;
}

int gpu_samples_store(PGconn *c, int64_t host_id, json_t *gpus)
{
    if (!gpus) return 0;
    if (!json_is_array(gpus) || json_array_size(gpus) > GPU_SAMPLES_MAX) {
        log_warn("host %lld: 'gpus' must be an array of at most %d readings; dropped",
                 (long long)host_id, GPU_SAMPLES_MAX);
        return 0;
    }
    json_t *ok = json_array();
    size_t i;
    json_t *g;
    json_array_foreach(gpus, i, g)
    {
        struct jsonx_err je = {0};
        if (pick(g, ok, &je) != 0)
            log_warn("host %lld: gpus[%zu] is malformed and was dropped: %s", (long long)host_id, i,
                     je.message);
    }
    int rc = 0;
    if (json_array_size(ok) > 0) {
        char hid[24];
        snprintf(hid, sizeof hid, "%lld", (long long)host_id);
        char *arr = jsonx_dump(ok);
        const char *p[] = {hid, arr};
        /* One statement for the host's readings; only its own GPUs (not CPU slots) match. */
        enum db_status st =
            arr ? db_cmd(c,
                         "INSERT INTO gpu_samples AS s (gpu_id, utilization_percent, "
                         "  memory_used_mib, temperature_c, sampled_at) "
                         "SELECT g.id, x.utilization_percent, x.memory_used_mib, "
                         "  x.temperature_c, now() "
                         "FROM json_to_recordset($2::json) AS x(uuid text, "
                         "  utilization_percent smallint, memory_used_mib bigint, "
                         "  temperature_c smallint) "
                         "JOIN gpus g ON g.uuid = x.uuid AND g.host_id = $1::bigint "
                         "  AND g.kind = 'gpu' "
                         "ON CONFLICT (gpu_id) DO UPDATE SET "
                         "  utilization_percent = EXCLUDED.utilization_percent, "
                         "  memory_used_mib = EXCLUDED.memory_used_mib, "
                         "  temperature_c = EXCLUDED.temperature_c, "
                         "  sampled_at = EXCLUDED.sampled_at",
                         2, p)
                : DB_HARD;
        free(arr);
        if (st < 0) {
            log_warn("host %lld: could not store %zu GPU readings", (long long)host_id,
                     json_array_size(ok));
            rc = -1;
        }
    }
    json_decref(ok);
    return rc;
}

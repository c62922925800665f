/* nvml_inventory: the agent's own NVML inventory (agent/inventory.c, NVML loaded with dlopen) as
 * one JSON object on stdout, so a run on a real GPU machine proves the agent's reading of NVML on
 * real data and leaves it as a fixture (tests/fixtures/nvml-*.json). Built by ops/gpu/run.sh
 * against the build's liborp_agent_core.a; not part of the CMake build (it would add nothing a
 * CPU-only CI could run).
 *
 *     nvml_inventory [NVML_LIB]    (default: libnvidia-ml.so.1, as the agent)
 *
 * "devices" is exactly what the agent would register with the controller; "samples" is one round
 * of its /metrics readings. Exit 0 with at least one GPU, 1 when NVML gives none. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "inventory.h"

int main(int argc, char **argv)
{
    const char *lib = argc > 1 ? argv[1] : NULL;
    char host[256] = "host";
    gethostname(host, sizeof host - 1);
    struct inv inv = {0};
    if (inv_collect(&inv, host, 0, lib) != 0) {
        fprintf(stderr, "nvml_inventory: out of memory\n");
        return 2;
    }
    json_t *out = json_pack("{s:s, s:o, s:I}", "nvml_lib", lib ? lib : "libnvidia-ml.so.1",
                            "devices", inv_to_json(&inv), "gpus", (json_int_t)inv.gpus);
    json_t *samples = json_array();
    struct inv_nvml *h = inv_nvml_open(lib);
    struct inv_gpu_sample *s = NULL;
    size_t n = 0;
    if (h && inv_nvml_sample(h, &s, &n) == 0)
        for (size_t i = 0; i < n; i++)
            json_array_append_new(
                samples,
                json_pack(
                    "{s:i, s:s, s:s, s:i, s:o, s:o, s:o, s:o, s:o}", "index", s[i].index, "uuid",
                    s[i].uuid, "model", s[i].model, "have", (int)s[i].have, "util_pct",
                    s[i].have & INV_HAVE_UTIL ? json_integer(s[i].util_pct) : json_null(),
                    "mem_used",
                    s[i].have & INV_HAVE_MEMORY ? json_integer((json_int_t)s[i].mem_used)
                                                : json_null(),
                    "mem_total",
                    s[i].have & INV_HAVE_MEMORY ? json_integer((json_int_t)s[i].mem_total)
                                                : json_null(),
                    "temp_c", s[i].have & INV_HAVE_TEMP ? json_integer(s[i].temp_c) : json_null(),
                    "power_mw",
                    s[i].have & INV_HAVE_POWER ? json_integer(s[i].power_mw) : json_null()));
    free(s);
    inv_nvml_close(h);
    json_object_set_new(out, "samples", samples);
    json_dumpf(out, stdout, JSON_INDENT(1) | JSON_SORT_KEYS);
    putchar('\n');
    json_decref(out);
    int gpus = (int)inv.gpus;
    inv_free(&inv);
    return gpus > 0 ? 0 : 1;
}

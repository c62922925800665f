/* Inventory: GPUs through a fake NVML library (the dlopen path, return-code checks, a GPU whose
 * NVML calls fail is skipped, NUMA node, PCI bus id, NVLink peers both ways, ECC health), and
 * without NVML: CPU slots only, labelled as CPU, and zero devices
 * without them. */
#include <jansson.h>

#include "check.h"
#include "inventory.h"
#include "log.h"

int main(void)
{
    log_init("test_agent_inventory", "warn");
    struct inv inv;
    /* A library name that cannot load stands for a host without the NVIDIA driver. */
    CHECK_INT_EQ(inv_collect(&inv, "host-a", 2, "libnvidia-ml-absent.so.1"), 0);
    CHECK_INT_EQ(inv.n, 2);
    CHECK_STR_EQ(inv.dev[0].uuid, "CPU-host-a-0");
    CHECK_STR_EQ(inv.dev[1].uuid, "CPU-host-a-1");
    CHECK_STR_EQ(inv.dev[1].kind, "cpu");
    CHECK_STR_EQ(inv.dev[1].model, "CPU slot");
    CHECK_INT_EQ(inv.dev[1].index, 1);
    CHECK_INT_EQ(inv.dev[1].memory_mib, 0);

    json_t *a = inv_to_json(&inv);
    CHECK_INT_EQ(json_array_size(a), 2);
    char *txt = json_dumps(json_array_get(a, 0), JSON_COMPACT | JSON_SORT_KEYS);
    CHECK_STR_EQ(txt, "{\"index\":0,\"kind\":\"cpu\",\"memory_mib\":0,\"model\":\"CPU slot\","
                      "\"uuid\":\"CPU-host-a-0\"}");
    free(txt);
    json_decref(a);
    inv_free(&inv);

    CHECK_INT_EQ(inv_collect(&inv, "host-a", 0, "libnvidia-ml-absent.so.1"), 0);
    CHECK_INT_EQ(inv.n, 0);
    a = inv_to_json(&inv);
    CHECK_INT_EQ(json_array_size(a), 0);
    json_decref(a);
    inv_free(&inv);
    inv_free(NULL);

    /* A fake NVML: three GPUs, the second unable to report its memory. CPU slots come after. */
    CHECK_INT_EQ(inv_collect(&inv, "host-a", 1, FAKE_NVML_PATH), 0);
    CHECK_INT_EQ(inv.n, 3);
    CHECK_STR_EQ(inv.dev[0].uuid, "GPU-fake-0");
    CHECK_STR_EQ(inv.dev[0].kind, "gpu");
    CHECK_STR_EQ(inv.dev[0].model, "NVIDIA H100 80GB HBM3");
    CHECK_INT_EQ(inv.dev[0].memory_mib, 81559);
    CHECK_INT_EQ(inv.dev[0].index, 0);
    CHECK_STR_EQ(inv.dev[1].uuid, "GPU-fake-2");
    CHECK_INT_EQ(inv.dev[1].index, 2); /* NVML's index, kept although GPU 1 was skipped */
    CHECK_STR_EQ(inv.dev[2].uuid, "CPU-host-a-0");
    CHECK_STR_EQ(inv.dev[2].kind, "cpu");
    CHECK_INT_EQ(inv.dev[0].numa_node, 0);
    CHECK_INT_EQ(inv.dev[1].numa_node, 1);
    CHECK_STR_EQ(inv.dev[1].pci_bus_id, "00000000:12:00.0");
    CHECK_INT_EQ(inv.dev[0].healthy, 1); /* ECC not supported: no errors known */
    CHECK_INT_EQ(inv.dev[0].ecc_errors, 0);
    CHECK_INT_EQ(inv.dev[1].healthy, 0);
    CHECK_INT_EQ(inv.dev[1].ecc_errors, 2);
    CHECK_INT_EQ(inv.dev[1].retired_pages, 1);
    CHECK_INT_EQ(inv.dev[1].retirement_pending, 1);
    a = inv_to_json(&inv);
    txt = json_dumps(json_array_get(a, 0), JSON_COMPACT | JSON_SORT_KEYS);
    CHECK_STR_EQ(txt, "{\"ecc_errors\":0,\"healthy\":true,\"index\":0,\"kind\":\"gpu\","
                      "\"memory_mib\":81559,\"model\":\"NVIDIA H100 80GB HBM3\",\"numa_node\":0,"
                      "\"nvlink_peers\":[\"GPU-fake-2\"],\"pci_bus_id\":\"00000000:10:00.0\","
                      "\"retired_pages\":0,\"uuid\":\"GPU-fake-0\"}");
    free(txt);
    txt = json_dumps(json_object_get(json_array_get(a, 1), "nvlink_peers"), JSON_COMPACT);
    CHECK_STR_EQ(txt, "[\"GPU-fake-0\"]");
    free(txt);
    CHECK(json_is_false(json_object_get(json_array_get(a, 1), "healthy")));
    CHECK(json_object_get(json_array_get(a, 2), "numa_node") == NULL); /* CPU slot: none */
    json_decref(a);
    inv_free(&inv);

    /* On this machine, the real library if present: every GPU it lists is well formed. */
    CHECK_INT_EQ(inv_collect(&inv, "host-a", 1, NULL), 0);
    CHECK(inv.n >= 1);
    for (size_t i = 0; i + 1 < inv.n; i++) {
        CHECK_STR_EQ(inv.dev[i].kind, "gpu");
        CHECK(inv.dev[i].uuid[0] != '\0');
        CHECK(inv.dev[i].memory_mib > 0);
    }
    CHECK_STR_EQ(inv.dev[inv.n - 1].kind, "cpu");
    inv_free(&inv);
    printf("ok\n");
    return 0;
}

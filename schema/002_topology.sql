-- 002_topology: what placement needs to know about devices and hosts beyond their count.
--
-- gpus: where each GPU sits (NUMA node, PCI bus id) and which GPUs it reaches over NVLink
-- (nvlink_peers: UUIDs of GPUs on the same host), and its health as the agent last saw it
-- (uncorrected ECC errors since boot, retired or pending-retirement pages). The agent decides
-- `healthy` from those counts; the scheduler places nothing on an unhealthy GPU. numa_node -1 means
-- unknown (CPU slots, or a kernel that does not say); unknown never disqualifies a set.
ALTER TABLE gpus
    ADD COLUMN numa_node      integer NOT NULL DEFAULT -1,
    ADD COLUMN pci_bus_id     text NOT NULL DEFAULT '',
    ADD COLUMN nvlink_peers   text[] NOT NULL DEFAULT '{}',
    ADD COLUMN ecc_errors     bigint NOT NULL DEFAULT 0 CHECK (ecc_errors >= 0),
    ADD COLUMN retired_pages  integer NOT NULL DEFAULT 0 CHECK (retired_pages >= 0);

-- hosts: free-form labels an operator sets (placement constraints come later), and cordoned: no
-- new replica is placed on a cordoned host; what runs there keeps running.
ALTER TABLE hosts
    ADD COLUMN labels    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    ADD COLUMN cordoned  boolean NOT NULL DEFAULT false;

-- endpoints: the pool its replicas must run in; NULL means any pool.
ALTER TABLE endpoints ADD COLUMN pool text;

# Independent reader for collector/tests/k8s_e2e.rs: every Parquet file under DIR read with
# pyarrow; the columns the test checks, one JSON object per record. The Kubernetes name
# columns are exported by the sinks (issue 13): a lake without them is an error.
import glob
import json
import sys

import pyarrow.parquet as pq

COLS = ["observation_point", "network_transport", "source_address", "source_port",
        "destination_address", "destination_port", "packets"]
for end in ("source", "destination"):
    for f in ("k8s_pod_uid", "k8s_namespace", "k8s_pod_name", "k8s_owner_kind", "k8s_owner_name",
              "k8s_node_name", "k8s_service_name", "zone"):
        COLS.append(f"{end}_{f}")

files = sorted(glob.glob(sys.argv[1] + "/**/*.parquet", recursive=True))
if not files:
    sys.exit("no parquet files under " + sys.argv[1])
for f in files:
    names = pq.read_schema(f).names
    missing = [c for c in COLS if c not in names]
    if missing:
        sys.exit(f"{f}: no columns {missing} (the sinks' export of the Kubernetes names)")
    for row in pq.read_table(f, columns=COLS).to_pylist():
        print(json.dumps(row))

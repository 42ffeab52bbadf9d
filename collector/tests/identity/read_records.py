# Independent reader for collector/tests/identity_e2e.rs: every Parquet file under DIR read with
# pyarrow, the columns the test checks printed as one JSON object per record.
import glob
import json
import sys

import pyarrow.parquet as pq

COLS = [
    "observation_point", "network_transport", "source_address", "source_port",
    "destination_address", "destination_port", "packets", "flow_start",
]
for end in ("source", "destination"):
    for f in ("cgroup", "container_id", "k8s_pod_uid", "process_name", "process_pid", "label"):
        COLS.append(f"{end}_{f}")

files = sorted(glob.glob(sys.argv[1] + "/**/*.parquet", recursive=True))
if not files:
    sys.exit("no parquet files under " + sys.argv[1])
for f in files:
    t = pq.read_table(f, columns=COLS)
    for row in t.to_pylist():
        row["flow_start"] = str(row["flow_start"])
        print(json.dumps(row))

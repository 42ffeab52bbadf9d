# Independent reader for collector/tests/flood.rs: every Parquet file under DIR read with pyarrow;
# prints one JSON object: rows and packets per flow_end_reason, packets and bytes in total, and
# packets of the flood's sources (198.18.0.0/15) to the flood's destination port.
import glob
import ipaddress
import json
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq

files = sorted(glob.glob(sys.argv[1] + "/**/*.parquet", recursive=True))
if not files:
    sys.exit("no parquet files under " + sys.argv[1])
dport = int(sys.argv[2])
flood_net = ipaddress.ip_network("198.18.0.0/15")
out = {"files": len(files), "rows": 0, "packets": 0, "bytes": 0, "reasons": {},
       "flood_packets": 0, "flood_bytes": 0, "flood_rows": 0}
for f in files:
    t = pq.read_table(f, columns=["flow_end_reason", "packets", "bytes", "source_address",
                                  "destination_port"])
    out["rows"] += t.num_rows
    out["packets"] += pc.sum(t["packets"]).as_py() or 0
    out["bytes"] += pc.sum(t["bytes"]).as_py() or 0
    reasons = t["flow_end_reason"].to_pylist()
    packets = t["packets"].to_pylist()
    byts = t["bytes"].to_pylist()
    srcs = t["source_address"].to_pylist()
    dports = t["destination_port"].to_pylist()
    for r, p, b, s, d in zip(reasons, packets, byts, srcs, dports):
        e = out["reasons"].setdefault(r, [0, 0])
        e[0] += 1
        e[1] += p
        if d == dport and ipaddress.ip_address(s) in flood_net:
            out["flood_packets"] += p
            out["flood_bytes"] += b
            out["flood_rows"] += 1
print(json.dumps(out))

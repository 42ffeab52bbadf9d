"""Runs docs/clickhouse.md in chdb (embedded ClickHouse), for clickhouse_doc.rs.

    clickhouse_doc.py DOC PROTO MSG_DIR LAKE_DIR

Every ```sql block of DOC runs in order, as written, with two substitutions: the Kafka engine of
the queue table becomes `Null` (its materialized view still fires on inserts), and the s3() URL
of the Parquet section becomes file() on LAKE_DIR. The ProtobufSingle messages in MSG_DIR (one
per file, as on the topic) are inserted into the queue. Prints JSON: the query of step 5 after
the Kafka path, and again after loading the Parquet lake instead.
"""

import json
import re
import sys

from chdb import session

doc, proto, msgs, lake = sys.argv[1:5]
blocks = re.findall(r"```sql\n(.*?)```", open(doc).read(), re.S)
assert len(blocks) == 5, f"{len(blocks)} sql blocks in {doc}"
queue, storage, view, query, parquet = blocks

s = session.Session()


def q(sql, fmt="CSV"):
    return s.query(sql, fmt).bytes().decode()


kafka = re.search(r"ENGINE = Kafka\s+SETTINGS.*?;", queue, re.S)
assert kafka and "kafka_format = 'ProtobufSingle'" in kafka.group(0), queue
assert "kafka_schema = 'flow.proto:FlowRecord'" in kafka.group(0)
q(queue[: kafka.start()] + "ENGINE = Null")
q(storage)
q(view)
structure = q(
    "SELECT arrayStringConcat(groupArray(name || ' ' || type), ', ') FROM "
    "(SELECT name, type FROM system.columns WHERE table = 'flows_queue' "
    "AND database = currentDatabase() ORDER BY position)",
    "TSVRaw",
).strip()
q(
    f"INSERT INTO flows_queue SELECT * FROM file('{msgs}/*.bin', 'ProtobufSingle', '{structure}') "
    f"SETTINGS format_schema = '{proto}:FlowRecord'"
)


def top():
    return [json.loads(line) for line in q(query.strip().rstrip(";"), "JSONEachRow").splitlines()]


count = int(q("SELECT count() FROM flows", "TSVRaw"))
kafka_top = top()
q("TRUNCATE TABLE flows")
url = re.search(r"s3\('[^']*', Parquet\)", parquet)
assert url, parquet
q(parquet.replace(url.group(0), f"file('{lake}/**/*.parquet', Parquet)"))
lake_count = int(q("SELECT count() FROM flows", "TSVRaw"))
print(json.dumps({"count": count, "top": kafka_top, "lake_count": lake_count, "lake_top": top()}))

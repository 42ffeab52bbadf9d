"""Rewrites a flowlens Parquet lake the way other engines do (issue 16), for report_lake.rs.

    report_lake.py rewrite SRC DST   # DST/<variant>/... for every variant below
    report_lake.py bad DST           # files with bad rows / bad columns
    report_lake.py upload ENDPOINT BUCKET PREFIX SRC   # SRC's files to S3 (moto)

Only DuckDB and pyarrow touch the data here; nothing of flowlens.
"""

import os
import sys

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def duck(src):
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute(
        f"CREATE VIEW flows AS SELECT * FROM read_parquet('{src}/**/*.parquet', hive_partitioning=false)"
    )
    return con


def rewrite(src, dst):
    os.makedirs(dst, exist_ok=True)
    con = duck(src)
    # The usual compaction: one file per hour, DuckDB's defaults (snappy), partitioned by
    # date/hour with DuckDB's file names (data_0.parquet), rows in another order.
    out = f"{dst}/duckdb_default"
    con.execute(
        f"""COPY (SELECT *, strftime(flow_end, '%Y-%m-%d') AS date, strftime(flow_end, '%H') AS hour
                 FROM flows ORDER BY source_address, flow_end)
            TO '{out}' (FORMAT parquet, PARTITION_BY (date, hour))"""
    )
    # Spark-like types: no unsigned integers (widened to signed), timestamps without time zone,
    # columns in another order, an extra column, gzip, one file, no partitioning, small row groups.
    os.makedirs(f"{dst}/duckdb_signed", exist_ok=True)
    con.execute(
        f"""COPY (SELECT bytes::HUGEINT::BIGINT AS bytes, packets::BIGINT AS packets,
                         CAST(flow_end AS TIMESTAMP) AS flow_end, CAST(flow_start AS TIMESTAMP) AS flow_start,
                         interface_index::BIGINT AS interface_index, destination_port::INTEGER AS destination_port,
                         source_port::INTEGER AS source_port, protocol::SMALLINT AS protocol,
                         * EXCLUDE (bytes, packets, flow_end, flow_start, interface_index, destination_port,
                                    source_port, protocol),
                         42 AS added_by_someone_else
                  FROM flows ORDER BY random())
            TO '{dst}/duckdb_signed/compacted.parquet' (FORMAT parquet, COMPRESSION gzip, ROW_GROUP_SIZE 1000)"""
    )
    # Every other codec.
    for codec in ["lz4", "brotli", "zstd", "uncompressed", "snappy"]:
        os.makedirs(f"{dst}/duckdb_{codec}", exist_ok=True)
        con.execute(
            f"COPY flows TO '{dst}/duckdb_{codec}/all.parquet' (FORMAT parquet, COMPRESSION {codec})"
        )

    table = pq.read_table(src, partitioning=None)  # pyarrow's own reading of the files
    # pyarrow's defaults (snappy), hive partitions with pyarrow's file names.
    t = table.append_column(
        "date", pc.strftime(table["flow_end"], format="%Y-%m-%d")
    ).append_column("hour", pc.strftime(table["flow_end"], format="%H"))
    pq.write_to_dataset(t, root_path=f"{dst}/pyarrow_default", partition_cols=["date", "hour"])
    # Widened/signed integers, nanosecond timestamps in another time zone, dictionary and
    # large strings, brotli, and no `host` column (a file from before the column existed).
    cols = {}
    for f in table.schema:
        c = table[f.name]
        if f.name in ("flow_start", "flow_end"):
            c = c.cast(pa.timestamp("ns", tz="+02:00"))
        elif pa.types.is_unsigned_integer(f.type):
            c = c.cast(pa.int64())
        elif f.name in ("source_address", "destination_address"):
            c = c.dictionary_encode()
        elif f.name == "observation_point":
            c = c.cast(pa.large_string())
        if f.name != "host":
            cols[f.name] = c
    names = sorted(cols)  # another column order
    wide = pa.table({n: cols[n] for n in names})
    os.makedirs(f"{dst}/pyarrow_signed_no_host", exist_ok=True)
    pq.write_table(
        wide,
        f"{dst}/pyarrow_signed_no_host/part-0.parquet",
        compression="brotli",
        row_group_size=700,
    )


def bad(dst):
    """Small files with bad rows, a file without a needed column, a file with an integer out of
    range (in its second row group)."""
    us = 1_790_000_000_000_000  # 2026-09-21
    def base(n):
        return {
            "flow_start": pa.array([us + i for i in range(n)], pa.timestamp("us", tz="UTC")),
            "flow_end": pa.array([us + 1_000_000 + i for i in range(n)], pa.timestamp("us", tz="UTC")),
            "observation_point": ["xdp"] * n,
            "interface_name": ["eth0"] * n,
            "interface_index": pa.array([2] * n, pa.uint32()),
            "direction": ["ingress"] * n,
            "network_transport": ["udp"] * n,
            "source_address": ["10.0.0.1"] * n,
            "destination_address": ["10.0.0.2"] * n,
            "destination_port": pa.array([53] * n, pa.uint16()),
            "packets": pa.array([1] * n, pa.int64()),
            "bytes": pa.array([100] * n, pa.int64()),
        }
    os.makedirs(f"{dst}/rows", exist_ok=True)
    d = base(6)
    # row 0 fine; 1: flow_start at 1970; 2: flow_end < flow_start; 3: flow_end at the epoch;
    # 4: null packets; 5: negative bytes.
    d["flow_start"] = pa.array([us, 0, us + 5_000_000, 0, us, us], pa.timestamp("us", tz="UTC"))
    d["flow_end"] = pa.array([us + 10, us + 20, us + 30, 0, us + 40, us + 50], pa.timestamp("us", tz="UTC"))
    d["packets"] = pa.array([1, 2, 4, 8, None, 32], pa.int64())
    d["bytes"] = pa.array([100, 200, 400, 800, 1600, -1], pa.int64())
    pq.write_table(pa.table(d), f"{dst}/rows/rows.parquet")

    # A flow_end in 1971 among rows of 2026: with 1 s buckets, a series over 55 years.
    os.makedirs(f"{dst}/far", exist_ok=True)
    d = base(2)
    d["flow_start"] = pa.array([31_536_000_000_000, us], pa.timestamp("us", tz="UTC"))
    d["flow_end"] = pa.array([31_536_000_000_000, us], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table(d), f"{dst}/far/far.parquet")

    os.makedirs(f"{dst}/missing", exist_ok=True)
    d = base(3)
    del d["destination_port"]
    pq.write_table(pa.table(d), f"{dst}/missing/old.parquet")

    os.makedirs(f"{dst}/range", exist_ok=True)
    d = base(4)
    d["destination_port"] = pa.array([53, 53, 53, 70000], pa.int32())
    pq.write_table(pa.table(d), f"{dst}/range/wide.parquet", row_group_size=2)


def upload(endpoint, bucket, prefix, src):
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    n = 0
    for root, _, files in os.walk(src):
        for f in files:
            p = os.path.join(root, f)
            key = f"{prefix}/{os.path.relpath(p, src)}"
            s3.upload_file(p, bucket, key)
            n += 1
    print(n)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "rewrite":
        rewrite(sys.argv[2], sys.argv[3])
    elif cmd == "bad":
        bad(sys.argv[2])
    elif cmd == "upload":
        upload(*sys.argv[2:6])
    else:
        sys.exit(f"unknown command {cmd}")

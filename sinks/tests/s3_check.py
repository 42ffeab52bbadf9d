"""Independent S3 + Parquet reader for sinks/tests/s3.rs (boto3 and pyarrow, not the writer's
libraries).

  s3_check.py mkbucket ENDPOINT BUCKET
  s3_check.py read ENDPOINT BUCKET PREFIX

`read` lists every object under PREFIX and prints one tab-separated line per object:
key, rows, min(flow_end) and max(flow_end) in microseconds, sum(bytes), community ids joined by
commas. Exit status 0 on success.
"""
import io
import os
import sys

import boto3
import pyarrow.parquet as pq


def client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def main():
    cmd, endpoint, bucket = sys.argv[1:4]
    s3 = client(endpoint)
    if cmd == "mkbucket":
        s3.create_bucket(Bucket=bucket)
        return
    prefix = sys.argv[4]
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    for key in sorted(keys):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        t = pq.read_table(io.BytesIO(body))
        ends = t.column("flow_end").cast("int64").to_pylist()
        cids = t.column("community_id").to_pylist()
        print(
            "\t".join(
                [
                    key,
                    str(t.num_rows),
                    str(min(ends)),
                    str(max(ends)),
                    str(sum(t.column("bytes").to_pylist())),
                    ",".join(cids),
                ]
            )
        )


if __name__ == "__main__":
    main()
    # Leave without interpreter finalisation: pyarrow's C++ runtime sometimes aborts while its
    # threads are torn down at exit ("terminate called without an active exception"), after
    # all the output was written. Any error above still exits non-zero through the traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

#!/usr/bin/env python3
"""Runs the flowlens report SQL on another engine and writes `flowlens-aggregates/1` JSON.

    run.py --engine duckdb|chdb|spark --lake PATH_OR_URL --from 2026-11-20T01:00:00Z \
           --to 2026-11-20T05:00:00Z --bucket 300 --observation-point xdp --out agg.json
    flowlens report --from-json agg.json --html report.html --json report.json

The SQL (duckdb.sql, clickhouse.sql, spark.sql next to this file) does the scan: everything
that grows with the number of rows. `flowlens report --from-json` finishes the report (rates,
percentiles, trends, top-N, subnets, capacity) with the code a local report uses, so the numbers
are the same as `flowlens report --input LAKE` over the same rows.

Engines: `duckdb` (PyPI duckdb), `chdb` (PyPI chdb: ClickHouse in-process; for a ClickHouse
server run clickhouse.sql with clickhouse-client, replacing file() by s3() or your table), `spark`
(pyspark; on a cluster: spark-submit run.py --engine spark --lake s3a://...).
"""

import argparse
import datetime
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def micros(s):
    t = datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    d = t - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def sections(path, params):
    text = open(path).read()
    out = []
    for m in re.finditer(r"^-- name: (\w+)\n(.*?)(?=^-- name: |\Z)", text, re.S | re.M):
        sql = m.group(2)
        for k, v in params.items():
            sql = sql.replace("{" + k + "}", str(v))
        out.append((m.group(1), sql.strip().rstrip(";")))
    return out


class Duck:
    file = "duckdb.sql"

    def __init__(self):
        import duckdb

        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.version = "duckdb " + duckdb.__version__

    def rows(self, sql):
        cur = self.con.execute(sql)
        if cur.description is None:
            return []
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


class Chdb:
    file = "clickhouse.sql"

    def __init__(self):
        import chdb
        from chdb import session

        self.s = session.Session()
        self.version = "chdb " + chdb.__version__

    def rows(self, sql):
        r = self.s.query(sql + " SETTINGS output_format_json_quote_64bit_integers = 0, "
                         "output_format_json_quote_decimals = 0", "JSONEachRow") \
            if sql.lstrip().upper().startswith(("SELECT", "WITH")) else self.s.query(sql)
        text = r.bytes().decode() if hasattr(r, "bytes") else str(r)
        return [json.loads(line) for line in text.splitlines() if line.strip()]


class Spark:
    file = "spark.sql"

    def __init__(self):
        from pyspark.sql import SparkSession

        self.spark = (SparkSession.builder.appName("flowlens-report")
                      .config("spark.sql.session.timeZone", "UTC")
                      .config("spark.ui.showConsoleProgress", "false")
                      .config("spark.ui.enabled", "false")
                      .getOrCreate())
        self.spark.sparkContext.setLogLevel("ERROR")
        self.version = "spark " + self.spark.version

    def rows(self, sql):
        return [r.asDict() for r in self.spark.sql(sql).collect()]


def period(engine, params, talkers):
    res = {}
    for name, sql in sections(os.path.join(HERE, engine.file), params):
        if not talkers and name in ("sources", "destinations", "conversations", "services"):
            continue
        res[name] = engine.rows(sql)
    n = lambda v: int(v) if v is not None else None
    tot = res["totals"][0]
    counts = lambda r: {"records": n(r["records"]), "packets": n(r["packets"]), "bytes": n(r["bytes"])}
    part = {
        "rows_read": n(res["rows"][0]["rows_read"]),
        "rows_rejected": n(res["rows"][0]["rows_rejected"]),
        "rows_clamped": n(tot["rows_clamped"]),
        "min_end": n(tot["min_end"]) if n(tot["records"]) else None,
        "max_end": n(tot["max_end"]) if n(tot["records"]) else None,
        "totals": {"key": None, **counts(tot)},
        "observation_points": [{"key": r["key"], **counts(r)} for r in res["observation_points"]],
        "hosts": [{"key": r["key"], **counts(r)} for r in res["hosts"]],
        "series": [{"interface": r["interface"], "direction": r["direction"], **counts(r)}
                   for r in res["series"]],
        "buckets": [{"interface": r["interface"], "direction": r["direction"],
                     "bucket": n(r["bucket"]), "bytes_fixed": str(r["bytes_fixed"]),
                     "packets_fixed": str(r["packets_fixed"])} for r in res["buckets"]],
    }
    if talkers:
        part["sources"] = [{"key": r["key"], **counts(r)} for r in res["sources"]]
        part["destinations"] = [{"key": r["key"], **counts(r)} for r in res["destinations"]]
        part["conversations"] = [{"a": r["a"], "z": r["z"], **counts(r)} for r in res["conversations"]]
        part["services"] = [{"transport": r["transport"], "port": n(r["port"]), **counts(r)}
                            for r in res["services"]]
    return part


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engine", choices=["duckdb", "chdb", "spark"], required=True)
    p.add_argument("--lake", required=True, help="directory or URL holding the Parquet files")
    p.add_argument("--from", dest="from_", required=True, help="RFC 3339 UTC, inclusive")
    p.add_argument("--to", required=True, help="RFC 3339 UTC, exclusive")
    p.add_argument("--bucket", type=int, default=300, help="bucket width in seconds")
    p.add_argument("--observation-point", default="xdp")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if a.bucket < 1:
        sys.exit("--bucket must be at least 1 (seconds)")
    f, t = micros(a.from_), micros(a.to)
    if f >= t:
        sys.exit("--from must be before --to")
    if not re.fullmatch(r"[A-Za-z0-9_]+", a.observation_point):
        sys.exit("--observation-point: letters, digits and _ only")
    if "'" in a.lake:
        sys.exit("--lake must not contain a quote")
    engine = {"duckdb": Duck, "chdb": Chdb, "spark": Spark}[a.engine]()
    base = {"lake": a.lake.rstrip("/"), "bucket_us": a.bucket * 1_000_000, "obs": a.observation_point}
    out = {
        "format": "flowlens-aggregates/1",
        "engine": engine.version,
        "input": a.lake,
        "from_us": f,
        "to_us": t,
        "bucket_us": a.bucket * 1_000_000,
        "observation_point": a.observation_point,
        "range": period(engine, {**base, "from_us": f, "to_us": t}, True),
        "previous": period(engine, {**base, "from_us": 2 * f - t, "to_us": f}, False),
    }
    with open(a.out, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()

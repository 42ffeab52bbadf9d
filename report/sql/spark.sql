-- flowlens report aggregations for Spark SQL (issue 16; docs/REPORT.md "Other engines").
-- The same queries and rules as duckdb.sql (read its header). run.py --engine spark runs it
-- through pyspark (local mode or spark-submit); spark.sql.session.timeZone must be UTC.
-- Spark reads flowlens' unsigned columns widened (UINT32 as bigint, UINT16 as int).
-- 128-bit sums are DECIMAL(38, 0); `div` is integer division.

-- name: view
CREATE OR REPLACE TEMPORARY VIEW raw
USING parquet OPTIONS (path '{lake}', recursiveFileLookup 'true', mergeSchema 'true',
                       pathGlobFilter '*.parquet');

-- name: flows
CREATE OR REPLACE TEMPORARY VIEW flows AS
SELECT CAST(unix_micros(CAST(flow_end AS TIMESTAMP)) AS BIGINT) AS end_us,
       CAST(unix_micros(CAST(flow_start AS TIMESTAMP)) AS BIGINT) AS start_us,
       CAST(packets AS BIGINT) AS packets,
       CAST(bytes AS BIGINT) AS bytes,
       coalesce(observation_point, '') AS obs,
       CASE WHEN coalesce(interface_name, '') = ''
            THEN concat('if#', CAST(interface_index AS STRING)) ELSE interface_name END AS iface,
       coalesce(direction, '') AS direction,
       coalesce(network_transport, '') AS transport,
       coalesce(source_address, '') AS src,
       coalesce(destination_address, '') AS dst,
       CAST(destination_port AS INT) AS dport,
       CAST(host AS STRING) AS host,
       (flow_end IS NOT NULL AND packets IS NOT NULL AND bytes IS NOT NULL
        AND unix_micros(CAST(flow_end AS TIMESTAMP)) > 0 AND packets >= 0 AND bytes >= 0) AS valid
FROM raw;

-- name: selected
CREATE OR REPLACE TEMPORARY VIEW sel AS
SELECT *,
       CASE WHEN start_us IS NULL OR start_us <= 0 OR start_us > end_us
                 OR end_us - start_us > 86400000000 THEN end_us ELSE start_us END AS st,
       (start_us IS NULL OR start_us <= 0 OR start_us > end_us
        OR end_us - start_us > 86400000000) AS clamped
FROM flows
WHERE valid AND end_us >= {from_us} AND end_us < {to_us} AND obs = '{obs}';

-- name: rows
SELECT count(*) AS rows_read, count_if(NOT valid) AS rows_rejected FROM flows;

-- name: totals
SELECT count(*) AS records, coalesce(sum(packets), 0) AS packets, coalesce(sum(bytes), 0) AS bytes,
       min(end_us) AS min_end, max(end_us) AS max_end, count_if(clamped) AS rows_clamped
FROM sel;

-- name: observation_points
SELECT obs AS key, count(*) AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM flows WHERE valid AND end_us >= {from_us} AND end_us < {to_us} GROUP BY obs;

-- name: hosts
SELECT host AS key, count(*) AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY host;

-- name: series
SELECT iface AS interface, direction, count(*) AS records, sum(packets) AS packets,
       sum(bytes) AS bytes
FROM sel GROUP BY iface, direction;

-- name: buckets
SELECT iface AS interface, direction, bucket,
       CAST(sum(bf) AS STRING) AS bytes_fixed, CAST(sum(pf) AS STRING) AS packets_fixed
FROM (
    SELECT iface, direction, end_us div {bucket_us} AS bucket,
           CAST(bytes AS DECIMAL(38, 0)) * 4294967296 AS bf,
           CAST(packets AS DECIMAL(38, 0)) * 4294967296 AS pf
    FROM sel WHERE end_us <= st OR st div {bucket_us} = end_us div {bucket_us}
    UNION ALL
    SELECT iface, direction, bucket,
           CAST((CAST(bytes AS DECIMAL(38, 0)) * ov) div d AS DECIMAL(38, 0)) * 4294967296
             + CAST((((CAST(bytes AS DECIMAL(38, 0)) * ov) % d) * 4294967296) div d AS DECIMAL(38, 0)) AS bf,
           CAST((CAST(packets AS DECIMAL(38, 0)) * ov) div d AS DECIMAL(38, 0)) * 4294967296
             + CAST((((CAST(packets AS DECIMAL(38, 0)) * ov) % d) * 4294967296) div d AS DECIMAL(38, 0)) AS pf
    FROM (
        SELECT iface, direction, packets, bytes, end_us - st AS d, bucket,
               least(end_us, (bucket + 1) * {bucket_us}) - greatest(st, bucket * {bucket_us}) AS ov
        FROM (SELECT *, explode(sequence(st div {bucket_us}, end_us div {bucket_us})) AS bucket
              FROM sel WHERE end_us > st AND st div {bucket_us} <> end_us div {bucket_us})
    )
    WHERE ov > 0
)
GROUP BY iface, direction, bucket;

-- name: sources
SELECT src AS key, count(*) AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY src;

-- name: destinations
SELECT dst AS key, count(*) AS records, sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY dst;

-- name: conversations
SELECT least(src, dst) AS a, greatest(src, dst) AS z, count(*) AS records,
       sum(packets) AS packets, sum(bytes) AS bytes
FROM sel GROUP BY least(src, dst), greatest(src, dst);

-- name: services
SELECT transport, dport AS port, count(*) AS records, sum(packets) AS packets,
       sum(bytes) AS bytes
FROM sel GROUP BY transport, dport;

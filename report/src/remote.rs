//! `--input s3://BUCKET/PREFIX`: the lake on S3-compatible object storage (issue 16).
//!
//! The same S3 client as the sink (`object_store`, settings from the `AWS_*` environment:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, ...). Listing walks the `date=`/`hour=` "directories" with delimiter
//! listings, so a pruned partition is never listed. A file's footer is read with one or two
//! ranged GETs; a row group then costs one request for the byte ranges of the projected column
//! chunks (coalesced by `object_store`), never the whole object. Requests run on a small tokio
//! runtime of their own; the scan threads block on them.

use std::{io::Cursor, ops::Range, path::Path, sync::Arc};

use bytes::Bytes;
use object_store::{
    ObjectStore,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    path::Path as ObjPath,
};
use parquet::{
    errors::ParquetError,
    file::reader::{ChunkReader, Length},
};

use crate::ReportError;

/// One bucket, and the runtime its requests run on.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    bucket: String,
}

/// An object to read.
#[derive(Clone)]
pub struct Object {
    pub remote: Arc<Remote>,
    pub path: ObjPath,
    pub size: u64,
}

impl Object {
    /// `s3://BUCKET/KEY`, for messages.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.remote.bucket, self.path)
    }
}

/// One line: S3 errors can quote a multi-line XML body.
fn err(url: &str, e: impl std::fmt::Display) -> ReportError {
    let e = e.to_string();
    ReportError::Input(format!(
        "{url}: {}",
        e.split_whitespace().collect::<Vec<_>>().join(" ")
    ))
}

/// Splits `s3://BUCKET[/PREFIX]` into bucket and prefix (no leading or trailing `/`).
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| "only s3:// URLs are supported".to_string())?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err("missing bucket name (s3://BUCKET/PREFIX)".into());
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

impl Remote {
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The client of `bucket`, configured from the environment, then `options`.
    pub fn open(bucket: &str, options: &[(String, String)]) -> Result<Arc<Remote>, ReportError> {
        let url = format!("s3://{bucket}");
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (k, v) in options {
            let key: AmazonS3ConfigKey = k.to_ascii_lowercase().parse().map_err(|_| {
                ReportError::Input(format!(
                    "--s3-option {k}: unknown key (object_store AmazonS3ConfigKey names: endpoint, region, allow_http, access_key_id, secret_access_key, ...)"
                ))
            })?;
            b = b.with_config(key, v);
        }
        let store = b.build().map_err(|e| err(&url, e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flowlens-report-s3")
            .enable_all()
            .build()
            .map_err(|e| err(&url, format!("starting the S3 runtime: {e}")))?;
        Ok(Arc::new(Remote {
            rt,
            store: Arc::new(store),
            bucket: bucket.to_string(),
        }))
    }

    /// Every `.parquet` object under `prefix` whose partition directories `keep` accepts
    /// (called with the key of each `date=`/`hour=` "directory"); objects whose names start
    /// with `.` or `_` (in-progress or marker files) are skipped.
    pub fn list(
        self: &Arc<Self>,
        prefix: &str,
        keep: &mut dyn FnMut(&Path) -> bool,
    ) -> Result<Vec<Object>, ReportError> {
        let mut out = Vec::new();
        let mut todo = vec![(!prefix.is_empty()).then(|| ObjPath::from(prefix))];
        while let Some(dir) = todo.pop() {
            let url = format!(
                "s3://{}/{}",
                self.bucket,
                dir.as_ref().map(|d| d.to_string()).unwrap_or_default()
            );
            let listing = self
                .rt
                .block_on(self.store.list_with_delimiter(dir.as_ref()))
                .map_err(|e| err(&url, e))?;
            for p in listing.common_prefixes {
                if keep(Path::new(p.as_ref())) {
                    todo.push(Some(p));
                }
            }
            for o in listing.objects {
                let name = o.location.filename().unwrap_or("");
                if name.ends_with(".parquet") && !name.starts_with('.') && !name.starts_with('_') {
                    out.push(Object {
                        remote: self.clone(),
                        path: o.location,
                        size: o.size,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.as_ref().cmp(b.path.as_ref()));
        Ok(out)
    }

    /// The given byte ranges of `obj`, fetched concurrently, as a [`Sparse`] reader.
    pub fn fetch(&self, obj: &Object, ranges: Vec<Range<u64>>) -> Result<Sparse, ReportError> {
        let bytes = self
            .rt
            .block_on(self.store.get_ranges(&obj.path, &ranges))
            .map_err(|e| err(&obj.url(), e))?;
        Ok(Sparse {
            len: obj.size,
            chunks: ranges.into_iter().map(|r| r.start).zip(bytes).collect(),
        })
    }

    /// The footer (file metadata) of `obj` as a [`Sparse`] reader holding the file's tail.
    pub fn footer(&self, obj: &Object) -> Result<Sparse, ReportError> {
        if obj.size < 12 {
            return Err(err(&obj.url(), "not a Parquet file (too small)"));
        }
        let guess = obj.size.min(64 * 1024);
        let tail = self.fetch(
            obj,
            vec![Range {
                start: obj.size - guess,
                end: obj.size,
            }],
        )?;
        let t = &tail.chunks[0].1;
        let n = t.len();
        if &t[n - 4..] != b"PAR1" {
            return Err(err(&obj.url(), "not a Parquet file (no PAR1 footer)"));
        }
        let meta_len = u32::from_le_bytes([t[n - 8], t[n - 7], t[n - 6], t[n - 5]]) as u64;
        if meta_len + 8 <= guess {
            return Ok(tail);
        }
        if meta_len + 8 > obj.size {
            return Err(err(&obj.url(), "corrupt Parquet footer length"));
        }
        self.fetch(
            obj,
            vec![Range {
                start: obj.size - meta_len - 8,
                end: obj.size,
            }],
        )
    }
}

/// A file of which only some byte ranges are in memory (a footer, a row group's column chunks).
/// Reading outside them is an error, not a fetch: the plan says up front what a read needs.
pub struct Sparse {
    len: u64,
    chunks: Vec<(u64, Bytes)>,
}

impl Sparse {
    fn slice(&self, start: u64, len: Option<usize>) -> parquet::errors::Result<Bytes> {
        if len == Some(0) {
            return Ok(Bytes::new());
        }
        // Column chunks are often adjacent: `start` belongs to the chunk it lies inside, not to
        // the one ending there.
        for (off, b) in &self.chunks {
            if start >= *off && start < off + b.len() as u64 {
                let from = (start - off) as usize;
                let to = match len {
                    Some(l) if from + l <= b.len() => from + l,
                    Some(_) => continue,
                    None => b.len(),
                };
                return Ok(b.slice(from..to));
            }
        }
        Err(ParquetError::General(format!(
            "byte range at {start} (length {len:?}) was not fetched"
        )))
    }
}

impl Length for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Sparse {
    type T = Cursor<Bytes>;
    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        self.slice(start, None).map(Cursor::new)
    }
    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, Some(length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("s3://b/p/q/").unwrap(),
            ("b".to_string(), "p/q".to_string())
        );
        assert_eq!(parse_url("s3://b").unwrap(), ("b".into(), "".into()));
        assert!(parse_url("s3:///x").is_err());
        assert!(parse_url("gs://b/x").is_err());
    }

    #[test]
    fn sparse_reads_only_what_was_fetched() {
        let s = Sparse {
            len: 100,
            chunks: vec![
                (10, Bytes::from_static(b"abcdef")),
                (16, Bytes::from_static(b"gh")),
                (50, Bytes::from_static(b"xyz")),
            ],
        };
        assert_eq!(&s.get_bytes(11, 3).unwrap()[..], b"bcd");
        assert_eq!(&s.get_bytes(50, 3).unwrap()[..], b"xyz");
        let mut r = s.get_read(13).unwrap();
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        assert_eq!(v, b"def");
        assert!(s.get_bytes(14, 5).is_err());
        // Adjacent chunks: a read at the boundary is the second chunk.
        let mut v = Vec::new();
        s.get_read(16).unwrap().read_to_end(&mut v).unwrap();
        assert_eq!(v, b"gh");
        assert!(s.get_bytes(30, 1).is_err());
    }
}

//! The vault in an S3-compatible bucket (`s3://bucket/prefix`).
//!
//! Every file is one object, written with a single PUT, so it is either
//! absent or complete. The [`Backend`] trait is blocking, so the backend owns
//! a small tokio runtime and waits on each request there.
//!
//! Time limits, so that an unreachable or stopped server fails a call in
//! seconds rather than minutes (the caller retries the whole delivery later):
//! - connecting: [`CONNECT_TIMEOUT`] per attempt;
//! - refused connections, 5xx and 429 answers are retried with a short
//!   backoff for at most [`RETRY_TIMEOUT`] (object_store's retry loop);
//! - reads and listings: the answer must start, and then keep flowing, with
//!   no gap longer than [`STALL_TIMEOUT`] (an idle timeout, so reading a
//!   large data file over a slow link is not cut short);
//! - writes: the whole call is bounded by [`WRITE_BASE_TIMEOUT`] plus the
//!   time to send the file at [`MIN_UPLOAD_BYTES_PER_SEC`].

use std::fmt;
use std::future::Future;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientConfigKey, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt as _,
    PutPayload, RetryConfig,
};

use super::{Backend, BackendError, FileName, FileType};

/// How long one attempt may take to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read or listing may wait for the server to say anything.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long failed attempts of one request are retried.
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many retries of one request.
const MAX_RETRIES: usize = 10;
/// The longest pause between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// A write may take this long, plus the time to send its bytes at
/// [`MIN_UPLOAD_BYTES_PER_SEC`].
const WRITE_BASE_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest upload a write waits for (256 KiB/s: a 256 MiB data file gets
/// about 17 minutes).
const MIN_UPLOAD_BYTES_PER_SEC: u64 = 256 * 1024;

const CREDENTIALS_REJECTED: &str = "the server rejected the credentials (check the access \
     key id and secret access key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)";

/// Client options carried over from the environment (`AWS_ALLOW_HTTP`,
/// `AWS_PROXY_URL`, ...). The timeouts are this backend's own.
const CARRIED_CLIENT_KEYS: [ClientConfigKey; 6] = [
    ClientConfigKey::AllowHttp,
    ClientConfigKey::AllowInvalidCertificates,
    ClientConfigKey::NoSystemCertificates,
    ClientConfigKey::ProxyUrl,
    ClientConfigKey::ProxyCaCertificate,
    ClientConfigKey::ProxyExcludes,
];

/// How to reach the bucket. Every field left `None` falls back to the
/// standard environment variable named beside it, then to the AWS default
/// (credentials from the instance or container role, region `us-east-1`,
/// the AWS endpoint, HTTPS only).
#[derive(Clone, Default)]
pub struct S3Settings {
    /// `AWS_ACCESS_KEY_ID`
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`
    pub secret_access_key: Option<String>,
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`)
    pub region: Option<String>,
    /// `AWS_ENDPOINT_URL`: for S3-compatible servers (MinIO, Ceph, ...).
    pub endpoint: Option<String>,
    /// `AWS_ALLOW_HTTP`: permit an `http://` endpoint.
    pub allow_http: Option<bool>,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("S3Settings")
            .field("access_key_id", &set(&self.access_key_id))
            .field("secret_access_key", &set(&self.secret_access_key))
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// The vault under `prefix` in one bucket.
pub struct S3Backend {
    bucket: String,
    /// The vault's root inside the bucket; empty for the bucket's root.
    prefix: String,
    /// Reads, listings and deletes: idle timeout, no total timeout.
    store: Arc<AmazonS3>,
    /// Writes: no client timeout; each call is bounded by its size.
    upload_store: Arc<AmazonS3>,
    /// Strings that must never appear in a message: the secret access key
    /// and the temporary-credentials token.
    secrets: Vec<String>,
    runtime: OwnedRuntime,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend")
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// A backend for `s3://BUCKET` or `s3://BUCKET/PREFIX`. Checks the
    /// settings but does not contact the server.
    pub fn from_url(url: &str, settings: S3Settings) -> Result<Self, BackendError> {
        let (bucket, prefix) = parse_url(url)?;
        let location = location_of(&bucket, &prefix);
        let config_error = |path: &str, message: String| BackendError::Remote {
            location: location.clone(),
            path: path.to_string(),
            message,
        };

        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        if let Some(v) = settings.access_key_id {
            builder = builder.with_access_key_id(v);
        }
        if let Some(v) = settings.secret_access_key {
            builder = builder.with_secret_access_key(v);
        }
        if let Some(v) = settings.region {
            builder = builder.with_region(v);
        }
        if let Some(v) = settings.endpoint {
            builder = builder.with_endpoint(v);
        }
        if let Some(v) = settings.allow_http {
            builder = builder.with_allow_http(v);
        }

        let allow_http = builder
            .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
            .is_some_and(|v| is_truthy(&v));
        if let Some(endpoint) = builder.get_config_value(&AmazonS3ConfigKey::Endpoint)
            && endpoint.starts_with("http://")
            && !allow_http
        {
            return Err(config_error(
                "endpoint",
                "the endpoint is plain http://: set allow_http (AWS_ALLOW_HTTP=true) to permit \
                 unencrypted connections, or use https://"
                    .to_string(),
            ));
        }

        let secrets: Vec<String> = [AmazonS3ConfigKey::SecretAccessKey, AmazonS3ConfigKey::Token]
            .iter()
            .filter_map(|k| builder.get_config_value(k))
            .filter(|v| !v.is_empty())
            .collect();

        let mut carried = ClientOptions::new();
        for key in CARRIED_CLIENT_KEYS {
            if let Some(v) = builder.get_config_value(&AmazonS3ConfigKey::Client(key)) {
                carried = carried.with_config(key, v);
            }
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: MAX_BACKOFF,
                base: 2.0,
            },
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
        };
        let base = builder.with_retry(retry);

        let build = |client: ClientOptions| {
            base.clone()
                .with_client_options(client.with_connect_timeout(CONNECT_TIMEOUT))
                .build()
                .map(Arc::new)
                .map_err(|e| config_error("settings", redact(&error_chain(&e), &secrets)))
        };
        let store = build(
            carried
                .clone()
                .with_timeout_disabled()
                .with_read_timeout(STALL_TIMEOUT),
        )?;
        let upload_store = build(carried.with_timeout_disabled().with_read_timeout_disabled())?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vault-s3")
            .enable_all()
            .build()
            .map_err(|e| config_error("runtime", format!("cannot start the I/O runtime: {e}")))?;

        Ok(Self {
            bucket,
            prefix,
            store,
            upload_store,
            secrets,
            runtime: OwnedRuntime(Some(runtime)),
        })
    }

    /// The key of a file, relative to the bucket.
    fn key(&self, file_type: FileType, name: &FileName) -> ObjectPath {
        ObjectPath::from(self.join(&file_type.path_of(name)))
    }

    fn join(&self, relative: &str) -> String {
        if self.prefix.is_empty() {
            relative.to_string()
        } else {
            format!("{}/{}", self.prefix, relative)
        }
    }

    fn error(&self, path: String, e: &object_store::Error) -> BackendError {
        let location = self.location();
        if is_missing_file(e) {
            return BackendError::NotFound { location, path };
        }
        let chain = redact(&tidy(&error_chain(e)), &self.secrets);
        if ["XMinioStorageFull", "QuotaExceeded", "Insufficient Storage"]
            .iter()
            .any(|s| chain.contains(s))
        {
            return BackendError::NoSpace { location, path };
        }
        let credentials_rejected = ["InvalidAccessKeyId", "SignatureDoesNotMatch"]
            .iter()
            .any(|s| chain.contains(s));
        let hint = match e {
            object_store::Error::Unauthenticated { .. } => Some(CREDENTIALS_REJECTED),
            _ if credentials_rejected => Some(CREDENTIALS_REJECTED),
            object_store::Error::PermissionDenied { .. } => Some(
                "access denied (check that the credentials may read, write, list and delete \
                 in this bucket, and that the bucket exists)",
            ),
            _ if chain.contains("NoSuchBucket") => Some(
                "the bucket does not exist (create it, or check the bucket name, endpoint and \
                 region)",
            ),
            _ if chain.contains("tcp connect error") || chain.contains("Connect") => Some(
                "cannot connect to the storage server (is it running, and are the endpoint \
                 and region right?)",
            ),
            _ if chain.contains("timed out") || chain.contains("TimedOut") => {
                Some("the storage server did not answer in time")
            }
            _ => None,
        };
        let message = match hint {
            Some(hint) => format!("{hint}: {chain}"),
            None => chain,
        };
        BackendError::Remote {
            location,
            path,
            message,
        }
    }

    /// Run `fut` on the backend's runtime and wait for it.
    fn wait<T>(&self, fut: impl Future<Output = T>) -> T {
        self.runtime.block_on(fut)
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        location_of(&self.bucket, &self.prefix)
    }

    fn list(&self, file_type: FileType) -> Result<Vec<(FileName, u64)>, BackendError> {
        if file_type == FileType::Config {
            let name = FileName::config();
            let key = self.key(file_type, &name);
            return match self.wait(self.store.head(&key)) {
                Ok(meta) => Ok(vec![(name, meta.size)]),
                Err(e) if is_missing_file(&e) => Ok(Vec::new()),
                Err(e) => Err(self.error(file_type.path_of(&name), &e)),
            };
        }
        let top = ObjectPath::from(self.join(file_type.prefix()));
        let listed = self.wait(async {
            let mut out = Vec::new();
            let mut stream = self.store.list(Some(&top));
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                let key = meta.location.as_ref();
                let Some(name) = key
                    .rsplit('/')
                    .next()
                    .and_then(FileName::parse)
                    .filter(|name| key == self.join(&file_type.path_of(name)))
                else {
                    continue;
                };
                out.push((name, meta.size));
            }
            Ok::<_, object_store::Error>(out)
        });
        let mut out = listed.map_err(|e| self.error(format!("{}/", file_type.prefix()), &e))?;
        out.sort();
        Ok(out)
    }

    fn read(&self, file_type: FileType, name: &FileName) -> Result<Vec<u8>, BackendError> {
        let key = self.key(file_type, name);
        let result = self.wait(async {
            let got = self.store.get(&key).await?;
            got.bytes().await
        });
        result
            .map(Vec::from)
            .map_err(|e| self.error(file_type.path_of(name), &e))
    }

    fn read_range(
        &self,
        file_type: FileType,
        name: &FileName,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, BackendError> {
        let path = file_type.path_of(name);
        let key = self.key(file_type, name);
        let invalid = |message: &str| BackendError::Io {
            location: self.location(),
            path: path.clone(),
            source: std::io::Error::new(ErrorKind::InvalidInput, message.to_string()),
        };
        let end = offset
            .checked_add(len)
            .ok_or_else(|| invalid("range ends past the largest offset"))?;
        if usize::try_from(len).is_err() {
            return Err(invalid("range too large"));
        }
        let short = |size: u64| BackendError::Io {
            location: self.location(),
            path: path.clone(),
            source: std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("file ends before byte {end} (it has {size} bytes)"),
            ),
        };
        if len == 0 {
            // An empty range cannot be asked of S3; the file must still exist.
            return self
                .wait(self.store.head(&key))
                .map(|_| Vec::new())
                .map_err(|e| self.error(path.clone(), &e));
        }
        let options = GetOptions::new().with_range(Some(offset..end));
        let result = self.wait(async {
            let got = self.store.get_opts(&key, options).await?;
            let size = got.meta.size;
            got.bytes().await.map(|bytes| (bytes, size))
        });
        match result {
            Ok((bytes, _)) if bytes.len() as u64 == len => Ok(Vec::from(bytes)),
            Ok((_, size)) => Err(short(size)),
            Err(e) if is_missing_file(&e) => Err(self.error(path.clone(), &e)),
            Err(e) => {
                // A range that starts past the end is refused (416); tell it
                // apart from a failure of the server by asking for the size.
                match self.wait(self.store.head(&key)) {
                    Ok(meta) if meta.size < end => Err(short(meta.size)),
                    _ => Err(self.error(path.clone(), &e)),
                }
            }
        }
    }

    fn write(&self, file_type: FileType, name: &FileName, data: &[u8]) -> Result<(), BackendError> {
        let key = self.key(file_type, name);
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        let limit =
            WRITE_BASE_TIMEOUT + Duration::from_secs(data.len() as u64 / MIN_UPLOAD_BYTES_PER_SEC);
        let result = self.wait(async {
            tokio::time::timeout(limit, self.upload_store.put(&key, payload)).await
        });
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.error(file_type.path_of(name), &e)),
            Err(_) => Err(BackendError::Remote {
                location: self.location(),
                path: file_type.path_of(name),
                message: format!(
                    "the storage server did not take the {} bytes within {} s",
                    data.len(),
                    limit.as_secs()
                ),
            }),
        }
    }

    fn remove(&self, file_type: FileType, name: &FileName) -> Result<(), BackendError> {
        let key = self.key(file_type, name);
        match self.wait(self.store.delete(&key)) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_file(&e) => Ok(()),
            Err(e) => Err(self.error(file_type.path_of(name), &e)),
        }
    }
}

/// The runtime, shut down without waiting when the backend is dropped, so
/// that dropping it is fine anywhere, an async task included.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    fn block_on<T>(&self, fut: impl Future<Output = T>) -> T {
        self.0
            .as_ref()
            .expect("the runtime is only taken when dropped")
            .block_on(fut)
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A boolean setting as object_store reads it.
fn is_truthy(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "1" | "true" | "on" | "yes" | "y"
    )
}

fn location_of(bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    }
}

/// `s3://BUCKET[/PREFIX]` into the bucket and the prefix without its
/// surrounding slashes. Errors never repeat the URL: a mistyped one may
/// carry a credential (`s3://KEY:SECRET@bucket`).
fn parse_url(url: &str) -> Result<(String, String), BackendError> {
    let invalid = |path: &str, message: &str| BackendError::Remote {
        location: "S3 URL".to_string(),
        path: path.to_string(),
        message: message.to_string(),
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| invalid("scheme", "must start with s3:// (s3://BUCKET/PREFIX)"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !bucket_ok {
        return Err(invalid(
            "bucket",
            "must be 3 to 63 letters, digits, '.', '-' or '_' (s3://BUCKET/PREFIX; \
             credentials go in the settings, never in the URL)",
        ));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        let segments_ok = prefix.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'\\'))
        });
        if !segments_ok || ObjectPath::parse(prefix).is_err() {
            return Err(invalid(
                "prefix",
                "must be '/'-separated names of printable characters, without empty, '.' or \
                 '..' parts, '?', '#' or '\\'",
            ));
        }
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// Whether `e` says that the object is missing. A missing bucket is also
/// answered 404, but it is a misconfiguration, not a missing file.
fn is_missing_file(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. }) && !error_chain(e).contains("NoSuchBucket")
}

/// S3 error bodies are XML documents; keep their code and message.
fn tidy(message: &str) -> String {
    let Some(start) = message.find("<?xml").or_else(|| message.find("<Error>")) else {
        return message.to_string();
    };
    let end = message[start..]
        .find("</Error>")
        .map_or(message.len(), |i| start + i + "</Error>".len());
    let xml = &message[start..end];
    let field = |tag: &str| {
        let open = format!("<{tag}>");
        let from = xml.find(&open)? + open.len();
        let to = xml[from..].find("</")? + from;
        Some(&xml[from..to])
    };
    let summary = match (field("Code"), field("Message")) {
        (Some(code), Some(text)) => format!("{code}: {text}"),
        (Some(code), None) => code.to_string(),
        _ => return message.to_string(),
    };
    format!("{}{summary}{}", &message[..start], &message[end..])
}

/// An error and its causes, each once.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

fn redact(message: &str, secrets: &[String]) -> String {
    secrets.iter().fold(message.to_string(), |m, s| {
        m.replace(s.as_str(), "<redacted>")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_bucket_and_prefix() {
        assert_eq!(
            parse_url("s3://vault-bucket").expect("parse"),
            ("vault-bucket".to_string(), String::new())
        );
        assert_eq!(
            parse_url("s3://vault-bucket/").expect("parse"),
            ("vault-bucket".to_string(), String::new())
        );
        assert_eq!(
            parse_url("s3://vault-bucket/backups/main/").expect("parse"),
            ("vault-bucket".to_string(), "backups/main".to_string())
        );
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_them() {
        for url in [
            "https://bucket/prefix",
            "s3://",
            "s3://ab",
            "s3://AKIAEXAMPLE:hunter2secret@bucket/prefix",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
            "s3://bucket/a?b",
        ] {
            let err = parse_url(url).expect_err(url).to_string();
            assert!(!err.contains("hunter2secret"), "{err}");
            assert!(err.starts_with("S3 URL: "), "{err}");
        }
    }

    #[test]
    fn error_documents_are_shortened_to_code_and_message() {
        let raw = "404 Not Found: <?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Error>\
                   <Code>NoSuchBucket</Code><Message>The specified bucket does not exist\
                   </Message><BucketName>b</BucketName><RequestId>1</RequestId></Error>";
        assert_eq!(
            tidy(raw),
            "404 Not Found: NoSuchBucket: The specified bucket does not exist"
        );
        assert_eq!(tidy("connection refused"), "connection refused");
        assert_eq!(
            tidy("odd: <Error>nothing</Error>"),
            "odd: <Error>nothing</Error>"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let secrets = vec!["s3cr3t".to_string()];
        assert_eq!(
            redact("GET http://x:s3cr3t@host/ failed", &secrets),
            "GET http://x:<redacted>@host/ failed"
        );
    }
}

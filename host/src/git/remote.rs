//! One repository on its git server, reached over smart HTTP with gix's
//! protocol layer: list its branches and tags, and fetch what the vault
//! lacks. The fetch negotiates against the vault, not a local clone: the
//! latest snapshot's tips go out as `have`s, and the thin pack the server
//! answers with is completed from the vault's objects. So no repository is
//! kept twice between backups.
//!
//! Credentials go into an in-memory `Authorization` header for the one
//! connection; they are never written to disk and never reach a plugin.
//! Everything here blocks: call it from a blocking thread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gix::ObjectId;
use gix::protocol::fetch::negotiate;
use gix::protocol::handshake::Ref;
use gix::protocol::transport::client::blocking_io::{Transport, connect, http};

use super::{GitError, RemoteRef, from_gix, from_kind, to_gix};
use crate::config::SecretString;
use crate::failure::FailureKind;
use crate::ids::{GitOid, ObjectKind, RepoName};

/// How long to wait for the server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to answer a request, or to send the next
/// part of an answer (the HTTP client's read timeout).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// A transfer slower than 1 byte/s for this long is given up (and retried
/// by the queue like any other failed fetch).
const STALL_TIMEOUT_SECS: u64 = 120;

/// At most this many `have`s are sent. The vault holds the whole history of
/// each, so a few well-chosen ones tell the server as much as all of them:
/// sending every tip of a repository with 10,000 branches made the server's
/// work (and a one-commit push) twice as slow as `git fetch`.
const MAX_HAVES: usize = 256;

/// Reads a thin pack's bases: the kind and content of an object the vault
/// holds, `None` when it does not.
pub type BaseLookup<'a> = &'a dyn Fn(&GitOid) -> Option<(ObjectKind, Arc<Vec<u8>>)>;

/// What a fetch received.
#[derive(Debug)]
pub struct Fetch {
    /// The remote's branches and tags, sorted by name.
    pub refs: Vec<RemoteRef>,
    /// Whether a pack was received (nothing is asked for when the vault
    /// already holds every tip).
    pub received_pack: bool,
}

/// What went wrong talking to a git server, in the words an operator acts
/// on. The permanent ones (401, 403, 404) are not retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteProblem {
    /// 401 or 403: the credentials were refused, or none were configured.
    Refused { status: u16, token_sent: bool },
    /// 404: the repository does not exist, or the token cannot see it.
    NotFound,
    /// Any other HTTP status that is not a success.
    Status(u16),
    /// No connection could be made to the server.
    Connect { host: String, reason: String },
    /// The server took longer than this to answer.
    Timeout { secs: u64 },
}

impl RemoteProblem {
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Refused { .. } | Self::NotFound => FailureKind::Permanent,
            Self::Status(_) | Self::Connect { .. } | Self::Timeout { .. } => FailureKind::Transient,
        }
    }
}

impl std::fmt::Display for RemoteProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused {
                status,
                token_sent: true,
            } => write!(f, "remote answered {status}: the token was refused"),
            Self::Refused {
                status,
                token_sent: false,
            } => write!(
                f,
                "remote answered {status}: it wants a token, and the source has no credentials"
            ),
            Self::NotFound => f.write_str("remote answered 404: no such repository (or no access)"),
            Self::Status(status) => write!(f, "remote answered {status}"),
            Self::Connect { host, reason } => write!(f, "could not connect to {host}: {reason}"),
            Self::Timeout { secs } => write!(f, "remote did not answer within {secs} s"),
        }
    }
}

/// What a failed conversation with `host` came to, read from the typed
/// causes gix keeps (the HTTP client's error and status, an IO error's
/// kind); `None` when none of them says. `asked_for_credentials` is set when
/// the server answered 401: gix then asks for credentials, and none are
/// given.
fn diagnose(
    error: &(dyn std::error::Error + 'static),
    asked_for_credentials: bool,
    answer_secs: u64,
    token_sent: bool,
    host: &str,
) -> Option<RemoteProblem> {
    if asked_for_credentials {
        return Some(RemoteProblem::Refused {
            status: 401,
            token_sent,
        });
    }
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(http) = e.downcast_ref::<reqwest::Error>() {
            if let Some(status) = http.status() {
                return Some(match status.as_u16() {
                    status @ (401 | 403) => RemoteProblem::Refused { status, token_sent },
                    404 => RemoteProblem::NotFound,
                    status => RemoteProblem::Status(status),
                });
            }
            if http.is_timeout() {
                return Some(RemoteProblem::Timeout { secs: answer_secs });
            }
            if http.is_connect() {
                return Some(RemoteProblem::Connect {
                    host: host.to_string(),
                    reason: connect_reason(http),
                });
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::TimedOut => {
                    return Some(RemoteProblem::Timeout { secs: answer_secs });
                }
                std::io::ErrorKind::ConnectionRefused => {
                    return Some(RemoteProblem::Connect {
                        host: host.to_string(),
                        reason: "connection refused".into(),
                    });
                }
                _ => {}
            }
            if let Some(inner) = io.get_ref() {
                if inner
                    .downcast_ref::<gix::protocol::transport::client::AuthenticationRequired>()
                    .is_some()
                {
                    return Some(RemoteProblem::Refused {
                        status: 401,
                        token_sent,
                    });
                }
                if let Some(found) = diagnose(inner, false, answer_secs, token_sent, host) {
                    return Some(found);
                }
            }
        }
        cause = e.source();
    }
    None
}

/// Why a connection failed: the OS's reason in lower case
/// (`connection refused`), or the deepest cause the client gives.
fn connect_reason(error: &reqwest::Error) -> String {
    let mut reason = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::TimedOut => return "the connection timed out".into(),
                _ => {}
            }
        }
        reason = Some(e.to_string());
        cause = e.source();
    }
    reason.unwrap_or_else(|| "connection failed".into())
}

/// A repository on its server.
pub struct Remote {
    repo_name: String,
    url: String,
    authorization: Option<SecretString>,
    /// Set when the server answered 401 during the last handshake.
    asked_for_credentials: AtomicBool,
    answer_timeout: Duration,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("repo", &self.repo_name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

type BoxedTransport = Box<dyn Transport + Send>;

impl Remote {
    pub fn new(repo: &RepoName, url: String, authorization: Option<SecretString>) -> Self {
        Self {
            repo_name: repo.to_string(),
            url,
            authorization,
            asked_for_credentials: AtomicBool::new(false),
            answer_timeout: ANSWER_TIMEOUT,
        }
    }

    /// The same remote with a shorter wait for answers (tests of a hung
    /// server).
    #[cfg(test)]
    fn with_answer_timeout(mut self, timeout: Duration) -> Self {
        self.answer_timeout = timeout;
        self
    }

    /// The error of a failed conversation: what the server answered when
    /// that is known, else gix's chain of causes.
    fn err(&self, source: gix::Error) -> GitError {
        let host = gix::url::parse(gix::bstr::BStr::new(self.url.as_bytes()))
            .ok()
            .and_then(|url| {
                let host = url.host()?.to_string();
                Some(match url.port {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| self.url.clone());
        let problem = diagnose(
            &source,
            self.asked_for_credentials.load(Ordering::Relaxed),
            self.answer_timeout.as_secs(),
            self.authorization.is_some(),
            &host,
        );
        match problem {
            Some(problem) => GitError::Remote {
                repo: self.repo_name.clone(),
                url: self.url.clone(),
                problem,
            },
            None => GitError::Fetch {
                repo: self.repo_name.clone(),
                url: self.url.clone(),
                source: Box::new(source),
            },
        }
    }

    fn user_agent() -> gix::protocol::command::Feature {
        (
            "agent",
            Some(format!("hookvault/{}", env!("CARGO_PKG_VERSION"))),
        )
    }

    /// Connect, send the credentials header, and shake hands (protocol v2
    /// where the server speaks it).
    fn connect(&self) -> Result<(BoxedTransport, gix::protocol::Handshake), GitError> {
        let version = gix::protocol::transport::Protocol::V2;
        let url =
            gix::url::parse(gix::bstr::BStr::new(self.url.as_bytes())).map_err(|e| self.err(e))?;
        let mut transport: BoxedTransport = match url.scheme {
            gix::url::Scheme::Http | gix::url::Scheme::Https => Box::new(http::connect_http(
                Buffered(http::reqwest::Remote::default()),
                url,
                version,
                false,
            )),
            _ => connect::connect(
                url,
                connect::Options {
                    version,
                    ..Default::default()
                },
            )
            .map_err(|e| self.err(e))?,
        };
        let answer_timeout = self.answer_timeout;
        let client = http::reqwest::Options {
            configure_client: Some(Box::new(move |builder| {
                Ok(builder
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(answer_timeout))
            })),
            configure_request: None,
        };
        let mut options = http::Options {
            backend: Some(Arc::new(std::sync::Mutex::new(client))),
            connect_timeout: Some(CONNECT_TIMEOUT),
            low_speed_limit_bytes_per_second: 1,
            low_speed_time_seconds: STALL_TIMEOUT_SECS,
            user_agent: Some(Self::user_agent().1.unwrap_or_default()),
            ..Default::default()
        };
        if let Some(authorization) = &self.authorization {
            options
                .extra_headers
                .push(format!("Authorization: {}", authorization.expose()));
        }
        if transport.to_url().starts_with(b"http") {
            transport.configure(&options).map_err(|e| self.err(e))?;
        } else if self.authorization.is_some() {
            return Err(GitError::NotHttp {
                repo: self.repo_name.clone(),
                url: self.url.clone(),
            });
        }
        // Never consult credential helpers or prompt: a 401 is an error.
        // gix asks for credentials only when the server answered 401.
        self.asked_for_credentials.store(false, Ordering::Relaxed);
        let handshake = gix::protocol::handshake(
            &mut transport,
            gix::protocol::transport::Service::UploadPack,
            |_| {
                self.asked_for_credentials.store(true, Ordering::Relaxed);
                Ok(None)
            },
            Vec::new(),
            &mut gix::progress::Discard,
        )
        .map_err(|e| self.err(e))?;
        Ok((transport, handshake))
    }

    /// The remote's branches and tags (`ls-refs` in protocol v2, the
    /// handshake's advertisement in v1).
    fn list(
        &self,
        transport: &mut BoxedTransport,
        handshake: &mut gix::protocol::Handshake,
    ) -> Result<Vec<RemoteRef>, GitError> {
        let refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
            .into_iter()
            .map(|spec| {
                gix::refspec::parse(spec.into(), gix::refspec::parse::Operation::Fetch)
                    .map(|spec| spec.to_owned())
                    .map_err(|e| self.err(e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ref_map = handshake
            .prepare_lsrefs_or_extract_refmap(
                Self::user_agent(),
                true,
                gix::protocol::fetch::refmap::init::Context {
                    fetch_refspecs: refspecs,
                    extra_refspecs: Vec::new(),
                },
            )
            .map_err(|e| self.err(e))?
            .fetch_blocking(gix::progress::Discard, transport, false)
            .map_err(|e| self.err(e))?;
        Ok(branches_and_tags(&ref_map.remote_refs))
    }

    /// The remote's branches and tags, without fetching any objects
    /// (`git ls-remote`).
    pub fn ls_remote(&self) -> Result<Vec<RemoteRef>, GitError> {
        let (mut transport, mut handshake) = self.connect()?;
        let refs = self.list(&mut transport, &mut handshake)?;
        end_interaction(&mut transport, &handshake);
        Ok(refs)
    }

    /// List the remote's branches and tags and receive, into `pack_dir`, a
    /// pack with what the vault lacks of them. Tips `held` says the vault
    /// has are not asked for. `previous` (the latest snapshot's refs) gives
    /// the `have`s (see `choose_haves`); the server may leave out everything
    /// reachable from them, so the thin pack's bases are read from `bases`
    /// and the pack written is complete.
    pub fn fetch(
        &self,
        pack_dir: &Path,
        previous: &BTreeMap<String, GitOid>,
        held: &dyn Fn(&GitOid) -> bool,
        bases: BaseLookup<'_>,
    ) -> Result<Fetch, GitError> {
        let started = std::time::Instant::now();
        let (mut transport, mut handshake) = self.connect()?;
        let connected = started.elapsed();
        let refs = self.list(&mut transport, &mut handshake)?;
        let listed = started.elapsed();
        let mut wants = Vec::new();
        let mut seen = HashSet::new();
        for r in &refs {
            if seen.insert(r.target) && !held(&r.target) {
                wants.push(to_gix(&r.target));
            }
        }
        if wants.is_empty() {
            end_interaction(&mut transport, &handshake);
            return Ok(Fetch {
                refs,
                received_pack: false,
            });
        }
        let mut negotiate = AgainstVault {
            wants,
            haves: choose_haves(previous, &refs, held),
        };
        let interrupt = AtomicBool::new(false);
        let shallow = gix::protocol::fetch::Shallow::NoChange;
        let bases = VaultBases(bases);
        let receiving = std::cell::Cell::new(None);
        let outcome = gix::protocol::fetch(
            &mut negotiate,
            |reader, progress, should_interrupt| {
                receiving.set(Some(started.elapsed()));
                gix::odb::pack::Bundle::write_to_directory(
                    reader,
                    Some(pack_dir),
                    progress,
                    should_interrupt,
                    Some(&bases),
                    gix::hash::Kind::Sha1,
                    gix::odb::pack::bundle::write::Options::default(),
                )?;
                Ok(true)
            },
            gix::progress::Discard,
            &interrupt,
            gix::protocol::fetch::Context {
                handshake: &mut handshake,
                transport: &mut transport,
                user_agent: Self::user_agent(),
                trace_packetlines: false,
            },
            gix::protocol::fetch::Options {
                // Never written: a shallow remote is refused.
                shallow_file: pack_dir.join("shallow"),
                shallow: &shallow,
                tags: gix::protocol::fetch::Tags::None,
                reject_shallow_remote: true,
            },
        )
        .map_err(|e| self.err(e))?;
        end_interaction(&mut transport, &handshake);
        tracing::debug!(
            connect_ms = connected.as_millis() as u64,
            list_ms = (listed - connected).as_millis() as u64,
            negotiate_ms = (receiving.get().unwrap_or(listed) - listed).as_millis() as u64,
            pack_ms = (started.elapsed() - receiving.get().unwrap_or(listed)).as_millis() as u64,
            "fetch phases"
        );
        Ok(Fetch {
            refs,
            received_pack: outcome.is_some(),
        })
    }
}

/// Tell a v2 server the conversation is over (a no-op for stateless HTTP,
/// and harmless if it fails: the request is complete).
fn end_interaction(transport: &mut BoxedTransport, handshake: &gix::protocol::Handshake) {
    if handshake.server_protocol_version == gix::protocol::transport::Protocol::V2 {
        let _ = gix::protocol::indicate_end_of_interaction(transport, false);
    }
}

/// Up to `MAX_HAVES` of the previous snapshot's tips that the vault holds:
/// first the old targets of refs that moved (a push usually builds on
/// them), then the tips of refs that did not move, then the rest, each
/// group in name order.
fn choose_haves(
    previous: &BTreeMap<String, GitOid>,
    remote: &[RemoteRef],
    held: &dyn Fn(&GitOid) -> bool,
) -> Vec<ObjectId> {
    let now: HashMap<&str, &GitOid> = remote
        .iter()
        .map(|r| (r.name.as_str(), &r.target))
        .collect();
    let rank = |name: &str, target: &GitOid| match now.get(name) {
        Some(current) if *current != target => 0,
        Some(_) => 1,
        None => 2,
    };
    let mut ranked: Vec<(u8, &GitOid)> = previous
        .iter()
        .map(|(name, target)| (rank(name, target), target))
        .collect();
    ranked.sort_by_key(|(rank, _)| *rank);
    let mut seen = HashSet::new();
    ranked
        .into_iter()
        .map(|(_, target)| target)
        .filter(|target| seen.insert(**target) && held(target))
        .take(MAX_HAVES)
        .map(to_gix)
        .collect()
}

/// Branches and tags of a ref listing, sorted by name.
fn branches_and_tags(refs: &[Ref]) -> Vec<RemoteRef> {
    let mut out: Vec<RemoteRef> = refs
        .iter()
        .filter(|r| !matches!(r, Ref::Unborn { .. }))
        .filter_map(|r| {
            let (name, target, _peeled) = r.unpack();
            let name = name.to_string();
            let wanted = name.starts_with("refs/heads/") || name.starts_with("refs/tags/");
            Some(RemoteRef {
                name,
                target: from_gix(target?),
            })
            .filter(|_| wanted)
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One round: every wanted tip, every tip of the latest snapshot as a
/// `have`, and `done`. The vault holds the whole history of each `have`,
/// so the server may leave out everything reachable from them.
struct AgainstVault {
    wants: Vec<ObjectId>,
    haves: Vec<ObjectId>,
}

impl gix::protocol::fetch::Negotiate for AgainstVault {
    fn mark_complete_and_common_ref(&mut self) -> gix::Result<negotiate::Action> {
        Ok(negotiate::Action::MustNegotiate {
            remote_ref_target_known: Vec::new(),
        })
    }

    fn add_wants(
        &mut self,
        arguments: &mut gix::protocol::fetch::Arguments,
        _remote_ref_target_known: &[bool],
    ) -> bool {
        for want in &self.wants {
            arguments.want(want);
        }
        !self.wants.is_empty()
    }

    fn one_round(
        &mut self,
        _state: &mut negotiate::one_round::State,
        arguments: &mut gix::protocol::fetch::Arguments,
        _previous_response: Option<&gix::protocol::fetch::Response>,
    ) -> gix::Result<(negotiate::Round, bool)> {
        for have in &self.haves {
            arguments.have(have);
        }
        Ok((
            negotiate::Round {
                haves_sent: self.haves.len(),
                in_vain: 0,
                haves_to_send: 0,
                previous_response_had_at_least_one_in_common: false,
            },
            true,
        ))
    }
}

/// gix's HTTP client with its request bodies buffered until the response is
/// read. Unbuffered, each packet line of a request crosses to the client's
/// I/O thread on its own (a rendezvous channel): a first fetch of 10,000
/// branches spent 0.9 s handing over its `want`s, longer than the whole
/// `git clone --mirror`. A stateless smart-HTTP request is sent whole
/// anyway, and `RequestWriter::into_read` flushes before reading.
struct Buffered<H>(H);

/// Large enough for 10,000 `want`s in one hand-over.
const REQUEST_BUFFER: usize = 1 << 20;

impl<H: http::Http> http::Http for Buffered<H> {
    type Headers = H::Headers;
    type ResponseBody = H::ResponseBody;
    type PostBody = std::io::BufWriter<H::PostBody>;

    fn get(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> gix::Result<http::GetResponse<Self::Headers, Self::ResponseBody>> {
        self.0.get(url, base_url, headers)
    }

    fn post(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        body: http::PostBodyDataKind,
    ) -> gix::Result<http::PostResponse<Self::Headers, Self::ResponseBody, Self::PostBody>> {
        let response = self.0.post(url, base_url, headers, body)?;
        Ok(http::PostResponse {
            post_body: std::io::BufWriter::with_capacity(REQUEST_BUFFER, response.post_body),
            headers: response.headers,
            body: response.body,
        })
    }

    fn configure(&mut self, config: &dyn std::any::Any) -> gix::Result {
        self.0.configure(config)
    }

    fn redirected_base_url(&self) -> Option<String> {
        self.0.redirected_base_url()
    }
}

/// The vault as the object database a thin pack's bases are read from.
struct VaultBases<'a>(BaseLookup<'a>);

impl gix::objs::Find for &VaultBases<'_> {
    fn try_find<'b>(
        &self,
        id: &gix::oid,
        buffer: &'b mut Vec<u8>,
    ) -> gix::Result<Option<gix::objs::Data<'b>>> {
        let Some((kind, content)) = (self.0)(&from_gix(id)) else {
            return Ok(None);
        };
        let Some(kind) = from_kind(kind) else {
            return Ok(None);
        };
        buffer.clear();
        buffer.extend_from_slice(&content);
        Ok(Some(gix::objs::Data {
            kind,
            object_hash: gix::hash::Kind::Sha1,
            data: buffer,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::git::{Workspace, to_kind};

    fn git(dir: &Path, args: &[&str]) -> String {
        String::from_utf8_lossy(&crate::git::test_git(dir, args))
            .trim()
            .to_string()
    }

    fn big_file(changed_line: usize) -> String {
        (0..3000)
            .map(|i| {
                if i == changed_line {
                    "a line that changed\n".to_string()
                } else {
                    format!("line {i} of a file long enough to be sent as a delta\n")
                }
            })
            .collect()
    }

    /// The recorded error says why, not only that the fetch failed.
    #[test]
    fn a_failed_fetch_names_its_cause() {
        let name = RepoName::parse("acme/app").expect("name");
        // Port 9 (discard) on loopback: nothing listens there.
        let remote = Remote::new(&name, "http://127.0.0.1:9/acme/app.git".into(), None);
        let error = remote.ls_remote().expect_err("nothing listens").to_string();
        assert!(
            error.starts_with("fetching acme/app from http://127.0.0.1:9/acme/app.git: "),
            "{error}"
        );
        assert!(error.to_lowercase().contains("refused"), "{error}");
    }

    /// A loopback HTTP server answering every request with `status` (or,
    /// with `None`, accepting connections and never answering). Returns a
    /// repository URL on it.
    fn stub_server(status: Option<u16>) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let Some(status) = status else {
                    held.push(stream);
                    continue;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} Status\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        format!("http://{addr}/acme/app.git")
    }

    fn failure_of(url: &str, timeout: Duration) -> GitError {
        let name = RepoName::parse("acme/app").expect("name");
        let token = Some(SecretString::new("Bearer secret-token".into()));
        Remote::new(&name, url.to_string(), token)
            .with_answer_timeout(timeout)
            .ls_remote()
            .expect_err("the server fails")
    }

    /// Each way a git server can fail reads as what happened, and says
    /// whether trying again can help.
    #[test]
    fn remote_failures_are_told_in_words_and_classified() {
        let cases = [
            (
                Some(401),
                "remote answered 401: the token was refused",
                FailureKind::Permanent,
            ),
            (
                Some(403),
                "remote answered 403: the token was refused",
                FailureKind::Permanent,
            ),
            (
                Some(404),
                "remote answered 404: no such repository (or no access)",
                FailureKind::Permanent,
            ),
            (Some(500), "remote answered 500", FailureKind::Transient),
            (Some(503), "remote answered 503", FailureKind::Transient),
            (
                None,
                "remote did not answer within 1 s",
                FailureKind::Transient,
            ),
        ];
        for (status, expected, kind) in cases {
            let url = stub_server(status);
            let error = failure_of(&url, Duration::from_secs(1));
            assert_eq!(
                error.to_string(),
                format!("fetching acme/app from {url}: {expected}"),
                "{status:?}"
            );
            assert_eq!(error.kind(), kind, "{status:?}");
            assert!(!error.to_string().contains("secret-token"));
        }
        // Nothing listens on a port just given back.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let url = format!("http://127.0.0.1:{port}/acme/app.git");
        let error = failure_of(&url, Duration::from_secs(1));
        assert_eq!(
            error.to_string(),
            format!(
                "fetching acme/app from {url}: could not connect to 127.0.0.1:{port}: connection refused"
            )
        );
        assert_eq!(error.kind(), FailureKind::Transient);
    }

    /// A push after a backup: the fetch says what the vault has, receives
    /// only the new objects as a thin pack, and completes it from the vault.
    #[test]
    fn fetch_negotiates_against_the_vault_and_completes_the_thin_pack_from_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("big.txt"), big_file(usize::MAX)).expect("write");
        std::fs::write(work.join("other.txt"), "unchanged\n").expect("write");
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", "one"]);
        let first = git(&work, &["rev-parse", "HEAD"]);
        // The vault's stand-in: a bare copy as of the first commit.
        let held_repo = tmp.path().join("held.git");
        git(
            tmp.path(),
            &[
                "clone",
                "-q",
                "--bare",
                "work",
                held_repo.to_str().expect("utf8"),
            ],
        );
        let held_repo = gix::open(&held_repo).expect("open");
        std::fs::write(work.join("big.txt"), big_file(1500)).expect("write");
        git(&work, &["commit", "-q", "-am", "two"]);
        git(&work, &["tag", "-a", "-m", "release", "v2"]);
        let second = git(&work, &["rev-parse", "HEAD"]);
        let tag = git(&work, &["rev-parse", "v2"]);

        let name = RepoName::parse("acme/app").expect("name");
        let url = format!("file://{}", work.display());
        let remote = Remote::new(&name, url, None);
        let held = |oid: &GitOid| held_repo.has_object(to_gix(oid));
        let base_reads = Cell::new(0);
        let bases = |oid: &GitOid| {
            base_reads.set(base_reads.get() + 1);
            let object = held_repo.try_find_object(to_gix(oid)).ok()??;
            Some((to_kind(object.kind), Arc::new(object.detach().data)))
        };
        let first_oid = GitOid::from_hex(&first).expect("oid");
        let previous = BTreeMap::from([("refs/heads/main".to_string(), first_oid)]);
        let workspace = Workspace::create(&tmp.path().join("fetch"), &name).expect("workspace");
        let fetched = workspace
            .fetch(&remote, &previous, &held, &bases)
            .expect("fetch");
        assert!(fetched.received_pack);
        let names: Vec<&str> = fetched.refs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["refs/heads/main", "refs/tags/v2"]);
        assert_eq!(fetched.refs[1].target.to_hex(), tag);
        assert!(
            base_reads.get() >= 1,
            "the server sent no delta against an object the vault holds"
        );

        // What the walk lists is exactly what the vault lacks.
        let tips: Vec<GitOid> = fetched.refs.iter().map(|r| r.target).collect();
        let listed = workspace.walk(&tips, &[first_oid], &held).expect("walk");
        let mut kinds: Vec<(ObjectKind, Option<String>)> =
            listed.iter().map(|o| (o.kind, o.path.clone())).collect();
        kinds.sort_by_key(|(kind, path)| (format!("{kind:?}"), path.clone()));
        assert_eq!(
            kinds,
            [
                (ObjectKind::Blob, Some("big.txt".to_string())),
                (ObjectKind::Commit, None),
                (ObjectKind::Tag, None),
                (ObjectKind::Tree, Some(String::new())),
            ]
        );
        for object in &listed {
            workspace
                .read(&object.id)
                .expect("listed objects are in the workspace");
        }
        assert!(listed.iter().any(|o| o.id.to_hex() == second));
        // The first commit was never sent.
        assert!(workspace.read(&first_oid).is_err());

        // Nothing new: no pack is asked for.
        let all_held = |_: &GitOid| true;
        let again = Workspace::create(&tmp.path().join("fetch"), &name).expect("workspace");
        let fetched = again
            .fetch(&remote, &previous, &all_held, &bases)
            .expect("fetch");
        assert!(!fetched.received_pack);
        assert_eq!(fetched.refs.len(), 2);
        let path = again.path().to_path_buf();
        drop(again);
        assert!(!path.exists(), "a workspace is removed when dropped");
    }
}

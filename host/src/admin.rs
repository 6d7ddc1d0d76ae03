//! The delivery queue for the admin commands (`hookvault events`,
//! `hookvault stats`), beside a running `serve` or without one.
//!
//! sled lets one process hold a database, and a running `serve` holds the
//! queue's. So a command first opens the queue itself; when another process
//! holds it, it asks the running service over its admin API
//! (`/api/v1/deliveries`, `/api/v1/stats`, with `server.admin_token`) at
//! the address `serve` announced in `<store.path>/serve.json` when it
//! started listening. A command never creates a queue.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, SecretString};
use crate::pipeline::queue::{Counts, DeliveryView, Filter, Queue, QueueError, Retried, Status};

/// How long a command waits for another command to let go of the queue.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long a request to the running service may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "no delivery queue at {0} (run `hookvault serve` once to create it, or check store.path)"
    )]
    NoQueue(PathBuf),
    #[error(
        "the delivery queue at {queue} is held by another process, and no running service answered at the address in {announced}"
    )]
    Held { queue: PathBuf, announced: PathBuf },
    #[error(
        "the service at {addr} holds the delivery queue; set server.admin_token so this command can ask it"
    )]
    NoToken { addr: SocketAddr },
    #[error("asking the service at {addr}: {message}")]
    Api { addr: SocketAddr, message: String },
    #[error("no delivery {0}")]
    NoSuchDelivery(String),
    #[error("delivery {id} has not failed (it is {}); only failed deliveries are retried", .status.as_str())]
    NotFailed { id: String, status: Status },
}

/// What `serve` writes to `<store.path>/serve.json` while it listens.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    listening: SocketAddr,
    pid: u32,
}

fn announcement_path(store: &Path) -> PathBuf {
    store.join("serve.json")
}

/// Tell admin commands where this `serve` listens (an unspecified address
/// is reached on loopback).
pub fn announce(store: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let mut reach = addr;
    if reach.ip().is_unspecified() {
        reach.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let text = serde_json::to_vec(&Announcement {
        listening: reach,
        pid: std::process::id(),
    })
    .map_err(std::io::Error::other)?;
    let path = announcement_path(store);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

/// Remove the announcement at shutdown (a killed `serve` leaves it; the
/// next command finds nothing answering there and the queue free).
pub fn withdraw(store: &Path) {
    let _ = std::fs::remove_file(announcement_path(store));
}

/// The delivery queue: opened here, or reached through the running service.
#[derive(Debug)]
pub enum Deliveries {
    Direct(Queue),
    Service {
        addr: SocketAddr,
        token: SecretString,
        client: reqwest::Client,
    },
}

#[derive(Deserialize)]
struct Requeued {
    requeued: Vec<String>,
}

#[derive(Deserialize)]
struct StatsAnswer {
    queue: Counts,
}

impl Deliveries {
    /// Open the queue, or find the service that holds it.
    pub async fn open(config: &Config) -> Result<Self, AdminError> {
        let dir = config.store.path.join("queue");
        if !dir.is_dir() {
            return Err(AdminError::NoQueue(dir));
        }
        let announced = announcement_path(&config.store.path);
        let started = Instant::now();
        loop {
            match Queue::open_dir(&dir) {
                Ok(queue) => return Ok(Self::Direct(queue)),
                Err(QueueError::InUse { .. }) => {}
                Err(other) => return Err(other.into()),
            }
            if let Some(service) = Self::service(config, &announced).await? {
                return Ok(service);
            }
            // Another command may hold it for a moment.
            if started.elapsed() > LOCK_WAIT {
                return Err(AdminError::Held {
                    queue: dir,
                    announced,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The announced service, when it answers.
    async fn service(config: &Config, announced: &Path) -> Result<Option<Self>, AdminError> {
        let Some(announcement) = std::fs::read(announced)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Announcement>(&bytes).ok())
        else {
            return Ok(None);
        };
        let addr = announcement.listening;
        let client = reqwest::Client::builder()
            .timeout(API_TIMEOUT)
            .build()
            .map_err(|e| AdminError::Api {
                addr,
                message: e.to_string(),
            })?;
        let healthy = client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !healthy {
            return Ok(None);
        }
        let token = config
            .server
            .admin_token
            .as_ref()
            .map(|t| t.resolve("server.admin_token"))
            .transpose()?
            .ok_or(AdminError::NoToken { addr })?;
        Ok(Some(Self::Service {
            addr,
            token,
            client,
        }))
    }

    /// A request to the service; its JSON answer, or its `error` in words.
    async fn call<T: serde::de::DeserializeOwned>(
        addr: SocketAddr,
        request: reqwest::RequestBuilder,
        token: &SecretString,
    ) -> Result<Result<T, (u16, String)>, AdminError> {
        let api = |e: reqwest::Error| AdminError::Api {
            addr,
            message: e.to_string(),
        };
        let response = request
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(api)?;
        let status = response.status();
        let text = response.text().await.map_err(api)?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map(Ok)
                .map_err(|e| AdminError::Api {
                    addr,
                    message: format!("unexpected answer: {e}"),
                });
        }
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        Ok(Err((status.as_u16(), message)))
    }

    fn unexpected(addr: SocketAddr, (status, message): (u16, String)) -> AdminError {
        AdminError::Api {
            addr,
            message: format!("{status}: {message}"),
        }
    }

    /// The deliveries `filter` admits, oldest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<DeliveryView>, AdminError> {
        match self {
            Self::Direct(queue) => Ok(queue.list(filter)?.iter().map(DeliveryView::from).collect()),
            Self::Service {
                addr,
                token,
                client,
            } => {
                // Repository names are letters, digits, `-`, `_`, `.` and
                // one `/`: nothing to escape in a query.
                let mut url = format!(
                    "http://{addr}/api/v1/deliveries?failed={}",
                    filter.failed_only
                );
                if let Some(repo) = &filter.repo {
                    url.push_str(&format!("&repo={repo}"));
                }
                let request = client.get(url);
                Self::call(*addr, request, token)
                    .await?
                    .map_err(|e| Self::unexpected(*addr, e))
            }
        }
    }

    /// Queue a failed delivery again.
    pub async fn retry(&self, id: &str) -> Result<(), AdminError> {
        match self {
            Self::Direct(queue) => match queue.retry(id).await? {
                Retried::Requeued => Ok(()),
                Retried::NotFound => Err(AdminError::NoSuchDelivery(id.to_string())),
                Retried::NotFailed(status) => Err(AdminError::NotFailed {
                    id: id.to_string(),
                    status,
                }),
            },
            Self::Service {
                addr,
                token,
                client,
            } => {
                let url = format!("http://{addr}/api/v1/deliveries/{}/retry", path_segment(id));
                match Self::call::<Requeued>(*addr, client.post(url), token).await? {
                    Ok(_) => Ok(()),
                    Err((404, _)) => Err(AdminError::NoSuchDelivery(id.to_string())),
                    Err((409, message)) => Err(AdminError::Api {
                        addr: *addr,
                        message,
                    }),
                    Err(other) => Err(Self::unexpected(*addr, other)),
                }
            }
        }
    }

    /// Queue every failed delivery again; their ids.
    pub async fn retry_all_failed(&self) -> Result<Vec<String>, AdminError> {
        match self {
            Self::Direct(queue) => Ok(queue.retry_all_failed().await?),
            Self::Service {
                addr,
                token,
                client,
            } => {
                let request = client.post(format!("http://{addr}/api/v1/retry-failed"));
                Self::call::<Requeued>(*addr, request, token)
                    .await?
                    .map(|r| r.requeued)
                    .map_err(|e| Self::unexpected(*addr, e))
            }
        }
    }

    /// Deliveries by state.
    pub async fn counts(&self) -> Result<Counts, AdminError> {
        match self {
            Self::Direct(queue) => Ok(queue.counts()?),
            Self::Service {
                addr,
                token,
                client,
            } => {
                let request = client.get(format!("http://{addr}/api/v1/stats"));
                Self::call::<StatsAnswer>(*addr, request, token)
                    .await?
                    .map(|s| s.queue)
                    .map_err(|e| Self::unexpected(*addr, e))
            }
        }
    }
}

/// A delivery id as one URL path segment (ids are printable ASCII and may
/// hold `{`, `}`, `/`, `?` or `#`).
fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_one_path_segment() {
        assert_eq!(
            path_segment("{1a2b-3c}/../x?y#z"),
            "%7B1a2b-3c%7D%2F..%2Fx%3Fy%23z"
        );
    }
}

//! One fetch, by hand: check the URL, resolve and filter its host, connect to a checked
//! address, TLS, one HTTP/1.1 GET on a fresh connection, and either a redirect to follow
//! (as a new URL, checked from the start) or a bounded piece of an HTML body.
//!
//! Why not a general HTTP client: a client resolves names itself (connecting to IP
//! literals without asking a resolver), pools connections across hosts, honours proxy
//! variables and follows redirects on its own terms; each is a way around the checks
//! above. Here every connection is made to an address this module checked a moment
//! before, and nothing outlives the fetch.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use url::{Host, Url};

use crate::{addr, host_key, html, FetchError, Previewer};

/// Where one hop goes, after the checks.
struct Target {
    /// The host as the allowlist and the caches know it (IPv6 without brackets).
    host: String,
    addrs: Vec<SocketAddr>,
    server_name: ServerName<'static>,
    /// The `Host` header: the host, and the port when it is not 443.
    host_header: String,
}

enum Answer {
    Redirect(String),
    Page(String),
}

/// Aborts the task driving a connection when the fetch is done with it (or is dropped at
/// the deadline): nothing of a fetch outlives it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Previewer {
    /// Follows `start` through its redirects to a page; `at` always names the host being
    /// talked to, for the caller's timeout to blame.
    pub(crate) async fn follow(
        &self,
        start: &Url,
        at: &mut String,
    ) -> Result<(Url, html::PageMeta), FetchError> {
        let mut url = start.clone();
        let mut redirects = 0;
        loop {
            *at = host_key(&url);
            let target = self.target(&url).await?;
            at.clone_from(&target.host);
            match self.get(&target, &url).await? {
                Answer::Page(body) => return Ok((url, html::parse(&body))),
                Answer::Redirect(location) => {
                    redirects += 1;
                    if redirects > self.settings.max_redirects {
                        return Err(FetchError::TooManyRedirects(self.settings.max_redirects));
                    }
                    url = url
                        .join(&location)
                        .map_err(|_| FetchError::BadRedirect(location.clone()))?;
                    url.set_fragment(None);
                    tracing::debug!(to = %url, "following a redirect");
                }
            }
        }
    }

    /// Checks `url` (scheme, allowlist, port) and resolves its host to addresses that
    /// are all public, or pinned by [`Settings::resolve`](crate::Settings::resolve).
    async fn target(&self, url: &Url) -> Result<Target, FetchError> {
        let unsupported = || FetchError::Unsupported(url.to_string());
        if url.scheme() != "https" {
            return Err(unsupported());
        }
        let host = url.host().ok_or_else(unsupported)?;
        let name = host_key(url);
        let allow = &self.settings.allow_hosts;
        if !allow.is_empty() && !allow.iter().any(|p| p.matches(&name)) {
            return Err(FetchError::NotAllowed(name));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs = if let Some(ip) = self.settings.resolve.get(&name) {
            vec![SocketAddr::new(*ip, port)]
        } else {
            // The default port only: no probing of other services on public hosts.
            if url.port().is_some() {
                return Err(unsupported());
            }
            let addrs: Vec<SocketAddr> = match &host {
                Host::Ipv4(ip) => vec![SocketAddr::new((*ip).into(), port)],
                Host::Ipv6(ip) => vec![SocketAddr::new((*ip).into(), port)],
                Host::Domain(d) => tokio::net::lookup_host((*d, port))
                    .await
                    .map_err(|e| FetchError::Resolve(name.clone(), e.to_string()))?
                    .collect(),
            };
            if addrs.is_empty() {
                return Err(FetchError::Resolve(name, "no addresses".into()));
            }
            // One bad address spoils the host: a name that mixes public and private
            // addresses is not one to trust with the public ones either.
            if let Some(bad) = addrs.iter().find(|a| !addr::is_public(a.ip())) {
                return Err(FetchError::Forbidden {
                    host: name,
                    addr: bad.ip(),
                });
            }
            addrs
        };
        let server_name = match &host {
            Host::Domain(_) => ServerName::try_from(name.clone()).map_err(|_| unsupported())?,
            Host::Ipv4(ip) => ServerName::IpAddress(std::net::IpAddr::from(*ip).into()),
            Host::Ipv6(ip) => ServerName::IpAddress(std::net::IpAddr::from(*ip).into()),
        };
        let host_header = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        Ok(Target {
            host: name,
            addrs,
            server_name,
            host_header,
        })
    }

    /// One GET of `url` at `target`.
    async fn get(&self, target: &Target, url: &Url) -> Result<Answer, FetchError> {
        let host = || target.host.clone();
        let tcp = connect_any(target).await?;
        let tls = self
            .tls
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(|e| FetchError::Tls(host(), e.to_string()))?;
        let http_error = |e: hyper::Error| FetchError::Http(host(), e.to_string());
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
                .await
                .map_err(http_error)?;
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
        let request = http::Request::get(path)
            .header(header::HOST, &target.host_header)
            .header(header::USER_AGENT, &self.settings.user_agent)
            .header(header::ACCEPT, "text/html,application/xhtml+xml;q=0.9")
            .header(header::ACCEPT_ENCODING, "identity")
            .body(Empty::new())
            .map_err(|e| FetchError::Http(host(), e.to_string()))?;
        let response = sender.send_request(request).await.map_err(http_error)?;
        if let Some(redirect) = redirect_or_refusal(&response)? {
            return Ok(redirect);
        }
        let head = read_head(response.into_body(), self.settings.max_bytes)
            .await
            .map_err(http_error)?;
        // Whatever the server still sends is never read: the connection goes with `_driver`.
        // Cut at a character boundary where the limit split one: lossy decoding replaces it.
        Ok(Answer::Page(String::from_utf8_lossy(&head).into_owned()))
    }
}

/// A connection to the first of the target's addresses that accepts one.
async fn connect_any(target: &Target) -> Result<TcpStream, FetchError> {
    let mut last = None;
    for a in &target.addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(FetchError::Connect(
        target.host.clone(),
        last.map(|e| e.to_string()).unwrap_or_default(),
    ))
}

/// What the response's head says before its body is read: a redirect to follow, a
/// refusal (an error status, or a page that is not HTML), or `None` to read the page.
fn redirect_or_refusal<B>(response: &http::Response<B>) -> Result<Option<Answer>, FetchError> {
    let status = response.status();
    if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| FetchError::BadRedirect(format!("HTTP {status} without Location")))?;
        return Ok(Some(Answer::Redirect(location.to_owned())));
    }
    if !status.is_success() {
        return Err(FetchError::Status(status.as_u16()));
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime != "text/html" && mime != "application/xhtml+xml" {
        return Err(FetchError::NotHtml(
            content_type.chars().take(100).collect(),
        ));
    }
    Ok(None)
}

/// The page's bytes up to the end of its head (or `max` bytes, whichever comes first).
async fn read_head(mut body: hyper::body::Incoming, max: usize) -> Result<Vec<u8>, hyper::Error> {
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < max {
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let searched_to = buf.len().saturating_sub(HEAD_END_OVERLAP);
        let take = (max - buf.len()).min(data.len());
        buf.extend_from_slice(&data[..take]);
        if head_ends(&buf[searched_to..]) {
            break;
        }
    }
    Ok(buf)
}

/// Bytes of the previous chunk searched again, so a marker split between chunks is found.
const HEAD_END_OVERLAP: usize = 8;

/// Whether `bytes` holds `</head` or `<body`: everything a preview needs is above.
fn head_ends(bytes: &[u8]) -> bool {
    bytes
        .windows(6)
        .any(|w| w.eq_ignore_ascii_case(b"</head") || w[..5].eq_ignore_ascii_case(b"<body"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends() {
        assert!(head_ends(b"<html><HEAD></HEAD>"));
        assert!(head_ends(b"x<Body>"));
        assert!(!head_ends(b"<head><title>x</title>"));
        assert!(!head_ends(b"<bod"));
    }
}

//! Link previews for chat messages: [`find_url`] picks the first `https://` URL out of a
//! message's text, and [`Previewer::preview`] fetches that page and reads a [`Preview`]
//! (title, description, image URL, site name) from its OpenGraph tags, else its `<title>`
//! and `<meta name="description">` ([`html`]).
//!
//! The URL comes from whoever wrote the message, and the fetch runs inside the server's
//! network, so the fetcher is built to be pointed at hostile places:
//! - only `https` on the default port, with certificates checked against the public roots;
//! - the host is resolved first and every address it resolves to must be public
//!   ([`addr::is_public`]: no loopback, private, link-local, unique-local, CGNAT,
//!   multicast, unspecified or metadata addresses); the connection goes to exactly the
//!   address that was checked, so DNS rebinding cannot swap it (no proxy, no pool);
//! - redirects are followed by hand, at most [`Settings::max_redirects`], each hop checked
//!   again as a new URL;
//! - one deadline ([`Settings::timeout`]) covers resolving, connecting, TLS, every hop and
//!   the body; only `text/html` bodies are read, and at most [`Settings::max_bytes`] of
//!   them, stopping early at `</head>` (everything a preview needs is above it);
//! - an optional allowlist of hosts ([`Settings::allow_hosts`]).
//!
//! Results are cached per URL (a preview, or the reason there is none) and failures per
//! host (a host that is refused, unreachable or too slow is left alone for a while), and
//! callers asking for a URL that is being fetched wait for that fetch, so a chat full of
//! links to one slow site does not tie up the fetcher.
//!
//! For tests, and for an operator who deliberately wants previews of an internal site,
//! [`Settings::resolve`] pins host names to addresses (like curl's `--resolve`): a pinned
//! host skips DNS and the address filter, may use any port, and is still fetched over
//! verified TLS ([`Settings::extra_roots`] adds trusted roots, e.g. a test's self-signed
//! CA). Nothing else ever reaches a private address, and there is no plain-HTTP mode.

#![warn(missing_docs)]

pub mod addr;
mod cache;
mod fetch;
pub mod html;
#[cfg(feature = "test-site")]
pub mod test_site;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls::pki_types::CertificateDer;
use tokio::sync::OnceCell;
pub use url::Url;

use cache::TtlCache;

/// What a chat client shows under a message with a link. Empty strings for what the page
/// does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preview {
    /// The URL as found in the message, normalized by [`Url`] (lowercase scheme and host,
    /// no fragment), not where redirects ended: so clients can match it to the link.
    pub url: String,
    /// The page's `og:title` (else `twitter:title`, else `<title>`).
    pub title: String,
    /// The page's `og:description` (else `twitter:description`, else `<meta name="description">`).
    pub description: String,
    /// Absolute http(s) URL of the page's image; never fetched by the server.
    pub image_url: String,
    /// `og:site_name`, else the host the page was served from.
    pub site_name: String,
}

/// Why a URL has no preview.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `https`, has no host, names a port without being pinned by
    /// [`Settings::resolve`], or redirects to such a URL. Holds the URL.
    #[error("not an https URL with a host on the default port: {0}")]
    Unsupported(String),
    /// The host (in the message's URL or a redirect) matches no [`Settings::allow_hosts`] pattern.
    /// Holds the host.
    #[error("host {0} is not on the allowlist")]
    NotAllowed(String),
    /// The host resolves to an address that [`addr::is_public`] refuses; one such address spoils
    /// the whole host.
    #[error("host {host} resolves to {addr}, which is not a public address")]
    Forbidden {
        /// The host name as resolved.
        host: String,
        /// The first address that is not public.
        addr: IpAddr,
    },
    /// DNS found no address for the host, or failed: the host, then why.
    #[error("resolving {0} failed: {1}")]
    Resolve(String, String),
    /// No TCP connection to any of the host's addresses: the host, then the last error.
    #[error("connecting to {0} failed: {1}")]
    Connect(String, String),
    /// The TLS handshake failed (an untrusted or wrong certificate, say): the host, then why.
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    /// The HTTP/1.1 exchange failed after TLS: the host, then why. Not a host failure, so not
    /// cached per host.
    #[error("HTTP exchange with {0} failed: {1}")]
    Http(String, String),
    /// The whole fetch took longer than [`Settings::timeout`]; holds the host being talked to when
    /// time ran out.
    #[error("timed out (at {0})")]
    Timeout(String),
    /// More redirects than [`Settings::max_redirects`] (the number held).
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    /// A redirect without a `Location`, or one that does not resolve to a URL; holds what there
    /// was.
    #[error("a redirect without a usable Location: {0}")]
    BadRedirect(String),
    /// The page answered with this status, neither a success nor a redirect.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The body is not `text/html` or `application/xhtml+xml`; holds the `Content-Type` as sent
    /// (its first 100 characters).
    #[error("not an HTML page (Content-Type {0:?})")]
    NotHtml(String),
    /// The page was read but gives neither a title nor a description, so there is nothing to show.
    #[error("the page has no title or description")]
    Empty,
}

impl FetchError {
    /// The host that failed, when the failure is the host's rather than the URL's: such
    /// hosts are left alone for [`Settings::host_ttl`].
    fn failed_host(&self) -> Option<&str> {
        match self {
            FetchError::Forbidden { host, .. }
            | FetchError::Resolve(host, _)
            | FetchError::Connect(host, _)
            | FetchError::Tls(host, _)
            | FetchError::Timeout(host) => Some(host),
            _ => None,
        }
    }
}

/// A host name pattern of the allowlist: `example.com` (that host only) or `*.example.com`
/// (its subdomains, not itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    /// Parses one allowlist entry; surrounding whitespace and a trailing dot are dropped and it is
    /// lower-cased. `None` when empty or when it holds `/`, `:` or a space (a URL or a host with a
    /// port rather than a host name).
    pub fn parse(raw: &str) -> Option<Self> {
        let p = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        (!p.is_empty() && !p.contains(['/', ':', ' '])).then_some(Self(p))
    }

    /// True when `host`, lower-cased and without a trailing dot as the fetcher compares it, is
    /// allowed by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self.0.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => host == self.0,
        }
    }
}

/// How the fetcher behaves. [`Settings::default`]: no allowlist, nothing pinned, a 5 s
/// timeout, 512 KiB of body, 3 redirects, an hour's URL cache, ten minutes' host cache.
#[derive(Debug, Clone)]
pub struct Settings {
    /// When not empty, only these hosts are fetched (every redirect hop too).
    pub allow_hosts: Vec<HostPattern>,
    /// Hosts pinned to an address: no DNS, no address filter, any port. For tests and
    /// deliberate internal previews only.
    pub resolve: HashMap<String, IpAddr>,
    /// Trusted roots besides the public (webpki) ones.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// The whole fetch, redirects and body included.
    pub timeout: Duration,
    /// Most body bytes read.
    pub max_bytes: usize,
    /// Most redirects followed; one more fails with [`FetchError::TooManyRedirects`]. 0 means none
    /// are followed.
    pub max_redirects: usize,
    /// How long a URL's result (a preview, or none) is reused.
    pub cache_ttl: Duration,
    /// How long a host that was refused, unreachable or too slow is left alone.
    pub host_ttl: Duration,
    /// Most URLs (and, separately, hosts) remembered.
    pub cache_entries: usize,
    /// The `User-Agent` sent with every request.
    pub user_agent: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            resolve: HashMap::new(),
            extra_roots: Vec::new(),
            timeout: Duration::from_secs(5),
            max_bytes: 512 * 1024,
            max_redirects: 3,
            cache_ttl: Duration::from_secs(3600),
            host_ttl: Duration::from_secs(600),
            cache_entries: 10_000,
            user_agent: concat!("grpc-chat-link-preview/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// Fetches previews, with the caches; cheap to share behind an `Arc`.
pub struct Previewer {
    settings: Settings,
    tls: tokio_rustls::TlsConnector,
    urls: TtlCache<Result<Preview, FetchError>>,
    hosts: TtlCache<FetchError>,
    /// Fetches under way, by URL: a second message with the same link waits for the
    /// first fetch instead of starting its own.
    inflight: Mutex<HashMap<String, Shared>>,
}

/// The result of one fetch, awaited by every caller that asked for its URL meanwhile.
type Shared = Arc<OnceCell<Result<Preview, FetchError>>>;

impl Previewer {
    /// A previewer with these settings and empty caches. Fails when one of
    /// [`Settings::extra_roots`] is not a usable certificate.
    pub fn new(settings: Settings) -> Result<Self, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for root in &settings.extra_roots {
            roots.add(root.clone())?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            urls: TtlCache::new(settings.cache_ttl, settings.cache_entries),
            hosts: TtlCache::new(settings.host_ttl, settings.cache_entries),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            settings,
            inflight: Mutex::default(),
        })
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The preview of `url`, from the cache when it is there; a failure (why there is no
    /// preview) is cached too, and a host that failed answers from the host cache. Callers
    /// that ask for a URL being fetched share that fetch.
    pub async fn preview(&self, url: &Url) -> Result<Preview, FetchError> {
        let key = cache_key(url);
        if let Some(cached) = self.urls.get(&key) {
            return cached;
        }
        if let Some(failed) = self.hosts.get(&host_key(url)) {
            return Err(failed);
        }
        let cell = self.inflight().entry(key.clone()).or_default().clone();
        let result = cell
            .get_or_init(|| async {
                let result = self.fetch(url).await;
                if let Err(e) = &result {
                    if let Some(host) = e.failed_host() {
                        self.hosts.insert(host.to_owned(), e.clone());
                    }
                }
                self.urls.insert(key.clone(), result.clone());
                result
            })
            .await
            .clone();
        let mut inflight = self.inflight();
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        result
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shared>> {
        // Nothing panics while holding it; if something did, the map is still whole.
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches `url` now, without the caches.
    pub async fn fetch(&self, url: &Url) -> Result<Preview, FetchError> {
        let mut at = host_key(url);
        let fetched = tokio::time::timeout(self.settings.timeout, self.follow(url, &mut at)).await;
        let (page_url, meta) = match fetched {
            Ok(r) => r?,
            Err(_) => return Err(FetchError::Timeout(at)),
        };
        let image_url = meta
            .image
            .and_then(|i| page_url.join(&i).ok())
            .filter(|i| matches!(i.scheme(), "http" | "https") && i.as_str().len() <= html::MAX_URL)
            .map(String::from)
            .unwrap_or_default();
        let preview = Preview {
            url: url.to_string(),
            title: meta.title.unwrap_or_default(),
            description: meta.description.unwrap_or_default(),
            image_url,
            site_name: meta.site_name.unwrap_or_else(|| {
                let host = page_url.host_str().unwrap_or_default();
                host.strip_prefix("www.").unwrap_or(host).to_owned()
            }),
        };
        if preview.title.is_empty() && preview.description.is_empty() {
            return Err(FetchError::Empty);
        }
        Ok(preview)
    }
}

/// The certificates of a PEM file (e.g. `LINK_PREVIEW_CA_FILE`), for
/// [`Settings::extra_roots`]; an error when it holds none, or a broken one.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError("no CERTIFICATE in it".into()));
    }
    Ok(certs)
}

/// A PEM file that is not a list of certificates.
#[derive(Debug, thiserror::Error)]
#[error("not PEM certificates: {0}")]
pub struct PemError(String);

/// A URL's host as the allowlist, the pins and the host cache know it: lowercase, no
/// trailing dot, IPv6 without brackets.
pub(crate) fn host_key(url: &Url) -> String {
    match url.host() {
        Some(url::Host::Domain(d)) => d.trim_end_matches('.').to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => String::new(),
    }
}

/// The cache key of a URL: as serialized, without its fragment.
fn cache_key(url: &Url) -> String {
    let mut u = url.clone();
    u.set_fragment(None);
    u.into()
}

/// Longest URL taken from a message, in bytes.
pub const MAX_MESSAGE_URL: usize = 2048;

/// The first `https://` URL in `text` that can be previewed: with a host, without
/// credentials, at most [`MAX_MESSAGE_URL`] long. Punctuation that ends a sentence after
/// the URL is not part of it; a closing parenthesis is when the URL opened one.
pub fn find_url(text: &str) -> Option<Url> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("https://").map(|i| from + i) {
        from = i + "https://".len();
        // Only at the start of a word: not "xhttps://".
        if text[..i]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric)
        {
            continue;
        }
        let end = text[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '`' | '|'))
            .map_or(text.len(), |e| i + e);
        let mut candidate = &text[i..end];
        loop {
            let trimmed = candidate.trim_end_matches(['.', ',', ';', ':', '!', '?', '\'', '*']);
            let trimmed = match trimmed.strip_suffix(')') {
                // Kept when it closes a '(' of the URL's own.
                Some(t) if t.matches('(').count() <= t.matches(')').count() => t,
                _ => trimmed,
            };
            let trimmed = trimmed.strip_suffix(']').unwrap_or(trimmed);
            if trimmed.len() == candidate.len() {
                break;
            }
            candidate = trimmed;
        }
        if candidate.len() > MAX_MESSAGE_URL {
            continue;
        }
        let Ok(mut url) = Url::parse(candidate) else {
            continue;
        };
        if url.scheme() != "https"
            || url.host_str().is_none_or(str::is_empty)
            || !url.username().is_empty()
            || url.password().is_some()
        {
            continue;
        }
        url.set_fragment(None);
        return Some(url);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Option<String> {
        find_url(text).map(String::from)
    }

    #[test]
    fn urls_in_text() {
        assert_eq!(
            found("see https://example.com/a?b=c#frag."),
            Some("https://example.com/a?b=c".into())
        );
        assert_eq!(
            found("(https://example.com/x)"),
            Some("https://example.com/x".into())
        );
        assert_eq!(
            found("https://en.wikipedia.org/wiki/Rust_(programming_language), ok"),
            Some("https://en.wikipedia.org/wiki/Rust_(programming_language)".into())
        );
        assert_eq!(
            found("HTTPS://Example.COM"),
            Some("https://example.com/".into())
        );
        assert_eq!(
            found("first http://a.example then https://b.example/!"),
            Some("https://b.example/".into())
        );
        assert_eq!(
            found("<https://example.com/p>"),
            Some("https://example.com/p".into())
        );
        assert_eq!(
            found("https://пример.рф/"),
            Some("https://xn--e1afmkfd.xn--p1ai/".into())
        );
        assert_eq!(found("no link here"), None);
        assert_eq!(found("http://plain.example/"), None);
        assert_eq!(found("https://"), None);
        assert_eq!(found("xhttps://example.com"), None);
        assert_eq!(found("https://user:pw@example.com/"), None);
        assert_eq!(found("https://evil.example@good.example/"), None);
        assert_eq!(
            found(&format!("https://example.com/{}", "a".repeat(3000))),
            None
        );
        // The first usable one.
        assert_eq!(
            found("https://u@x.example https://ok.example"),
            Some("https://ok.example/".into())
        );
    }

    #[test]
    fn host_keys() {
        let key = |u: &str| host_key(&Url::parse(u).expect("a URL"));
        assert_eq!(key("https://Example.COM./a"), "example.com");
        assert_eq!(key("https://[::1]:8443/"), "::1");
        assert_eq!(key("https://0x7f.1/"), "127.0.0.1");
    }

    #[test]
    fn host_patterns() {
        let exact = HostPattern::parse("Example.com").expect("pattern");
        assert!(exact.matches("example.com"));
        assert!(!exact.matches("www.example.com"));
        assert!(!exact.matches("badexample.com"));
        let sub = HostPattern::parse("*.example.com").expect("pattern");
        assert!(sub.matches("www.example.com"));
        assert!(sub.matches("a.b.example.com"));
        assert!(!sub.matches("example.com"));
        assert!(!sub.matches("badexample.com"));
        assert!(HostPattern::parse("").is_none());
        assert!(HostPattern::parse("example.com:443").is_none());
    }
}

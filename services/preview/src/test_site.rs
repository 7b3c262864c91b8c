//! A web site for tests (feature `test-site`): HTTPS on 127.0.0.1 with a certificate for a
//! made-up host name signed by a CA made for the test, answering scripted [`Reply`]s by
//! path and counting what it was asked. [`TestSite::settings`] pins the name to the
//! loopback address and trusts the CA: the fetcher's real path (TLS checked, address
//! pinned explicitly), not a plain-HTTP shortcut.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::Settings;

/// What the site answers on a path.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200, `text/html; charset=utf-8`.
    Html(String),
    /// Any status, content type and body.
    Raw {
        /// The HTTP status code.
        status: u16,
        /// The `Content-Type` header, as sent.
        content_type: String,
        /// The body, as sent.
        body: String,
    },
    /// 302 to this Location.
    Redirect(String),
    /// Reads the request and never answers.
    Stall,
    /// 200 HTML that starts with this and never ends (filler forever, no `</head>`).
    Endless(String),
    /// The reply, after a pause.
    Delayed(Duration, Box<Reply>),
}

/// A page with OpenGraph tags.
pub fn og_page(title: &str, description: &str, site: &str) -> String {
    format!(
        "<!doctype html><html><head><title>plain {title}</title>\
         <meta property=\"og:title\" content=\"{title}\">\
         <meta property=\"og:description\" content=\"{description}\">\
         <meta property=\"og:image\" content=\"/cover.png\">\
         <meta property=\"og:site_name\" content=\"{site}\">\
         </head><body>hello</body></html>"
    )
}

/// A running test site; see the module documentation. It stops serving when dropped.
pub struct TestSite {
    /// The made-up host name it has a certificate for.
    pub host: String,
    /// The loopback port it listens on.
    pub port: u16,
    /// The test CA, PEM (for a `LINK_PREVIEW_CA_FILE`).
    pub ca_pem: String,
    /// The test CA, DER (for [`Settings::extra_roots`]).
    pub ca_der: CertificateDer<'static>,
    requests: Arc<Mutex<Vec<String>>>,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestSite {
    /// Serves `host` (a made-up name, e.g. `preview.test`) on a free loopback port.
    pub async fn start(host: &str) -> Self {
        let (ca_pem, ca_der, cert, key) = certificates(host);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let routes: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let (seen, table) = (requests.clone(), routes.clone());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, seen, table) = (acceptor.clone(), seen.clone(), table.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Some(path) = read_request(&mut tls).await else {
                        return;
                    };
                    seen.lock().expect("requests").push(path.clone());
                    let reply = table.lock().expect("routes").get(&path).cloned();
                    let reply = reply.unwrap_or(Reply::Raw {
                        status: 404,
                        content_type: "text/plain".into(),
                        body: "not found".into(),
                    });
                    answer(&mut tls, reply).await;
                });
            }
        });
        Self {
            host: host.to_owned(),
            port,
            ca_pem,
            ca_der,
            requests,
            routes,
            task,
        }
    }

    /// Answers `path` (with its query, e.g. `/a?b=1`) with `reply` from now on.
    pub fn route(&self, path: &str, reply: Reply) -> &Self {
        self.routes
            .lock()
            .expect("routes")
            .insert(path.to_owned(), reply);
        self
    }

    /// `https://<host>:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.host, self.port)
    }

    /// The paths requested so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }

    /// Default settings, with this site's name pinned to 127.0.0.1 and its CA trusted.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::default();
        settings
            .resolve
            .insert(self.host.clone(), std::net::Ipv4Addr::LOCALHOST.into());
        settings.extra_roots.push(self.ca_der.clone());
        settings
    }
}

impl Drop for TestSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn certificates(
    host: &str,
) -> (
    String,
    CertificateDer<'static>,
    CertificateDer<'static>,
    PrivateKeyDer<'static>,
) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "link-preview test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("site key");
    let cert = CertificateParams::new(vec![host.to_owned()])
        .expect("site params")
        .signed_by(&key, &issuer)
        .expect("site certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (
        ca_cert.pem(),
        ca_cert.der().clone(),
        cert.der().clone(),
        key,
    )
}

/// Reads a request's head; its path.
async fn read_request<S: AsyncReadExt + Unpin>(s: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut byte).await.ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&byte[..n]);
    }
    let line = String::from_utf8_lossy(&head).lines().next()?.to_owned();
    line.split(' ').nth(1).map(str::to_owned)
}

async fn answer<S: AsyncWriteExt + AsyncReadExt + Unpin>(s: &mut S, reply: Reply) {
    let mut reply = reply;
    while let Reply::Delayed(pause, inner) = reply {
        tokio::time::sleep(pause).await;
        reply = *inner;
    }
    let head = |status: u16, extra: &str| {
        format!("HTTP/1.1 {status} X\r\nconnection: close\r\n{extra}\r\n")
    };
    match reply {
        Reply::Html(body) => {
            let h = head(
                200,
                &format!(
                    "content-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n",
                    body.len()
                ),
            );
            let _ = s.write_all(format!("{h}{body}").as_bytes()).await;
        }
        Reply::Raw {
            status,
            content_type,
            body,
        } => {
            let h = head(
                status,
                &format!(
                    "content-type: {content_type}\r\ncontent-length: {}\r\n",
                    body.len()
                ),
            );
            let _ = s.write_all(format!("{h}{body}").as_bytes()).await;
        }
        Reply::Redirect(to) => {
            let h = head(302, &format!("location: {to}\r\ncontent-length: 0\r\n"));
            let _ = s.write_all(h.as_bytes()).await;
        }
        Reply::Stall => {
            let mut sink = [0u8; 64];
            // Until the client goes away.
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        Reply::Endless(prefix) => {
            let h = head(200, "content-type: text/html\r\n");
            if s.write_all(format!("{h}{prefix}").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let filler = "<p>filler filler filler filler filler filler filler</p>\n".repeat(100);
            while s.write_all(filler.as_bytes()).await.is_ok() {}
            return;
        }
        Reply::Delayed(..) => unreachable!("unwrapped above"),
    }
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

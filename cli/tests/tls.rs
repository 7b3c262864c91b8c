//! `--ca-cert`: the `chat` binary against a server behind TLS whose certificate a private
//! CA signed, as a Gateway or an Ingress with a company's own CA serves it. The TLS front
//! here terminates TLS and forwards to a real auth service, as those do.

use std::{net::SocketAddr, process::Output, sync::Arc};

use chat_testkit::spawn_auth;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
    TlsAcceptor,
};

/// A private CA's certificate (PEM) and a certificate for `localhost` it signed (DER),
/// with the latter's key.
fn private_ca() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "grpc-chat test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (ca_cert.pem(), cert.der().clone(), key)
}

/// Terminates TLS (HTTP/2 by ALPN, as gRPC needs) on a free port and forwards each
/// connection to `backend`; returns the port.
async fn tls_front(
    backend: SocketAddr,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that does not trust the certificate ends the handshake.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    port
}

async fn chat(server: &str, extra: &[&str], args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat"))
        .arg("--server")
        .arg(server)
        .args(extra)
        .args(args)
        .env("CHAT_CONFIG_DIR", dir.path())
        .env_remove("CHAT_SERVER")
        .env_remove("CHAT_AUTH_SERVER")
        .env_remove("CHAT_SAGA_SERVER")
        .env_remove("CHAT_TLS")
        .env_remove("CHAT_CA_CERT")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(30), out)
        .await
        .expect("chat finished in time")
        .expect("chat ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_a_private_ca_is_trusted_with_ca_cert_only() {
    let auth = spawn_auth().await;
    let (ca_pem, cert, key) = private_ca();
    let port = tls_front(auth.addr, cert, key).await;
    let server = format!("https://localhost:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("writing the CA");
    let ca = ca_file.to_string_lossy().into_owned();
    let register = ["register", "carol@example.com", "carol", "carol-password"];

    // Without the CA: refused, and the message says what to do.
    let out = chat(&server, &[], &register).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains(&format!("cannot reach the server at {server}"))
            && stderr.contains("certificate")
            && stderr.contains("--ca-cert"),
        "{stderr}"
    );

    // With it: the command goes through TLS to the service.
    let out = chat(&server, &["--ca-cert", &ca], &register).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("Registered carol"), "{stdout}");

    // A file that is no certificate is refused before any connection.
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("writing");
    let out = chat(
        &server,
        &["--ca-cert", &not_pem.to_string_lossy()],
        &["login", "carol@example.com", "carol-password"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("holds no PEM certificate"),
        "{stderr}"
    );
}

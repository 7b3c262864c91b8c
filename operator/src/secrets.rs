//! Generation of the secrets the operator owns: the token signing key, the service
//! secret, the managed PostgreSQL superuser password and the managed NATS users'
//! passwords. (Each service's PostgreSQL role password has a Secret of its own, which
//! CloudNativePG reads: see `controller::ensure_role_secrets`.)
//!
//! They are generated once, stored in the `<name>-generated` Secret, and then only read:
//! regenerating a signing key would invalidate every issued token, and regenerating the
//! database password would lock the services out of an existing volume. So the reconcile
//! fills in only the keys that are missing ([`fill_missing`]) and never rewrites others.

use std::collections::BTreeMap;

use ed25519_dalek::{
    pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey, EncodePrivateKey, EncodePublicKey},
    SigningKey,
};
use rand::{distributions::Alphanumeric, rngs::OsRng, Rng};

use crate::{
    crd::ChatCluster,
    render::{generated_keys, keys, managed_postgres_url},
};

/// A fresh Ed25519 private key as PKCS#8 PEM (what `JWT_SIGNING_KEY` takes).
pub fn signing_key_pem() -> Result<String, ed25519_dalek::pkcs8::Error> {
    let key = SigningKey::generate(&mut OsRng);
    let pem = key.to_pkcs8_pem(LineEnding::LF)?;
    Ok(pem.to_string())
}

/// The public half of a PKCS#8 PEM Ed25519 private key, as SPKI PEM (what
/// `JWT_PREVIOUS_PUBLIC_KEY` takes).
pub fn public_key_pem(private_pem: &str) -> Result<String, ed25519_dalek::pkcs8::Error> {
    let key = SigningKey::from_pkcs8_pem(private_pem)?;
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(ed25519_dalek::pkcs8::Error::from)
}

/// A random alphanumeric string: URL-safe, so it can sit in a database URL unescaped.
pub fn random_token(len: usize) -> String {
    OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// `existing` plus every key the cluster needs that it lacks; `None` when nothing was
/// missing (so the Secret need not be written).
pub fn fill_missing(
    cluster: &ChatCluster,
    existing: &BTreeMap<String, String>,
) -> Result<Option<BTreeMap<String, String>>, ed25519_dalek::pkcs8::Error> {
    let mut data = existing.clone();
    let mut changed = false;
    for key in generated_keys(&cluster.spec) {
        if data.contains_key(key) {
            continue;
        }
        let value = match key {
            keys::SIGNING_KEY => signing_key_pem()?,
            keys::PUBLIC_KEY => {
                let private = match data.get(keys::SIGNING_KEY) {
                    Some(p) => p.clone(),
                    None => {
                        let p = signing_key_pem()?;
                        data.insert(keys::SIGNING_KEY.into(), p.clone());
                        p
                    }
                };
                public_key_pem(&private)?
            }
            keys::POSTGRES_URL => {
                let password = match data.get(keys::POSTGRES_PASSWORD) {
                    Some(p) => p.clone(),
                    None => {
                        let p = random_token(32);
                        data.insert(keys::POSTGRES_PASSWORD.into(), p.clone());
                        p
                    }
                };
                managed_postgres_url(cluster, &password)
            }
            _ => random_token(48),
        };
        data.insert(key.into(), value);
        changed = true;
    }
    Ok(changed.then_some(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ChatClusterSpec, SecretKeySelector};
    use ed25519_dalek::pkcs8::DecodePublicKey;

    fn cluster(spec: ChatClusterSpec) -> ChatCluster {
        let mut c = ChatCluster::new("demo", spec);
        c.metadata.namespace = Some("chat".into());
        c
    }

    fn spec() -> ChatClusterSpec {
        serde_json::from_value(serde_json::json!({"version": "1.0.0"})).unwrap()
    }

    #[test]
    fn generated_signing_key_is_a_pkcs8_ed25519_pem() {
        let pem = signing_key_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        SigningKey::from_pkcs8_pem(&pem).unwrap();
    }

    #[test]
    fn fills_every_key_of_a_default_cluster_and_links_url_to_password() {
        let data = fill_missing(&cluster(spec()), &BTreeMap::new())
            .unwrap()
            .unwrap();
        let names: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                keys::PUBLIC_KEY,
                keys::SIGNING_KEY,
                keys::NATS_CHAT_PASSWORD,
                keys::NATS_NOTIFICATION_PASSWORD,
                keys::POSTGRES_PASSWORD,
                keys::POSTGRES_URL,
                keys::SERVICE_SECRET
            ]
        );
        // The public key is the signing key's.
        let key = SigningKey::from_pkcs8_pem(&data[keys::SIGNING_KEY]).unwrap();
        let public = ed25519_dalek::VerifyingKey::from_public_key_pem(&data[keys::PUBLIC_KEY]);
        assert_eq!(public.unwrap(), key.verifying_key());
        assert_eq!(
            data[keys::POSTGRES_URL],
            format!(
                "postgres://chat:{}@demo-postgres:5432",
                data[keys::POSTGRES_PASSWORD]
            )
        );
    }

    #[test]
    fn never_regenerates_what_exists() {
        let c = cluster(spec());
        let first = fill_missing(&c, &BTreeMap::new()).unwrap().unwrap();
        assert_eq!(fill_missing(&c, &first).unwrap(), None);
        let mut partial = first.clone();
        partial.remove(keys::SERVICE_SECRET);
        let refilled = fill_missing(&c, &partial).unwrap().unwrap();
        assert_eq!(refilled[keys::SIGNING_KEY], first[keys::SIGNING_KEY]);
        assert_ne!(refilled[keys::SERVICE_SECRET], first[keys::SERVICE_SECRET]);
    }

    #[test]
    fn an_older_generated_secret_gets_the_public_key_of_its_signing_key() {
        let c = cluster(spec());
        let mut old = fill_missing(&c, &BTreeMap::new()).unwrap().unwrap();
        old.remove(keys::PUBLIC_KEY);
        let filled = fill_missing(&c, &old).unwrap().unwrap();
        assert_eq!(filled[keys::SIGNING_KEY], old[keys::SIGNING_KEY]);
        assert_eq!(
            filled[keys::PUBLIC_KEY],
            public_key_pem(&old[keys::SIGNING_KEY]).unwrap()
        );
    }

    #[test]
    fn user_provided_secrets_are_not_generated() {
        let mut s = spec();
        let sel = SecretKeySelector {
            name: "mine".into(),
            key: "k".into(),
        };
        s.signing_key = Some(sel.clone());
        s.service_secret = Some(sel);
        s.postgres.external = Some(crate::crd::ExternalPostgres {
            url_secret: SecretKeySelector {
                name: "db".into(),
                key: "url".into(),
            },
            params: None,
        });
        s.nats.external = Some(crate::crd::ExternalNats {
            url: "nats://nats.messaging:4222".into(),
        });
        assert_eq!(fill_missing(&cluster(s), &BTreeMap::new()).unwrap(), None);
    }
}

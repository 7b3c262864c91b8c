//! The Ed25519 key that signs access tokens, and the tokens themselves.
//!
//! Asymmetric signing lets every other service verify tokens from the public key alone. The
//! key comes from configuration (PKCS#8 PEM); when none is set a key is generated for
//! development, with a warning: tokens then die with the process, and replicas would not
//! accept each other's tokens. The key id (`kid`) is derived from the public key, so
//! verifiers pick the right key during a rotation.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ed25519_dalek::{
    pkcs8::{
        spki::der::pem::LineEnding, DecodePrivateKey, EncodePrivateKey, EncodePublicKey,
        KeypairBytes,
    },
    SigningKey,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use sha2::{Digest, Sha256};

use chat_common::{Claims, Role};

/// An extra public key still accepted by verifiers (the previous key during a rotation).
#[derive(Debug, Clone)]
pub struct PublicKeyInfo {
    /// The key id: the first 16 hex digits of the PEM's SHA-256, as in a token's `kid` header.
    pub kid: String,
    /// The SPKI public key, PEM.
    pub pem: String,
}

/// Signs access tokens with the configured Ed25519 key and knows every public key verifiers should
/// accept.
pub struct TokenSigner {
    kid: String,
    encoding: EncodingKey,
    public: PublicKeyInfo,
    extra_public: Vec<PublicKeyInfo>,
    /// The `iss` claim it puts in every token.
    pub issuer: String,
    /// The `aud` claim it puts in every token.
    pub audience: String,
}

impl TokenSigner {
    /// A signer for a PKCS#8 PEM private key, or a freshly generated one when `pem` is None.
    pub fn new(
        pem: Option<&str>,
        extra_public_pems: &[String],
        issuer: &str,
        audience: &str,
    ) -> anyhow::Result<Self> {
        let signing = match pem {
            Some(pem) => SigningKey::from_pkcs8_pem(pem).map_err(|e| {
                anyhow::anyhow!("JWT_SIGNING_KEY is not an Ed25519 PKCS#8 PEM key: {e}")
            })?,
            None => {
                tracing::warn!(
                    "JWT_SIGNING_KEY is not set: signing tokens with a generated development key; \
                     tokens will not survive a restart and replicas will not share them"
                );
                let mut seed = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut seed);
                SigningKey::from_bytes(&seed)
            }
        };
        let private_pem = private_key_pem(&signing)?;
        let public_pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
        let encoding = EncodingKey::from_ed_pem(private_pem.as_bytes())?;
        let public = PublicKeyInfo {
            kid: key_id(&public_pem),
            pem: public_pem,
        };
        let extra_public = extra_public_pems
            .iter()
            .map(|pem| PublicKeyInfo {
                kid: key_id(pem),
                pem: pem.clone(),
            })
            .collect();
        Ok(Self {
            kid: public.kid.clone(),
            encoding,
            public,
            extra_public,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// Every public key a verifier should accept: the current one first.
    pub fn public_keys(&self) -> impl Iterator<Item = &PublicKeyInfo> {
        std::iter::once(&self.public).chain(self.extra_public.iter())
    }

    /// Signs an access token for `sub` with `role`, valid for `ttl`.
    pub fn sign(
        &self,
        sub: String,
        role: Role,
        name: Option<String>,
        ttl: Duration,
    ) -> anyhow::Result<(String, DateTime<Utc>)> {
        let now = Utc::now();
        let exp = now + chrono::Duration::from_std(ttl)?;
        let claims = Claims {
            sub,
            exp: exp.timestamp(),
            iat: now.timestamp(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            role,
            name,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)?;
        Ok((token, exp))
    }
}

/// A short stable id for a public key: the first 16 hex digits of its PEM's SHA-256.
fn key_id(public_pem: &str) -> String {
    let digest = Sha256::digest(public_pem.trim().as_bytes());
    hex::encode(&digest[..8])
}

/// A new opaque refresh token (256 random bits, URL-safe) and the hash that is stored.
pub fn new_refresh_token() -> (String, Vec<u8>) {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

/// The stored form of a refresh token. A fast hash is right here: the token is 256 random
/// bits, so there is nothing to brute-force.
pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Generates a PKCS#8 PEM Ed25519 private key, for operators who need one.
pub fn generate_private_key_pem() -> anyhow::Result<String> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    private_key_pem(&SigningKey::from_bytes(&seed))
}

/// `key` as RFC 8410's PKCS#8 v1 (`BEGIN PRIVATE KEY`, the seed alone): the form OpenSSL 3
/// and Python's `cryptography` read. `SigningKey::to_pkcs8_pem` writes v2 with the public
/// key inside, which they refuse.
pub fn private_key_pem(key: &SigningKey) -> anyhow::Result<String> {
    let v1 = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let pem = v1
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the key: {e}"))?;
    Ok(pem.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_pkcs8_v1_and_read_back() {
        use base64::Engine;
        let pem = generate_private_key_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let key = SigningKey::from_pkcs8_pem(&pem).unwrap();
        // RFC 8410's v1 form: version 0, the Ed25519 OID, the 32-byte seed, nothing more.
        let mut want = hex::decode("302e020100300506032b657004220420").unwrap();
        want.extend_from_slice(&key.to_bytes());
        assert_eq!(der, want);
        // A second, independent parser (ring, inside jsonwebtoken) reads it too.
        assert!(EncodingKey::from_ed_pem(pem.as_bytes()).is_ok());
    }
}

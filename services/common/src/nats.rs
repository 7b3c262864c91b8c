//! Connecting to NATS as a user.
//!
//! A NATS server that requires authentication (the operator's managed NATS gives chat and
//! notification a user each) is reached with `NATS_URL=nats://user:password@host:4222`.
//! async-nats does not use the user information of a URL it is given, so [`NatsAddress`]
//! takes it out and passes it as `user_and_password`; what is left is the address the
//! logs and error messages show, so a password never reaches a log. Percent-encoded
//! characters in the user and password (`%40` for `@`) are decoded.

use async_nats::ConnectOptions;

/// A `NATS_URL` split into the server address(es) and the credentials it carried.
#[derive(Clone)]
pub struct NatsAddress {
    /// The URL(s) without user information: safe to log.
    pub url: String,
    credentials: Option<(String, String)>,
}

impl std::fmt::Debug for NatsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAddress")
            .field("url", &self.url)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl NatsAddress {
    /// Splits `url` (one URL or a comma-separated list); the first user information
    /// found is used for every server.
    pub fn parse(url: &str) -> Self {
        let mut credentials = None;
        let servers: Vec<String> = url
            .split(',')
            .map(|server| {
                let server = server.trim();
                let (scheme, rest) = match server.split_once("://") {
                    Some((scheme, rest)) => (Some(scheme), rest),
                    None => (None, server),
                };
                let authority_end = rest.find('/').unwrap_or(rest.len());
                let stripped = match rest[..authority_end].rsplit_once('@') {
                    Some((userinfo, host)) => {
                        if credentials.is_none() {
                            let (user, password) =
                                userinfo.split_once(':').unwrap_or((userinfo, ""));
                            credentials = Some((percent_decode(user), percent_decode(password)));
                        }
                        format!("{host}{}", &rest[authority_end..])
                    }
                    None => rest.to_string(),
                };
                match scheme {
                    Some(scheme) => format!("{scheme}://{stripped}"),
                    None => stripped,
                }
            })
            .collect();
        Self {
            url: servers.join(","),
            credentials,
        }
    }

    /// The user the URL named, if any.
    pub fn user(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(u, _)| u.as_str())
    }

    /// `options` with the URL's credentials, when it had some.
    pub fn apply(&self, options: ConnectOptions) -> ConnectOptions {
        match &self.credentials {
            Some((user, password)) => options.user_and_password(user.clone(), password.clone()),
            None => options,
        }
    }
}

/// Decodes `%XX` escapes; anything malformed is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_the_url() {
        let a = NatsAddress::parse("nats://chat:s3cret@demo-nats:4222");
        assert_eq!(a.url, "nats://demo-nats:4222");
        assert_eq!(a.user(), Some("chat"));
        assert_eq!(a.credentials, Some(("chat".into(), "s3cret".into())));
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn a_url_without_credentials_is_kept_and_escapes_are_decoded() {
        let a = NatsAddress::parse("nats://127.0.0.1:4222");
        assert_eq!(a.url, "nats://127.0.0.1:4222");
        assert_eq!(a.user(), None);
        let a = NatsAddress::parse("nats://u%40x:p%3Aw@a:4222, nats://b:4222");
        assert_eq!(a.url, "nats://a:4222,nats://b:4222");
        assert_eq!(a.credentials, Some(("u@x".into(), "p:w".into())));
        let a = NatsAddress::parse("bad%zz:p%4@h:1");
        assert_eq!(a.url, "h:1");
        assert_eq!(a.credentials, Some(("bad%zz".into(), "p%4".into())));
    }
}

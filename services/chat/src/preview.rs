//! Link previews of messages, off the send's path: after a message with an `https://` URL
//! is stored (and its event published), a background task fetches the page
//! ([`link_preview`]), stores the preview with the message together with an outbox row
//! (kind `message_previewed`) in one transaction, and publishes the `MessagePreviewed`
//! event; a replica that cannot publish it leaves the row to the outbox relay, like any
//! other event.
//!
//! The send never waits and never fails for a preview. The fetches are bounded: at most
//! `LINK_PREVIEW_CONCURRENCY` run at once, and a message that finds them all busy gets no
//! preview (counted in `chat_link_previews_total{result="dropped"}`) rather than a queue
//! that grows without end. Each fetch is bounded in time by the fetcher, and all of them
//! stop with the service's [`Shutdown`]. The preview is stored only if the message still
//! has the text it was made for: an edit clears the preview and asks for a new one.
//!
//! The settings are the `LINK_PREVIEW*` variables of [`crate::config`].

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::sync::Semaphore;

use chat_common::{
    config::{millis, secs, vars, Env},
    Shutdown,
};
use link_preview::{find_url, HostPattern, Previewer, Settings};
use serde::Deserialize;

use chat_events::ChatEvent;

use crate::{convert::preview_to_pb, domain::ChatId, outbox::Outbox, store::ChatStore};

/// How previews are made, when they are on.
#[derive(Debug, Clone)]
pub struct PreviewConfig {
    /// What may be fetched and how (timeouts, sizes, allowed addresses).
    pub settings: Settings,
    /// Fetches at once; a message that finds them all busy gets no preview.
    pub concurrency: usize,
}

/// The `LINK_PREVIEW*` variables as given; [`PreviewConfig::load`] checks and converts them.
#[derive(Deserialize)]
struct PreviewVars {
    link_previews: String,
    link_preview_allow_hosts: Option<String>,
    link_preview_resolve: Option<String>,
    link_preview_ca_file: Option<String>,
    #[serde(deserialize_with = "millis")]
    link_preview_timeout_ms: Duration,
    link_preview_max_bytes: Option<usize>,
    link_preview_max_redirects: Option<usize>,
    #[serde(default, deserialize_with = "some_secs")]
    link_preview_cache_ttl_secs: Option<Duration>,
    #[serde(default, deserialize_with = "some_secs")]
    link_preview_host_ttl_secs: Option<Duration>,
    link_preview_concurrency: usize,
}

fn some_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    secs(d).map(Some)
}

impl PreviewConfig {
    /// The `LINK_PREVIEW*` variables of `env` (see the table of [`crate::config`]); None
    /// when `LINK_PREVIEWS` is `off`. The fetcher's own defaults apply to those unset.
    pub fn load(env: &Env) -> anyhow::Result<Option<Self>> {
        let v: PreviewVars = env
            .with_defaults(&[
                (vars::LINK_PREVIEWS, "on"),
                (vars::LINK_PREVIEW_TIMEOUT_MS, "5000"),
                (vars::LINK_PREVIEW_CONCURRENCY, "16"),
            ])
            .extract()?;
        match v.link_previews.to_ascii_lowercase() {
            on if matches!(on.as_str(), "on" | "true" | "1" | "yes") => {}
            off if matches!(off.as_str(), "off" | "false" | "0" | "no") => return Ok(None),
            other => anyhow::bail!("LINK_PREVIEWS={other:?} is not valid: use on or off"),
        }
        let defaults = Settings::default();
        let mut extra_roots = Vec::new();
        if let Some(path) = v.link_preview_ca_file {
            let pem = std::fs::read(&path)
                .with_context(|| format!("reading LINK_PREVIEW_CA_FILE {path}"))?;
            extra_roots = link_preview::certificates_from_pem(&pem)
                .with_context(|| format!("LINK_PREVIEW_CA_FILE {path}"))?;
        }
        Ok(Some(Self {
            settings: Settings {
                allow_hosts: allow_hosts(v.link_preview_allow_hosts.as_deref())?,
                resolve: resolve(v.link_preview_resolve.as_deref())?,
                extra_roots,
                timeout: v.link_preview_timeout_ms,
                max_bytes: v.link_preview_max_bytes.unwrap_or(defaults.max_bytes),
                max_redirects: v
                    .link_preview_max_redirects
                    .unwrap_or(defaults.max_redirects),
                cache_ttl: v.link_preview_cache_ttl_secs.unwrap_or(defaults.cache_ttl),
                host_ttl: v.link_preview_host_ttl_secs.unwrap_or(defaults.host_ttl),
                ..defaults
            },
            concurrency: v.link_preview_concurrency,
        }))
    }
}

fn allow_hosts(raw: Option<&str>) -> anyhow::Result<Vec<HostPattern>> {
    raw.unwrap_or_default()
        .split(',')
        .filter(|h| !h.trim().is_empty())
        .map(|h| {
            HostPattern::parse(h).with_context(|| {
                format!("LINK_PREVIEW_ALLOW_HOSTS: {h:?} is not a host name or *.domain")
            })
        })
        .collect()
}

fn resolve(raw: Option<&str>) -> anyhow::Result<HashMap<String, IpAddr>> {
    raw.unwrap_or_default()
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let bad = || format!("LINK_PREVIEW_RESOLVE: {pair:?} is not host=ip");
            let (host, ip) = pair.split_once('=').with_context(bad)?;
            let ip: IpAddr = ip.trim().parse().with_context(bad)?;
            let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
            anyhow::ensure!(!host.is_empty(), bad());
            Ok((host, ip))
        })
        .collect()
}

/// The fetcher and its bound, shared by every send of a replica.
#[derive(Clone)]
pub struct LinkPreviews {
    previewer: Arc<Previewer>,
    permits: Arc<Semaphore>,
}

/// What a preview task needs of the service.
pub(crate) struct Services {
    pub store: Arc<dyn ChatStore>,
    pub outbox: Arc<Outbox>,
    pub shutdown: Shutdown,
}

impl LinkPreviews {
    /// A previewer for `config`; fails only when its HTTP client cannot be built.
    pub fn new(config: &PreviewConfig) -> anyhow::Result<Self> {
        Ok(Self {
            previewer: Arc::new(
                Previewer::new(config.settings.clone()).context("setting up link previews")?,
            ),
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
        })
    }

    /// Starts making the preview of message `seq` of `chat` when `text` has a URL and a
    /// fetch slot is free; returns at once.
    pub(crate) fn schedule(&self, services: &Services, chat: ChatId, seq: i64, text: &str) {
        let Some(url) = find_url(text) else {
            return;
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics::counter!("chat_link_previews_total", "result" => "dropped").increment(1);
            tracing::debug!(
                chat_id = chat.0,
                seq,
                "link preview dropped: all fetch slots busy"
            );
            return;
        };
        let previewer = self.previewer.clone();
        let (store, outbox, shutdown) = (
            services.store.clone(),
            services.outbox.clone(),
            services.shutdown.clone(),
        );
        let text = text.to_owned();
        shutdown.clone().spawn(async move {
            let _permit = permit;
            let work = async {
                let preview = match previewer.preview(&url).await {
                    Ok(p) => p,
                    Err(e) => {
                        metrics::counter!("chat_link_previews_total", "result" => "none")
                            .increment(1);
                        tracing::debug!(chat_id = chat.0, seq, host = url.host_str(), reason = %e,
                            "no link preview");
                        return;
                    }
                };
                match store.set_link_preview(chat, seq, &text, &preview).await {
                    Ok(Some(event)) => {
                        metrics::counter!("chat_link_previews_total", "result" => "stored")
                            .increment(1);
                        let event_of = ChatEvent::MessagePreviewed {
                            chat_id: chat.0,
                            seq,
                            preview: preview_to_pb(&preview),
                        };
                        outbox.publish(&event_of, event).await;
                    }
                    // Edited or deleted while the page loaded.
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(chat_id = chat.0, seq, error = ?e, "storing a link preview failed")
                    }
                }
            };
            tokio::select! {
                _ = shutdown.wait() => {}
                _ = work => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_lists() {
        assert!(allow_hosts(None).unwrap().is_empty());
        let hosts = allow_hosts(Some("example.com, *.wiki.org,")).unwrap();
        assert_eq!(hosts.len(), 2);
        assert!(hosts[1].matches("en.wiki.org"));
        assert!(allow_hosts(Some("https://example.com/")).is_err());
        let pinned = resolve(Some("Preview.Test=127.0.0.1, v6.test = ::1")).unwrap();
        assert_eq!(pinned["preview.test"], IpAddr::from([127, 0, 0, 1]));
        assert_eq!(pinned["v6.test"], "::1".parse::<IpAddr>().unwrap());
        assert!(resolve(Some("preview.test")).is_err());
        assert!(resolve(Some("preview.test=localhost")).is_err());
        assert!(resolve(Some("=127.0.0.1")).is_err());
    }
}

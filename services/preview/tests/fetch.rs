//! The fetcher against a real HTTPS site on loopback (pinned by name, its CA trusted):
//! OpenGraph read, redirects to private addresses refused, body size, time and redirect
//! limits, content types, and the caches (counted at the site).

use std::time::{Duration, Instant};

use link_preview::{
    test_site::{og_page, Reply, TestSite},
    FetchError, Previewer, Settings, Url,
};

fn url(s: &str) -> Url {
    Url::parse(s).expect("a URL")
}

async fn site() -> TestSite {
    TestSite::start("preview.test").await
}

fn previewer(settings: Settings) -> Previewer {
    Previewer::new(settings).expect("previewer")
}

#[tokio::test]
async fn a_page_with_opengraph_tags() {
    let site = site().await;
    site.route(
        "/article?id=1",
        Reply::Html(og_page("Big &amp; news", "All of it", "The Paper")),
    );
    let p = previewer(site.settings());
    let preview = p
        .fetch(&url(&site.url("/article?id=1")))
        .await
        .expect("a preview");
    assert_eq!(preview.url, site.url("/article?id=1"));
    assert_eq!(preview.title, "Big & news");
    assert_eq!(preview.description, "All of it");
    assert_eq!(preview.site_name, "The Paper");
    // Relative image URLs are made absolute against the page.
    assert_eq!(preview.image_url, site.url("/cover.png"));
}

#[tokio::test]
async fn a_plain_page_falls_back_to_title_and_host() {
    let site = site().await;
    site.route(
        "/plain",
        Reply::Html("<html><head><title>Just a title</title><meta name=description content='Described'></head></html>".into()),
    );
    let preview = previewer(site.settings())
        .fetch(&url(&site.url("/plain")))
        .await
        .expect("a preview");
    assert_eq!(preview.title, "Just a title");
    assert_eq!(preview.description, "Described");
    assert_eq!(preview.site_name, "preview.test");
    assert_eq!(preview.image_url, "");
}

#[tokio::test]
async fn redirects_to_private_addresses_are_refused() {
    let site = site().await;
    for (path, to, forbidden) in [
        ("/to-localhost", "https://localhost/secret", None),
        (
            "/to-loopback",
            "https://127.0.0.1/secret",
            Some("127.0.0.1"),
        ),
        ("/to-v6-loopback", "https://[::1]/secret", Some("::1")),
        (
            "/to-metadata",
            "https://169.254.169.254/latest/meta-data/",
            Some("169.254.169.254"),
        ),
        ("/to-mapped", "https://[::ffff:10.0.0.1]/", Some("10.0.0.1")),
        ("/to-decimal", "https://2130706433/", Some("127.0.0.1")),
    ] {
        site.route(path, Reply::Redirect(to.into()));
        let err = previewer(site.settings())
            .fetch(&url(&site.url(path)))
            .await
            .expect_err("refused");
        match (&err, forbidden) {
            (FetchError::Forbidden { addr, .. }, Some(want)) => {
                let want: std::net::IpAddr = want.parse().expect("address");
                let got = match addr {
                    std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*addr, Into::into),
                    v4 => *v4,
                };
                assert_eq!(got, want, "{path}");
            }
            // localhost resolves to loopback (v4 or v6, whatever the system says).
            (FetchError::Forbidden { addr, .. }, None) => {
                assert!(addr.is_loopback(), "{path}: {addr}")
            }
            other => panic!("{path}: expected a refused address, got {other:?}"),
        }
    }
    // The site was asked for the redirects only, never for what they pointed at.
    assert!(
        site.requests().iter().all(|p| p.starts_with("/to-")),
        "{:?}",
        site.requests()
    );
}

#[tokio::test]
async fn unpinned_hosts_get_only_https_on_the_default_port() {
    let site = site().await;
    site.route("/to-http", Reply::Redirect("http://example.com/".into()));
    site.route(
        "/to-port",
        Reply::Redirect(format!("https://127.0.0.1:{}/og", site.port)),
    );
    let p = previewer(site.settings());
    for path in ["/to-http", "/to-port"] {
        let err = p.fetch(&url(&site.url(path))).await.expect_err("refused");
        assert!(matches!(err, FetchError::Unsupported(_)), "{path}: {err:?}");
    }
    assert_eq!(site.requests(), vec!["/to-http", "/to-port"]);
}

#[tokio::test]
async fn a_body_larger_than_the_limit_is_read_only_up_to_it() {
    let site = site().await;
    // The title comes before the limit, then filler without end: the fetch stops early.
    site.route(
        "/endless",
        Reply::Endless("<html><head><meta property=og:title content=\"Early\">".into()),
    );
    // Here the title comes only after the limit: not read, no preview.
    let late = format!(
        "<html><head>{}<meta property=og:title content=\"Late\"></head></html>",
        "<meta name=x content=filler>".repeat(10_000)
    );
    site.route("/late", Reply::Html(late));
    let mut settings = site.settings();
    settings.max_bytes = 64 * 1024;
    settings.timeout = Duration::from_secs(20);
    let p = previewer(settings);
    let started = Instant::now();
    let preview = p
        .fetch(&url(&site.url("/endless")))
        .await
        .expect("a preview");
    assert_eq!(preview.title, "Early");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped at the limit, not the deadline"
    );
    assert_eq!(
        p.fetch(&url(&site.url("/late"))).await,
        Err(FetchError::Empty)
    );
}

#[tokio::test]
async fn a_stalling_server_times_out() {
    let site = site().await;
    site.route("/stall", Reply::Stall);
    let mut settings = site.settings();
    settings.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = previewer(settings)
        .fetch(&url(&site.url("/stall")))
        .await
        .expect_err("timed out");
    assert_eq!(err, FetchError::Timeout("preview.test".into()));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn only_html_is_read() {
    let site = site().await;
    for (path, content_type) in [
        ("/json", "application/json"),
        ("/image", "image/png"),
        ("/none", ""),
    ] {
        site.route(
            path,
            Reply::Raw {
                status: 200,
                content_type: content_type.into(),
                body: "<title>not html</title>".into(),
            },
        );
        let err = previewer(site.settings())
            .fetch(&url(&site.url(path)))
            .await
            .expect_err("not html");
        assert!(matches!(err, FetchError::NotHtml(_)), "{path}: {err:?}");
    }
    site.route(
        "/xhtml",
        Reply::Raw {
            status: 200,
            content_type: "Application/XHTML+XML; charset=utf-8".into(),
            body: "<title>xhtml</title>".into(),
        },
    );
    let preview = previewer(site.settings())
        .fetch(&url(&site.url("/xhtml")))
        .await;
    assert_eq!(preview.map(|p| p.title), Ok("xhtml".into()));
    site.route(
        "/gone",
        Reply::Raw {
            status: 410,
            content_type: "text/html".into(),
            body: "<title>gone</title>".into(),
        },
    );
    let err = previewer(site.settings())
        .fetch(&url(&site.url("/gone")))
        .await;
    assert_eq!(err, Err(FetchError::Status(410)));
}

#[tokio::test]
async fn redirects_are_followed_up_to_the_limit() {
    let site = site().await;
    site.route("/a", Reply::Redirect("/b".into()));
    site.route("/b", Reply::Redirect(site.url("/a")));
    site.route("/hop1", Reply::Redirect("/hop2".into()));
    site.route("/hop2", Reply::Redirect("/hop3".into()));
    site.route("/hop3", Reply::Redirect("/final#frag".into()));
    site.route(
        "/final",
        Reply::Html(og_page("Arrived", "after three hops", "Hops")),
    );
    let p = previewer(site.settings());
    let err = p.fetch(&url(&site.url("/a"))).await.expect_err("a loop");
    assert_eq!(err, FetchError::TooManyRedirects(3));
    // The first request and three redirects, then it stopped.
    assert_eq!(site.requests(), vec!["/a", "/b", "/a", "/b"]);
    let preview = p
        .fetch(&url(&site.url("/hop1")))
        .await
        .expect("three hops are fine");
    assert_eq!(preview.title, "Arrived");
    // The preview names the URL of the message, not where it ended.
    assert_eq!(preview.url, site.url("/hop1"));
}

#[tokio::test]
async fn the_caches_spare_the_site() {
    let site = site().await;
    site.route("/page", Reply::Html(og_page("Cached", "once", "Site")));
    site.route("/empty", Reply::Html("<p>nothing</p>".into()));
    site.route("/stall", Reply::Stall);
    let mut settings = site.settings();
    settings.timeout = Duration::from_millis(500);
    let p = previewer(settings);

    // Per URL: a preview, and a page without one, are fetched once.
    for _ in 0..3 {
        assert_eq!(
            p.preview(&url(&site.url("/page"))).await.map(|p| p.title),
            Ok("Cached".into())
        );
        assert_eq!(
            p.preview(&url(&site.url("/empty"))).await,
            Err(FetchError::Empty)
        );
    }
    // The fragment does not make another URL.
    let _ = p
        .preview(&url(&format!("{}#section", site.url("/page"))))
        .await;
    assert_eq!(site.requests(), vec!["/page", "/empty"]);

    // Per host: once the host timed out, other URLs on it are not tried for a while.
    let err = p.preview(&url(&site.url("/stall"))).await;
    assert_eq!(err, Err(FetchError::Timeout("preview.test".into())));
    site.route("/new", Reply::Html(og_page("New", "page", "Site")));
    let err = p.preview(&url(&site.url("/new"))).await;
    assert_eq!(err, Err(FetchError::Timeout("preview.test".into())));
    assert_eq!(site.requests(), vec!["/page", "/empty", "/stall"]);

    // Without caches, every call goes to the site.
    let mut settings = site.settings();
    settings.cache_ttl = Duration::ZERO;
    settings.host_ttl = Duration::ZERO;
    let uncached = previewer(settings);
    for _ in 0..2 {
        uncached
            .preview(&url(&site.url("/new")))
            .await
            .expect("a preview");
    }
    assert_eq!(site.requests().iter().filter(|p| *p == "/new").count(), 2);
}

#[tokio::test]
async fn concurrent_previews_of_one_url_share_a_fetch() {
    let site = site().await;
    site.route(
        "/slow",
        Reply::Delayed(
            Duration::from_millis(500),
            Box::new(Reply::Html(og_page("Once", "for all", "S"))),
        ),
    );
    let p = previewer(site.settings());
    let u = url(&site.url("/slow"));
    // Polled together: the first starts the fetch, the others wait for it.
    let results = futures::future::join_all((0..5).map(|_| p.preview(&u))).await;
    for r in results {
        assert_eq!(r.map(|p| p.title), Ok("Once".into()));
    }
    assert_eq!(site.requests(), vec!["/slow"]);
}

#[tokio::test]
async fn the_allowlist_is_checked_on_every_hop() {
    let site = site().await;
    let other = TestSite::start("other.test").await;
    other.route("/page", Reply::Html(og_page("Other", "site", "Other")));
    site.route("/to-other", Reply::Redirect(other.url("/page")));
    site.route("/page", Reply::Html(og_page("Allowed", "site", "Mine")));
    let mut settings = site.settings();
    settings.resolve.extend(other.settings().resolve);
    settings.extra_roots.extend(other.settings().extra_roots);
    settings.allow_hosts = vec![link_preview::HostPattern::parse("preview.test").expect("pattern")];
    let p = previewer(settings);
    assert_eq!(
        p.fetch(&url(&site.url("/page"))).await.map(|p| p.title),
        Ok("Allowed".into())
    );
    let err = p.fetch(&url(&site.url("/to-other"))).await;
    assert_eq!(err, Err(FetchError::NotAllowed("other.test".into())));
    assert_eq!(
        p.fetch(&url(&other.url("/page"))).await,
        Err(FetchError::NotAllowed("other.test".into()))
    );
    assert!(other.requests().is_empty());
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let site = site().await;
    site.route("/page", Reply::Html(og_page("T", "D", "S")));
    let mut settings = site.settings();
    settings.extra_roots.clear();
    let err = previewer(settings).fetch(&url(&site.url("/page"))).await;
    assert!(matches!(err, Err(FetchError::Tls(..))), "{err:?}");
    assert!(site.requests().is_empty());
}

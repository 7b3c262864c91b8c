//! Reads a page's preview metadata: OpenGraph `og:*` (then Twitter card) `<meta>` tags, else
//! `<title>` and `<meta name="description">`.
//!
//! A tag scanner, not an HTML parser: all it needs is the attributes of `<meta>` tags and
//! the text of the first `<title>`, which live in `<head>`, so it builds no tree, skips
//! comments, `<script>` and `<style>` bodies whole (their text is not markup), and stops
//! at `</head>` or `<body>`. Every step either moves forward past what it found or ends
//! the scan, so the cost is linear in the input, whatever the input (the fetcher bounds
//! the input's size anyway). Delimiters are ASCII, so byte positions found by searching
//! are always character boundaries of the `&str`.

/// What a page says about itself; each field as found, entities decoded, whitespace
/// collapsed, cut to a length a chat client can show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageMeta {
    /// `og:title`, else `twitter:title`, else the first `<title>`; at most [`MAX_TITLE`]
    /// characters.
    pub title: Option<String>,
    /// `og:description`, else `twitter:description`, else `<meta name="description">`; at most
    /// [`MAX_DESCRIPTION`] characters.
    pub description: Option<String>,
    /// As written in the page (may be relative: the fetcher resolves it).
    pub image: Option<String>,
    /// `og:site_name`; at most [`MAX_SITE_NAME`] characters.
    pub site_name: Option<String>,
}

/// Longest title kept, in characters.
pub const MAX_TITLE: usize = 300;
/// Longest description kept, in characters.
pub const MAX_DESCRIPTION: usize = 1000;
/// Longest site name kept, in characters.
pub const MAX_SITE_NAME: usize = 100;
/// Longest image URL kept, in bytes (a longer one is dropped, not cut).
pub const MAX_URL: usize = 2048;

#[derive(Default)]
struct Found {
    og_title: Option<String>,
    og_description: Option<String>,
    og_image: Option<String>,
    og_site_name: Option<String>,
    twitter_title: Option<String>,
    twitter_description: Option<String>,
    twitter_image: Option<String>,
    description: Option<String>,
    title: Option<String>,
}

/// Reads the metadata of `html`.
pub fn parse(html: &str) -> PageMeta {
    let lower = html.to_ascii_lowercase();
    let mut found = Found::default();
    let mut pos = 0;
    while let Some(lt) = lower[pos..].find('<').map(|i| pos + i) {
        let rest = &lower[lt..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            match comment.find("-->") {
                Some(end) => pos = lt + 4 + end + 3,
                None => break,
            }
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            match rest.find('>') {
                Some(end) => pos = lt + end + 1,
                None => break,
            }
            continue;
        }
        if let Some(closing) = rest.strip_prefix("</") {
            let name = tag_name(closing);
            if name == "head" {
                break;
            }
            match rest.find('>') {
                Some(end) => pos = lt + end + 1,
                None => break,
            }
            continue;
        }
        let name = tag_name(&rest[1..]);
        if name.is_empty() {
            // A lone '<' in text.
            pos = lt + 1;
            continue;
        }
        let Some((attrs, end)) = attributes(html, lt + 1 + name.len()) else {
            break; // The tag never ends: neither does the document.
        };
        pos = end;
        match name {
            "body" => break,
            "meta" => found.meta(&attrs),
            "title" => {
                let Some(close) = lower[pos..].find("</title") else {
                    break;
                };
                if found.title.is_none() {
                    found.title = Some(html[pos..pos + close].to_owned());
                }
                pos += close;
            }
            "script" | "style" | "template" | "textarea" | "xmp" => {
                let Some(close) = lower[pos..].find(&format!("</{name}")) else {
                    break;
                };
                pos += close;
            }
            _ => {}
        }
    }
    found.into_meta()
}

impl Found {
    fn meta(&mut self, attrs: &[(String, String)]) {
        let get = |key: &str| {
            attrs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let Some(content) = get("content") else {
            return;
        };
        let key = get("property")
            .or_else(|| get("name"))
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let slot = match key.as_str() {
            "og:title" => &mut self.og_title,
            "og:description" => &mut self.og_description,
            "og:image" | "og:image:url" | "og:image:secure_url" => &mut self.og_image,
            "og:site_name" => &mut self.og_site_name,
            "twitter:title" => &mut self.twitter_title,
            "twitter:description" => &mut self.twitter_description,
            "twitter:image" | "twitter:image:src" => &mut self.twitter_image,
            "description" => &mut self.description,
            _ => return,
        };
        // The first of each wins, as for OpenGraph arrays (the first image is the main one).
        if slot.is_none() {
            *slot = Some(content.to_owned());
        }
    }

    fn into_meta(self) -> PageMeta {
        let text = |v: Option<String>, max| v.map(|v| clean(&v, max)).filter(|v| !v.is_empty());
        let first = |a: Option<String>, b: Option<String>, c: Option<String>, max| {
            text(a, max)
                .or_else(|| text(b, max))
                .or_else(|| text(c, max))
        };
        PageMeta {
            title: first(self.og_title, self.twitter_title, self.title, MAX_TITLE),
            description: first(
                self.og_description,
                self.twitter_description,
                self.description,
                MAX_DESCRIPTION,
            ),
            image: self
                .og_image
                .or(self.twitter_image)
                .map(|v| decode_entities(&v).trim().to_owned())
                .filter(|v| !v.is_empty() && v.len() <= MAX_URL),
            site_name: text(self.og_site_name, MAX_SITE_NAME),
        }
    }
}

/// The tag name at the start of `s` (already lowercase): ASCII letters, digits, '-', ':'.
fn tag_name(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == ':'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The attributes of the tag whose name ends at `from`, names lowercased, values as
/// written (entities still encoded), and the position after the tag's `>`; None when the
/// input ends inside the tag.
fn attributes(html: &str, mut pos: usize) -> Option<(Vec<(String, String)>, usize)> {
    let bytes = html.as_bytes();
    let mut attrs = Vec::new();
    loop {
        while pos < bytes.len() && (bytes[pos].is_ascii_whitespace() || bytes[pos] == b'/') {
            pos += 1;
        }
        if *bytes.get(pos)? == b'>' {
            return Some((attrs, pos + 1));
        }
        let start = pos;
        while pos < bytes.len()
            && !bytes[pos].is_ascii_whitespace()
            && !matches!(bytes[pos], b'=' | b'>' | b'/')
        {
            pos += 1;
        }
        if pos == start {
            // Only '=' can stop a name at once: a stray one, skipped.
            pos += 1;
            continue;
        }
        let name = html[start..pos].to_ascii_lowercase();
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if bytes.get(pos) != Some(&b'=') {
            attrs.push((name, String::new()));
            continue;
        }
        pos += 1;
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let value = match bytes.get(pos)? {
            quote @ (b'"' | b'\'') => {
                let close = html[pos + 1..].find(char::from(*quote))?;
                let value = &html[pos + 1..pos + 1 + close];
                pos += close + 2;
                value
            }
            _ => {
                let start = pos;
                while pos < bytes.len() && !bytes[pos].is_ascii_whitespace() && bytes[pos] != b'>' {
                    pos += 1;
                }
                &html[start..pos]
            }
        };
        attrs.push((name, value.to_owned()));
    }
}

/// Decodes entities, drops control characters, collapses whitespace and cuts to `max`
/// characters (marking a cut with '…').
pub fn clean(raw: &str, max: usize) -> String {
    let decoded = decode_entities(raw);
    let mut out = String::with_capacity(decoded.len().min(max * 4));
    let mut chars = 0;
    let mut space = false;
    for c in decoded.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if c.is_control() {
            continue;
        }
        if space {
            if chars + 1 >= max {
                out.push('…');
                return out;
            }
            out.push(' ');
            chars += 1;
            space = false;
        }
        if chars + 1 >= max {
            out.push('…');
            return out;
        }
        out.push(c);
        chars += 1;
    }
    out
}

/// Decodes character references: numeric ones, and the named ones that pages use in
/// titles and descriptions. Anything else is left as written.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // The longest reference we decode is short; a ';' far away is not ours.
        let Some(semi) = rest.bytes().take(12).position(|b| b == b';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let name = &rest[1..semi];
        let decoded = if let Some(num) = name.strip_prefix('#') {
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => num.parse::<u32>().ok(),
            };
            code.map(|c| match char::from_u32(c) {
                Some(c) if c != '\0' => c,
                _ => char::REPLACEMENT_CHARACTER,
            })
        } else {
            named(name)
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn named(name: &str) -> Option<char> {
    Some(match name {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "ndash" => '–',
        "mdash" => '—',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "middot" => '·',
        "bull" => '•',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "deg" => '°',
        "times" => '×',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opengraph_wins() {
        let page = r#"<!doctype html>
            <html><head>
              <meta charset="utf-8">
              <title>Plain title</title>
              <meta name="description" content="Plain description">
              <meta property="og:title" content="OG &amp; title">
              <meta property="og:description" content='OG description'>
              <meta property="og:image" content="/img/cover.png">
              <meta property="og:image" content="/img/second.png">
              <META PROPERTY="og:site_name" CONTENT="Example">
            </head><body><meta property="og:title" content="in the body"></body></html>"#;
        assert_eq!(
            parse(page),
            PageMeta {
                title: Some("OG & title".into()),
                description: Some("OG description".into()),
                image: Some("/img/cover.png".into()),
                site_name: Some("Example".into()),
            }
        );
    }

    #[test]
    fn falls_back_to_title_and_description() {
        let page = "<html><head><TITLE>\n  Hello,\n\t world  </TITLE>\
                    <meta content=\"A &quot;quoted&quot; page &#8212; &#x263A;\" name=description>\
                    </head></html>";
        let meta = parse(page);
        assert_eq!(meta.title.as_deref(), Some("Hello, world"));
        assert_eq!(meta.description.as_deref(), Some("A \"quoted\" page — ☺"));
        assert_eq!(meta.image, None);
        assert_eq!(meta.site_name, None);
    }

    #[test]
    fn twitter_cards_are_second_choice() {
        let page = r#"<meta name="twitter:title" content="T"><title>Plain</title>
                      <meta name="twitter:image" content="https://cdn.example/x.png">"#;
        let meta = parse(page);
        assert_eq!(meta.title.as_deref(), Some("T"));
        assert_eq!(meta.image.as_deref(), Some("https://cdn.example/x.png"));
    }

    #[test]
    fn comments_scripts_and_styles_are_not_markup() {
        let page = r#"<head>
            <!-- <meta property="og:title" content="commented out"> -->
            <script>var s = '<meta property="og:title" content="in a script">';</script>
            <style>/* <title>in a style</title> */</style>
            <title>Real</title></head>"#;
        assert_eq!(parse(page).title.as_deref(), Some("Real"));
    }

    #[test]
    fn entities() {
        assert_eq!(decode_entities("a &amp; b &lt;c&gt;"), "a & b <c>");
        assert_eq!(decode_entities("&#39;&#x27;&apos;"), "'''");
        assert_eq!(decode_entities("&unknown; & &amp"), "&unknown; & &amp");
        assert_eq!(
            decode_entities("&#0;&#xD800;&#99999999;"),
            "\u{fffd}\u{fffd}\u{fffd}"
        );
        assert_eq!(decode_entities("&#1234567890123;"), "&#1234567890123;");
        assert_eq!(
            decode_entities("Tom&nbsp;&amp;&nbsp;Jerry"),
            "Tom\u{a0}&\u{a0}Jerry"
        );
        // Decoded once: "&amp;lt;" is the text "&lt;".
        assert_eq!(decode_entities("&amp;lt;"), "&lt;");
    }

    #[test]
    fn long_values_are_cut_and_controls_dropped() {
        let title = "word ".repeat(1000);
        let page =
            format!("<title>{title}</title><meta property=og:description content=\"a\u{7}b\">");
        let meta = parse(&page);
        let got = meta.title.expect("title");
        assert_eq!(got.chars().count(), MAX_TITLE);
        assert!(got.ends_with('…'));
        assert_eq!(meta.description.as_deref(), Some("ab"));
        let long_image = format!(
            "<meta property=og:image content=\"https://x/{}\">",
            "a".repeat(5000)
        );
        assert_eq!(parse(&long_image).image, None);
    }

    #[test]
    fn garbage_is_harmless() {
        for page in [
            "",
            "<",
            "<<<<",
            "<meta",
            "<meta property=\"og:title\" content=\"never closed",
            "<title>never closed",
            "<!-- never closed",
            "<script>never closed",
            "<meta property=og:title content=>",
            "<meta = = = >",
            "</",
            "<a b='c' d=\"e\" f=g h>",
            "\u{0}\u{1}<title>\u{0}x\u{1}</title>",
            "<title>ünïcödé — ✓</title>",
            "<title></title><meta name=description content=\"   \">",
        ] {
            let _ = parse(page);
        }
        assert_eq!(
            parse("<title>ünïcödé — ✓</title>").title.as_deref(),
            Some("ünïcödé — ✓")
        );
        assert_eq!(
            parse("<title></title><meta name=description content=\"   \">"),
            PageMeta::default()
        );
    }

    #[test]
    fn huge_input_is_linear() {
        let started = std::time::Instant::now();
        // Patterns that make a naive scanner quadratic: many unclosed tags and comments.
        let mut page = String::new();
        for _ in 0..200_000 {
            page.push_str("<a <b =");
        }
        let _ = parse(&page);
        let _ = parse(&"<!--".repeat(500_000));
        let _ = parse(&"&".repeat(1_000_000));
        let _ = parse(&format!("<title>{}</title>", "&amp;".repeat(500_000)));
        let mut many = String::from("<head>");
        for i in 0..100_000 {
            many.push_str(&format!("<meta name=\"x{i}\" content=\"y\">"));
        }
        many.push_str("<meta property=og:title content=last></head>");
        assert_eq!(parse(&many).title.as_deref(), Some("last"));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any input parses without a panic, and what comes out is within its limits.
        #[test]
        fn any_input(raw in prop_oneof![
            any::<String>(),
            "(<[a-z/!]{0,6}( [a-z:]{1,10}(=(\"[^\"]{0,20}\"|'[^']{0,20}'|[a-z&;#0-9]{0,10}))?){0,4}>?|[^<]{0,20}){0,30}",
        ]) {
            let meta = parse(&raw);
            if let Some(t) = meta.title {
                prop_assert!(!t.is_empty() && t.chars().count() <= MAX_TITLE);
                prop_assert!(!t.chars().any(char::is_control));
            }
            if let Some(d) = meta.description {
                prop_assert!(d.chars().count() <= MAX_DESCRIPTION);
            }
            if let Some(i) = meta.image {
                prop_assert!(i.len() <= MAX_URL);
            }
        }
    }
}

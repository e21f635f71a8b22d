//! Fetching task images: Label Studio uploads, local files and cloud-storage URIs through
//! Label Studio with its credentials; other `http(s)` URLs without them.
//!
//! Credentials go only to Label Studio's exact origin; redirects are followed by hand (at most 3),
//! each hop re-checked, never downgraded from `https` to `http`. Sizes are capped while streaming,
//! transient failures retried with backoff.
//!
//! Task-data URLs (anything not on Label Studio) must not reach private networks unless
//! `--media-allow-private`: IP literals are checked before the request, host names by the client's
//! resolver ([`PublicOnly`]), which resolves once per connection and refuses a name with any
//! private address. The address checked is the address connected to, so a name that answers a
//! public address to a check and 127.0.0.1 to the fetch (DNS rebinding) gains nothing, and every
//! redirect hop passes the same resolver.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use base64::{Engine, engine::general_purpose::URL_SAFE};
use reqwest::{
    Response, StatusCode,
    dns::{Addrs, Name, Resolve, Resolving},
    header,
};
use tokio::sync::Semaphore;
use url::Url;

use crate::ls_api::{LabelStudio, LsError};

/// Redirect hops followed per image.
const MAX_REDIRECTS: usize = 3;

/// Media settings (see the `--media-*` flags).
#[derive(Clone, Copy, Debug)]
pub struct MediaLimits {
    /// Largest image, bytes.
    pub max_bytes: u64,
    /// Time for one image, redirects and retries included.
    pub timeout: Duration,
    /// Downloads in flight.
    pub concurrency: usize,
    /// Allow loopback/private/link-local targets outside Label Studio.
    pub allow_private: bool,
}

/// Why an image could not be fetched. The text is sent to Label Studio in a prediction's `error`,
/// so it never contains tokens or full URLs.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The task data has no value under the config's image key.
    #[error("task data has no {0:?} key")]
    MissingKey(String),
    /// A reference form the adapter cannot fetch.
    #[error("unsupported image reference {0:?}")]
    Unsupported(String),
    /// A Label Studio path, but `LABEL_STUDIO_URL` is not set.
    #[error("image is stored in Label Studio but LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY are not set")]
    NoLabelStudio,
    /// The server answered an error status.
    #[error("HTTP {0}")]
    Status(u16),
    /// Larger than `--media-max-mib`.
    #[error("image larger than {0} bytes")]
    TooLarge(u64),
    /// A task-data URL pointing at a private address.
    #[error("refusing private address {0} (set ALPS_LS_MEDIA_ALLOW_PRIVATE=true to allow)")]
    PrivateAddress(String),
    /// Redirect loop, downgrade or bad `Location`.
    #[error("bad redirect: {0}")]
    Redirect(String),
    /// Network error, timeout, or Label Studio refused the credentials refresh.
    #[error("{0}")]
    Transport(String),
}

impl MediaError {
    /// Label for the `alps_ls_media_failures_total{cause}` metric.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::MissingKey(_) | Self::Unsupported(_) | Self::NoLabelStudio => "reference",
            Self::Status(_) => "status",
            Self::TooLarge(_) => "too_large",
            Self::PrivateAddress(_) | Self::Redirect(_) => "refused",
            Self::Transport(_) => "transport",
        }
    }

    /// Whether trying again later may succeed (server errors, rate limits, network failures).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status(code) => *code == 429 || *code >= 500,
            Self::Transport(_) => true,
            _ => false,
        }
    }
}

impl From<LsError> for MediaError {
    fn from(error: LsError) -> Self {
        Self::Transport(error.to_string())
    }
}

impl From<reqwest::Error> for MediaError {
    fn from(error: reqwest::Error) -> Self {
        // A connection the resolver refused carries the refusal in its source chain.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(cause) = source {
            if let Some(PrivateHost(host)) = cause.downcast_ref::<PrivateHost>() {
                return Self::PrivateAddress(host.clone());
            }
            source = cause.source();
        }
        Self::Transport(error.without_url().to_string())
    }
}

/// A host name that resolved to a refused address (carried through reqwest's connect error).
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to a private address")]
struct PrivateHost(String);

/// Whether an address is refused to task-data URLs (see [`is_private`]).
pub type AddressPolicy = fn(IpAddr) -> bool;

/// A [`Resolve`] that passes on the addresses of `inner` only when none is refused by `policy`
/// (by default [`is_private`]); otherwise the connection fails with the host's name.
pub struct PublicOnly {
    inner: Arc<dyn Resolve>,
    policy: AddressPolicy,
}

impl PublicOnly {
    /// Filters the answers of `inner` with `policy` (true = refused).
    pub fn new(inner: Arc<dyn Resolve>, policy: AddressPolicy) -> Self {
        Self { inner, policy }
    }
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let policy = self.policy;
        let lookup = self.inner.resolve(name);
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = lookup.await?.collect();
            if addresses.is_empty() || addresses.iter().any(|address| policy(address.ip())) {
                return Err(Box::new(PrivateHost(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

/// The operating system's resolver (`getaddrinfo` on a blocking thread, through tokio).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host, 0)).await?;
            Ok(Box::new(addresses) as Addrs)
        })
    }
}

/// Downloads task images.
#[derive(Debug)]
pub struct Media {
    /// Client for task-data URLs: its resolver refuses private addresses unless allowed.
    http: reqwest::Client,
    /// Addresses refused to task-data URLs; `None` with `--media-allow-private`.
    policy: Option<AddressPolicy>,
    label_studio: Option<Arc<LabelStudio>>,
    limits: MediaLimits,
    slots: Semaphore,
}

/// Where a task's image reference leads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// On Label Studio: send the credentials.
    LabelStudio(Url),
    /// Anywhere else: no credentials.
    External(Url),
}

impl Media {
    /// A fetcher with its own client for task-data URLs (the system resolver behind
    /// [`PublicOnly`] unless `limits.allow_private`). Without `label_studio`, only external
    /// `http(s)` URLs can be fetched.
    ///
    /// # Errors
    /// If the HTTP client cannot be built (TLS backend).
    pub fn new(label_studio: Option<Arc<LabelStudio>>, limits: MediaLimits) -> Result<Self, reqwest::Error> {
        Self::with_resolver(label_studio, limits, Arc::new(SystemResolver), is_private)
    }

    /// As [`new`](Self::new) with another resolver and address policy (tests inject both).
    ///
    /// # Errors
    /// If the HTTP client cannot be built (TLS backend).
    pub fn with_resolver(
        label_studio: Option<Arc<LabelStudio>>,
        limits: MediaLimits,
        resolver: Arc<dyn Resolve>,
        policy: AddressPolicy,
    ) -> Result<Self, reqwest::Error> {
        let builder = crate::http_client_builder();
        let (http, policy) = if limits.allow_private {
            (builder.dns_resolver(resolver).build()?, None)
        } else {
            // Through a proxy only the proxy's name would be resolved here: connect directly.
            (builder.no_proxy().dns_resolver(PublicOnly::new(resolver, policy)).build()?, Some(policy))
        };
        Ok(Self { http, policy, label_studio, limits, slots: Semaphore::new(limits.concurrency) })
    }

    /// The image of `task_id` referenced by `reference` (a task data value), as bytes.
    ///
    /// # Errors
    /// [`MediaError`] with a cause safe to show in Label Studio.
    pub async fn fetch(&self, task_id: u64, reference: &str) -> Result<Vec<u8>, MediaError> {
        let _slot = self.slots.acquire().await.expect("never closed");
        let timeout = self.limits.timeout;
        tokio::time::timeout(timeout, self.fetch_with_retries(task_id, reference))
            .await
            .unwrap_or_else(|_elapsed| Err(MediaError::Transport(format!("timed out after {timeout:?}"))))
    }

    async fn fetch_with_retries(&self, task_id: u64, reference: &str) -> Result<Vec<u8>, MediaError> {
        let target = self.resolve(task_id, reference)?;
        let result = (|| self.fetch_following(target.clone()))
            .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(200)).with_max_times(2))
            .when(MediaError::is_transient)
            .await;
        // Label Studio 1.23 with local file storage refuses NGINX-style upload URLs.
        match (result, storage_data_fallback(reference)) {
            (Err(MediaError::Status(400)), Some(upload)) => {
                let target = self.resolve(task_id, &upload)?;
                self.fetch_following(target).await
            }
            (result, _) => result,
        }
    }

    /// Maps a task data value to a URL.
    fn resolve(&self, task_id: u64, reference: &str) -> Result<Target, MediaError> {
        let on_label_studio = |path: &str| -> Result<Target, MediaError> {
            let ls = self.label_studio.as_ref().ok_or(MediaError::NoLabelStudio)?;
            ls.url(path).map(Target::LabelStudio).ok_or_else(|| MediaError::Unsupported(short(path)))
        };
        if reference.starts_with('/') && !reference.starts_with("//") {
            return on_label_studio(reference);
        }
        let Some((scheme, _)) = reference.split_once("://") else {
            return Err(MediaError::Unsupported(short(reference)));
        };
        match scheme {
            "s3" | "gs" | "azure-blob" => {
                let uri = URL_SAFE.encode(reference);
                on_label_studio(&format!("tasks/{task_id}/presign/?fileuri={uri}"))
            }
            "http" | "https" => {
                let url = Url::parse(reference).map_err(|_| MediaError::Unsupported(short(reference)))?;
                Ok(self.classify(url))
            }
            _ => Err(MediaError::Unsupported(short(reference))),
        }
    }

    fn classify(&self, url: Url) -> Target {
        match &self.label_studio {
            Some(ls) if ls.same_origin(&url) => Target::LabelStudio(url),
            _ => Target::External(url),
        }
    }

    async fn fetch_following(&self, mut target: Target) -> Result<Vec<u8>, MediaError> {
        for _hop in 0..=MAX_REDIRECTS {
            let response = self.get(&target).await?;
            if !response.status().is_redirection() {
                return self.read_body(response).await;
            }
            let current = target_url(&target).clone();
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|location| current.join(location).ok())
                .ok_or_else(|| MediaError::Redirect("redirect without a valid Location".into()))?;
            if current.scheme() == "https" && location.scheme() != "https" {
                return Err(MediaError::Redirect("https to http downgrade".into()));
            }
            target = self.classify(location);
        }
        Err(MediaError::Redirect(format!("more than {MAX_REDIRECTS} redirects")))
    }

    async fn get(&self, target: &Target) -> Result<Response, MediaError> {
        match target {
            Target::LabelStudio(url) => {
                let ls = self.label_studio.as_ref().ok_or(MediaError::NoLabelStudio)?;
                Ok(ls.send(|http| http.get(url.clone())).await?)
            }
            Target::External(url) => {
                // reqwest does not resolve IP literals, so they are checked here; names are
                // checked by the client's resolver.
                if let Some(policy) = self.policy
                    && let Some(ip) = literal_ip(url)
                    && policy(ip)
                {
                    return Err(MediaError::PrivateAddress(ip.to_string()));
                }
                Ok(self.http.get(url.clone()).send().await?)
            }
        }
    }

    async fn read_body(&self, mut response: Response) -> Result<Vec<u8>, MediaError> {
        let status = response.status();
        if status != StatusCode::OK {
            return Err(MediaError::Status(status.as_u16()));
        }
        let max = self.limits.max_bytes;
        if response.content_length().is_some_and(|length| length > max) {
            return Err(MediaError::TooLarge(max));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if bytes.len() as u64 + chunk.len() as u64 > max {
                return Err(MediaError::TooLarge(max));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

fn target_url(target: &Target) -> &Url {
    match target {
        Target::LabelStudio(url) | Target::External(url) => url,
    }
}

/// `/storage-data/uploaded/?filepath=upload/7/a.png` -> `/data/upload/7/a.png`.
fn storage_data_fallback(reference: &str) -> Option<String> {
    let path = reference.strip_prefix("/storage-data/uploaded/?filepath=upload/")?;
    Some(format!("/data/upload/{path}"))
}

/// The host of `url` if it is an IP literal (the URL parser also reads `http://2130706433/` and
/// `http://0x7f.1/` as IPv4 literals).
fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Whether `ip` is refused to task-data URLs: loopback, private (RFC 1918, IPv6 unique local),
/// link-local, carrier-grade NAT (100.64.0.0/10), "this network" (0.0.0.0/8), broadcast,
/// multicast, and IPv6 forms that embed such an IPv4 address (IPv4-mapped, IPv4-compatible,
/// NAT64 64:ff9b::/96, 6to4 2002::/16).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [first, second, ..] = v4.octets();
    // 100.64.0.0/10: carrier-grade NAT, private in practice.
    let shared = first == 100 && (second & 0xc0) == 64;
    // 192.0.0.0/24 (IETF protocol assignments), 198.18.0.0/15 (benchmarking) and 240.0.0.0/4
    // (reserved): not globally reachable (IANA IPv4 special-purpose address registry).
    let special = (first == 192 && second == 0 && v4.octets()[2] == 0) || (first == 198 && (second & 0xfe) == 18);
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || first == 0
        || first >= 240
        || v4.is_multicast()
        || shared
        || special
}

fn is_private_v6(v6: Ipv6Addr) -> bool {
    let segments = v6.segments();
    let embedded_v4 = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_private_v4(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks); ::1 and :: included.
    if segments[..6] == [0; 6] {
        return v6.is_loopback() || v6.is_unspecified() || is_private_v4(embedded_v4(segments[6], segments[7]));
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_private_v4(embedded_v4(segments[6], segments[7]));
    }
    // 6to4 2002:a.b.c.d::/48.
    if segments[0] == 0x2002 {
        return is_private_v4(embedded_v4(segments[1], segments[2]));
    }
    // Local-use NAT64 64:ff9b:1::/48 and Teredo 2001::/32 tunnel to addresses we cannot judge.
    if segments[..3] == [0x64, 0xff9b, 1] || segments[..2] == [0x2001, 0] {
        return true;
    }
    let unique_local = (segments[0] & 0xfe00) == 0xfc00;
    let link_local = (segments[0] & 0xffc0) == 0xfe80;
    v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || unique_local || link_local
}

/// A reference shortened for error texts (task data may hold long URLs with signatures).
fn short(reference: &str) -> String {
    let cut: String = reference.chars().take(48).collect();
    if cut.len() < reference.len() { format!("{cut}...") } else { cut }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::ls_api::ApiKey;

    fn media(with_ls: bool) -> Media {
        let ls = with_ls.then(|| {
            Arc::new(LabelStudio::new(
                "http://ls:8080".parse().unwrap(),
                ApiKey::parse(&"ab12".repeat(10)).unwrap(),
                crate::http_client().unwrap(),
            ))
        });
        let limits =
            MediaLimits { max_bytes: 1024, timeout: Duration::from_secs(1), concurrency: 2, allow_private: false };
        Media::new(ls, limits).unwrap()
    }

    fn ls(url: &str) -> Target {
        Target::LabelStudio(url.parse().unwrap())
    }

    #[test]
    fn references_resolve_per_the_spec_table() {
        let media = media(true);
        let cases = [
            ("/data/upload/7/a.png", ls("http://ls:8080/data/upload/7/a.png")),
            ("/data/local-files/?d=dir/a.png", ls("http://ls:8080/data/local-files/?d=dir/a.png")),
            ("s3://bucket/a.png", ls("http://ls:8080/tasks/5/presign/?fileuri=czM6Ly9idWNrZXQvYS5wbmc=")),
            ("http://ls:8080/data/upload/7/a.png", ls("http://ls:8080/data/upload/7/a.png")),
            ("https://cdn.example/a.png", Target::External("https://cdn.example/a.png".parse().unwrap())),
            ("http://ls:9999/a.png", Target::External("http://ls:9999/a.png".parse().unwrap())),
        ];
        for (reference, expected) in cases {
            assert_eq!(media.resolve(5, reference).unwrap(), expected, "{reference}");
        }
        for bad in ["data:image/png;base64,AAAA", "ftp://x/a.png", "a.png", "//host/a.png", "/\\/evil.com/a.png"] {
            assert!(matches!(media.resolve(5, bad), Err(MediaError::Unsupported(_))), "{bad}");
        }
    }

    #[test]
    fn label_studio_paths_need_label_studio() {
        assert!(matches!(media(false).resolve(1, "/data/upload/1/a.png"), Err(MediaError::NoLabelStudio)));
        assert!(matches!(media(false).resolve(1, "http://ls:8080/a.png"), Ok(Target::External(_))));
    }

    #[test]
    fn storage_data_urls_fall_back_to_upload_paths() {
        assert_eq!(
            storage_data_fallback("/storage-data/uploaded/?filepath=upload/7/a.png").as_deref(),
            Some("/data/upload/7/a.png")
        );
        assert_eq!(storage_data_fallback("/data/upload/7/a.png"), None);
    }

    #[test]
    fn private_addresses_are_recognised() {
        let private = [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:c0a8:0101::1",
            "ff02::1",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.1",
            "240.0.0.1",
            "64:ff9b:1::a00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ];
        for private in private {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "2001:4860::8888",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
            "::8.8.8.8",
            "198.20.0.1",
            "192.0.1.1",
        ] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn loopback_urls_are_refused_unless_allowed() {
        let error = media(false).fetch(1, "http://127.0.0.1:9/a.png").await.unwrap_err();
        assert!(matches!(error, MediaError::PrivateAddress(_)), "{error}");
    }

    #[tokio::test]
    async fn loopback_names_are_refused_by_the_resolver() {
        let (server, hits) = serve("127.0.0.1:0", "secret").await;
        let url = format!("http://loopback.test:{}/img", server.port());
        for answer in [vec!["127.0.0.1"], vec!["8.8.8.8", "127.0.0.1"]] {
            let resolver = Arc::new(Scripted::new([("loopback.test", vec![answer])]));
            let media = Media::with_resolver(None, test_limits(false), resolver, is_private).unwrap();
            let error = media.fetch(1, &url).await.unwrap_err();
            assert!(matches!(&error, MediaError::PrivateAddress(host) if host == "loopback.test"), "{error}");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0, "the loopback server was contacted");
    }

    /// DNS rebinding: the name answers a (pretend) public address first and a private one after.
    /// Only one resolution happens per connection and its answer is the one checked, so the
    /// private server is never contacted (a separate check-then-fetch would have reached it).
    #[tokio::test]
    async fn a_name_whose_answer_changes_reaches_only_the_checked_address() {
        let (public, public_hits) = serve("127.0.0.1:0", "public").await;
        let (private, private_hits) = serve(&format!("{PRETEND_PRIVATE}:{}", public.port()), "secret").await;
        assert_eq!(public.port(), private.port());
        let resolver = Arc::new(Scripted::new([("rebind.test", vec![vec!["127.0.0.1"], vec![PRETEND_PRIVATE]])]));
        let media = Media::with_resolver(None, test_limits(false), resolver.clone(), pretend_private).unwrap();
        let bytes = media.fetch(1, &format!("http://rebind.test:{}/img", public.port())).await.unwrap();
        assert_eq!(bytes, b"public");
        assert_eq!((public_hits.load(Ordering::SeqCst), private_hits.load(Ordering::SeqCst)), (1, 0));
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 1, "resolved more than once for one connection");
        // A new connection resolves again, gets the private answer, and is refused.
        let media = Media::with_resolver(None, test_limits(false), resolver, pretend_private).unwrap();
        let error = media.fetch(1, &format!("http://rebind.test:{}/img", public.port())).await.unwrap_err();
        assert!(matches!(error, MediaError::PrivateAddress(_)), "{error}");
        assert_eq!(private_hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn redirects_to_private_hosts_are_refused_unless_allowed() {
        let (public, _) = serve("127.0.0.1:0", "public").await;
        let port = public.port();
        let (_private, private_hits) = serve(&format!("{PRETEND_PRIVATE}:{port}"), "secret").await;
        let script = || {
            Arc::new(Scripted::new([
                ("public.test", vec![vec!["127.0.0.1"]]),
                ("internal.test", vec![vec![PRETEND_PRIVATE]]),
            ]))
        };
        let by_name = format!("http://public.test:{port}/redirect?to=http://internal.test:{port}/img");
        let by_literal = format!("http://public.test:{port}/redirect?to=http://{PRETEND_PRIVATE}:{port}/img");
        let media = Media::with_resolver(None, test_limits(false), script(), pretend_private).unwrap();
        for url in [&by_name, &by_literal] {
            let error = media.fetch(1, url).await.unwrap_err();
            assert!(matches!(error, MediaError::PrivateAddress(_)), "{url}: {error}");
        }
        assert_eq!(private_hits.load(Ordering::SeqCst), 0);
        // --media-allow-private still lets them through.
        let media = Media::with_resolver(None, test_limits(true), script(), pretend_private).unwrap();
        assert_eq!(media.fetch(1, &by_name).await.unwrap(), b"secret");
        assert_eq!(private_hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn ip_literals_in_any_spelling_are_found() {
        for (url, ip) in [
            ("http://127.0.0.1/a", "127.0.0.1"),
            ("http://2130706433/a", "127.0.0.1"),
            ("http://0x7f.1/a", "127.0.0.1"),
            ("http://[::1]:8080/a", "::1"),
        ] {
            assert_eq!(literal_ip(&url.parse().unwrap()), Some(ip.parse().unwrap()), "{url}");
        }
        assert_eq!(literal_ip(&"http://example.com/a".parse().unwrap()), None);
    }

    /// Loopback addresses stand in for the internet and a private network: 127.0.0.1 is treated
    /// as public, [`PRETEND_PRIVATE`] as private.
    const PRETEND_PRIVATE: &str = "127.0.0.2";

    fn pretend_private(ip: IpAddr) -> bool {
        ip == PRETEND_PRIVATE.parse::<IpAddr>().unwrap()
    }

    fn test_limits(allow_private: bool) -> MediaLimits {
        MediaLimits { max_bytes: 1024, timeout: Duration::from_secs(30), concurrency: 2, allow_private }
    }

    /// A resolver with scripted answers per name: each call takes the next answer, the last one
    /// repeats.
    struct Scripted {
        answers: std::sync::Mutex<std::collections::HashMap<String, Vec<Vec<&'static str>>>>,
        calls: AtomicUsize,
    }

    impl Scripted {
        fn new<const N: usize>(script: [(&str, Vec<Vec<&'static str>>); N]) -> Self {
            let answers = script.into_iter().map(|(name, answers)| (name.to_owned(), answers)).collect();
            Self { answers: std::sync::Mutex::new(answers), calls: AtomicUsize::new(0) }
        }
    }

    impl Resolve for Scripted {
        fn resolve(&self, name: Name) -> Resolving {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut answers = self.answers.lock().unwrap();
            let queue = answers.get_mut(name.as_str()).expect("scripted name");
            let answer = if queue.len() > 1 { queue.remove(0) } else { queue[0].clone() };
            let addresses: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), 0)).collect();
            Box::pin(async move { Ok(Box::new(addresses.into_iter()) as Addrs) })
        }
    }

    /// Serves `body` at `/img` and a redirect to `?to=` at `/redirect` on `address`; returns the
    /// bound address and a count of requests.
    async fn serve(address: &str, body: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
        use axum::{extract::Query, response::Redirect, routing::get};
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&hits);
        let app = axum::Router::new()
            .route("/img", get(move || async move { body }))
            .route(
                "/redirect",
                get(|Query(query): Query<std::collections::HashMap<String, String>>| async move {
                    Redirect::temporary(&query["to"])
                }),
            )
            .layer(axum::middleware::from_fn(move |request, next: axum::middleware::Next| {
                counted.fetch_add(1, Ordering::SeqCst);
                next.run(request)
            }));
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let bound = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (bound, hits)
    }

    #[test]
    fn long_references_are_shortened_in_errors() {
        let long = format!("ftp://{}", "x".repeat(200));
        assert!(MediaError::Unsupported(short(&long)).to_string().len() < 100);
    }
}

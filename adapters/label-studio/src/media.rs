//! Fetching task images (spec §5): Label Studio uploads, local files and cloud-storage URIs through
//! Label Studio with its credentials; other `http(s)` URLs without them.
//!
//! Credentials go only to Label Studio's exact origin; redirects are followed by hand (at most 3),
//! each hop re-checked, never downgraded from `https` to `http`. Sizes are capped while streaming,
//! transient failures retried with backoff.

use std::{net::IpAddr, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use base64::{Engine, engine::general_purpose::URL_SAFE};
use reqwest::{Response, StatusCode, header};
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
        Self::Transport(error.without_url().to_string())
    }
}

/// Downloads task images.
#[derive(Debug)]
pub struct Media {
    http: reqwest::Client,
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
    /// A fetcher; `http` must not follow redirects. Without `label_studio`, only external
    /// `http(s)` URLs can be fetched.
    pub fn new(http: reqwest::Client, label_studio: Option<Arc<LabelStudio>>, limits: MediaLimits) -> Self {
        Self { http, label_studio, limits, slots: Semaphore::new(limits.concurrency) }
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
        // Label Studio 1.23 with local file storage refuses NGINX-style upload URLs (spec §5).
        match (result, storage_data_fallback(reference)) {
            (Err(MediaError::Status(400)), Some(upload)) => {
                let target = self.resolve(task_id, &upload)?;
                self.fetch_following(target).await
            }
            (result, _) => result,
        }
    }

    /// Maps a task data value to a URL (spec §5 table).
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
                if !self.limits.allow_private {
                    refuse_private(url).await?;
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

/// Refuses URLs whose host resolves to loopback, private, link-local or unspecified addresses.
async fn refuse_private(url: &Url) -> Result<(), MediaError> {
    let host = url.host_str().ok_or_else(|| MediaError::Unsupported("URL without host".into()))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let addresses = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|error| MediaError::Transport(format!("cannot resolve {host}: {error}")))?;
    for address in addresses {
        if is_private(address.ip()) {
            return Err(MediaError::PrivateAddress(host.to_owned()));
        }
    }
    Ok(())
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            // 100.64.0.0/10: carrier-grade NAT, private in practice.
            let shared = v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64;
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || shared
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => {
                let unique_local = (v6.segments()[0] & 0xfe00) == 0xfc00;
                let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
                v6.is_loopback() || v6.is_unspecified() || unique_local || link_local
            }
        },
    }
}

/// A reference shortened for error texts (task data may hold long URLs with signatures).
fn short(reference: &str) -> String {
    let cut: String = reference.chars().take(48).collect();
    if cut.len() < reference.len() { format!("{cut}...") } else { cut }
}

#[cfg(test)]
mod tests {
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
        Media::new(crate::http_client().unwrap(), ls, limits)
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
        ];
        for private in private {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "2001:4860::8888"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn loopback_urls_are_refused_unless_allowed() {
        let error = media(false).fetch(1, "http://127.0.0.1:9/a.png").await.unwrap_err();
        assert!(matches!(error, MediaError::PrivateAddress(_)), "{error}");
    }

    #[test]
    fn long_references_are_shortened_in_errors() {
        let long = format!("ftp://{}", "x".repeat(200));
        assert!(MediaError::Unsupported(short(&long)).to_string().len() < 100);
    }
}

//! Registry access (the distribution API over banger's own HTTP client;
//! oci-client supplies the reference grammar and the manifest types):
//! endpoint selection (mirrors, then upstream; plain HTTP only for insecure
//! hosts and `http://` mirrors), per-request credentials (banger's own
//! token flow, [`crate::token`]), platform resolution of indexes and
//! manifest lists, and streaming a blob into the cache while verifying it.

use futures::StreamExt;
use std::sync::Arc;

use oci_client::Reference;
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;

use crate::blobs::{BlobCache, Started};
use crate::config::{Endpoint, ImageStoreConfig};
use crate::error::Error;
use crate::reference::ImageRef;

/// Credentials for one registry host, passed per request, never stored.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub registry: String,
    pub username: String,
    pub password: String,
    pub identity_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`; empty means `linux/amd64`.
    pub fn parse(text: &str) -> Result<Platform, Error> {
        if text.is_empty() {
            return Ok(Platform {
                os: "linux".into(),
                arch: "amd64".into(),
                variant: None,
            });
        }
        let parts: Vec<&str> = text.split('/').collect();
        match parts[..] {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.into(),
                arch: arch.into(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.into(),
                arch: arch.into(),
                variant: Some(v.into()),
            }),
            _ => Err(Error::InvalidPlatform(text.into())),
        }
    }

    fn matches(&self, entry: &ImageIndexEntry) -> bool {
        entry.platform.as_ref().is_some_and(|p| {
            p.os.to_string() == self.os
                && p.architecture.to_string() == self.arch
                && (self.variant.is_none() || p.variant == self.variant)
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One registry endpoint: where to ask, with what.
#[derive(Clone)]
pub struct Remote {
    /// The image's reference on this endpoint.
    pub reference: Reference,
    /// Anonymous until [`Remote::authorize`] ran the token flow; shared by
    /// the clones a pull's downloads hold, so a refreshed token serves all.
    auth: Arc<std::sync::RwLock<RegistryAuth>>,
    /// The caller's credentials for this endpoint's host, if any.
    credentials: Option<Credentials>,
    http: reqwest::Client,
    scheme: &'static str,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

/// A manifest resolved for one platform.
#[derive(Debug)]
pub struct Resolved {
    pub remote: Remote,
    pub manifest: OciImageManifest,
    /// Digest of the platform's image manifest.
    pub digest: String,
    /// Digest of the index / manifest list, if the reference named one.
    pub index_digest: Option<String>,
}

/// The HTTP client of one imagestore, built once, at the first pull (with
/// `ca_file`'s roots, read and checked at start-up): building one costs
/// ~13 ms, more on a cold page cache, which no later pull pays again, and
/// ~1 MB that an idle imagestore does not hold. Connections to a registry
/// are kept alive across pulls. It holds no secret: every request carries
/// its own credentials.
pub struct Clients {
    ca: Option<(std::path::PathBuf, reqwest::Certificate)>,
    http: std::sync::OnceLock<reqwest::Client>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl Clients {
    /// Checks `config`'s `ca_file`. The reference grammar oci-client
    /// parses with is left to compile on the first pull too (~40 ms):
    /// compiled, it holds ~12 MB.
    pub fn new(config: &ImageStoreConfig) -> Result<Clients, Error> {
        let ca = match &config.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(Error::io("cannot read ca_file", path))?;
                let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                    Error::io("cannot use ca_file", path)(std::io::Error::other(e.to_string()))
                })?;
                Some((path.clone(), cert))
            }
            None => None,
        };
        Ok(Clients {
            ca,
            http: std::sync::OnceLock::new(),
        })
    }

    fn http(&self) -> Result<reqwest::Client, Error> {
        if let Some(http) = self.http.get() {
            return Ok(http.clone());
        }
        banger_proto::tls::install_crypto_provider();
        let mut http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(60));
        if let Some((_, cert)) = &self.ca {
            http = http.add_root_certificate(cert.clone());
        }
        let http = http.build().map_err(|e| {
            Error::io(
                "cannot build the HTTP client with ca_file",
                self.ca.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
            )(std::io::Error::other(e.to_string()))
        })?;
        Ok(self.http.get_or_init(|| http).clone())
    }
}

/// The remotes to try for `image`: mirrors first, then upstream.
pub fn remotes(
    clients: &Clients,
    config: &ImageStoreConfig,
    image: &ImageRef,
    credentials: &[Credentials],
) -> Result<Vec<Remote>, Error> {
    let http = clients.http()?;
    Ok(config
        .endpoints(&image.registry)
        .into_iter()
        .map(|Endpoint { host, plain_http }| {
            let reference = image.on_host(&host);
            let credentials = credentials.iter().find(|c| c.registry == host).cloned();
            Remote {
                reference,
                auth: Arc::new(std::sync::RwLock::new(RegistryAuth::Anonymous)),
                credentials,
                http: http.clone(),
                scheme: if plain_http { "http" } else { "https" },
            }
        })
        .collect())
}

/// Resolves `image` for `platform` on the first endpoint that answers.
#[tracing::instrument(skip_all, fields(image = %image))]
pub async fn resolve(
    remotes: Vec<Remote>,
    image: &ImageRef,
    platform: &Platform,
) -> Result<Resolved, Error> {
    let mut last = None;
    for remote in remotes {
        if let Err(e) = remote.authorize().await {
            tracing::warn!(endpoint = %remote.reference.registry(), error = %e, "endpoint failed");
            last = Some(e);
            continue;
        }
        match remote.image_manifest(image, platform).await {
            Ok((manifest, digest, index_digest)) => {
                return Ok(Resolved {
                    remote,
                    manifest,
                    digest,
                    index_digest,
                });
            }
            Err(err) => {
                tracing::warn!(endpoint = %remote.reference.registry(), error = %err, "endpoint failed");
                // Auth and "no such platform" answers are final for the
                // endpoint that gave them, but a later one may still serve.
                last = Some(err);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Unreachable {
        reference: image.to_string(),
        message: "no endpoint configured".into(),
    }))
}

/// The digest the reference points to now (HEAD), on the first endpoint that answers.
pub async fn head_digest(remotes: &[Remote]) -> Option<String> {
    for remote in remotes {
        if remote.authorize().await.is_err() {
            continue;
        }
        let tag = remote.reference.tag().unwrap_or("latest");
        let Ok((response, _)) = remote
            .send(
                reqwest::Method::HEAD,
                &remote.reference,
                &format!("manifests/{tag}"),
                Some(&manifest_accept()),
                true,
            )
            .await
        else {
            continue;
        };
        if let Some(digest) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            return Some(digest.to_owned());
        }
    }
    None
}

/// The manifest media types banger reads, for `Accept`.
fn manifest_accept() -> String {
    use oci_client::manifest::{
        IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
        OCI_IMAGE_MEDIA_TYPE,
    };
    [
        OCI_IMAGE_MEDIA_TYPE,
        OCI_IMAGE_INDEX_MEDIA_TYPE,
        IMAGE_MANIFEST_MEDIA_TYPE,
        IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    ]
    .join(", ")
}

impl Remote {
    /// `scheme://registry` of this endpoint (what `image show` reports).
    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.scheme, self.reference.resolve_registry())
    }

    /// Runs the token flow for this endpoint, with the caller's
    /// credentials or anonymously (see [`crate::token`]).
    async fn authorize(&self) -> Result<(), Error> {
        let auth = crate::token::authorize(
            &self.http,
            self.scheme,
            self.reference.resolve_registry(),
            self.reference.repository(),
            self.credentials.as_ref(),
        )
        .await?;
        *self.auth.write().expect("auth lock poisoned") = auth;
        Ok(())
    }

    /// The platform's image manifest of this endpoint's reference: the
    /// manifest itself, or the entry of an index / manifest list that
    /// matches `platform`; with its digest and the index's.
    async fn image_manifest(
        &self,
        image: &ImageRef,
        platform: &Platform,
    ) -> Result<(OciImageManifest, String, Option<String>), Error> {
        let (manifest, digest) = self.manifest(&self.reference).await?;
        let index = match manifest {
            OciManifest::Image(m) => return Ok((m, digest, None)),
            OciManifest::ImageIndex(index) => index,
        };
        let entry = index
            .manifests
            .iter()
            .find(|e| platform.matches(e))
            .ok_or_else(|| Error::NoPlatform {
                reference: image.to_string(),
                platform: platform.to_string(),
            })?;
        let by_digest = self.reference.clone_with_digest(entry.digest.clone());
        match self.manifest(&by_digest).await? {
            (OciManifest::Image(m), d) => Ok((m, d, Some(digest))),
            (OciManifest::ImageIndex(_), _) => Err(Error::Unsupported {
                reference: image.to_string(),
                what: "index whose platform entry is another index".into(),
            }),
        }
    }

    /// GETs `/v2/<repository>/<path>` of this endpoint ([`Remote::send`]).
    async fn get(
        &self,
        reference: &Reference,
        path: &str,
        accept: Option<&str>,
        small: bool,
    ) -> Result<(reqwest::Response, String), Error> {
        self.send(reqwest::Method::GET, reference, path, accept, small)
            .await
    }

    /// Sends `method /v2/<repository>/<path>` to this endpoint with the
    /// token the flow got (or the Basic credentials it chose); a status
    /// other than 200 becomes the error saying what to do. A token that
    /// expired during a long pull (401) is renewed once. `small` bounds
    /// the whole request (manifests, configs); a layer is bounded per read
    /// only. Redirects (to a CDN) drop the credentials when they leave the
    /// host. Returns the response and its URL.
    async fn send(
        &self,
        method: reqwest::Method,
        reference: &Reference,
        path: &str,
        accept: Option<&str>,
        small: bool,
    ) -> Result<(reqwest::Response, String), Error> {
        let whole = reference.whole();
        let url = format!(
            "{scheme}://{registry}/v2/{repository}/{path}{ns}",
            scheme = self.scheme,
            registry = reference.resolve_registry(),
            repository = reference.repository(),
            ns = reference
                .namespace()
                .map(|ns| format!("?ns={ns}"))
                .unwrap_or_default(),
        );
        let unreachable = |message: String| Error::Unreachable {
            reference: whole.clone(),
            message,
        };
        let mut renewed = false;
        loop {
            let auth = self.auth.read().expect("auth lock poisoned").clone();
            let mut request = self.http.request(method.clone(), &url);
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept);
            }
            if small {
                request = request.timeout(SMALL_REQUEST_TIMEOUT);
            }
            request = match &auth {
                RegistryAuth::Bearer(token) => request.bearer_auth(token),
                RegistryAuth::Basic(user, password) => request.basic_auth(user, Some(password)),
                RegistryAuth::Anonymous => request,
            };
            let response = request
                .send()
                .await
                .map_err(|e| unreachable(format!("{method} {url}: {e}")))?;
            let status = response.status();
            let message = || format!("{method} {url}: {status}");
            match status.as_u16() {
                200 => return Ok((response, url)),
                401 if !renewed && matches!(auth, RegistryAuth::Bearer(_)) => {
                    renewed = true;
                    self.authorize().await?;
                }
                401 | 403 => {
                    return Err(Error::Unauthorized {
                        reference: whole.clone(),
                        message: message(),
                    });
                }
                404 => {
                    return Err(Error::RemoteNotFound {
                        reference: whole.clone(),
                        message: message(),
                    });
                }
                _ => return Err(unreachable(message())),
            }
        }
    }

    /// GETs one manifest (or index) ourselves ([`Remote::get`]), reading
    /// at most [`MAX_MANIFEST_BYTES`] (oci-client would read a body
    /// whole, whatever its size); verified against the reference's digest
    /// and the registry's `Docker-Content-Digest`.
    async fn manifest(&self, reference: &Reference) -> Result<(OciManifest, String), Error> {
        let whole = reference.whole();
        let tag = reference
            .digest()
            .unwrap_or_else(|| reference.tag().unwrap_or("latest"));
        let accept = manifest_accept();
        let (response, url) = self
            .get(reference, &format!("manifests/{tag}"), Some(&accept), true)
            .await?;
        let unreachable = |message: String| Error::Unreachable {
            reference: whole.clone(),
            message,
        };
        let too_large = || Error::ManifestTooLarge {
            reference: whole.clone(),
            limit: MAX_MANIFEST_BYTES,
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(too_large());
        }
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| unreachable(format!("GET {url}: {e}")))?;
            if (body.len() + chunk.len()) as u64 > MAX_MANIFEST_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let expected = reference.digest().map(str::to_owned).or(header_digest);
        let actual = match expected.as_deref().and_then(|d| d.split_once(':')) {
            Some(("sha512", _)) => {
                use sha2::Digest;
                format!("sha512:{}", hex::encode(sha2::Sha512::digest(&body)))
            }
            _ => format!("sha256:{}", hex_sha256(&body)),
        };
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(Error::DigestMismatch {
                digest: expected,
                actual,
            });
        }
        let manifest =
            serde_json::from_slice::<OciManifest>(&body).map_err(|e| Error::Unsupported {
                reference: whole.clone(),
                what: format!("manifest ({e})"),
            })?;
        Ok((manifest, actual))
    }

    /// The body of blob `desc`, from this endpoint only: a descriptor's
    /// foreign-layer `urls` are never followed (any URL an image names,
    /// local services included: SSRF). Unverified: the caller hashes it.
    async fn blob(&self, desc: &OciDescriptor, small: bool) -> Result<reqwest::Response, Error> {
        let hex = crate::blobs::sha256_hex(&desc.digest)?;
        let (response, _) = self
            .get(&self.reference, &format!("blobs/sha256:{hex}"), None, small)
            .await?;
        Ok(response)
    }

    /// Fetches a small blob (the config) into memory, verified, reading no
    /// more than its descriptor declares (at most [`MAX_CONFIG_BYTES`]).
    pub async fn fetch_small(&self, desc: &OciDescriptor) -> Result<Vec<u8>, Error> {
        let declared = declared_size(desc, MAX_CONFIG_BYTES)?;
        let mut stream = self.blob(desc, true).await?.bytes_stream();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let bytes = chunk.map_err(|e| Error::Download {
                digest: desc.digest.clone(),
                message: e.to_string(),
            })?;
            if out.len() as u64 + bytes.len() as u64 > declared {
                return Err(oversize(desc, declared));
            }
            out.extend_from_slice(&bytes);
        }
        let actual = format!("sha256:{}", hex_sha256(&out));
        if actual != desc.digest {
            return Err(Error::DigestMismatch {
                digest: desc.digest.clone(),
                actual,
            });
        }
        Ok(out)
    }

    /// Streams blob `desc` into the cache, verifying it; `on_start` learns
    /// where its bytes can be read while they arrive, `progress(done)` is
    /// called as they do. Returns at once when already cached.
    #[tracing::instrument(skip_all, fields(digest = %desc.digest))]
    pub async fn fetch_blob(
        &self,
        cache: &BlobCache,
        desc: &OciDescriptor,
        on_start: impl FnOnce(Started),
        mut progress: impl FnMut(u64),
    ) -> Result<(), Error> {
        let lock = cache.lock(&desc.digest);
        let _guard = lock.lock().await;
        if cache.has(&desc.digest) {
            on_start(Started::Cached);
            progress(desc.size.max(0) as u64);
            return Ok(());
        }
        let declared = declared_size(desc, MAX_LAYER_BYTES)?;
        let mut writer = cache.writer(&desc.digest)?;
        on_start(Started::Live(writer.live()?));
        // Hashed once, by the writer, which names the actual digest.
        let mut stream = self.blob(desc, false).await?.bytes_stream();
        let mut last_report = 0;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    // A registry that sends more than it declared is cut
                    // off at once, not after filling the disk.
                    if writer.written() + bytes.len() as u64 > declared {
                        return Err(oversize(desc, declared));
                    }
                    // Chunks are small and land in the page cache; the
                    // fsync happens once, off the async threads, in commit.
                    writer.write(&bytes).map_err(|e| match e {
                        Error::NoSpace(mut full) => {
                            full.needed = declared;
                            Error::NoSpace(full)
                        }
                        e => e,
                    })?;
                    if writer.written() - last_report >= 256 << 10 {
                        last_report = writer.written();
                        progress(last_report);
                    }
                }
                Err(e) => {
                    let expected = u64::try_from(desc.size).unwrap_or(0);
                    if writer.written() >= expected && writer.actual_digest() != desc.digest {
                        return Err(Error::DigestMismatch {
                            digest: desc.digest.clone(),
                            actual: writer.actual_digest(),
                        });
                    }
                    return Err(Error::Download {
                        digest: desc.digest.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        progress(writer.written());
        tokio::task::spawn_blocking(move || writer.commit())
            .await
            .expect("blob commit task panicked")?;
        Ok(())
    }
}

/// How long a manifest, config or token request may take in all (a layer
/// is bounded per read: it may take long, but never stall for a minute).
pub const SMALL_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The largest manifest or index accepted (real ones are a few KiB; the
/// kernel catalog has the same cap).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest image config accepted (real ones are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// The largest single layer accepted, whatever its descriptor says.
pub const MAX_LAYER_BYTES: u64 = 64 << 30;

/// The descriptor's size, if it is one we accept.
fn declared_size(desc: &OciDescriptor, max: u64) -> Result<u64, Error> {
    match u64::try_from(desc.size) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(Error::Download {
            digest: desc.digest.clone(),
            message: format!(
                "its descriptor declares {} bytes, outside 0..={max}; refusing it",
                desc.size
            ),
        }),
    }
}

fn oversize(desc: &OciDescriptor, declared: u64) -> Error {
    Error::Download {
        digest: desc.digest.clone(),
        message: format!(
            "the registry sent more than the {declared} bytes its descriptor declares; refusing it"
        ),
    }
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        assert_eq!(Platform::parse("").unwrap().to_string(), "linux/amd64");
        assert_eq!(
            Platform::parse("linux/arm64/v8")
                .unwrap()
                .variant
                .as_deref(),
            Some("v8")
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("a//b").is_err());
    }
}

//! The HTTP side of the distribution API: one agent per registry with its TLS trust
//! (system roots + certs.d, or none), the auth handshake (basic, or the bearer-token
//! flow a `WWW-Authenticate` challenge asks for), and retries with backoff on connection
//! failures, 5xx and 429 (honouring `Retry-After`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;

use super::Remote;
use crate::err;
use crate::error::{Context, Result};

/// Registry options shared by pull, push and login.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Verify the registry's TLS certificate (false also allows plain HTTP, as podman)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
    /// Trust the CA certificates (*.crt) in DIR [default: /etc/containers/certs.d/HOST, or $LAYERCTL_CERT_DIR]
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Credentials USER[:PASSWORD] for this command (else the credentials files)
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    /// Attempts after a dropped connection, a 5xx or a 429 before giving up
    #[arg(long, default_value_t = 6, value_name = "N")]
    pub retries: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            tls_verify: true,
            cert_dir: None,
            creds: None,
            retries: 6,
        }
    }
}

/// A request body that can be sent again on a retry.
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes of the file.
    File(&'a Path, u64),
}

pub struct Client {
    agent: ureq::Agent,
    /// `https://host` or `http://host`.
    base: String,
    pub remote: Remote,
    creds: Option<(String, String)>,
    /// The Authorization header value the last challenge earned.
    auth: Mutex<Option<String>>,
    /// `pull` or `pull,push`.
    actions: &'static str,
    retries: u32,
}

/// Plain HTTP is tried when TLS fails only where podman and docker try it: with
/// --tls-verify=false, or for a registry on this machine.
fn insecure_ok(host: &str, opts: &Options) -> bool {
    let h = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    !opts.tls_verify || h == "localhost" || h == "127.0.0.1" || h.starts_with("127.")
}

/// Whether a ureq error is a failure to reach the server or a connection that dropped
/// (worth another attempt), rather than a refusal.
fn transient(e: &ureq::Transport) -> bool {
    matches!(
        e.kind(),
        ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Io | ureq::ErrorKind::ProxyConnect
    )
}

/// The delay before retry `n` (0-based): the server's Retry-After (seconds, at most a
/// minute), else 250 ms doubling to 8 s.
fn backoff(n: u32, retry_after: Option<&str>) -> Duration {
    if let Some(s) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Duration::from_secs(s.min(60));
    }
    Duration::from_millis((250u64 << n.min(5)).min(8000))
}

impl Client {
    /// Connects to the registry of `remote` (probing `/v2/`), for pulling or also pushing.
    pub fn connect(remote: &Remote, push: bool, opts: &Options) -> Result<Client> {
        let host = remote.api_host().to_string();
        let creds = match &opts.creds {
            Some(c) => Some(match c.split_once(':') {
                Some((u, p)) => (u.to_string(), p.to_string()),
                None => (c.clone(), String::new()),
            }),
            None => super::auth::lookup(&remote.registry, &remote.repo)?,
        };
        let agent = ureq::AgentBuilder::new()
            .tls_config(tls_config(&remote.registry, opts)?)
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(120))
            .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("layerctl/", env!("CARGO_PKG_VERSION")))
            .build();
        let mut c = Client {
            agent,
            base: format!("https://{host}"),
            remote: remote.clone(),
            creds,
            auth: Mutex::new(None),
            actions: if push { "pull,push" } else { "pull" },
            retries: opts.retries,
        };
        // Where plain HTTP may follow, https gets one attempt: a plain-HTTP server
        // answers a TLS hello with garbage, which is not worth retrying.
        let fallback = insecure_ok(&host, opts);
        if fallback {
            c.retries = 0;
        }
        let probe = c.send("GET", "/v2/", &[], Body::Empty);
        c.retries = opts.retries;
        let r = match probe {
            Err(e)
                if fallback
                    && !e.to_string().contains("needs credentials")
                    && !e.to_string().contains("refused the credentials") =>
            {
                c.base = format!("http://{host}");
                c.send("GET", "/v2/", &[], Body::Empty).map_err(|e2| {
                    err!(
                        "cannot reach registry {} over https ({e}) or http ({e2})",
                        remote.registry
                    )
                })?
            }
            other => other?,
        };
        match r.status() {
            200..=299 => Ok(c),
            404 => Err(err!(
                "{} does not serve the registry API (GET /v2/ is 404): check the host name",
                remote.registry
            )),
            s => Err(err!(
                "registry {} answered {s} to GET /v2/: {}",
                remote.registry,
                body_text(r)
            )),
        }
    }

    /// The one-line message for a 401 that survived the auth handshake.
    pub fn unauthorized(&self) -> crate::error::Error {
        let reg = &self.remote.registry;
        match &self.creds {
            Some((u, _)) => err!(
                "registry {reg} refused the credentials of {u:?} for {}: check them with `layerctl login {reg}`",
                self.remote.full_name()
            ),
            None => err!(
                "registry {reg} needs credentials for {}: log in with `layerctl login {reg}`",
                self.remote.full_name()
            ),
        }
    }

    /// `/v2/REPO/SUFFIX`.
    pub fn repo_path(&self, suffix: &str) -> String {
        format!("/v2/{}/{suffix}", self.remote.repo)
    }

    /// An absolute URL for a path or a Location header the registry sent.
    pub fn url(&self, p: &str) -> String {
        if p.starts_with("http://") || p.starts_with("https://") {
            p.to_string()
        } else {
            format!("{}{}", self.base, p)
        }
    }

    /// Sends a request, answering auth challenges and retrying transient failures.
    /// Returns the response whatever its status (after the retries on 5xx/429); an error
    /// only when the registry could not be reached.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<ureq::Response> {
        let url = self.url(path);
        let mut challenged = false;
        let mut attempt = 0;
        loop {
            let mut req = self.agent.request(method, &url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(a) = self.auth.lock().ok().and_then(|g| g.clone()) {
                req = req.set("Authorization", &a);
            }
            let res = match &body {
                Body::Empty => req.call(),
                Body::Bytes(b) => req.send_bytes(b),
                Body::File(p, len) => {
                    let f = std::fs::File::open(p).ctx(|| format!("opening {}", p.display()))?;
                    req.set("Content-Length", &len.to_string())
                        .send(f.take(*len))
                }
            };
            let resp = match res {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(ureq::Error::Transport(t)) => {
                    if transient(&t) && attempt < self.retries {
                        std::thread::sleep(backoff(attempt, None));
                        attempt += 1;
                        continue;
                    }
                    return Err(err!(
                        "{method} {url}: {t}{}",
                        if attempt > 0 {
                            format!(" (after {attempt} retries)")
                        } else {
                            String::new()
                        }
                    ));
                }
            };
            let status = resp.status();
            if status == 401 {
                let ch = resp.header("WWW-Authenticate").map(str::to_string);
                let _ = body_text(resp);
                match ch {
                    Some(ch) if !challenged && self.answer(&ch)? => {
                        challenged = true;
                        continue;
                    }
                    _ => return Err(self.unauthorized()),
                }
            }
            if (status == 429 || status >= 500) && attempt < self.retries {
                let wait = backoff(attempt, resp.header("Retry-After"));
                let _ = body_text(resp);
                std::thread::sleep(wait);
                attempt += 1;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Earns an Authorization header for challenge `ch`; false when there is nothing to
    /// answer with (basic auth without credentials).
    fn answer(&self, ch: &str) -> Result<bool> {
        let (scheme, params) = parse_challenge(ch);
        let value = if scheme.eq_ignore_ascii_case("basic") {
            let Some((u, p)) = &self.creds else {
                return Ok(false);
            };
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let realm = params.get("realm").ok_or_else(|| {
                err!(
                    "registry {} sent a bearer challenge without a realm: {ch}",
                    self.remote.registry
                )
            })?;
            format!("Bearer {}", self.token(realm, &params)?)
        } else {
            return Err(err!(
                "registry {} asks for {scheme} auth, which layerctl does not speak (basic and bearer tokens only)",
                self.remote.registry
            ));
        };
        if let Ok(mut g) = self.auth.lock() {
            *g = Some(value);
        }
        Ok(true)
    }

    /// The bearer-token flow: GET REALM?service=..&scope=repository:REPO:ACTIONS, with
    /// basic credentials when there are some (anonymous otherwise).
    fn token(
        &self,
        realm: &str,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<String> {
        let scope = format!("repository:{}:{}", self.remote.repo, self.actions);
        let mut url = format!("{realm}{}", if realm.contains('?') { '&' } else { '?' });
        if let Some(s) = params.get("service") {
            url.push_str(&format!("service={}&", pct(s)));
        }
        url.push_str(&format!("scope={}", pct(&scope)));
        let mut attempt = 0;
        let resp = loop {
            let mut req = self.agent.get(&url);
            if let Some((u, p)) = &self.creds {
                req = req.set(
                    "Authorization",
                    &format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                    ),
                );
            }
            match req.call() {
                Ok(r) => break r,
                Err(ureq::Error::Status(401 | 403, _)) => return Err(self.unauthorized()),
                Err(ureq::Error::Status(s, r))
                    if (s == 429 || s >= 500) && attempt < self.retries =>
                {
                    std::thread::sleep(backoff(attempt, r.header("Retry-After")));
                    attempt += 1;
                }
                Err(ureq::Error::Status(s, r)) => {
                    return Err(err!("token server {realm} answered {s}: {}", body_text(r)))
                }
                Err(ureq::Error::Transport(t)) if transient(&t) && attempt < self.retries => {
                    std::thread::sleep(backoff(attempt, None));
                    attempt += 1;
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(err!("cannot reach token server {realm}: {t}"))
                }
            }
        };
        let v: serde_json::Value = serde_json::from_str(&body_text(resp))
            .map_err(|e| err!("token server {realm} sent no JSON: {e}"))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| err!("token server {realm} sent no token"))
    }
}

/// At most 64 KiB of a response body as text, for error messages (one line).
pub fn body_text(r: ureq::Response) -> String {
    let mut s = String::new();
    let _ = r.into_reader().take(64 << 10).read_to_string(&mut s);
    // A distribution error body: {"errors":[{"code":..,"message":..}]}: say the message.
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
        if let Some(e) = v["errors"].as_array().and_then(|a| a.first()) {
            let code = e["code"].as_str().unwrap_or_default();
            let msg = e["message"].as_str().unwrap_or_default();
            return format!("{code}: {msg}")
                .trim_matches([' ', ':'])
                .to_string();
        }
    }
    s.trim().chars().take(300).collect()
}

/// `Bearer realm="x",service="y",scope="a:b:pull,push"` -> ("Bearer", {realm, service, scope}).
pub fn parse_challenge(h: &str) -> (String, std::collections::BTreeMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut out = std::collections::BTreeMap::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        let key = rest[ks..i].trim().to_ascii_lowercase();
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                val.push(b[i] as char);
                i += 1;
            }
            i += 1;
        } else {
            let vs = i.min(b.len());
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = rest[vs..i.min(b.len())].trim().to_string();
        }
        if !key.is_empty() {
            out.insert(key, val);
        }
    }
    (scheme.to_string(), out)
}

/// Percent-encodes a query value.
fn pct(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// The TLS trust for `registry`: the system roots plus the CA certificates (`*.crt`) of
/// --cert-dir, $LAYERCTL_CERT_DIR, or /etc/containers/certs.d/HOST and
/// /etc/docker/certs.d/HOST (podman's and docker's places); nothing with
/// --tls-verify=false.
fn tls_config(registry: &str, opts: &Options) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err!("setting up TLS: {e}"))?;
    if !opts.tls_verify {
        return Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    let dirs: Vec<PathBuf> = match (&opts.cert_dir, std::env::var_os("LAYERCTL_CERT_DIR")) {
        (Some(d), _) => vec![d.clone()],
        (None, Some(d)) if !d.is_empty() => vec![PathBuf::from(d)],
        _ => vec![
            Path::new("/etc/containers/certs.d").join(registry),
            Path::new("/etc/docker/certs.d").join(registry),
        ],
    };
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        files.sort();
        for f in files {
            let bytes =
                std::fs::read(&f).ctx(|| format!("reading CA certificate {}", f.display()))?;
            let mut n = 0;
            for c in rustls_pemfile::certs(&mut &bytes[..]) {
                let c = c.map_err(|e| err!("CA certificate {} is not PEM: {e}", f.display()))?;
                roots
                    .add(c)
                    .map_err(|e| err!("CA certificate {} cannot be used: {e}", f.display()))?;
                n += 1;
            }
            if n == 0 {
                return Err(err!("{} holds no PEM certificate", f.display()));
            }
        }
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

/// --tls-verify=false: any certificate is accepted (the handshake signatures are still
/// checked, so the session is at least with whoever holds the key it presents).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("Basic", "Registry Realm")
        );
        assert_eq!(pct("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
        assert_eq!(backoff(0, Some("3")), Duration::from_secs(3));
        assert_eq!(backoff(10, None), Duration::from_secs(8));
    }
}

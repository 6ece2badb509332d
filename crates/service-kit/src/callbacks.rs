//! Completion callbacks, shared by the gateway (which refuses a bad callback URL at start) and
//! the worker (which checks it again when it delivers, since DNS answers change): which URLs may
//! be called, and how a delivery is signed (Standard Webhooks).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine;

/// How long a callback host may take to resolve.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a callback URL is refused; the message is for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Where completion callbacks may go: the settings section of the keys `callback_allow_http`,
/// `callback_hosts` and `callback_allowed_networks`, the same in the gateway (which checks a
/// callback URL when a start names one) and the worker (which checks it again on delivery).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Targets {
    /// `http://` allowed too (never for production).
    pub allow_http: bool,
    /// Host patterns a callback URL may name: `*`, `example.com`, `*.example.com`.
    pub hosts: Vec<String>,
    /// Networks callbacks may reach although not public (e.g. `10.1.0.0/16`); loopback,
    /// private, link-local (the metadata address) and reserved addresses are refused otherwise.
    pub allowed_networks: Vec<String>,
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            allow_http: false,
            hosts: vec!["*".into()],
            allowed_networks: Vec::new(),
        }
    }
}

impl Targets {
    /// The section's keys carry this prefix.
    pub const PREFIX: &'static str = "callback_";

    pub fn policy(&self) -> Result<Policy, String> {
        Policy::new(
            self.allow_http,
            &self.hosts,
            &self.allowed_networks,
            Self::PREFIX,
        )
    }
}

/// Where callbacks may go.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `http://` as well as `https://`.
    allow_http: bool,
    /// Host patterns: `*` (any), `example.com` (exactly), `*.example.com` (any subdomain).
    hosts: Vec<String>,
    /// Networks that may be called although they are not public (loopback, private, link-local
    /// and the like are refused otherwise).
    allowed_networks: Vec<ipnet::IpNet>,
}

impl Policy {
    /// The policy of the settings `<prefix>allow_http`, `<prefix>hosts`,
    /// `<prefix>allowed_networks`; errors name the key.
    pub fn new(
        allow_http: bool,
        hosts: &[String],
        allowed_networks: &[String],
        prefix: &str,
    ) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for h in hosts {
            let h = h.trim().to_ascii_lowercase();
            let bare = h.strip_prefix("*.").unwrap_or(&h);
            let valid = h == "*"
                || (!bare.is_empty()
                    && bare
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
                    && !bare.contains('*'));
            if !valid {
                return Err(format!(
                    "`{prefix}hosts`: '{h}' is not a host pattern (`*`, `example.com` or `*.example.com`)"
                ));
            }
            patterns.push(h);
        }
        let mut networks = Vec::new();
        for n in allowed_networks {
            let n = n.trim();
            let parsed = n
                .parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!("`{prefix}allowed_networks`: '{n}' is not a network (CIDR) or address")
                })?;
            networks.push(parsed);
        }
        Ok(Self {
            allow_http,
            hosts: patterns,
            allowed_networks: networks,
        })
    }

    /// The URL, if its form, scheme and host are acceptable (addresses are checked by
    /// [`Policy::check_addr`] once resolved; an address written in the URL is checked here).
    pub fn check_url(&self, raw: &str) -> Result<url::Url, Refusal> {
        if raw.len() > 2048 {
            return Err(Refusal(
                "the callback URL is longer than 2048 characters".into(),
            ));
        }
        let url = url::Url::parse(raw)
            .map_err(|e| Refusal(format!("the callback URL is not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(Refusal(
                    "the callback URL must be https (http is not allowed here)".into(),
                ));
            }
            other => {
                return Err(Refusal(format!(
                    "the callback URL's scheme '{other}' is not https"
                )));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal(
                "the callback URL must not carry credentials".into(),
            ));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => {
                self.check_addr(IpAddr::V4(ip))?;
                ip.to_string()
            }
            Some(url::Host::Ipv6(ip)) => {
                self.check_addr(IpAddr::V6(ip))?;
                ip.to_string()
            }
            None => return Err(Refusal("the callback URL has no host".into())),
        };
        if !self.hosts.iter().any(|p| host_matches(p, &host)) {
            return Err(Refusal(format!(
                "the callback host '{host}' is not among the allowed hosts"
            )));
        }
        Ok(url)
    }

    /// Whether an address may be called: public, or in an allowed network.
    pub fn check_addr(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self.allowed_networks.iter().any(|n| n.contains(&ip)) || is_public(ip) {
            return Ok(());
        }
        Err(Refusal(format!(
            "the callback address {ip} is not public (loopback, private, link-local, metadata or reserved) and not allowed"
        )))
    }

    /// The addresses of `url`'s host, every one of them allowed (an answer with any refused
    /// address is refused whole: a name must not lead to an internal address).
    pub async fn resolve(&self, url: &url::Url) -> Result<Vec<SocketAddr>, Refusal> {
        let host = url
            .host_str()
            .ok_or_else(|| Refusal("the callback URL has no host".into()))?;
        let port = url.port_or_known_default().unwrap_or(443);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // getaddrinfo has no deadline of its own.
        let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| {
                Refusal(format!(
                    "the callback host '{host}' did not resolve within {} s",
                    RESOLVE_TIMEOUT.as_secs()
                ))
            })?;
        let addrs: Vec<SocketAddr> = lookup
            .map_err(|e| Refusal(format!("the callback host '{host}' does not resolve: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(Refusal(format!(
                "the callback host '{host}' has no address"
            )));
        }
        for a in &addrs {
            self.check_addr(a.ip())?;
        }
        Ok(addrs)
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => pattern == host,
    }
}

/// The IPv4 address an IPv6 address stands for, where a translation mechanism routes it to one:
/// IPv4-mapped (`::ffff:a.b.c.d`) and -compatible (`::a.b.c.d`), the NAT64 well-known prefix
/// (`64:ff9b::/96`, RFC 6052) and 6to4 (`2002::/16`, RFC 3056). A callback to one of these
/// reaches that IPv4 address, so it is judged as that address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4() {
        return Some(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(v4(s[1], s[2]));
    }
    None
}

/// IPv4 written as IPv6 (mapped, compatible, NAT64, 6to4) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Reachable on the internet: not loopback, private, link-local (the instance metadata address
/// 169.254.169.254 among them), shared (CGNAT), unspecified, multicast, broadcast, documentation
/// or otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed inside some sites)
        || s[..4] == [0x0100, 0, 0, 0] // discard-only
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64: local-use 64:ff9b:1::/48 (the /96 is judged by its IPv4)
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments: Teredo (its IPv4 is obfuscated), ORCHID, benchmarking
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] & 0xfff0) == 0x3ff0 // documentation (3fff::/20)
        || isatap_v4(ip).is_some_and(|v4| !public_v4(v4))
        || embedded_v4(ip).is_some_and(|v4| !public_v4(v4)))
}

/// ISATAP (RFC 5214) carries an IPv4 address in the interface id, `[02]00:5efe:a.b.c.d`: a
/// router of the site delivers to that IPv4 address.
fn isatap_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    ((s[4] & 0xfcff) == 0 && s[5] == 0x5efe)
        .then(|| Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])))
}

/// Signs deliveries as the Standard Webhooks specification says: `webhook-signature` is
/// `v1,` and the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the
/// secret's bytes (a `whsec_` secret is base64).
#[derive(Clone)]
pub struct Signer {
    key: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(…)")
    }
}

impl Signer {
    /// From a `whsec_<base64>` secret (at least 24 bytes), or `key` names the setting.
    pub fn new(secret: &str, key: &str) -> Result<Self, String> {
        let encoded = secret.trim().strip_prefix("whsec_").ok_or_else(|| {
            format!("`{key}` must be a Standard Webhooks secret: whsec_ and base64")
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| format!("`{key}`: the part after whsec_ is not base64"))?;
        if bytes.len() < 24 {
            return Err(format!("`{key}` must hold at least 24 random bytes"));
        }
        Ok(Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &bytes),
        })
    }

    /// The `webhook-signature` value.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        let tag = ctx.sign();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(networks: &[&str]) -> Policy {
        Policy::new(
            false,
            &["*".into()],
            &networks.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "callback_",
        )
        .expect("policy")
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let p = policy(&[]);
        for refused in [
            "https://127.0.0.1/x",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:169.254.169.254]/",
        ] {
            assert!(p.check_url(refused).is_err(), "{refused} accepted");
        }
        assert!(p.check_url("https://93.184.215.14/hook").is_ok());
        // IPv6 that reaches IPv4: judged by the IPv4 address, or refused.
        for refused in [
            "https://[64:ff9b::7f00:1]/",                      // NAT64 of 127.0.0.1
            "https://[64:ff9b::a9fe:a9fe]/",                   // NAT64 of the metadata address
            "https://[64:ff9b::a00:1]/",                       // NAT64 of 10.0.0.1
            "https://[64:ff9b:1::808:808]/",                   // local-use NAT64
            "https://[2002:7f00:1::1]/",                       // 6to4 of 127.0.0.1
            "https://[2002:a9fe:a9fe::]/",                     // 6to4 of 169.254.169.254
            "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", // Teredo
            "https://[::127.0.0.1]/",                          // IPv4-compatible
            "https://[fec0::1]/",                              // site-local
            "https://[100::1]/",                               // discard-only
            "https://[2001:2::1]/",                            // benchmarking
            "https://[3fff::1]/",                              // documentation
            "https://[2606:4700::5efe:a9fe:a9fe]/",            // ISATAP with the metadata address
        ] {
            assert!(p.check_url(refused).is_err(), "{refused} accepted");
        }
        for public in ["https://[64:ff9b::808:808]/", "https://[2002:808:808::1]/"] {
            assert!(p.check_url(public).is_ok(), "{public} refused");
        }
        assert!(
            p.check_url("https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/")
                .is_ok()
        );
        let local = policy(&["127.0.0.1/32"]);
        assert!(local.check_url("https://127.0.0.1:8443/").is_ok());
        assert!(local.check_url("https://127.0.0.2/").is_err());
    }

    #[test]
    fn scheme_credentials_and_hosts_are_checked() {
        let p = Policy::new(
            false,
            &["hooks.example.com".into(), "*.example.org".into()],
            &[],
            "callback_",
        )
        .expect("policy");
        assert!(p.check_url("https://hooks.example.com/a").is_ok());
        assert!(p.check_url("https://a.b.example.org/a").is_ok());
        assert!(p.check_url("https://example.org/a").is_err());
        assert!(p.check_url("https://evil-example.org/a").is_err());
        assert!(p.check_url("https://other.example.com/a").is_err());
        assert!(p.check_url("http://hooks.example.com/a").is_err());
        assert!(p.check_url("ftp://hooks.example.com/a").is_err());
        assert!(p.check_url("https://u:p@hooks.example.com/a").is_err());
        assert!(p.check_url("not a url").is_err());
        let err = Policy::new(false, &["bad host!".into()], &[], "callback_").unwrap_err();
        assert!(err.contains("`callback_hosts`"), "{err}");
        let err =
            Policy::new(false, &["*".into()], &["10.0.0.0/33".into()], "callback_").unwrap_err();
        assert!(err.contains("`callback_allowed_networks`"), "{err}");
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The specification's example: secret, id, timestamp, body and signature.
        let signer =
            Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "secret").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(
            Signer::new("nope", "callback_secret")
                .unwrap_err()
                .contains("`callback_secret`")
        );
        assert!(Signer::new("whsec_c2hvcnQ=", "callback_secret").is_err());
    }
}

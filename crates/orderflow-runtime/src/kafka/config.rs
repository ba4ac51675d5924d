//! [`KafkaConfig`]: where the brokers are, TLS and SASL, and librdkafka settings passed
//! through; how secrets stay out of what is shown.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::config::ClientConfig;

use crate::{Error, Result};

/// Where the brokers are, how to reach them securely and any extra librdkafka settings.
/// The command line's flags (`--brokers`, `--security-protocol`, `--ssl-*`, `--sasl-*`,
/// `--kafka-option`, `--connect-timeout`, each with its `ORDERFLOW_*` environment
/// variable) fill it in; a library user builds it with [`KafkaConfig::new`].
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, `host:port`, comma-separated.
    pub brokers: String,
    /// Extra librdkafka settings, `KEY=VALUE`, applied last (they override orderflow's
    /// defaults and [`KafkaConfig::security`]). The value is everything after the first
    /// `=`, unchanged (commas included).
    pub options: Vec<String>,
    /// How long a service waits for the brokers at start before it gives up and says so.
    pub connect_timeout: Duration,
    /// TLS and SASL.
    pub security: Security,
}

/// Bootstrap servers when none are given.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// How long a service waits for the brokers at start, when not told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How clients talk to the brokers when not told otherwise.
pub const DEFAULT_SECURITY_PROTOCOL: SecurityProtocol = SecurityProtocol::Plaintext;
/// The SASL mechanism when not told otherwise (used only with a `sasl_*` protocol).
pub const DEFAULT_SASL_MECHANISM: SaslMechanism = SaslMechanism::ScramSha512;

/// librdkafka settings whose values are secrets, besides any whose name contains
/// `password` or `secret`: redacted wherever options are shown.
const SECRET_OPTIONS: &[&str] = &["ssl.key.pem", "sasl.oauthbearer.config", "sasl.jaas.config", "ssl_key"];

/// Whether the value of librdkafka setting `key` is a secret.
pub fn is_secret_option(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || SECRET_OPTIONS.contains(&key.as_str())
}

/// How a client talks to the brokers: librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// Neither encryption nor authentication.
    Plaintext,
    /// TLS: the brokers' certificates are verified (and their host names checked); the
    /// client presents a certificate of its own when given one.
    Ssl,
    /// SASL login without encryption (PLAIN then sends the password in clear).
    SaslPlaintext,
    /// SASL login over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Every protocol, in the order the command line lists them.
    pub const ALL: [Self; 4] = [Self::Plaintext, Self::Ssl, Self::SaslPlaintext, Self::SaslSsl];

    /// The name librdkafka and the command line use (`sasl_ssl`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether connections are encrypted with TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether the client logs in with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl std::fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a client proves who it is over SASL: librdkafka's `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// The password itself is sent (use it over TLS only).
    Plain,
    /// Salted challenge-response; the password never crosses the network.
    ScramSha256,
    /// As [`SaslMechanism::ScramSha256`], with SHA-512.
    ScramSha512,
}

impl SaslMechanism {
    /// Every mechanism, in the order the command line lists them.
    pub const ALL: [Self; 3] = [Self::Plain, Self::ScramSha256, Self::ScramSha512];

    /// The name librdkafka and the command line use (`SCRAM-SHA-512`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl std::fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A password, given as text or as a file read each time a client is built (one
/// trailing newline dropped). `Debug` shows a file's path, never a password.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The password itself.
    Value(String),
    /// A file holding the password.
    File(PathBuf),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Secret(<redacted>)"),
            Self::File(path) => f.debug_tuple("Secret::File").field(path).finish(),
        }
    }
}

impl Secret {
    /// The password; `what` names it in the error when its file cannot be read.
    pub fn reveal(&self, what: &'static str) -> Result<String> {
        match self {
            Self::Value(v) => Ok(v.clone()),
            Self::File(path) => {
                let mut text = std::fs::read_to_string(path).map_err(|source| Error::SecretFile { what, path: path.clone(), source })?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                Ok(text)
            }
        }
    }
}

/// TLS and SASL settings. The defaults are plaintext with nothing else set; the TLS
/// files are used only with a TLS protocol and the SASL ones only with a SASL protocol,
/// and setting one for a protocol that does not use it is an error (it would otherwise
/// be ignored silently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// Plaintext, TLS, SASL or SASL over TLS.
    pub protocol: SecurityProtocol,
    /// PEM file of the CA certificate(s) that signed the brokers' certificates. Without
    /// it the system's CA store is used (librdkafka probes the usual locations).
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client's certificate, for brokers that ask for one (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// Password of an encrypted private key.
    pub key_password: Option<Secret>,
    /// SASL mechanism.
    pub sasl_mechanism: SaslMechanism,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// SASL password.
    pub sasl_password: Option<Secret>,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            protocol: DEFAULT_SECURITY_PROTOCOL,
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password: None,
            sasl_mechanism: DEFAULT_SASL_MECHANISM,
            sasl_username: None,
            sasl_password: None,
        }
    }
}

impl Security {
    /// Checks that the settings fit together, naming the flags to fix when they do not.
    pub fn validate(&self) -> Result<()> {
        let p = self.protocol;
        let tls_set = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some() || self.key_password.is_some();
        if tls_set && !p.tls() {
            return Err(Error::Security(
                "--ssl-ca-file, --ssl-cert-file, --ssl-key-file and the key password need --security-protocol ssl or sasl_ssl",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::Security("--ssl-cert-file and --ssl-key-file go together: give both or neither"));
        }
        if self.key_password.is_some() && self.key_file.is_none() {
            return Err(Error::Security("a key password needs --ssl-key-file"));
        }
        let sasl_set = self.sasl_username.is_some() || self.sasl_password.is_some();
        if sasl_set && !p.sasl() {
            return Err(Error::Security("--sasl-username and the SASL password need --security-protocol sasl_ssl or sasl_plaintext"));
        }
        if p.sasl() && (self.sasl_username.is_none() || self.sasl_password.is_none()) {
            return Err(Error::Security("SASL needs --sasl-username and a password (--sasl-password-file, or ORDERFLOW_SASL_PASSWORD)"));
        }
        Ok(())
    }

    /// Sets librdkafka's `security.protocol`, `ssl.*` and `sasl.*` settings.
    fn apply(&self, c: &mut ClientConfig) -> Result<()> {
        self.validate()?;
        c.set("security.protocol", self.protocol.name());
        if self.protocol.tls() {
            let ca = self.ca_file.as_ref().map_or_else(|| "probe".to_owned(), |p| p.display().to_string());
            c.set("ssl.ca.location", ca);
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                c.set("ssl.certificate.location", cert.display().to_string());
                c.set("ssl.key.location", key.display().to_string());
            }
            if let Some(password) = &self.key_password {
                c.set("ssl.key.password", password.reveal("TLS key password")?);
            }
        }
        if self.protocol.sasl() {
            c.set("sasl.mechanism", self.sasl_mechanism.name());
            if let Some(user) = &self.sasl_username {
                c.set("sasl.username", user);
            }
            if let Some(password) = &self.sasl_password {
                c.set("sasl.password", password.reveal("SASL password")?);
            }
        }
        Ok(())
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self::new(DEFAULT_BROKERS)
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: Vec<String> = self.options.iter().map(|o| redact_option(o)).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("options", &options)
            .field("connect_timeout", &self.connect_timeout)
            .field("security", &self.security)
            .finish()
    }
}

/// An option as it may be shown: `KEY=VALUE`, with the value replaced by `<redacted>`
/// when it is a secret; an option without `=` shows only its leading name characters.
pub fn redact_option(opt: &str) -> String {
    match opt.split_once('=') {
        Some((k, _)) if is_secret_option(k) => format!("{k}=<redacted>"),
        Some(_) => opt.to_owned(),
        None => {
            let name_len = opt.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))).unwrap_or(opt.len());
            if name_len == opt.len() {
                opt.to_owned()
            } else {
                format!("{}<redacted>", &opt[..name_len])
            }
        }
    }
}

impl KafkaConfig {
    /// Settings for a given bootstrap address, plaintext and no extra options.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self { brokers: brokers.into(), options: Vec::new(), connect_timeout: DEFAULT_CONNECT_TIMEOUT, security: Security::default() }
    }

    /// A base client configuration: the brokers, [`Security`], then `defaults`, then
    /// the user's options (blank ones skipped).
    pub fn config(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        self.security.apply(&mut c)?;
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for opt in self.options.iter().filter(|o| !o.trim().is_empty()) {
            let (k, v) = opt.split_once('=').ok_or_else(|| Error::BadOption(redact_option(opt)))?;
            if let Some(why) = downgrade(k, v, self.security.protocol) {
                return Err(Error::Downgrade { option: redact_option(opt), why });
            }
            c.set(k.trim(), v);
        }
        Ok(c)
    }
}

/// Why librdkafka option `key=value` would weaken what orderflow promises (verified
/// brokers, the protocol the flags chose, producers without duplicates), if it would.
fn downgrade(key: &str, value: &str, protocol: SecurityProtocol) -> Option<&'static str> {
    let (key, value) = (key.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
    let off = matches!(value.as_str(), "false" | "0" | "no" | "off");
    match key.as_str() {
        "enable.ssl.certificate.verification" if off => Some("it would stop verifying the brokers' certificates"),
        "ssl.endpoint.identification.algorithm" if value != "https" => Some("it would stop checking the brokers' host names"),
        "enable.idempotence" if off => Some("every producer must be idempotent (a retried batch written twice would count twice)"),
        "security.protocol" => {
            let given = SecurityProtocol::ALL.iter().copied().find(|p| p.name() == value)?;
            let weaker = (protocol.tls() && !given.tls()) || (protocol.sasl() && !given.sasl());
            weaker.then_some("it is weaker than --security-protocol (raise the flag instead of lowering it here)")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--kafka-option` may tune librdkafka, never weaken what the flags and the
    /// README promise: each downgrade is refused with the option (redacted) and why.
    #[test]
    fn options_that_weaken_security_or_idempotence_are_refused() {
        let with = |protocol: SecurityProtocol, opt: &str| {
            let mut kafka = sasl_ssl(Secret::Value("pw".into()));
            if !protocol.sasl() {
                kafka.security = Security { protocol, ..Security::default() };
            } else if !protocol.tls() {
                kafka.security = Security { protocol, ca_file: None, ..kafka.security };
            }
            kafka.options = vec![opt.to_owned()];
            kafka.config(&[]).map(|_| ()).map_err(|e| e.to_string())
        };
        use SecurityProtocol::*;
        for (protocol, opt) in [
            (SaslSsl, "enable.ssl.certificate.verification=false"),
            (Ssl, " enable.ssl.certificate.verification = 0"),
            (SaslSsl, "ssl.endpoint.identification.algorithm=none"),
            (Plaintext, "enable.idempotence=false"),
            (SaslSsl, "security.protocol=sasl_plaintext"),
            (SaslSsl, "security.protocol=ssl"),
            (Ssl, "security.protocol=PLAINTEXT"),
            (SaslPlaintext, "security.protocol=plaintext"),
        ] {
            let e = with(protocol, opt).expect_err(opt);
            assert!(e.starts_with(&format!("librdkafka option `{opt}` refused: ")), "{e}");
        }
        // Raising or tuning is fine.
        for (protocol, opt) in [
            (Plaintext, "security.protocol=ssl"),
            (SaslSsl, "security.protocol=sasl_ssl"),
            (SaslSsl, "ssl.endpoint.identification.algorithm=https"),
            (Plaintext, "enable.idempotence=true"),
            (Plaintext, "linger.ms=5"),
        ] {
            assert_eq!(with(protocol, opt), Ok(()), "{opt}");
        }
    }

    fn sasl_ssl(password: Secret) -> KafkaConfig {
        let mut kafka = KafkaConfig::new("127.0.0.1:9093");
        kafka.security = Security {
            protocol: SecurityProtocol::SaslSsl,
            ca_file: Some("/etc/orderflow/ca.pem".into()),
            sasl_mechanism: SaslMechanism::ScramSha256,
            sasl_username: Some("alice".into()),
            sasl_password: Some(password),
            ..Security::default()
        };
        kafka
    }

    #[test]
    fn the_default_is_plaintext_with_nothing_else() {
        let c = KafkaConfig::default().config(&[]).unwrap();
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.get("ssl.ca.location"), None);
        assert_eq!(c.get("sasl.mechanism"), None);
    }

    #[test]
    fn security_settings_become_librdkafkas() {
        let c = sasl_ssl(Secret::Value("pa,ss=w,rd".into())).config(&[]).unwrap();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/orderflow/ca.pem"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(c.get("sasl.username"), Some("alice"));
        assert_eq!(c.get("sasl.password"), Some("pa,ss=w,rd"));
        assert_eq!(c.get("ssl.certificate.location"), None);

        let mut tls = KafkaConfig::new("b:9093");
        tls.security.protocol = SecurityProtocol::Ssl;
        tls.security.cert_file = Some("client.pem".into());
        tls.security.key_file = Some("client.key".into());
        tls.security.key_password = Some(Secret::Value("k".into()));
        let c = tls.config(&[]).unwrap();
        assert_eq!(c.get("ssl.ca.location"), Some("probe"), "no CA file: the system's store");
        assert_eq!(c.get("ssl.certificate.location"), Some("client.pem"));
        assert_eq!(c.get("ssl.key.location"), Some("client.key"));
        assert_eq!(c.get("ssl.key.password"), Some("k"));
        assert_eq!(c.get("sasl.username"), None);
    }

    #[test]
    fn a_password_file_is_read_without_its_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("orderflow-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3,cr=t\n").unwrap();
        let c = sasl_ssl(Secret::File(file.clone())).config(&[]).unwrap();
        assert_eq!(c.get("sasl.password"), Some("s3,cr=t"));
        std::fs::remove_dir_all(&dir).unwrap();

        let e = sasl_ssl(Secret::File(file.clone())).config(&[]).unwrap_err();
        assert!(matches!(e, Error::SecretFile { .. }), "{e}");
        assert_eq!(e.to_string(), format!("reading the SASL password from {}", file.display()));
    }

    #[test]
    fn options_keep_their_values_whole_and_override_the_rest() {
        let mut kafka = sasl_ssl(Secret::Value("flag".into()));
        kafka.options = vec!["debug=broker,topic".into(), "sasl.password=a,b=c ".into(), String::new(), " client.id =x".into()];
        let c = kafka.config(&[("client.id", "default")]).unwrap();
        assert_eq!(c.get("debug"), Some("broker,topic"));
        assert_eq!(c.get("sasl.password"), Some("a,b=c "), "the value is everything after the first `=`, unchanged");
        assert_eq!(c.get("client.id"), Some("x"));
    }

    #[test]
    fn settings_that_do_not_fit_the_protocol_are_refused() {
        let mut kafka = KafkaConfig::default();
        kafka.security.ca_file = Some("ca.pem".into());
        assert!(matches!(kafka.config(&[]), Err(Error::Security(m)) if m.contains("--ssl-ca-file")));

        let mut kafka = KafkaConfig::default();
        kafka.security.protocol = SecurityProtocol::Ssl;
        kafka.security.cert_file = Some("client.pem".into());
        assert!(matches!(kafka.config(&[]), Err(Error::Security(m)) if m.contains("--ssl-key-file")));

        let mut kafka = KafkaConfig::default();
        kafka.security.protocol = SecurityProtocol::Ssl;
        kafka.security.sasl_username = Some("alice".into());
        assert!(matches!(kafka.config(&[]), Err(Error::Security(m)) if m.contains("sasl_ssl")));

        let mut kafka = sasl_ssl(Secret::Value("p".into()));
        kafka.security.sasl_password = None;
        assert!(matches!(kafka.config(&[]), Err(Error::Security(m)) if m.contains("password")));
    }

    #[test]
    fn secrets_stay_out_of_debug_output_and_errors() {
        let mut kafka = sasl_ssl(Secret::Value("hunter2".into()));
        kafka.security.protocol = SecurityProtocol::SaslSsl;
        kafka.security.cert_file = Some("client.pem".into());
        kafka.security.key_file = Some("client.key".into());
        kafka.security.key_password = Some(Secret::Value("hunter3".into()));
        kafka.options = vec!["sasl.password=hunter4".into(), "ssl.keystore.password=hunter5".into(), "debug=broker,topic".into()];
        let shown = format!("{kafka:?} {kafka:#?}");
        for secret in ["hunter2", "hunter3", "hunter4", "hunter5"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("debug=broker,topic") && shown.contains("sasl.password=<redacted>"), "{shown}");
        assert!(format!("{:?}", Secret::File("/run/pw".into())).contains("/run/pw"));

        kafka.options = vec!["sasl.password:hunter6".into()];
        let e = kafka.config(&[]).unwrap_err();
        assert!(matches!(e, Error::BadOption(_)));
        assert_eq!(e.to_string(), "librdkafka option `sasl.password<redacted>` must be KEY=VALUE");
        kafka.options = vec!["debug".into()];
        assert_eq!(kafka.config(&[]).unwrap_err().to_string(), "librdkafka option `debug` must be KEY=VALUE");
    }
}

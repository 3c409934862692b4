//! Operator commands: `confab token` mints a connection token for the
//! configured `token_secret` (as Centrifugo's `gentoken`), and
//! `confab check-config` validates the settings and prints them, secrets
//! masked.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::{Overrides, Settings};
use crate::protocol::UserName;

/// Arguments of `confab token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The user the token names (its `sub`)
    #[arg(long, value_name = "NAME")]
    pub user: String,
    /// How long it is valid: seconds, or a number with s, m, h or d
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    pub ttl: u64,
    /// TOML file with the same keys as the flags
    #[arg(long, env = "CONFAB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Arguments of `confab check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// TOML file with the same keys as the flags
    #[arg(long, env = "CONFAB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Parses `90`, `90s`, `15m`, `12h` or `7d` as seconds (at least 1).
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 3600, 90s, 15m, 12h or 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit `{other}`: use s, m, h or d")),
    };
    match n.checked_mul(unit) {
        Some(0) => Err("the duration must be at least 1 second".into()),
        Some(secs) => Ok(secs),
        None => Err(format!("`{s}` is too long")),
    }
}

/// `confab token`: the token, on one line.
pub fn token(args: TokenArgs) -> anyhow::Result<String> {
    let settings = Settings::load(args.overrides, args.config.as_ref())?;
    let secret = settings.token_secret.as_ref().context(
        "no token_secret is configured (set --token-secret, CONFAB_TOKEN_SECRET or token_secret in the file), so clients need no token",
    )?;
    let user = UserName::parse_own(&args.user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    crate::auth::mint(secret, &user, args.ttl)
}

/// `confab check-config`: the effective settings as TOML, secrets masked.
pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<String> {
    let settings = Settings::load(args.overrides, args.config.as_ref())?;
    let mut out = String::from("# Effective settings: the configuration is valid.\n");
    out.push_str(&toml::to_string(&settings).context("printing the settings")?);
    for (name, set) in [
        ("token_secret", settings.token_secret.is_some()),
        ("api_key", settings.api_key.is_some()),
    ] {
        if !set {
            out.push_str(&format!("# {name} is not set\n"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("12h"), Ok(43_200));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn check_config_masks_secrets() {
        let args = CheckConfigArgs {
            config: None,
            overrides: Overrides {
                api_key: Some("an-api-key-of-some-length".parse().unwrap()),
                ..Overrides::default()
            },
        };
        let out = check_config(args).unwrap();
        assert!(out.contains("api_key = \"***\""), "{out}");
        assert!(!out.contains("an-api-key"));
        assert!(out.contains("max_connections = 10000"));
        assert!(out.contains("# token_secret is not set"));
    }
}

//! Who a connection is: a display name, or the `sub` of an HS256 token
//! when the server has a `token_secret`.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{Secret, Settings};
use crate::node::Refusal;
use crate::protocol::codes::ErrorCode;
use crate::protocol::UserName;

/// A connection token's claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
}

/// The user a `hello` names: from its token when tokens are required,
/// else from its `name`.
pub fn identify(
    settings: &Settings,
    name: Option<&str>,
    token: Option<&str>,
) -> Result<UserName, Refusal> {
    let Some(secret) = &settings.token_secret else {
        let name = name.ok_or_else(|| Refusal::new(ErrorCode::Invalid, "`name` is required"))?;
        return UserName::parse_own(name)
            .map_err(|e| Refusal::new(ErrorCode::InvalidUser, format!("`name`: {e}")));
    };
    let unauthorized = |why: String| Refusal::new(ErrorCode::Unauthorized, why);
    let token = token.ok_or_else(|| unauthorized("this server requires a `token`".into()))?;
    let data = decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.expose().as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .map_err(|e| unauthorized(format!("invalid token: {e}")))?;
    UserName::parse_own(&data.claims.sub).map_err(|e| unauthorized(format!("token `sub`: {e}")))
}

/// Mints a token for `user`, valid for `ttl_secs`.
pub fn mint(secret: &Secret, user: &UserName, ttl_secs: u64) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + ttl_secs;
    let claims = Claims {
        sub: user.to_string(),
        exp,
    };
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn settings(secret: Option<&str>) -> Settings {
        Settings::from_overrides(Overrides {
            token_secret: secret.map(|s| s.parse().unwrap()),
            ..Overrides::default()
        })
        .unwrap()
    }

    #[test]
    fn without_a_secret_the_name_is_the_user() {
        let s = settings(None);
        assert_eq!(identify(&s, Some("ann"), None).unwrap().as_str(), "ann");
        assert_eq!(
            identify(&s, None, None).unwrap_err().code,
            ErrorCode::Invalid
        );
        assert_eq!(
            identify(&s, Some(""), None).unwrap_err().code,
            ErrorCode::InvalidUser
        );
    }

    #[test]
    fn with_a_secret_only_a_valid_token_names_the_user() {
        let s = settings(Some("0123456789abcdef-secret"));
        let secret = s.token_secret.clone().unwrap();
        let token = mint(&secret, &UserName::parse("bob").unwrap(), 60).unwrap();
        assert_eq!(
            identify(&s, Some("mallory"), Some(&token))
                .unwrap()
                .as_str(),
            "bob"
        );
        let code = |t| identify(&s, Some("bob"), t).unwrap_err().code;
        assert_eq!(code(None), ErrorCode::Unauthorized);
        assert_eq!(code(Some("nonsense")), ErrorCode::Unauthorized);
        let other: Secret = "another-secret-of-16+".parse().unwrap();
        let forged = mint(&other, &UserName::parse("bob").unwrap(), 60).unwrap();
        assert_eq!(code(Some(&forged)), ErrorCode::Unauthorized);
    }
}

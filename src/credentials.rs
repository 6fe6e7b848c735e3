//! What an email address and a password must be: the rules the use cases
//! (login, adding users) and the command line enforce, in one place.

/// Longest password accepted; longer ones are refused before hashing.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Shortest password `user add` and `--seed-user` accept.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Rules for passwords set through the CLI. Login accepts any password up to
/// [`MAX_PASSWORD_BYTES`]; only new passwords must meet a minimum.
pub fn check_new_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password must be at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Trims and lower-cases an email; `None` when it is not a plausible address.
pub fn normalize_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let plausible = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    plausible.then_some(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lowercased_and_checked() {
        assert_eq!(
            normalize_email("  Ana@Example.COM ").as_deref(),
            Some("ana@example.com")
        );
        assert_eq!(normalize_email("ana"), None);
        assert_eq!(normalize_email("@example.com"), None);
        assert_eq!(normalize_email("ana@"), None);
        assert_eq!(normalize_email("a@b@c"), None);
        assert_eq!(normalize_email("a b@c.d"), None);
    }

    #[test]
    fn new_passwords_have_a_minimum_and_a_maximum() {
        assert!(check_new_password("short").is_err());
        assert!(check_new_password("long enough").is_ok());
        assert!(check_new_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }
}

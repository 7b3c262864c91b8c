//! How an account becomes an administrator: only by an operator running
//! `auth-service admin grant EMAIL` (or `chat-server admin grant EMAIL`) against the users
//! database, never over the API. There is no "first user is admin" rule and no role field
//! at registration, so nobody can make themselves an administrator.

use anyhow::Context;
use chat_common::{Role, Shutdown};

use crate::{domain::Email, store};

/// The operator's verb: make an account an administrator, or a plain user again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// Make the account an administrator.
    Grant,
    /// Make the account a plain user again.
    Revoke,
}

impl AdminAction {
    /// `grant` or `revoke`, as typed on the command line.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "grant" => Some(Self::Grant),
            "revoke" => Some(Self::Revoke),
            _ => None,
        }
    }
}

/// Sets the role of the account with `email` in the users database at `database_url`
/// (migrating it first, as every start does), and says what was done, for the operator.
/// Fails when there is no such account.
pub async fn set_role(
    database_url: &str,
    action: AdminAction,
    email: &str,
) -> anyhow::Result<String> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("email {}", e.message))?;
    // A one-shot command: its pool's monitors end with the process.
    let store = store::open(database_url, 1, &Shutdown::new())
        .await
        .context("opening the users database")?;
    let role = match action {
        AdminAction::Grant => Role::Admin,
        AdminAction::Revoke => Role::User,
    };
    let user = store
        .set_role(&email, role)
        .await?
        .with_context(|| format!("no account has the email {}", email.as_str()))?;
    Ok(format!(
        "{} (user {}, {}) now has the role {}; tokens issued before keep their role claim until \
         they expire, but AuthService reads the role from the database for every admin check",
        user.email,
        user.id,
        user.username,
        role.as_str()
    ))
}

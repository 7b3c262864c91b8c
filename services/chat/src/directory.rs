//! Resolving usernames and emails to users, and learning of deleted accounts, through
//! AuthService, with this service's service token.

use std::collections::HashMap;

use tonic::Code;

use chat_common::{client::TracedChannel, service_token::ServiceCredential};
use grpc_chat_proto::auth::v1::{
    auth_service_client::AuthServiceClient, DeletedUser, GetUserIdsByEmailsRequest,
    ListDeletedUsersRequest,
};

use crate::error::ChatError;

/// Who users are, asked of AuthService with this service's credential: turns the emails and
/// usernames a caller names into user ids. Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    client: AuthServiceClient<TracedChannel>,
    credential: ServiceCredential,
}

impl Directory {
    /// Asks `client`, authenticated as this service by `credential`.
    pub fn new(client: AuthServiceClient<TracedChannel>, credential: ServiceCredential) -> Self {
        Self { client, credential }
    }

    /// `(user id, username)` for every identifier; NOT_FOUND naming those that match no one.
    pub async fn resolve(&self, identifiers: &[String]) -> Result<Vec<(i64, String)>, ChatError> {
        if identifiers.is_empty() {
            return Ok(Vec::new());
        }
        let req = self
            .credential
            .request(GetUserIdsByEmailsRequest {
                emails: identifiers.to_vec(),
            })
            .await
            .map_err(|s| ChatError::Unavailable(format!("auth service: {}", s.message())))?;
        let resp = match self.client.clone().get_user_ids_by_emails(req).await {
            Ok(r) => r.into_inner(),
            // The identifiers were parsed by the same rules before the call; a refusal
            // still means these users cannot be found, never that auth is down.
            Err(s) if s.code() == Code::InvalidArgument => {
                tracing::warn!(status = ?s, "auth refused identifiers chat accepted");
                return Err(ChatError::UsersNotFound(vec![s
                    .message()
                    .trim_start_matches("emails: ")
                    .to_owned()]));
            }
            Err(s) => {
                tracing::warn!(status = ?s, "resolving users failed");
                return Err(ChatError::Unavailable(
                    "auth service is unavailable, try again".into(),
                ));
            }
        };
        if !resp.not_found.is_empty() {
            return Err(ChatError::UsersNotFound(resp.not_found));
        }
        let mut by_id: HashMap<i64, String> = HashMap::new();
        for u in resp.users {
            by_id.insert(u.user_id, u.username);
        }
        Ok(by_id.into_iter().collect())
    }

    /// Account deletions after the one with id `after`, oldest first, at most `limit`.
    pub async fn deleted_users(&self, after: i64, limit: i32) -> anyhow::Result<Vec<DeletedUser>> {
        let req = self
            .credential
            .request(ListDeletedUsersRequest {
                after_id: after,
                page_size: limit,
            })
            .await
            .map_err(|s| anyhow::anyhow!("service token: {}", s.message()))?;
        let resp = self
            .client
            .clone()
            .list_deleted_users(req)
            .await
            .map_err(|s| {
                anyhow::anyhow!("listing deleted accounts: {:?}: {}", s.code(), s.message())
            })?;
        Ok(resp.into_inner().deleted)
    }
}

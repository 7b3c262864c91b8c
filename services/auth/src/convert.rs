//! Records of the store and the signer as the messages of the auth contract. One place,
//! so that a user reads the same in every answer that carries one (Register, Login,
//! GetUser, ListUsers, UpdateUser) and the handlers keep to parsing and deciding.

use chrono::{DateTime, Utc};

use chat_common::convert::timestamp;
use grpc_chat_proto::auth::v1 as pb;

use crate::{
    keys::PublicKeyInfo,
    store::{Deletion, UserRecord},
};

/// An issued token pair, each token with when it expires; always `Bearer` tokens.
pub(crate) fn token_pair(
    access: String,
    access_exp: DateTime<Utc>,
    refresh: String,
    refresh_exp: DateTime<Utc>,
) -> pb::TokenPair {
    pb::TokenPair {
        access_token: access,
        access_expires_at: Some(timestamp(access_exp)),
        refresh_token: refresh,
        refresh_expires_at: Some(timestamp(refresh_exp)),
        token_type: "Bearer".into(),
    }
}

/// An account as the contract's `User`.
pub(crate) fn user_to_pb(u: &UserRecord) -> pb::User {
    pb::User {
        id: u.id,
        email: u.email.clone(),
        username: u.username.clone(),
        role: pb::Role::from(u.role) as i32,
        created_at: Some(timestamp(u.created_at)),
    }
}

/// The account an identifier of a lookup (`raw`, as the caller wrote it) named.
pub(crate) fn resolved_to_pb(raw: &str, u: &UserRecord) -> pb::ResolvedUser {
    pb::ResolvedUser {
        identifier: raw.to_owned(),
        user_id: u.id,
        email: u.email.clone(),
        username: u.username.clone(),
    }
}

/// An account's address, for the services that email it.
pub(crate) fn email_to_pb(u: &UserRecord) -> pb::UserEmail {
    pb::UserEmail {
        user_id: u.id,
        email: u.email.clone(),
        username: u.username.clone(),
    }
}

/// A key verifiers accept; every key this service signs with is Ed25519.
pub(crate) fn public_key_to_pb(k: &PublicKeyInfo) -> pb::PublicKey {
    pb::PublicKey {
        key_id: k.kid.clone(),
        algorithm: "EdDSA".into(),
        public_key_pem: k.pem.clone(),
    }
}

/// An account deletion, for the services that forget the account's data.
pub(crate) fn deletion_to_pb(d: Deletion) -> pb::DeletedUser {
    pb::DeletedUser {
        id: d.id,
        user_id: d.user_id,
        deleted_at: Some(timestamp(d.deleted_at)),
    }
}

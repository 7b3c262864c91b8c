//! What each command does: one async function per command, the same for the prompt and for
//! one-shot use. A command prints its result and returns `Err` with a worded error; the
//! caller prints the error and decides the exit code.

use grpc_chat_proto::{
    auth::v1::{
        DeleteUserRequest, GetUserRequest, ListUsersRequest, LoginRequest, LogoutRequest,
        RegisterRequest, Role, UpdateUserRequest,
    },
    chat::v1::{
        AddMembersRequest, CreateChatRequest, DeleteChatRequest, EditMessageRequest,
        LeaveChatRequest, ListChatsRequest, ListMembersRequest, ListMembersResponse,
        ListMessagesRequest, RemoveMemberRequest,
    },
    saga::v1 as sagapb,
};
use tonic::{Code, Request};

use crate::{
    args::Command,
    client::{authed_request, with_tokens, Client, Service, CALL_TIMEOUT},
    connect,
    error::{is_transport_failure, saga_id, CliError, ErrorKind, Op},
    input::Input,
    messages::{mark_read, once_more_if_unreached, send},
    output::{chat_line, member_line, message_line, note, say},
    pending::PendingSends,
    session::Session,
};

/// The client and, once something needs it, the line reader.
pub struct App {
    /// The connections and the session.
    pub client: Client,
    input: Option<Input>,
}

impl App {
    /// An app that starts reading stdin only when a command first needs a line (a password,
    /// `connect`).
    pub fn new(client: Client) -> Self {
        Self {
            client,
            input: None,
        }
    }

    /// An app that reads lines from `input` (the prompt's reader, shared by every command it runs).
    pub fn with_input(client: Client, input: Input) -> Self {
        Self {
            client,
            input: Some(input),
        }
    }

    /// The line reader, started on first use.
    pub fn input(&mut self) -> &mut Input {
        self.input.get_or_insert_with(Input::start)
    }

    /// Runs `command`, in a trace of its own with `--trace` (its id printed after it).
    pub async fn run(&mut self, command: Command) -> Result<(), CliError> {
        let trace = self.client.tracer.start(command.name());
        let result = self.run_command(command).await;
        if let Some(trace) = trace {
            note(&format!("trace id: {}", trace.trace_id));
            self.client.tracer.end(trace);
        }
        result
    }

    async fn run_command(&mut self, command: Command) -> Result<(), CliError> {
        match command {
            Command::Register {
                email,
                username,
                password,
                role,
            } => {
                if role.is_some() {
                    return Err(CliError::new(
                        "a role is not chosen at registration (an operator grants admin on the \
                         server): register <email> <username> [password]",
                    ));
                }
                let (email, username) = email_first(email, username);
                self.register(email, username, password).await
            }
            Command::Login { email, password } => self.login(email, password).await,
            Command::GetAccess => self.get_access().await,
            Command::Logout => self.logout().await,
            Command::Whoami => self.whoami().await,
            Command::Users { prefix } => self.users(prefix.unwrap_or_default()).await,
            Command::Passwd { current, new } => self.passwd(current, new).await,
            Command::DeleteAccount { password } => self.delete_account(password).await,
            Command::CreateChat { members, title } => {
                self.create_chat(&members, title.join(" ")).await
            }
            Command::DeleteChat { chat_id } => self.delete_chat(chat_id).await,
            Command::Chats => self.chats().await,
            Command::Members { chat_id } => self.members(chat_id).await,
            Command::Invite { chat_id, members } => self.invite(chat_id, members).await,
            Command::Kick { chat_id, member } => self.kick(chat_id, member).await,
            Command::Leave { chat_id } => self.leave(chat_id).await,
            Command::SendMessage {
                chat_id,
                from,
                text,
            } => self.send_via_saga(chat_id, from, text.join(" ")).await,
            Command::Send { chat_id, text } => {
                let m = send(&mut self.client, chat_id, text.join(" ")).await?;
                say(&format!("Sent to chat {chat_id} (message #{}).", m.seq));
                Ok(())
            }
            Command::EditMessage { chat_id, seq, text } => {
                self.edit_message(chat_id, seq, text.join(" ")).await
            }
            Command::Connect { chat_id, history } => {
                let input = self.input.get_or_insert_with(Input::start);
                connect::run(&mut self.client, input, chat_id, history).await
            }
            Command::History { chat_id, n } => self.history(chat_id, n).await,
            Command::MarkRead { chat_id, seq } => self.mark_read(chat_id, seq).await,
        }
    }

    async fn password(&mut self, prompt: &str) -> Result<String, CliError> {
        self.input()
            .password(prompt)
            .await
            .ok_or_else(|| CliError::new("no password given"))
    }

    async fn register(
        &mut self,
        email: String,
        username: String,
        password: Option<String>,
    ) -> Result<(), CliError> {
        let password = match password {
            Some(p) => p,
            None => {
                let p = self.password("Password: ").await?;
                if self.input().interactive() && self.password("Repeat password: ").await? != p {
                    return Err(CliError::new("the passwords do not match"));
                }
                p
            }
        };
        let mut req = Request::new(RegisterRequest {
            email: email.clone(),
            username,
            password,
        });
        req.set_timeout(CALL_TIMEOUT);
        let user = self
            .client
            .auth
            .register(req)
            .await
            .map_err(|s| self.client.error(&s, Service::Auth, Op::Other))?
            .into_inner()
            .user
            .ok_or_else(|| CliError::new("the server sent no account"))?;
        say(&format!(
            "Registered {} ({}), user ID {}. Now run: login {email}",
            user.username, user.email, user.id
        ));
        Ok(())
    }

    async fn login(&mut self, email: String, password: Option<String>) -> Result<(), CliError> {
        let password = match password {
            Some(p) => p,
            None => self.password("Password: ").await?,
        };
        let mut req = Request::new(LoginRequest { email, password });
        req.set_timeout(CALL_TIMEOUT);
        let resp = self
            .client
            .auth
            .login(req)
            .await
            .map_err(|s| self.client.error(&s, Service::Auth, Op::Login))?
            .into_inner();
        let (Some(user), Some(tokens)) = (resp.user, resp.tokens) else {
            return Err(CliError::new("the server sent an incomplete login"));
        };
        // Logging in over an older session: end that one on the server too.
        if let Some(old) = self.client.session().cloned() {
            let _ = self
                .client
                .auth
                .logout(LogoutRequest {
                    refresh_token: old.refresh_token,
                })
                .await;
        }
        let session = with_tokens(
            Session {
                user_id: user.id,
                email: user.email,
                username: user.username,
                access_token: String::new(),
                access_expires_at: 0,
                refresh_token: String::new(),
                refresh_expires_at: 0,
            },
            tokens,
        );
        say(&format!(
            "Logged in as {} ({}).",
            session.username, session.email
        ));
        self.client.set_session(session)
    }

    /// The original CLI's `get_access`: there, logging in gave only a refresh token and
    /// this fetched the access token. Here `login` keeps both and every command renews the
    /// access token when it is about to expire; this does the same (renewing only when
    /// due) and says that it is never needed.
    async fn get_access(&mut self) -> Result<(), CliError> {
        self.client.access_token().await?;
        let session = self.client.session().ok_or_else(CliError::not_logged_in)?;
        say(&format!(
            "Access token ready for {}, valid until {}. No need to run this: every command gets and renews it by itself.",
            session.username,
            crate::output::time_of(session.access_expires_at)
        ));
        Ok(())
    }

    async fn logout(&mut self) -> Result<(), CliError> {
        let Some(session) = self.client.session().cloned() else {
            say("Not logged in.");
            return Ok(());
        };
        let mut req = Request::new(LogoutRequest {
            refresh_token: session.refresh_token,
        });
        req.set_timeout(CALL_TIMEOUT);
        let result = self.client.auth.logout(req).await;
        self.client.forget_session()?;
        match result {
            Ok(_) => say("Logged out."),
            // An unknown token: the session had already ended on the server.
            Err(s) if s.code() == Code::Unauthenticated => say("Logged out."),
            Err(s) => {
                say("Logged out here.");
                note(&format!(
                    "warning: the server was not told ({})",
                    self.client.error(&s, Service::Auth, Op::Other)
                ));
            }
        }
        Ok(())
    }

    async fn whoami(&mut self) -> Result<(), CliError> {
        let auth = self.client.auth.clone();
        let user = self
            .client
            .authed(Service::Auth, Op::Other, |t| {
                let mut auth = auth.clone();
                let req = authed_request(GetUserRequest { user_id: 0 }, &t);
                async move { auth.get_user(req).await }
            })
            .await?
            .user
            .ok_or_else(|| CliError::new("the server sent no account"))?;
        say(&format!(
            "{} ({}), user ID {}, role {}, on {}",
            user.username,
            user.email,
            user.id,
            role_name(user.role),
            self.client.servers.auth.uri
        ));
        Ok(())
    }

    async fn users(&mut self, prefix: String) -> Result<(), CliError> {
        let auth = self.client.auth.clone();
        let mut any = false;
        self.client
            .each_page(
                Service::Auth,
                |t, page_token| {
                    let mut auth = auth.clone();
                    let req = authed_request(
                        ListUsersRequest {
                            page_size: 100,
                            page_token,
                            prefix: prefix.clone(),
                        },
                        &t,
                    );
                    async move { auth.list_users(req).await }
                },
                |page| {
                    for u in &page.users {
                        any = true;
                        say(&format!(
                            "{:>6}  {}  {}  {}",
                            u.id,
                            u.username,
                            u.email,
                            role_name(u.role)
                        ));
                    }
                    page.next_page_token
                },
            )
            .await?;
        if !any {
            say("No accounts match.");
        }
        Ok(())
    }

    /// The answer of a call that checks the current password, made once with the session's
    /// access token: no refresh-and-retry on UNAUTHENTICATED, which here means a wrong
    /// password (said as the server words it) and a retry would count twice against the
    /// rate limit.
    async fn password_checked<T>(
        &mut self,
        result: Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, CliError> {
        match result {
            Ok(r) => Ok(r.into_inner()),
            Err(s) if s.code() == Code::Unauthenticated => Err(CliError::new(s.message())),
            Err(s) => Err(self.client.error(&s, Service::Auth, Op::Other)),
        }
    }

    async fn passwd(
        &mut self,
        current: Option<String>,
        new: Option<String>,
    ) -> Result<(), CliError> {
        let session = self
            .client
            .session()
            .cloned()
            .ok_or_else(CliError::not_logged_in)?;
        let current = match current {
            Some(p) => p,
            None => self.password("Current password: ").await?,
        };
        let new = match new {
            Some(p) => p,
            None => {
                let p = self.password("New password: ").await?;
                if self.input().interactive() && self.password("Repeat new password: ").await? != p
                {
                    return Err(CliError::new("the passwords do not match"));
                }
                p
            }
        };
        let token = self.client.access_token().await?;
        let mut auth = self.client.auth.clone();
        let result = auth
            .update_user(authed_request(
                UpdateUserRequest {
                    new_password: Some(new),
                    current_password: current,
                    ..Default::default()
                },
                &token,
            ))
            .await;
        let resp = self.password_checked(result).await?;
        let tokens = resp
            .tokens
            .ok_or_else(|| CliError::new("the server sent no new tokens"))?;
        self.client.set_session(with_tokens(session, tokens))?;
        say("Password changed. Every other session of this account is logged out.");
        Ok(())
    }

    async fn delete_account(&mut self, password: Option<String>) -> Result<(), CliError> {
        let session = self
            .client
            .session()
            .cloned()
            .ok_or_else(CliError::not_logged_in)?;
        let password = match password {
            Some(p) => p,
            None => self.password("Password (to delete your account): ").await?,
        };
        let token = self.client.access_token().await?;
        let mut auth = self.client.auth.clone();
        let result = auth
            .delete_user(authed_request(
                DeleteUserRequest {
                    user_id: 0,
                    current_password: password,
                },
                &token,
            ))
            .await;
        self.password_checked(result).await?;
        self.client.forget_session()?;
        say(&format!(
            "Deleted the account {} ({}). You are logged out.",
            session.username, session.email
        ));
        Ok(())
    }

    async fn create_chat(&mut self, members: &str, title: String) -> Result<(), CliError> {
        let members: Vec<String> = members
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        if members.is_empty() {
            return Err(CliError::new(
                "name at least one other member: create_chat <user1,user2,...> [title]",
            ));
        }
        let resp = self
            .client
            .chat_call(
                Op::Other,
                CreateChatRequest { title, members },
                |mut c, r| async move { c.create_chat(r).await },
            )
            .await?;
        let chat = resp
            .chat
            .ok_or_else(|| CliError::new("the server sent no chat"))?;
        say(&format!("Chat created, ID: {}", chat.id));
        Ok(())
    }

    async fn delete_chat(&mut self, chat_id: i64) -> Result<(), CliError> {
        self.client
            .chat_call(
                Op::Chat(chat_id),
                DeleteChatRequest { chat_id },
                |mut c, r| async move { c.delete_chat(r).await },
            )
            .await?;
        say(&format!("Chat {chat_id} deleted."));
        Ok(())
    }

    /// Edits a message. Repeating it is harmless: the server answers an edit that changes
    /// nothing with `unchanged`, so a retry after a lost answer is said as done.
    async fn edit_message(&mut self, chat_id: i64, seq: i64, text: String) -> Result<(), CliError> {
        let resp = self
            .client
            .chat_call(
                Op::Chat(chat_id),
                EditMessageRequest { chat_id, seq, text },
                |mut c, r| async move { c.edit_message(r).await },
            )
            .await?;
        if resp.unchanged {
            say(&format!(
                "Message #{seq} in chat {chat_id} already says that; nothing changed."
            ));
        } else {
            say(&format!("Edited message #{seq} in chat {chat_id}."));
        }
        Ok(())
    }

    async fn chats(&mut self) -> Result<(), CliError> {
        let chat = self.client.chat.clone();
        let mut any = false;
        self.client
            .each_page(
                Service::Chat,
                |t, page_token| {
                    let mut chat = chat.clone();
                    let req = authed_request(
                        ListChatsRequest {
                            page_size: 100,
                            page_token,
                        },
                        &t,
                    );
                    async move { chat.list_chats(req).await }
                },
                |page| {
                    for c in &page.chats {
                        any = true;
                        say(&chat_line(c));
                    }
                    if page.chats.is_empty() {
                        String::new()
                    } else {
                        page.next_page_token
                    }
                },
            )
            .await?;
        if !any {
            say("You have no chats yet. Create one: create_chat <user1,user2,...> [title]");
        }
        Ok(())
    }

    /// Moves the read marker to `seq`, or to the chat's newest message. Repeating it is
    /// harmless: the marker never moves back, and the answer says where it stands.
    async fn mark_read(&mut self, chat_id: i64, seq: Option<i64>) -> Result<(), CliError> {
        let seq = match seq {
            Some(seq) => seq,
            None => {
                self.list_members(chat_id)
                    .await?
                    .chat
                    .ok_or_else(|| CliError::new("the server sent no chat"))?
                    .last_seq
            }
        };
        let stored = mark_read(&mut self.client, chat_id, seq).await?;
        if stored > seq {
            say(&format!(
                "Chat {chat_id} was already read up to message #{stored}; nothing changed."
            ));
        } else {
            say(&format!("Chat {chat_id} read up to message #{stored}."));
        }
        Ok(())
    }

    /// The chat (with its last seq) and its members.
    async fn list_members(&mut self, chat_id: i64) -> Result<ListMembersResponse, CliError> {
        self.client
            .chat_call(
                Op::Chat(chat_id),
                ListMembersRequest { chat_id },
                |mut c, r| async move { c.list_members(r).await },
            )
            .await
    }

    async fn members(&mut self, chat_id: i64) -> Result<(), CliError> {
        let resp = self.list_members(chat_id).await?;
        for m in &resp.members {
            say(&member_line(m));
        }
        Ok(())
    }

    async fn invite(&mut self, chat_id: i64, members: String) -> Result<(), CliError> {
        let members: Vec<String> = members
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .collect();
        let resp = self
            .client
            .chat_call(
                Op::Chat(chat_id),
                AddMembersRequest { chat_id, members },
                |mut c, r| async move { c.add_members(r).await },
            )
            .await?;
        let count = resp.chat.map_or(0, |c| c.member_count);
        if resp.added.is_empty() {
            say(&format!(
                "Everyone named is already in chat {chat_id} ({count} members)."
            ));
        } else {
            let names: Vec<&str> = resp.added.iter().map(|m| m.username.as_str()).collect();
            say(&format!(
                "Added {} to chat {chat_id} ({count} members).",
                names.join(", ")
            ));
        }
        Ok(())
    }

    async fn kick(&mut self, chat_id: i64, member: String) -> Result<(), CliError> {
        let listed = self.list_members(chat_id).await?;
        let wanted = member.trim();
        let found = listed
            .members
            .iter()
            .find(|m| m.username.eq_ignore_ascii_case(wanted) || m.user_id.to_string() == wanted);
        let Some(found) = found else {
            return Err(CliError::new(format!(
                "{wanted} is not a member of chat {chat_id} (`members {chat_id}` lists them)"
            )));
        };
        let (user_id, name) = (found.user_id, found.username.clone());
        let resp = self
            .client
            .chat_call(
                Op::Chat(chat_id),
                RemoveMemberRequest { chat_id, user_id },
                |mut c, r| async move { c.remove_member(r).await },
            )
            .await?;
        if resp.removed {
            say(&format!("Removed {name} from chat {chat_id}."));
        } else {
            say(&format!("{name} had already left chat {chat_id}."));
        }
        Ok(())
    }

    async fn leave(&mut self, chat_id: i64) -> Result<(), CliError> {
        self.client
            .chat_call(
                Op::Chat(chat_id),
                LeaveChatRequest { chat_id },
                |mut c, r| async move { c.leave_chat(r).await },
            )
            .await?;
        say(&format!("You left chat {chat_id}."));
        Ok(())
    }

    /// Sends through the saga, and tells which of three things happened: stored and
    /// notified (or still being notified); accepted but not finished (the orchestrator kept
    /// the saga, answering UNAVAILABLE with its id, because a service it needs is down); or
    /// not sent (a final refusal). A call that did not reach the orchestrator, or lost its
    /// connection, is tried once more with the same idempotency key, and the key is kept
    /// until a final answer (`pending.rs`), so running the command again never sends twice.
    async fn send_via_saga(
        &mut self,
        chat_id: i64,
        from: String,
        text: String,
    ) -> Result<(), CliError> {
        let saga = self.client.saga.clone();
        let server = self.client.address(Service::Saga).to_owned();
        let pending = PendingSends::in_dir(self.client.store().dir());
        let what = format!("saga\n{server}\n{chat_id}\n{from}\n{text}");
        let key = pending.key_for(&what)?;
        let call = |t: String| {
            let mut saga = saga.clone();
            let req = authed_request(
                sagapb::SendMessageRequest {
                    chat_id,
                    from: from.clone(),
                    text: text.clone(),
                    idempotency_key: key.clone(),
                },
                &t,
            );
            async move { saga.send_message(req).await }
        };
        let answer = once_more_if_unreached(&mut self.client, call).await?;
        let op = Op::Chat(chat_id);
        let saga = match answer {
            Ok(resp) => resp
                .saga
                .ok_or_else(|| CliError::new("the server sent no saga"))?,
            Err(s) if is_transport_failure(&s) || s.code() == Code::DeadlineExceeded => {
                return Err(CliError::new(format!(
                    "{}; the message may have been sent: run the same command again, it will not be sent twice",
                    self.client.error(&s, Service::Saga, op)
                )))
            }
            Err(s) if s.code() == Code::Unavailable => match saga_id(&s) {
                Some(id) => {
                    say(&format!(
                        "Accepted, still in progress: saga {id} ({}). Run the same command again to see how it ended; it will not be sent twice.",
                        s.message().trim()
                    ));
                    return Ok(());
                }
                None => return Err(self.client.error(&s, Service::Saga, op)),
            },
            Err(s) => {
                pending.forget(&what);
                return Err(self.client.error(&s, Service::Saga, op));
            }
        };
        report_saga(chat_id, &saga, &pending, &what)
    }

    async fn history(&mut self, chat_id: i64, n: u32) -> Result<(), CliError> {
        // 0 used to show one message. It is not "all" either (a chat's whole history can
        // be long): say what the number means.
        if n == 0 {
            return Err(CliError::new(format!(
                "history {chat_id} 0: <n> is how many of the latest messages to show, at least 1 (default 20)"
            )));
        }
        let mut wanted = n as usize;
        let mut before_seq = 0;
        let mut newest_first = Vec::new();
        while wanted > 0 {
            let page_size = wanted.min(500) as i32;
            let page = self
                .client
                .chat_call(
                    Op::Chat(chat_id),
                    ListMessagesRequest {
                        chat_id,
                        page_size,
                        after_seq: 0,
                        before_seq,
                    },
                    |mut c, r| async move { c.list_messages(r).await },
                )
                .await?;
            wanted = wanted.saturating_sub(page.messages.len());
            if let Some(last) = page.messages.last() {
                before_seq = last.seq;
            }
            let done = !page.has_more || page.messages.is_empty();
            newest_first.extend(page.messages);
            if done {
                break;
            }
        }
        if newest_first.is_empty() {
            say(&format!("No messages in chat {chat_id} yet."));
        }
        for m in newest_first.iter().rev() {
            say(&message_line(m));
        }
        Ok(())
    }
}

/// Says how a saga the orchestrator answered with stands: stored and notified, stored
/// and still notifying, or not delivered. The idempotency key is kept only while the saga
/// runs, so that running the command again asks about the same saga.
fn report_saga(
    chat_id: i64,
    saga: &sagapb::Saga,
    pending: &PendingSends,
    what: &str,
) -> Result<(), CliError> {
    match sagapb::SagaState::try_from(saga.state) {
        Ok(sagapb::SagaState::Completed) => {
            pending.forget(what);
            say(&format!(
                "Sent to chat {chat_id} (message #{}); members notified.",
                saga.message_seq
            ));
            Ok(())
        }
        Ok(sagapb::SagaState::Running) => {
            say(&format!(
                "Sent to chat {chat_id} (message #{}); notifying members (saga {}).",
                saga.message_seq, saga.id
            ));
            Ok(())
        }
        _ => {
            pending.forget(what);
            Err(CliError::of(
                ErrorKind::Refused,
                format!(
                    "message not delivered: {}",
                    if saga.error.is_empty() {
                        "the saga failed"
                    } else {
                        &saga.error
                    }
                ),
            ))
        }
    }
}

/// A role as the CLI shows it.
fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Admin) => "admin",
        Ok(Role::Service) => "service",
        _ => "user",
    }
}

/// `register`'s two words in our order, email first, whichever order they were typed in:
/// the original CLI took `register <name> <email> ...`. An email always has an '@' and a
/// username never does (`Username::parse`), so the order is never ambiguous; anything
/// else is left as typed for the server to judge.
fn email_first(first: String, second: String) -> (String, String) {
    if !first.contains('@') && second.contains('@') {
        (second, first)
    } else {
        (first, second)
    }
}

#[cfg(test)]
mod tests {
    use super::email_first;

    #[test]
    fn register_takes_the_name_first_too() {
        let ours = ("alice@example.com".to_owned(), "alice".to_owned());
        assert_eq!(
            email_first("alice".into(), "alice@example.com".into()),
            ours
        );
        assert_eq!(
            email_first("alice@example.com".into(), "alice".into()),
            ours
        );
        // Two emails, or none: as typed, and the server says which field is wrong.
        assert_eq!(
            email_first("a@x.org".into(), "b@x.org".into()),
            ("a@x.org".to_owned(), "b@x.org".to_owned())
        );
    }
}

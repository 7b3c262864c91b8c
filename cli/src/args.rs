//! The command line, declared once with clap for both ways of using `chat`.
//!
//! `chat <command> ...` runs one command and exits; `chat` alone opens a prompt where the
//! same commands are typed as lines. Both parse with the one [`Command`] enum, so a command
//! behaves and is documented the same in either place. The `///` comments are the help text.

use clap::{Args, Parser, Subcommand};

/// Terminal client for grpc-chat.
///
/// Run a command once (`chat login alice@example.com`), or run `chat` alone for a prompt
/// where the same commands are typed (`help` lists them).
#[derive(Debug, Parser)]
#[command(name = "chat", version)]
pub struct Cli {
    /// Where the services are.
    #[command(flatten)]
    pub servers: ServerArgs,
    /// Start a trace for each command, which the services' work for it joins; prints the
    /// trace id. With OTEL_EXPORTER_OTLP_ENDPOINT set, the command is exported as the
    /// trace's root span.
    #[arg(long, env = "CHAT_TRACE", global = true)]
    pub trace: bool,
    /// The command to run once; none opens the prompt.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Where the services are.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The chat server: every service when they share one address (as `chat-server` does),
    /// otherwise the chat service. `host:port` or `http(s)://host:port`.
    #[arg(
        long,
        env = "CHAT_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,

    /// The auth service, when it is not at --server.
    #[arg(long, env = "CHAT_AUTH_SERVER", global = true)]
    pub auth_server: Option<String>,

    /// The saga orchestrator (used by send_message), when it is not at --server.
    #[arg(long, env = "CHAT_SAGA_SERVER", global = true)]
    pub saga_server: Option<String>,

    /// Use TLS even when an address does not start with https:// (an address on port 443
    /// uses TLS anyway).
    #[arg(long, env = "CHAT_TLS", global = true)]
    pub tls: bool,

    /// PEM file of a certificate authority to trust for TLS server addresses, besides the
    /// system's: for a server whose certificate a private CA signed.
    #[arg(long, env = "CHAT_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
}

/// A command, typed at the prompt or given on the command line.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Create an account (asks for the password when it is not given). The original CLI's
    /// order, `register <username> <email> [password]`, works too: an email has an '@' and
    /// a username cannot.
    Register {
        /// For example alice@example.com.
        email: String,
        /// 3 to 32 letters, digits, '_', '.', '-'.
        username: String,
        /// 8 to 72 bytes; asked for without echo when omitted.
        password: Option<String>,
        /// The original CLI's role: a role is never chosen at registration (an operator
        /// grants admin on the server), so it is refused with the form to use.
        #[arg(hide = true)]
        role: Option<String>,
    },

    /// Log in and keep the session for later commands (asks for the password when it is
    /// not given).
    Login {
        /// Your account's email address.
        email: String,
        /// Asked for without echo when omitted.
        password: Option<String>,
    },

    /// Show that an access token is ready, renewing it when it is about to expire. Never
    /// needed: every command does this by itself. Kept for the original CLI's users.
    #[command(name = "get_access", alias = "get-access")]
    GetAccess,

    /// End the session on the server and forget it here.
    Logout,

    /// Show who is logged in, as the server knows the account (role included).
    Whoami,

    /// List the accounts (administrators only), optionally only those whose username or
    /// email starts with <prefix>.
    Users {
        /// Only accounts whose username or email starts with this.
        prefix: Option<String>,
    },

    /// Change your password (asks for both when they are not given). Every other session
    /// of your account is logged out; this one stays logged in.
    Passwd {
        /// Your current password; asked for without echo when omitted.
        current: Option<String>,
        /// The new password, 8 to 72 bytes; asked for (twice) without echo when omitted.
        new: Option<String>,
    },

    /// Delete your account for good (asks for your password when it is not given). Your
    /// sessions end; messages you sent stay.
    #[command(name = "delete_account", alias = "delete-account")]
    DeleteAccount {
        /// Your current password; asked for without echo when omitted.
        password: Option<String>,
    },

    /// Create a chat with you and the given users (usernames or emails, comma-separated).
    #[command(name = "create_chat", alias = "create-chat")]
    CreateChat {
        /// For example `bob,carol@example.com`.
        members: String,
        /// Optional title (the rest of the line).
        title: Vec<String>,
    },

    /// Delete a chat you created, with all its messages.
    #[command(name = "delete_chat", alias = "delete-chat")]
    DeleteChat {
        /// The chat's number, as `chats` shows it (`#3`).
        chat_id: i64,
    },

    /// List your chats, most recently active first, with how many messages in each you
    /// have not read (others' messages after your read marker: see `mark_read`).
    #[command(alias = "list")]
    Chats,

    /// List the members of a chat.
    Members {
        /// The chat's number, as `chats` shows it (`#3`).
        chat_id: i64,
    },

    /// Add users to a chat you are in (usernames or emails, comma-separated).
    Invite {
        /// The chat's number, as `chats` shows it (`#3`).
        chat_id: i64,
        /// For example `dave,erin@example.com`.
        members: String,
    },

    /// Remove a member from a chat (its owner or an administrator may); the member's open
    /// `connect` ends at once.
    Kick {
        /// The chat's number, as `chats` shows it (`#3`).
        chat_id: i64,
        /// The member's username (as `members` shows it) or user id.
        member: String,
    },

    /// Leave a chat. When you own it, the member who joined earliest owns it after you;
    /// when you are the last member, the chat is deleted.
    Leave {
        /// The chat's number, as `chats` shows it (`#3`).
        chat_id: i64,
    },

    /// Send a message through the saga orchestrator; <from> (your email or username) must
    /// be you. Members are notified by email.
    #[command(name = "send_message", alias = "send-message")]
    SendMessage {
        /// The chat's number, as `chats` shows it (`#3`).
        chat_id: i64,
        /// Your email or username.
        from: String,
        /// The text (the rest of the line).
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        text: Vec<String>,
    },

    /// Send a message to a chat as yourself.
    Send {
        /// The chat's number, as `chats` shows it (`#3`).
        chat_id: i64,
        /// The text (the rest of the line).
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        text: Vec<String>,
    },

    /// Replace the text of a message you sent (its number is the one `send` printed, or
    /// `history` shows). The server allows it for a while after sending (15 minutes by
    /// default); history then shows the message as "(edited)".
    #[command(name = "edit_message", visible_alias = "edit", alias = "edit-message")]
    EditMessage {
        /// The chat's number, as `chats` shows it (`#3`).
        chat_id: i64,
        /// The message's number in the chat.
        seq: i64,
        /// The new text (the rest of the line).
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        text: Vec<String>,
    },

    /// Mark a chat read up to message <seq> (default: its newest message), so that `chats`
    /// counts only the messages after it as unread. `connect` does this by itself for the
    /// messages it shows. A marker never moves back: an older <seq> changes nothing.
    #[command(name = "mark_read", alias = "mark-read", alias = "read")]
    MarkRead {
        /// The chat's number, as `chats` shows it (`#3`).
        chat_id: i64,
        /// The newest message you have read (its number in the chat); default: the latest.
        seq: Option<i64>,
    },

    /// Show a chat's recent history, then new messages as they arrive. Lines you type are
    /// sent to the chat; /leave or Ctrl-C returns. A dropped connection is resumed by itself.
    Connect {
        /// The chat's number, as `chats` shows it (`#3`).
        chat_id: i64,
        /// How many earlier messages to show first (0: none, only new ones).
        #[arg(long, default_value_t = 20)]
        history: u32,
    },

    /// Show the last <n> messages of a chat, oldest first.
    History {
        /// The chat's number, as `chats` shows it (`#3`).
        chat_id: i64,
        /// How many of the latest messages: 1 or more.
        #[arg(default_value_t = 20)]
        n: u32,
    },
}

impl Command {
    /// The command's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Register { .. } => "register",
            Command::Login { .. } => "login",
            Command::GetAccess => "get_access",
            Command::Logout => "logout",
            Command::Whoami => "whoami",
            Command::Users { .. } => "users",
            Command::Passwd { .. } => "passwd",
            Command::DeleteAccount { .. } => "delete_account",
            Command::CreateChat { .. } => "create_chat",
            Command::DeleteChat { .. } => "delete_chat",
            Command::Chats => "chats",
            Command::Members { .. } => "members",
            Command::Invite { .. } => "invite",
            Command::Kick { .. } => "kick",
            Command::Leave { .. } => "leave",
            Command::SendMessage { .. } => "send_message",
            Command::Send { .. } => "send",
            Command::EditMessage { .. } => "edit_message",
            Command::MarkRead { .. } => "mark_read",
            Command::Connect { .. } => "connect",
            Command::History { .. } => "history",
        }
    }
}

/// A line typed at the prompt: a command, or `exit`.
#[derive(Debug, Parser)]
#[command(
    name = "",
    no_binary_name = true,
    disable_version_flag = true,
    help_template = "Commands:\n{subcommands}\n\nType `help <command>` for its options."
)]
pub struct PromptLine {
    /// The command on the line.
    #[command(subcommand)]
    pub command: PromptCommand,
}

/// What a prompt line may say: any [`Command`], or `exit`.
#[derive(Debug, Subcommand)]
pub enum PromptCommand {
    /// A command, as on the command line.
    #[command(flatten)]
    Run(Command),
    /// Leave the prompt.
    #[command(alias = "quit")]
    Exit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        PromptLine::command().debug_assert();
    }

    #[test]
    fn rest_of_line_arguments() {
        let line = PromptLine::try_parse_from(["create_chat", "bob,carol", "Weekend", "plans"])
            .expect("parse");
        match line.command {
            PromptCommand::Run(Command::CreateChat { members, title }) => {
                assert_eq!(members, "bob,carol");
                assert_eq!(title.join(" "), "Weekend plans");
            }
            other => panic!("unexpected {other:?}"),
        }
        let line = PromptLine::try_parse_from(["edit", "3", "7", "new", "words"]).expect("parse");
        assert!(matches!(
            line.command,
            PromptCommand::Run(Command::EditMessage { chat_id: 3, seq: 7, ref text }) if text.join(" ") == "new words"
        ));
        let line = PromptLine::try_parse_from(["send", "3", "-1", "is", "fine"]).expect("parse");
        assert!(matches!(
            line.command,
            PromptCommand::Run(Command::Send { chat_id: 3, ref text }) if text.join(" ") == "-1 is fine"
        ));
    }
}

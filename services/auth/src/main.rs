//! `auth-service` serves AuthService; `auth-service migrate` only applies the migrations
//! and exits (for a Kubernetes Job that runs before a new version's pods);
//! `auth-service admin grant|revoke EMAIL` makes an account an administrator (or a user
//! again) in the users database and exits: the only way anyone becomes an administrator.
use auth_service::{admin::AdminAction, Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("admin") {
        let (Some(action), Some(email), None) = (
            args.get(1).and_then(|a| AdminAction::parse(a)),
            args.get(2),
            args.get(3),
        ) else {
            anyhow::bail!("usage: auth-service admin grant|revoke EMAIL");
        };
        chat_common::config::load_dotenv();
        let config = Config::from_env()?;
        let done = auth_service::admin::set_role(&config.database.url, action, email).await?;
        println!("{done}");
        return Ok(());
    }
    chat_common::binary::run(
        "auth-service",
        Config::from_env,
        |config| async move { auth_service::migrate(&config).await },
        |config, shutdown| async move {
            Application::build(config, shutdown.clone())
                .await?
                .run_until_stopped(shutdown)
                .await
        },
    )
    .await
}

//! The `latchkey` binary: parse the command line, set up logging, dispatch.
//! The only place that turns an error into a message and an exit code.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;

use latchkey::app::App;
use latchkey::cli::{Cli, Command, CommonArgs, ServeArgs, UserCommand};
use latchkey::clock::system_millis;
use latchkey::config::{self, Argon2Costs, ServeConfig};
use latchkey::passwords::{Password, Passwords};
use latchkey::store::redb::RedbStore;
use latchkey::store::Store;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.common.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(&cli.common, &args).await,
            Command::User(command) => user_command(&cli.common, command).await,
            Command::Bench(args) if args.populate => {
                latchkey::bench::populate(&cli.common, &args).await
            }
            Command::Bench(args) => latchkey::bench::run(&args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("latchkey: error: {message}");
    ExitCode::FAILURE
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn serve(common: &CommonArgs, args: &ServeArgs) -> Result<(), BoxError> {
    let config = ServeConfig::from_args(common, args)?;
    latchkey::store::folder::warn_if_data_folder_is_shared(&config.data);
    let address = format!("{}:{}", config.bind, config.port);
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let app: Arc<App> = App::start(config).await?;
    let local = listener.local_addr()?;
    tracing::info!("latchkey listening on http://{local}");
    latchkey::server::serve(listener, app, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

async fn open_store(common: &CommonArgs) -> Result<RedbStore, BoxError> {
    let (store, _) = RedbStore::open_at(&config::store_location(common)).await?;
    Ok(store)
}

async fn user_command(common: &CommonArgs, command: UserCommand) -> Result<(), BoxError> {
    match command {
        UserCommand::Add { email, name, role } => add_user(common, &email, &name, role).await,
        UserCommand::List { json } => list_users(common, json).await,
        UserCommand::Remove { email } => remove_user(common, &email).await,
    }
}

/// `user add`: the password comes from stdin or a prompt, never a flag.
async fn add_user(common: &CommonArgs, email: &str, name: &str, role: i64) -> Result<(), BoxError> {
    let email = latchkey::credentials::normalize_email(email)
        .ok_or("--email is not a valid email address")?;
    if name.trim().is_empty() {
        return Err("--name must not be empty".into());
    }
    let passwords = Passwords::new(Argon2Costs::from_args(common)?, 1, 1)?;
    let store = open_store(common).await?;
    let password = read_new_password()?;
    let created = latchkey::auth::create_user(
        &store,
        &passwords,
        &email,
        name,
        role,
        password,
        system_millis(),
    )
    .await?;
    match created {
        Some(user) => println!(
            "added user {} <{}> with role {}",
            user.id, user.email, user.role_id
        ),
        None => return Err(format!("a user with email {email} already exists").into()),
    }
    Ok(())
}

/// `user list`: a table, or one JSON object a line; never a hash.
async fn list_users(common: &CommonArgs, json: bool) -> Result<(), BoxError> {
    let store = open_store(common).await?;
    let users = store.list_users().await?;
    if json {
        for user in &users {
            let line = serde_json::json!({
                "id": user.id.to_string(), "email": user.email, "name": user.name,
                "role_id": user.role_id, "createdAt": user.created_at / 1000,
            });
            println!("{line}");
        }
    } else {
        println!("{:<8} {:<32} {:<24} ROLE", "ID", "EMAIL", "NAME");
        for user in &users {
            println!(
                "{:<8} {:<32} {:<24} {}",
                user.id, user.email, user.name, user.role_id
            );
        }
    }
    Ok(())
}

/// `user remove`: the user and all of their sessions.
async fn remove_user(common: &CommonArgs, email: &str) -> Result<(), BoxError> {
    let email = latchkey::credentials::normalize_email(email)
        .ok_or("--email is not a valid email address")?;
    let store = open_store(common).await?;
    match store.remove_user(&email).await? {
        Some(user) => println!(
            "removed user {} <{}> and revoked their sessions",
            user.id, user.email
        ),
        None => return Err(format!("no user with email {email}").into()),
    }
    Ok(())
}

/// Reads a new password: prompted twice (without echo) on a terminal,
/// otherwise one line from stdin without its line ending.
fn read_new_password() -> Result<Password, BoxError> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let second = rpassword::prompt_password("Repeat password: ")?;
        if first != second {
            return Err("the passwords do not match".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        line.strip_suffix('\r').unwrap_or(line).to_string()
    };
    latchkey::credentials::check_new_password(&password)?;
    Ok(Password::new(password))
}

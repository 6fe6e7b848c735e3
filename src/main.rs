//! The `latchkey` binary: parse the command line, set up logging, dispatch.
//! The only place that turns an error into a message and an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;

use latchkey::admin_socket::AdminSocket;
use latchkey::app::App;
use latchkey::cli::{Cli, Command, CommonArgs, LogFormat, ServeArgs};
use latchkey::commands;
use latchkey::config::ServeConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.common.log, cli.common.log_format);
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
            Command::User(command) => commands::user_command(&cli.common, command).await,
            Command::Session(command) => commands::session_command(&cli.common, command).await,
            Command::Keys(command) => commands::keys_command(&cli.common, command).await,
            Command::Backup { out } => commands::backup(&cli.common, &out).await,
            Command::Bench(args) if args.populate => {
                latchkey::bench::populate(&cli.common, &args).await
            }
            Command::Bench(args) => latchkey::bench::run(&args).await,
            Command::Migrate => commands::migrate(&cli.common).await,
            Command::Store(latchkey::cli::StoreCommand::Copy { from, to, replace }) => {
                commands::store_copy(&cli.common, &from, &to, replace).await
            }
            Command::Completions { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut command, "latchkey", &mut std::io::stdout());
                Ok(())
            }
            Command::Man => man_page().map_err(BoxError::from),
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

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn serve(common: &CommonArgs, args: &ServeArgs) -> Result<(), BoxError> {
    let config = ServeConfig::from_args(common, args)?;
    latchkey::store::folder::warn_if_data_folder_is_shared(&config.data);
    let address = format!("{}:{}", config.bind, config.port);
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let admin_socket = match &config.admin_socket {
        Some(path) => AdminSocket::bind(path, config.admin_socket_explicit).await?,
        None => None,
    };
    let metrics_listener = match &config.metrics_bind {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|e| format!("cannot listen on --metrics-bind {address}: {e}"))?,
        ),
        None => None,
    };
    let app: Arc<App> = App::start(config).await?;
    let local = listener.local_addr()?;
    let metrics = match metrics_listener {
        Some(metrics_listener) => {
            tracing::info!(
                "metrics on http://{}/metrics",
                metrics_listener.local_addr()?
            );
            Some(tokio::spawn(latchkey::server::serve_metrics(
                metrics_listener,
                Arc::clone(&app),
            )))
        }
        None => None,
    };
    let admin = admin_socket.map(|socket| {
        tracing::info!(path = %socket.path().display(), "admin socket open");
        tokio::spawn(socket.serve(Arc::clone(&app)))
    });
    tracing::info!("latchkey listening on http://{local}");
    latchkey::server::serve(listener, app, shutdown_signal()).await?;
    if let Some(admin) = admin {
        admin.abort();
        let _ = admin.await;
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The man page: the whole command, then every subcommand's (and their
/// subcommands') synopsis, description and options, all from the clap
/// definitions.
fn man_page() -> std::io::Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    render_subcommands(&command, "latchkey", &mut out)
}

fn render_subcommands(
    command: &clap::Command,
    prefix: &str,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    for sub in command.get_subcommands() {
        let name = format!("{prefix} {}", sub.get_name());
        let man = clap_mangen::Man::new(sub.clone().bin_name(name.clone()));
        man.render_name_section(out)?;
        man.render_synopsis_section(out)?;
        man.render_description_section(out)?;
        man.render_options_section(out)?;
        render_subcommands(sub, &name, out)?;
    }
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

//! `alps-server`: the binary edge of `alps-core` (configuration, logging, runtime, exit code).

use std::process::ExitCode;

use alps_core::{
    auth::{Role, tokens},
    config::{Cli, Command, ServerConfig, TokenCommand},
    engine::device::{DeviceReport, forward_check},
    server::Server,
    store::{
        self, DataDir,
        blobs::BlobStore,
        catalog::Catalog,
        objects::{Kind, Objects},
        postgres::PostgresCatalog,
        sqlite::SqliteCatalog,
    },
};
use alps_runtime::Shutdown;
use anyhow::Context;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.server),
        Command::SelfCheck => self_check(),
        Command::Token(TokenCommand::Create { role, name, tokens_file }) => create_token(role, &name, &tokens_file),
        Command::Migrate { from_data_dir, database_url, database_ca_file, object_store_url } => {
            let database = (database_url.expose(), database_ca_file.as_deref());
            migrate(&from_data_dir, database, object_store_url.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => alps_runtime::fatal("alps-server", error.as_ref()),
    }
}

fn serve(config: ServerConfig) -> anyhow::Result<()> {
    alps_runtime::init_logging(config.log_format);
    let executable = std::env::current_exe().context("cannot locate the alps-server executable")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking tasks run libtorch too (heuristics, model loads): their threads keep the
        // process's intra-op count whatever a training job sets (see `engine::device`).
        .on_thread_start(|| {
            alps_core::engine::device::intra_op_threads();
        })
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let shutdown = Shutdown::on_signals().context("cannot install signal handlers")?;
        let server = Server::bind(&config, &executable).await?;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            grpc = %server.grpc_addr()?,
            http = %server.http_addr()?,
            metrics = %server.metrics_addr()?,
            "listening"
        );
        server.run(shutdown, config.shutdown_grace()).await?;
        Ok(())
    })
}

fn create_token(role: Role, name: &str, tokens_file: &std::path::Path) -> anyhow::Result<()> {
    let token = tokens::create(tokens_file, role, name)?;
    eprintln!("token {name:?} ({role}) added to {}; it is shown once:", tokens_file.display());
    println!("{token}");
    Ok(())
}

/// `alps-server migrate`; `database` is the URL and the CA file of `--database-ca-file`.
fn migrate(
    data_dir: &std::path::Path,
    database: (&str, Option<&std::path::Path>),
    object_store_url: Option<&str>,
) -> anyhow::Result<()> {
    let file = data_dir.join("alps.db");
    anyhow::ensure!(file.is_file(), "no catalogue to migrate: {} is not a file", file.display());
    // Holding the data dir's lock: no server changes the catalogue while it is copied.
    let data_dir = DataDir::open(data_dir)?;
    let source = SqliteCatalog::open(&data_dir.database_path())?;
    let target = PostgresCatalog::open(database.0, database.1).context("cannot open the database (--database-url)")?;
    let objects = object_store_url.map(Objects::open).transpose()?;
    let (source_id, target_id) = (source.identity()?, target.identity()?);
    // Where the database's files will be: the object store, or this data dir.
    let files_id = match &objects {
        Some(objects) => objects.id().context("cannot reach the object store (--object-store-url)")?,
        None => data_dir.id()?,
    };
    // A data dir moved to a database serves that one only: its samples and model files are
    // collected against it from now on. A rerun into the same database is allowed.
    match data_dir.bound_catalogue()? {
        Some(bound) if bound == target_id && target.data_dir()?.is_some_and(|files| files != files_id) => {
            anyhow::bail!(
                "nothing migrated: data dir {} was moved to this database before, with its files kept {}; moving \
                 them afterwards is not supported: serve it as it was moved",
                data_dir.path().display(),
                if objects.is_some() { "in the data dir" } else { "in an object store" }
            )
        }
        // Moved before: a server may have changed the target since (deleted examples would
        // come back), so nothing is copied again.
        Some(bound) if bound == target_id => {
            println!(
                "already migrated: data dir {} belongs to this database; nothing copied",
                data_dir.path().display()
            );
            return Ok(());
        }
        Some(bound) if bound != source_id => anyhow::bail!(
            "data dir {} was moved to another database (catalogue {bound}); it is served with that database",
            data_dir.path().display()
        ),
        _ => {}
    }
    // The database's files must be these from now on: refused if another data dir or store
    // holds them, or if the database already serves projects (this data dir's could bring back
    // what was deleted there). An interrupted run finds it bound to these files.
    let empty = || anyhow::Ok(target.projects()?.is_empty());
    match target.data_dir()? {
        Some(bound) if bound != files_id => anyhow::bail!(
            "nothing migrated: the database belongs with another data dir or object store (id {bound}); migrate \
             into an empty database"
        ),
        None if !empty()? => {
            anyhow::bail!("nothing migrated: the database already holds projects; migrate into an empty database")
        }
        _ => {}
    }
    if let Some(bound) = objects.as_ref().map(|o| o.bind_catalogue(&target_id)).transpose()?.flatten() {
        anyhow::bail!(
            "nothing migrated: the object store holds the files of another catalogue ({bound}); give each database \
             its own bucket or prefix"
        );
    }
    let (blobs, versions) = check_files(&source, &data_dir)?;
    if let Some(objects) = &objects {
        copy_files(&source, &data_dir, objects)?;
    }
    if let Some(bound) = target.bind_data_dir(&files_id)? {
        anyhow::bail!("nothing migrated: another data dir or object store (id {bound}) took the database meanwhile");
    }
    let migrated = store::migrate::migrate(&source, &target)?;
    data_dir.rebind_catalogue(&target_id)?;
    println!(
        "migrated {}, {}, {}, {} into PostgreSQL; verified ({} and {} checked against their sha256)",
        counted(migrated.projects, "project"),
        counted(migrated.examples, "labelled example"),
        counted(migrated.versions, "model version"),
        counted(migrated.jobs, "training job"),
        counted(blobs as u64, "sample blob"),
        counted(versions as u64, "model version"),
    );
    if migrated.unreadable_jobs > 0 {
        println!(
            "left behind {} whose records another alps-server build wrote (this one cannot read them)",
            counted(migrated.unreadable_jobs, "training job")
        );
    }
    match object_store_url {
        Some(url) => println!(
            "copied and read back {} and the weights of {} in {url}; serve them with: alps-server --data-dir {} \
             --database-url <the same URL> --object-store-url {url}",
            counted(blobs as u64, "sample blob"),
            counted(versions as u64, "model version"),
            data_dir.path().display()
        ),
        None => println!(
            "serve them with: alps-server --data-dir {} --database-url <the same URL>",
            data_dir.path().display()
        ),
    }
    Ok(())
}

/// `count` and `thing`, plural unless one: "1 project", "3 projects".
fn counted(count: u64, thing: &str) -> String {
    if count == 1 { format!("1 {thing}") } else { format!("{count} {thing}s") }
}

/// Copies every sample blob `catalog` references and every model version's weights from
/// `data_dir` into `objects` (objects already there are kept: they are content-addressed), then
/// reads each back, checked against its sha256.
fn copy_files(catalog: &dyn Catalog, data_dir: &DataDir, objects: &Objects) -> anyhow::Result<()> {
    let blobs = BlobStore::open(data_dir.blobs_dir())?;
    let mut copied = Vec::new();
    for sha256 in catalog.referenced_blobs()? {
        objects.put(Kind::Blob, &sha256, blobs.get(&sha256)?).context("nothing migrated: copying sample blobs")?;
        copied.push((Kind::Blob, sha256));
    }
    let models = data_dir.models_dir();
    for project in catalog.projects()? {
        let id = &project.spec.id;
        for version in catalog.versions(id)? {
            let weights = std::fs::read(models.version_dir(id, &version.version).join("weights.safetensors"))?;
            let sha256 = alps_core::digest::sha256_hex(&weights);
            objects.put(Kind::Weights, &sha256, weights).context("nothing migrated: copying model weights")?;
            copied.push((Kind::Weights, sha256));
        }
    }
    for (kind, sha256) in &copied {
        objects.get(*kind, sha256).with_context(|| format!("nothing migrated: {sha256} does not read back"))?;
    }
    Ok(())
}

/// Reads every sample blob `catalog` references and every model version's weights in
/// `data_dir`, checked against their sha256, before anything is copied: the data dir serves
/// the new catalogue with these files. Returns (blobs, versions) checked.
fn check_files(catalog: &dyn Catalog, data_dir: &DataDir) -> anyhow::Result<(usize, usize)> {
    let blobs = BlobStore::open(data_dir.blobs_dir())?;
    let referenced = catalog.referenced_blobs()?;
    for sha256 in &referenced {
        blobs.get(sha256).with_context(|| format!("nothing migrated: sample blob {sha256} is unusable"))?;
    }
    let models = data_dir.models_dir();
    let mut versions = 0;
    for project in catalog.projects()? {
        let id = &project.spec.id;
        for version in catalog.versions(id)? {
            alps_core::models::verify_version(&models.version_dir(id, &version.version)).with_context(|| {
                format!("nothing migrated: model version {} of project {id} is unusable", version.version)
            })?;
            versions += 1;
        }
    }
    Ok((referenced.len(), versions))
}

fn self_check() -> anyhow::Result<()> {
    println!("alps-server {}", env!("CARGO_PKG_VERSION"));
    let report = DeviceReport::probe();
    println!("{report}");
    let check = forward_check(report.device).with_context(|| format!("forward pass on {:?} failed", report.device))?;
    println!("forward pass on {:?}: softmax([1, 2, 3] · W) = {:?}", check.device, check.probabilities);
    println!("self-check: ok");
    Ok(())
}

//! Schemas: register a file, list subjects, check a file's compatibility.

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum SchemaCommand {
    /// Register an .avsc file under a subject (fails when incompatible).
    Register {
        subject: String,
        file: std::path::PathBuf,
    },
    /// Every subject with its latest version and schema id.
    List,
    /// Check an .avsc file against the subject's latest version (exit 1 when incompatible).
    Check {
        file: std::path::PathBuf,
        #[arg(long, default_value = "products-value")]
        subject: String,
    },
}

pub async fn run(command: SchemaCommand, registry: &str) -> anyhow::Result<()> {
    let registry = registry.trim_end_matches('/');
    match command {
        SchemaCommand::Register { subject, file } => {
            let body = call(
                registry,
                reqwest::Method::POST,
                &format!("/subjects/{subject}/versions"),
                Some(read(&file)?),
            )
            .await?;
            println!("{subject} registered with id {}", body["id"]);
        }
        SchemaCommand::List => {
            let subjects = call(registry, reqwest::Method::GET, "/subjects", None).await?;
            for subject in subjects
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let latest = call(
                    registry,
                    reqwest::Method::GET,
                    &format!("/subjects/{subject}/versions/latest"),
                    None,
                )
                .await?;
                println!(
                    "{}",
                    json!({"subject": subject, "version": latest["version"], "id": latest["id"]})
                );
            }
        }
        SchemaCommand::Check { file, subject } => {
            let path = format!("/compatibility/subjects/{subject}/versions/latest?verbose=true");
            let body = call(registry, reqwest::Method::POST, &path, Some(read(&file)?)).await?;
            if body["is_compatible"] == true {
                println!("{} is compatible with {subject} (latest)", file.display());
            } else {
                eprintln!(
                    "{} is NOT compatible with {subject} (latest): {}",
                    file.display(),
                    body["messages"]
                );
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

fn read(file: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

async fn call(
    registry: &str,
    method: reqwest::Method,
    path: &str,
    schema: Option<String>,
) -> anyhow::Result<Value> {
    let mut request = reqwest::Client::new()
        .request(method, format!("{registry}{path}"))
        .header("accept", "application/vnd.schemaregistry.v1+json");
    // Registering needs an admin token (FOLDLINE_REGISTRY_TOKEN, or signed with the
    // producer's FOLDLINE_JWT_SECRET); reads go without.
    let secret = std::env::var("FOLDLINE_JWT_SECRET").ok();
    if let Some(token) = foldline_schemas::wire::registry_token("foldline-cli", secret.as_deref()) {
        request = request.bearer_auth(token);
    }
    if let Some(schema) = schema {
        request = request
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .json(&json!({"schema": schema}));
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("the schema registry at {registry} did not answer"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{path}: the registry answered {status}: {}",
            body["message"]
        );
    }
    Ok(body)
}

//! `foldline token mint`: signs an HS256 token with the producer's secret, for local use and
//! scripts (`scripts/up` writes `.foldline/admin.token` with it).

use jsonwebtoken::{encode, EncodingKey, Header};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Seller,
}

#[derive(clap::Args, Debug)]
pub struct MintArgs {
    /// `admin` may act on any product; `seller` only on its own seller id's products.
    #[arg(long, value_enum)]
    role: Role,
    /// The seller id (required for `--role seller`).
    #[arg(long)]
    seller_id: Option<String>,
    /// The subject (`sub`); default: the role, or `seller:<id>`.
    #[arg(long)]
    sub: Option<String>,
    /// Hours until it expires.
    #[arg(long, default_value_t = 24)]
    ttl_hours: i64,
    /// `iss` claim, if the producer requires one.
    #[arg(long, env = "FOLDLINE_JWT_ISSUER")]
    issuer: Option<String>,
    /// `aud` claim, if the producer requires one.
    #[arg(long, env = "FOLDLINE_JWT_AUDIENCE")]
    audience: Option<String>,
    /// The producer's HS256 secret.
    #[arg(long, env = "FOLDLINE_JWT_SECRET", hide_env_values = true)]
    secret: String,
}

pub fn mint(args: MintArgs) -> anyhow::Result<()> {
    let (role, subject) = match args.role {
        Role::Admin => ("admin", args.sub.unwrap_or_else(|| "admin".into())),
        Role::Seller => {
            let Some(seller) = args.seller_id.as_deref().filter(|s| !s.trim().is_empty()) else {
                anyhow::bail!("--role seller needs --seller-id");
            };
            (
                "seller",
                args.sub.unwrap_or_else(|| format!("seller:{seller}")),
            )
        }
    };
    anyhow::ensure!(args.ttl_hours > 0, "--ttl-hours must be positive");
    let now = chrono::Utc::now().timestamp();
    let mut claims = serde_json::json!({
        "sub": subject, "role": role, "iat": now, "exp": now + args.ttl_hours * 3600,
    });
    if let Some(seller) = &args.seller_id {
        claims["seller_id"] = seller.clone().into();
    }
    if let Some(issuer) = args.issuer {
        claims["iss"] = issuer.into();
    }
    if let Some(audience) = args.audience {
        claims["aud"] = audience.into();
    }
    let token = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(args.secret.as_bytes()),
    )?;
    println!("{token}");
    Ok(())
}

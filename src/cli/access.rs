//! `deckhand keys …`, `deckhand policy …`, `deckhand audit` (issue #18):
//! stored AccessKeys, their policies and the audit trail, through the
//! hub's deckhand extensions (docs/permissions.md). The secret of a new
//! key is printed once, by `keys create`.

use std::path::PathBuf;

use serde_json::Value;

use super::show::{all_pages, s};
use super::{Cli, CliError};

#[derive(Debug, clap::Subcommand)]
pub enum KeysCmd {
    /// Create a key; its secret is printed once and never shown again.
    Create {
        #[arg(long)]
        description: Option<String>,
        /// Policy document (JSON file, `-` for stdin). Without one the key has no access.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// List stored keys (hub.toml keys are not listed: they are full access).
    List,
    /// Refuse every call signed with this key, on every replica, at once.
    Disable {
        key_id: String,
    },
    Enable {
        key_id: String,
    },
    Delete {
        key_id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Replace a key's policy with the document in FILE (`-` for stdin).
    Set { key_id: String, file: PathBuf },
    /// Print a key's policy document.
    Show { key_id: String },
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only calls signed with this key.
    #[arg(long)]
    key: Option<String>,
    /// Only this API action (e.g. RunCommand).
    #[arg(long)]
    action: Option<String>,
    /// RFC 3339 time, inclusive.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    /// Newest events shown (1..=500).
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

fn read_doc(path: &PathBuf) -> Result<String, CliError> {
    let r = if path.as_os_str() == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(path) };
    r.map_err(|source| CliError::Read { path: path.clone(), source })
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn keys(cli: &Cli, cmd: &KeysCmd) -> Result<(), CliError> {
    let client = cli.client()?;
    match cmd {
        KeysCmd::Create { description, policy } => {
            let mut p = Vec::new();
            if let Some(d) = description {
                p.push(("Description", d.clone()));
            }
            if let Some(f) = policy {
                p.push(("PolicyDocument", read_doc(f)?));
            }
            let v = client.call("CreateAccessKey", &p)?;
            if cli.json {
                print_json(&v);
            } else {
                println!("AccessKeyId:     {}\nAccessKeySecret: {}", s(&v, "AccessKeyId"), s(&v, "AccessKeySecret"));
                println!("the secret is shown only now: store it where the key's user will read it");
            }
        }
        KeysCmd::List => {
            let list = all_pages(cli, "DescribeAccessKeys", &[], "AccessKeys", "AccessKey")?;
            if cli.json {
                print_json(&list);
                return Ok(());
            }
            println!("{:<24} {:<9} {:<8} {:<20} DESCRIPTION", "ACCESS KEY ID", "STATUS", "POLICY", "CREATED");
            for k in list {
                let policy = if s(&k, "PolicyDocument").is_empty() { "none" } else { "set" };
                println!(
                    "{:<24} {:<9} {:<8} {:<20} {}",
                    s(&k, "AccessKeyId"),
                    s(&k, "Status"),
                    policy,
                    s(&k, "CreateTime"),
                    s(&k, "Description")
                );
            }
        }
        KeysCmd::Disable { key_id } => {
            client.call("DisableAccessKey", &[("UserAccessKeyId", key_id.clone())])?;
        }
        KeysCmd::Enable { key_id } => {
            client.call("EnableAccessKey", &[("UserAccessKeyId", key_id.clone())])?;
        }
        KeysCmd::Delete { key_id } => {
            client.call("DeleteAccessKey", &[("UserAccessKeyId", key_id.clone())])?;
        }
    }
    Ok(())
}

pub fn policy(cli: &Cli, cmd: &PolicyCmd) -> Result<(), CliError> {
    let client = cli.client()?;
    match cmd {
        PolicyCmd::Set { key_id, file } => {
            client.call("SetAccessKeyPolicy", &[("UserAccessKeyId", key_id.clone()), ("PolicyDocument", read_doc(file)?)])?;
        }
        PolicyCmd::Show { key_id } => {
            let v = client.call("DescribeAccessKeys", &[("UserAccessKeyId", key_id.clone())])?;
            let Some(k) = super::show::items(&v, "AccessKeys", "AccessKey").into_iter().next() else {
                return Err(CliError::Usage(format!("no stored access key {key_id}")));
            };
            let doc = s(k, "PolicyDocument");
            match serde_json::from_str::<Value>(&doc) {
                Ok(parsed) => print_json(&parsed),
                Err(_) => println!("(no policy: the key has no access)"),
            }
        }
    }
    Ok(())
}

pub fn audit(cli: &Cli, a: &AuditArgs) -> Result<(), CliError> {
    let mut p = vec![("MaxResults", a.limit.clamp(1, 500).to_string())];
    for (name, v) in [("UserAccessKeyId", &a.key), ("AuditAction", &a.action), ("StartTime", &a.since), ("EndTime", &a.until)] {
        if let Some(v) = v {
            p.push((name, v.clone()));
        }
    }
    let v = cli.client()?.call("DescribeAuditEvents", &p)?;
    let list = super::show::items(&v, "AuditEvents", "AuditEvent");
    if cli.json {
        print_json(&list);
        return Ok(());
    }
    println!("{:<20} {:<24} {:<16} {:<22} {:<28} {:<26} TARGETS", "TIME", "ACCESS KEY ID", "SOURCE", "ACTION", "OUTCOME", "INVOKE ID");
    for e in list {
        println!(
            "{:<20} {:<24} {:<16} {:<22} {:<28} {:<26} {}",
            s(e, "Time"),
            s(e, "AccessKeyId"),
            s(e, "SourceIp"),
            s(e, "Action"),
            s(e, "Outcome"),
            s(e, "InvokeId"),
            s(e, "Targets")
        );
    }
    Ok(())
}

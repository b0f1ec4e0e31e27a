//! Per-instance `ErrorCode` values and their fixed `ErrorInfo` texts.
//!
//! Names and texts are Alibaba's (DescribeInvocationResults) where one
//! exists; deckhand's own codes (the exec module's
//! `InvalidParameter.*`, the kubelet module's codes) pass through as
//! [`ErrorCode::Other`], bounded in length.

/// Longest error code kept from an agent report; longer ones are cut.
pub const MAX_ERROR_CODE_LEN: usize = 64;

macro_rules! codes {
    ($($var:ident = $s:literal, $info:expr;)+) => {
        /// A per-instance error code.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($var,)+
            /// A code of deckhand's own (documented in docs/api.md), or one
            /// a newer agent sends that this hub does not know by name.
            Other(String),
        }

        impl ErrorCode {
            pub const KNOWN: &'static [&'static str] = &[$($s,)+];

            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$var => $s,)+
                    ErrorCode::Other(s) => s,
                }
            }

            /// Alibaba's fixed `ErrorInfo` for this code, if it has one.
            pub fn fixed_info(&self) -> Option<&'static str> {
                match self {
                    $(ErrorCode::$var => $info,)+
                    ErrorCode::Other(_) => None,
                }
            }

            /// Any name; `""` is no code. `InstanceRestarted` (what a 0.1.0
            /// agent sends for a run its restart interrupted) is read as
            /// `ExecutionInterrupted`.
            pub fn parse(s: &str) -> Option<ErrorCode> {
                Some(match s {
                    "" => return None,
                    "InstanceRestarted" => ErrorCode::ExecutionInterrupted,
                    $($s => ErrorCode::$var,)+
                    other => ErrorCode::Other(other.chars().take(MAX_ERROR_CODE_LEN).collect()),
                })
            }
        }
    };
}

codes! {
    InstanceNotExists = "InstanceNotExists", Some("the specified instance does not exists");
    InstanceReleased = "InstanceReleased", Some("the instance has released when create task");
    InstanceNotRunning = "InstanceNotRunning", Some("the instance is not running when create task");
    CommandNotApplicable = "CommandNotApplicable", Some("the command is not applicable");
    AccountNotExists = "AccountNotExists", Some("the specified account does not exists");
    DirectoryNotExists = "DirectoryNotExists", Some("the specified directory does not exists");
    BadCronExpression = "BadCronExpression", Some("the cron job expression is invalid");
    ClientNotRunning = "ClientNotRunning", Some("the aliyun service is not running on the instance");
    ClientNotResponse = "ClientNotResponse", Some("the aliyun service in the instance does not response");
    ClientIsUpgrading = "ClientIsUpgrading", Some("the aliyun service in the instance is upgrading now");
    ClientNeedUpgrade = "ClientNeedUpgrade", Some("the aliyun service in the instance need upgrade");
    DeliveryTimeout = "DeliveryTimeout", Some("the command delivery has been timeout");
    ExecutionTimeout = "ExecutionTimeout", Some("the command execution has been timeout");
    ExecutionException = "ExecutionException", Some("the command execution got an exception");
    ExecutionInterrupted = "ExecutionInterrupted", Some("the command execution has been interrupted");
    ExitCodeNonzero = "ExitCodeNonzero", Some("the command execution exit code is not zero");
    // SendFile's per-instance codes (DescribeSendFileResults). No fixed
    // text: Alibaba's file ErrorInfo values are not one per code ("Owner
    // not exists" and "Group not exists" share UserGroupNotExists, "Mode
    // is invalid" and "the authority of file is invalid" share
    // FileAuthorityInvalid), so the agent sends Alibaba's text for the
    // case, or the cause where Alibaba only says "unknown error".
    FileCreateFail = "FileCreateFail", None;
    FileAlreadyExists = "FileAlreadyExists", None;
    FileContentInvalid = "FileContentInvalid", None;
    FileNameInvalid = "FileNameInvalid", None;
    FilePathInvalid = "FilePathInvalid", None;
    FileAuthorityInvalid = "FileAuthorityInvalid", None;
    UserGroupNotExists = "UserGroupNotExists", None;
    // deckhand extension (rate control, docs/fleet.md): no Alibaba code
    // exists for a target a halted rollout never started. No fixed text:
    // the stored ErrorInfo gives the counts that stopped the rollout.
    MaxErrorsExceeded = "MaxErrorsExceeded", None;
    // deckhand extension (per-fire windows, docs/fleet.md): a fire of a
    // windowed periodic invocation that never got the hub's grant (no slot
    // before the next fire was due, or the request was refused). No fixed
    // text: the stored ErrorInfo says which.
    FireNotGranted = "FireNotGranted", None;
}

impl ErrorCode {
    /// SendFile's own codes (0.1.0 agents never sent them, so a `Failed`
    /// with one of these is a file delivery's `Failed`).
    pub fn is_file_code(&self) -> bool {
        matches!(
            self,
            ErrorCode::FileCreateFail
                | ErrorCode::FileAlreadyExists
                | ErrorCode::FileContentInvalid
                | ErrorCode::FileNameInvalid
                | ErrorCode::FilePathInvalid
                | ErrorCode::FileAuthorityInvalid
                | ErrorCode::UserGroupNotExists
        )
    }

    /// Codes that say the run could not start on this instance (its type,
    /// account, directory, schedule or a parameter): `Invalid` runs.
    pub fn is_start_failure(&self) -> bool {
        match self {
            ErrorCode::CommandNotApplicable
            | ErrorCode::AccountNotExists
            | ErrorCode::DirectoryNotExists
            | ErrorCode::BadCronExpression => true,
            ErrorCode::Other(s) => s.starts_with("InvalidParameter."),
            _ => false,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ErrorInfo` to show: Alibaba's fixed text where the code has one,
/// otherwise the detail given (which names the deckhand-specific cause).
pub fn error_info<'a>(code: Option<&ErrorCode>, detail: &'a str) -> std::borrow::Cow<'a, str> {
    match code.and_then(ErrorCode::fixed_info) {
        Some(fixed) => fixed.into(),
        None => detail.into(),
    }
}

/// Serde as a plain string, `""` for none: the wire and journal form.
pub mod opt_serde {
    use super::ErrorCode;

    pub fn serialize<S: serde::Serializer>(v: &Option<ErrorCode>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.as_ref().map(ErrorCode::as_str).unwrap_or(""))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ErrorCode>, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        Ok(ErrorCode::parse(&s))
    }
}

//! What an invocation is: its command type and its repeat mode.

use super::codec::named_enum;

named_enum! {
    /// Cloud Assistant's command types, plus deckhand's reserved one.
    pub enum CommandType as "Type" {
        RunShellScript = "RunShellScript",
        RunPowerShellScript = "RunPowerShellScript",
        RunBatScript = "RunBatScript",
        /// deckhand extension: apply kubelet reserved resources (docs/kubelet.md).
        ApplyKubeletReserved = "ApplyKubeletReserved",
        /// The kind of invocation `SendFile` creates (Cloud Assistant keeps
        /// file deliveries apart from commands; so does deckhand: the
        /// command actions refuse this name, `DescribeInvocations` leaves
        /// these out, `DescribeSendFileResults` lists only these).
        SendFile = "SendFile",
    }
}

impl CommandType {
    /// Whether this is a file delivery rather than a command.
    pub fn is_file(self) -> bool {
        self == CommandType::SendFile
    }

    /// A command's `Type` (CreateCommand, RunCommand, a policy): any name
    /// but the file kind, which only the `SendFile` action creates.
    pub fn parse_command(s: &str) -> Result<Self, super::UnknownName> {
        match Self::parse(s) {
            Ok(t) if !t.is_file() => Ok(t),
            _ => {
                let names: Vec<&str> = Self::NAMES.iter().copied().filter(|n| *n != CommandType::SendFile.as_str()).collect();
                Err(super::UnknownName::new("Type", s, &names))
            }
        }
    }
}

named_enum! {
    /// `RepeatMode` as the Cloud Assistant API spells it.
    pub enum RepeatMode as "RepeatMode" {
        /// Run once, now.
        Once = "Once",
        /// Run on the `Frequency` schedule.
        Period = "Period",
        /// Run once, after the next boot of the instance.
        NextRebootOnly = "NextRebootOnly",
        /// Run after every boot of the instance.
        EveryReboot = "EveryReboot",
    }
}

impl RepeatMode {
    /// Whether the mode stays armed for further fires until stopped (its
    /// runs do not end the invocation).
    pub fn is_repeating(self) -> bool {
        matches!(self, RepeatMode::Period | RepeatMode::EveryReboot)
    }

    /// Whether an invocation's runs leave its target armed: a repeating
    /// mode, except a `Period` whose frequency is a single `at()` (it fires
    /// once and then mirrors its record like `Once`).
    pub fn keeps_target_running(self, frequency: &str) -> bool {
        match self {
            RepeatMode::Period => !frequency.trim_start().starts_with("at("),
            RepeatMode::EveryReboot => true,
            RepeatMode::Once | RepeatMode::NextRebootOnly => false,
        }
    }
}

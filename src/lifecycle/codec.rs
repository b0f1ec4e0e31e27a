//! The one string codec of the lifecycle: every status, mode, type and
//! error-code name deckhand reads or writes (API, SQL, wire, journal) is
//! spelled here and nowhere else.

/// A value that is not one of an enum's names; says which field and lists
/// the accepted names (never echoes more than 64 characters of the input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?} is not one of {accepted}")]
pub struct UnknownName {
    pub field: &'static str,
    pub value: String,
    pub accepted: String,
}

impl UnknownName {
    pub(crate) fn new(field: &'static str, value: &str, names: &[&str]) -> Self {
        Self { field, value: value.chars().take(64).collect(), accepted: names.join(", ") }
    }
}

/// Declares a closed enum whose variants are spelled exactly as the
/// Cloud Assistant API spells them, with `ALL`, `as_str`, a strict
/// `parse`, `Display` and string serde.
macro_rules! named_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident as $field:literal { $($(#[$vm:meta])* $var:ident = $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name { $($(#[$vm])* $var,)+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var,)+];
            pub const NAMES: &'static [&'static str] = &[$($s,)+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s,)+ }
            }

            /// Exact, case-sensitive names.
            pub fn parse(s: &str) -> Result<Self, $crate::lifecycle::UnknownName> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err($crate::lifecycle::UnknownName::new($field, s, Self::NAMES)),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::lifecycle::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use named_enum;

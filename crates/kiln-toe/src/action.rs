//! The AWSTOE action modules and the shape of their inputs.

use std::fmt;

/// An action module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Action {
    AppendFile,
    Assert,
    CopyFile,
    CopyFolder,
    CreateFile,
    CreateFolder,
    CreateSymlink,
    DeleteFile,
    DeleteFolder,
    ExecuteBash,
    ExecuteBinary,
    ExecuteDocument,
    ExecutePowerShell,
    InstallMSI,
    ListFiles,
    MoveFile,
    MoveFolder,
    ReadFile,
    Reboot,
    S3Download,
    S3Upload,
    SetFileEncoding,
    SetFileOwner,
    SetFilePermissions,
    SetFolderOwner,
    SetFolderPermissions,
    SetRegistry,
    UninstallMSI,
    UpdateOS,
    WebDownload,
}

/// Every action, in alphabetical order.
pub const ALL_ACTIONS: [Action; 30] = [
    Action::AppendFile,
    Action::Assert,
    Action::CopyFile,
    Action::CopyFolder,
    Action::CreateFile,
    Action::CreateFolder,
    Action::CreateSymlink,
    Action::DeleteFile,
    Action::DeleteFolder,
    Action::ExecuteBash,
    Action::ExecuteBinary,
    Action::ExecuteDocument,
    Action::ExecutePowerShell,
    Action::InstallMSI,
    Action::ListFiles,
    Action::MoveFile,
    Action::MoveFolder,
    Action::ReadFile,
    Action::Reboot,
    Action::S3Download,
    Action::S3Upload,
    Action::SetFileEncoding,
    Action::SetFileOwner,
    Action::SetFilePermissions,
    Action::SetFolderOwner,
    Action::SetFolderPermissions,
    Action::SetRegistry,
    Action::UninstallMSI,
    Action::UpdateOS,
    Action::WebDownload,
];

/// How a module's `inputs` are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One mapping of named inputs.
    Map,
    /// A list of mappings, one operation each.
    List,
    /// A condition expression (Assert).
    Condition,
}

/// The type an input takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text (numbers and booleans written plainly are read as their text).
    Str,
    /// `true` / `false`.
    Bool,
    /// An integer.
    Int,
    /// A list of strings.
    StrList,
    /// Octal permission digits (`755`, `0644`), quoted or not.
    Permissions,
    /// A text encoding name.
    Encoding,
    /// A list of `{name, value}` maps (ExecuteDocument parameters).
    NameValueList,
    /// A mapping of strings (InstallMSI properties).
    StrMap,
    /// Anything (SetRegistry value).
    Any,
    /// One of a fixed set of words.
    OneOf(&'static [&'static str]),
}

impl Kind {
    /// How to describe the expected type to a user.
    pub fn describe(self) -> String {
        match self {
            Kind::Str => "a string".into(),
            Kind::Bool => "true or false".into(),
            Kind::Int => "an integer".into(),
            Kind::StrList => "a list of strings".into(),
            Kind::Permissions => "octal permission digits such as 755 or '0644'".into(),
            Kind::Encoding => format!("an encoding ({})", kiln_instance::fileops::ENCODING_NAMES),
            Kind::NameValueList => "a list of `- name: ...\n  value: ...` entries".into(),
            Kind::StrMap => "a mapping of names to strings".into(),
            Kind::Any => "a value".into(),
            Kind::OneOf(words) => format!("one of {}", words.join(", ")),
        }
    }
}

/// One named input of a module.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its key.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Whether it must be given.
    pub required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

/// What a module's inputs look like.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// Map, list or condition.
    pub shape: Shape,
    /// Whether `inputs` may be left out.
    pub inputs_optional: bool,
    /// The named inputs (of the map, or of each list item).
    pub fields: &'static [Field],
}

use Kind::*;

/// A `'static` slice of fields (a const item, since `req`/`opt` calls are not promoted).
macro_rules! fields {
    ($($f:expr),* $(,)?) => {{
        const F: &[Field] = &[$($f),*];
        F
    }};
}

const COPY: &[Field] = &[
    req("source", Str),
    req("destination", Str),
    opt("overwrite", Bool),
];
const MSI: &[Field] = &[
    req("path", Str),
    opt("reboot", OneOf(&["Allow", "Force", "Skip"])),
    opt("logOptions", Str),
    opt("logFile", Str),
    opt("properties", StrMap),
    opt("ignoreAuthenticodeSignatureErrors", Bool),
    opt("allowUnsignedInstaller", Bool),
];

impl Action {
    /// Parses an action name (exact spelling, as AWSTOE requires).
    pub fn parse(name: &str) -> Option<Action> {
        ALL_ACTIONS.iter().copied().find(|a| a.name() == name)
    }

    /// The action's name as written in documents.
    pub fn name(self) -> &'static str {
        match self {
            Action::AppendFile => "AppendFile",
            Action::Assert => "Assert",
            Action::CopyFile => "CopyFile",
            Action::CopyFolder => "CopyFolder",
            Action::CreateFile => "CreateFile",
            Action::CreateFolder => "CreateFolder",
            Action::CreateSymlink => "CreateSymlink",
            Action::DeleteFile => "DeleteFile",
            Action::DeleteFolder => "DeleteFolder",
            Action::ExecuteBash => "ExecuteBash",
            Action::ExecuteBinary => "ExecuteBinary",
            Action::ExecuteDocument => "ExecuteDocument",
            Action::ExecutePowerShell => "ExecutePowerShell",
            Action::InstallMSI => "InstallMSI",
            Action::ListFiles => "ListFiles",
            Action::MoveFile => "MoveFile",
            Action::MoveFolder => "MoveFolder",
            Action::ReadFile => "ReadFile",
            Action::Reboot => "Reboot",
            Action::S3Download => "S3Download",
            Action::S3Upload => "S3Upload",
            Action::SetFileEncoding => "SetFileEncoding",
            Action::SetFileOwner => "SetFileOwner",
            Action::SetFilePermissions => "SetFilePermissions",
            Action::SetFolderOwner => "SetFolderOwner",
            Action::SetFolderPermissions => "SetFolderPermissions",
            Action::SetRegistry => "SetRegistry",
            Action::UninstallMSI => "UninstallMSI",
            Action::UpdateOS => "UpdateOS",
            Action::WebDownload => "WebDownload",
        }
    }

    /// Actions that exist only on Windows: valid in a document, refused by a Linux run.
    pub fn windows_only(self) -> bool {
        matches!(
            self,
            Action::ExecutePowerShell
                | Action::InstallMSI
                | Action::UninstallMSI
                | Action::SetRegistry
        )
    }

    /// The shape of the action's inputs.
    pub fn schema(self) -> Schema {
        let (shape, inputs_optional, fields): (Shape, bool, &'static [Field]) = match self {
            Action::ExecuteBash => (Shape::Map, false, fields!(req("commands", StrList))),
            Action::ExecuteBinary => (
                Shape::Map,
                false,
                fields!(req("path", Str), opt("arguments", StrList)),
            ),
            Action::ExecuteDocument => (
                Shape::Map,
                false,
                fields!(
                    req("document", Str),
                    opt("document-s3-bucket-owner", Str),
                    opt("phases", Str),
                    opt("parameters", NameValueList),
                ),
            ),
            Action::ExecutePowerShell => (
                Shape::Map,
                false,
                fields!(opt("commands", StrList), opt("file", Str)),
            ),
            Action::Assert => (Shape::Condition, false, fields!()),
            Action::S3Download => (
                Shape::List,
                false,
                fields!(
                    req("source", Str),
                    req("destination", Str),
                    opt("expectedBucketOwner", Str),
                    opt("overwrite", Bool),
                ),
            ),
            Action::S3Upload => (
                Shape::List,
                false,
                fields!(
                    req("source", Str),
                    req("destination", Str),
                    opt("recurse", Bool),
                    opt("expectedBucketOwner", Str),
                ),
            ),
            Action::WebDownload => (
                Shape::List,
                false,
                fields!(
                    req("source", Str),
                    req("destination", Str),
                    opt("overwrite", Bool),
                    opt("checksum", Str),
                    opt("algorithm", OneOf(&["MD5", "SHA1", "SHA256", "SHA512"])),
                    opt("ignoreCertificateErrors", Bool),
                ),
            ),
            Action::AppendFile => (
                Shape::List,
                false,
                fields!(
                    req("path", Str),
                    opt("content", Str),
                    opt("encoding", Encoding)
                ),
            ),
            Action::CopyFile | Action::CopyFolder | Action::MoveFile | Action::MoveFolder => {
                (Shape::List, false, COPY)
            }
            Action::CreateFile => (
                Shape::List,
                false,
                fields!(
                    req("path", Str),
                    opt("content", Str),
                    opt("encoding", Encoding),
                    opt("owner", Str),
                    opt("group", Str),
                    opt("permissions", Permissions),
                    opt("overwrite", Bool),
                ),
            ),
            Action::CreateFolder => (
                Shape::List,
                false,
                fields!(
                    req("path", Str),
                    opt("owner", Str),
                    opt("group", Str),
                    opt("permissions", Permissions),
                    opt("overwrite", Bool),
                ),
            ),
            Action::CreateSymlink => (
                Shape::List,
                false,
                fields!(req("path", Str), req("target", Str), opt("force", Bool)),
            ),
            Action::DeleteFile => (Shape::List, false, fields!(req("path", Str))),
            Action::DeleteFolder => (
                Shape::List,
                false,
                fields!(req("path", Str), opt("force", Bool)),
            ),
            Action::ListFiles => (
                Shape::List,
                false,
                fields!(
                    req("path", Str),
                    opt("fileNamePattern", Str),
                    opt("recursive", Bool),
                ),
            ),
            Action::ReadFile => (
                Shape::List,
                false,
                fields!(
                    req("path", Str),
                    opt("encoding", Encoding),
                    opt("printFileContent", Bool),
                ),
            ),
            Action::SetFileEncoding => (
                Shape::List,
                false,
                fields!(req("path", Str), opt("encoding", Encoding)),
            ),
            Action::SetFileOwner => (
                Shape::List,
                false,
                fields!(req("path", Str), req("owner", Str), opt("group", Str)),
            ),
            Action::SetFolderOwner => (
                Shape::List,
                false,
                fields!(
                    req("path", Str),
                    req("owner", Str),
                    opt("group", Str),
                    opt("recursive", Bool),
                ),
            ),
            Action::SetFilePermissions => (
                Shape::List,
                false,
                fields!(req("path", Str), req("permissions", Permissions)),
            ),
            Action::SetFolderPermissions => (
                Shape::List,
                false,
                fields!(
                    req("path", Str),
                    req("permissions", Permissions),
                    opt("recursive", Bool),
                ),
            ),
            Action::InstallMSI | Action::UninstallMSI => (Shape::Map, false, MSI),
            Action::Reboot => (Shape::Map, true, fields!(opt("delaySeconds", Int))),
            Action::SetRegistry => (
                Shape::List,
                false,
                fields!(
                    req("path", Str),
                    req("name", Str),
                    req("value", Any),
                    req(
                        "type",
                        OneOf(&["BINARY", "DWORD", "QWORD", "SZ", "EXPAND_SZ", "MULTI_SZ"]),
                    ),
                ),
            ),
            Action::UpdateOS => (
                Shape::Map,
                true,
                fields!(opt("include", StrList), opt("exclude", StrList)),
            ),
        };
        Schema {
            shape,
            inputs_optional,
            fields,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// By its AWSTOE name (`ExecuteBash`), as documents write it.
impl serde::Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Action::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown action module `{name}`")))
    }
}

pub use kiln_yaml::did_you_mean;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in ALL_ACTIONS {
            assert_eq!(Action::parse(a.name()), Some(a));
        }
        assert_eq!(Action::parse("executebash"), None);
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("ExecuteBsh", ALL_ACTIONS.iter().map(|a| a.name())),
            Some("ExecuteBash")
        );
        assert_eq!(
            did_you_mean("string", ALL_ACTIONS.iter().map(|a| a.name())),
            None
        );
        assert_eq!(
            did_you_mean("onfailure", ["onFailure", "inputs"]),
            Some("onFailure")
        );
    }
}

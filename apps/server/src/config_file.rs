//! `--config FILE`: the flags of `echo` and `chat` from a TOML file, and
//! `iocp-server config print`.
//!
//! A key is a flag as it is spelled, without `--` (`max-sessions = 10000`). Keys at the top of
//! the file are those that every server has (and `log-format`); the tables `[echo]` and
//! `[chat]` take any flag of that server and override the top for it:
//!
//! ```toml
//! addr = "0.0.0.0:11021"
//! metrics = "127.0.0.1:9100"
//!
//! [chat]
//! rooms = 50
//! ```
//!
//! A flag that may be given several times takes an array (`key = ["a", "b"]`). Flags given on
//! the command line (or through the environment) override the file. An unknown
//! key is an error that names it and its line; so is a value its flag refuses. The file is read
//! through the command line's own definitions: a flag added to `echo` or `chat` can be set from
//! the file with no change here.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use toml::de::{DeTable, DeValue};

use crate::cli::Cli;

/// Arguments that are not settings.
const NOT_SETTINGS: [&str; 3] = ["help", "version", "config"];

/// The global flag that the top of the file may set too.
const GLOBAL: &str = "log_format";

/// Why the command line and the file could not be read.
#[derive(Debug)]
pub enum ArgsError {
    /// The command line is wrong (clap's error: print it, or `exit()` with it).
    Cli(clap::Error),
    /// The configuration file is unreadable or wrong.
    File(String),
}

impl std::fmt::Display for ArgsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgsError::Cli(e) => write!(f, "{e}"),
            ArgsError::File(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ArgsError {}

impl From<clap::Error> for ArgsError {
    fn from(e: clap::Error) -> Self {
        ArgsError::Cli(e)
    }
}

/// The command line read, with the configuration file it names, if any.
pub struct Parsed {
    /// What to do.
    pub cli: Cli,
    /// Everything clap found, defaults included (for [`print()`]).
    pub matches: ArgMatches,
}

/// One setting of the file: its values as a flag's text (an array gives the flag once per
/// element), and its line.
#[derive(Clone, Debug)]
struct Setting {
    key: String,
    values: Vec<String>,
    line: usize,
}

impl Setting {
    /// `--key=value` for each value.
    fn flags(&self) -> impl Iterator<Item = OsString> + '_ {
        self.values
            .iter()
            .map(|v| OsString::from(format!("--{}={v}", self.key)))
    }
}

/// The file's settings: the top, `[echo]` and `[chat]`.
#[derive(Debug, Default)]
struct FileSettings {
    top: Vec<Setting>,
    echo: Vec<Setting>,
    chat: Vec<Setting>,
}

impl FileSettings {
    /// The settings for `server` (`echo` or `chat`): its table's over the top's.
    fn for_server(&self, server: &str) -> Vec<Setting> {
        let table = if server == "chat" {
            &self.chat
        } else {
            &self.echo
        };
        let mut out: Vec<Setting> = self
            .top
            .iter()
            .filter(|s| !table.iter().any(|t| t.key == s.key))
            .cloned()
            .collect();
        out.extend(table.iter().cloned());
        out
    }
}

/// The flags (long names) of `server` that are settings, by clap id.
fn flags_of(server: &str) -> Vec<(String, String)> {
    let mut cli = Cli::command();
    cli.build();
    let Some(cmd) = cli.find_subcommand(server) else {
        return Vec::new();
    };
    cmd.get_arguments()
        .filter(|a| !NOT_SETTINGS.contains(&a.get_id().as_str()) && a.get_id() != GLOBAL)
        .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_owned())))
        .collect()
}

/// The long name of the global flag.
fn global_flag() -> String {
    GLOBAL.replace('_', "-")
}

/// Every key a file may have: at the top, in `[echo]`, in `[chat]`.
pub fn keys() -> (Vec<String>, Vec<String>, Vec<String>) {
    let echo: Vec<String> = flags_of("echo").into_iter().map(|(_, l)| l).collect();
    let chat: Vec<String> = flags_of("chat").into_iter().map(|(_, l)| l).collect();
    let mut top: Vec<String> = echo.iter().filter(|k| chat.contains(k)).cloned().collect();
    top.push(global_flag());
    (top, echo, chat)
}

/// The 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A value as the texts its flag takes: one, or one per element of an array.
fn flag_texts(value: &DeValue<'_>) -> Option<Vec<String>> {
    match value {
        DeValue::Array(items) => items.iter().map(|v| flag_text(v.get_ref())).collect(),
        value => flag_text(value).map(|v| vec![v]),
    }
}

/// A scalar value as the text its flag takes.
fn flag_text(value: &DeValue<'_>) -> Option<String> {
    Some(match value {
        DeValue::String(s) => s.to_string(),
        DeValue::Integer(i) => i128::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .ok()?
            .to_string(),
        DeValue::Float(f) => f.as_str().replace('_', ""),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(_) | DeValue::Array(_) | DeValue::Table(_) => return None,
    })
}

/// Reads the settings of one table, refusing keys not in `known`.
fn settings(
    file: &str,
    text: &str,
    table: &DeTable<'_>,
    known: &[String],
    section: &str,
) -> Result<Vec<Setting>, ArgsError> {
    let mut out = Vec::new();
    for (key, value) in table.iter() {
        let name = key.get_ref().as_ref();
        let line = line_of(text, key.span().start);
        if !known.iter().any(|k| k == name) {
            let mut message = format!("{file}, line {line}: unknown key `{name}`{section}");
            let dashed = name.replace('_', "-");
            if known.contains(&dashed) {
                let _ = write!(message, " (did you mean `{dashed}`?)");
            } else if section.is_empty()
                && (keys().1.contains(&dashed) || keys().2.contains(&dashed))
            {
                let _ = write!(
                    message,
                    " (a setting of one server only goes in its table, [echo] or [chat])"
                );
            }
            return Err(ArgsError::File(message));
        }
        let Some(values) = flag_texts(value.get_ref()) else {
            return Err(ArgsError::File(format!(
                "{file}, line {line}: `{name}`: expected a string, a number, a boolean or an \
                 array of them"
            )));
        };
        out.push(Setting {
            key: name.to_owned(),
            values,
            line,
        });
    }
    Ok(out)
}

/// Reads and checks the keys of a configuration file.
fn read_file(path: &Path) -> Result<FileSettings, ArgsError> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ArgsError::File(format!("{file}: {e}")))?;
    let doc = DeTable::parse(&text)
        .map_err(|e| ArgsError::File(format!("{file}: {}", e.to_string().trim_end())))?;
    let (top_keys, echo_keys, chat_keys) = keys();
    let mut settings_of = FileSettings::default();
    let mut top = DeTable::new();
    for (key, value) in doc.get_ref().iter() {
        let name = key.get_ref().as_ref();
        match (name, value.get_ref()) {
            ("echo", DeValue::Table(t)) => {
                settings_of.echo = settings(&file, &text, t, &echo_keys, " in [echo]")?;
            }
            ("chat", DeValue::Table(t)) => {
                settings_of.chat = settings(&file, &text, t, &chat_keys, " in [chat]")?;
            }
            _ => {
                top.insert(key.clone(), value.clone());
            }
        }
    }
    settings_of.top = settings(&file, &text, &top, &top_keys, "")?;
    Ok(settings_of)
}

/// Where the server's flags are on a command line: the subcommands that lead to them
/// (`["chat"]`, `["config", "print", "echo"]`), and their matches.
fn server_matches(matches: &ArgMatches) -> Option<(Vec<&'static str>, &ArgMatches)> {
    match matches.subcommand()? {
        ("echo", m) => Some((vec!["echo"], m)),
        ("chat", m) => Some((vec!["chat"], m)),
        ("config", m) => match m.subcommand()? {
            ("print", m) => match m.subcommand()? {
                ("echo", m) => Some((vec!["config", "print", "echo"], m)),
                ("chat", m) => Some((vec!["config", "print", "chat"], m)),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Whether the command line (or the environment) gave `id`.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// `--flag=value` for each raw value of `id` in `matches`.
fn raw_flags(matches: &ArgMatches, id: &str, long: &str, out: &mut Vec<OsString>) {
    for value in matches.get_raw(id).into_iter().flatten() {
        let mut flag = OsString::from(format!("--{long}="));
        flag.push(value);
        out.push(flag);
    }
}

/// Checks `settings` against `server`'s flags; an error names the key and its line.
fn check_values(file: &str, server: &str, settings: &[Setting]) -> Result<(), ArgsError> {
    let global = global_flag();
    let mut argv: Vec<OsString> = vec!["iocp-server".into()];
    if let Some(s) = settings.iter().find(|s| s.key == global) {
        argv.extend(s.flags());
    }
    argv.push(server.into());
    for s in settings.iter().filter(|s| s.key != global) {
        argv.extend(s.flags());
    }
    let Err(e) = Cli::command().try_get_matches_from(argv) else {
        return Ok(());
    };
    // Which key: the flag clap names.
    let named = e
        .get(clap::error::ContextKind::InvalidArg)
        .map(|v| v.to_string())
        .unwrap_or_default();
    let flag = named
        .trim_start_matches("--")
        .split([' ', '=', '<'])
        .next()
        .unwrap_or("");
    let setting = settings.iter().find(|s| s.key == flag);
    let why = e
        .to_string()
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_owned();
    Err(ArgsError::File(match setting {
        Some(s) => format!("{file}, line {}: `{}`: {why}", s.line, s.key),
        None => format!("{file}: {why}"),
    }))
}

/// Reads the command line `args` and, if it names one with `--config`, the configuration file:
/// flags on the command line override the file, the file overrides the defaults.
///
/// # Errors
///
/// A wrong command line, or an unreadable or wrong file (naming the key and its line).
pub fn parse_args<I, T>(args: I) -> Result<Parsed, ArgsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let matches = Cli::command().try_get_matches_from(&args)?;
    let Some((path, server_path, sub)) = server_matches(&matches).and_then(|(path, sub)| {
        let file = sub.get_one::<std::path::PathBuf>("config")?;
        Some((file.clone(), path, sub))
    }) else {
        let cli = Cli::from_arg_matches(&matches)?;
        return Ok(Parsed { cli, matches });
    };
    let server = *server_path.last().expect("a server");
    let file = read_file(&path)?;
    let name = path.display().to_string();
    // Every value of the file is checked, for both servers, before any is used.
    check_values(&name, "echo", &file.for_server("echo"))?;
    check_values(&name, "chat", &file.for_server("chat"))?;
    let from_file = file.for_server(server);
    let value_of = |key: &str| from_file.iter().find(|s| s.key == key);

    let mut argv: Vec<OsString> = vec![
        args.first()
            .cloned()
            .unwrap_or_else(|| "iocp-server".into()),
    ];
    let global = global_flag();
    if given(&matches, GLOBAL) {
        raw_flags(&matches, GLOBAL, &global, &mut argv);
    } else if let Some(s) = value_of(&global) {
        argv.extend(s.flags());
    }
    argv.extend(server_path.iter().map(OsString::from));
    argv.push(format!("--config={}", path.display()).into());
    for (id, long) in flags_of(server) {
        if given(sub, &id) {
            raw_flags(sub, &id, &long, &mut argv);
        } else if let Some(s) = value_of(&long) {
            argv.extend(s.flags());
        }
    }
    let matches = Cli::command().try_get_matches_from(argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(Parsed { cli, matches })
}

/// A flag's text as a TOML value: a boolean, an integer, or a string.
fn toml_value(text: &str) -> String {
    if text == "true" || text == "false" || text.parse::<i64>().is_ok() {
        return text.to_owned();
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The effective configuration of the server that `parsed` names (echo if none), as a TOML
/// file that, given to `--config`, configures the same. A setting that is not set (it has no
/// default on the command line: `workers`, say) is a comment, with what `effective` says it
/// comes to.
pub fn print(parsed: &Parsed, effective: impl Fn(&str) -> Option<String>) -> String {
    let found = server_matches(&parsed.matches);
    let server = found
        .as_ref()
        .and_then(|(path, _)| path.last().copied())
        .unwrap_or("echo");
    let defaults;
    let sub = match &found {
        Some((_, sub)) => *sub,
        None => {
            defaults = Cli::command()
                .try_get_matches_from(["iocp-server", "config", "print", "echo"])
                .expect("the defaults parse");
            server_matches(&defaults).expect("echo").1
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# The effective configuration of `iocp-server {server}` (defaults, file and flags)."
    );
    let global = global_flag();
    let log_format = parsed
        .matches
        .get_raw(GLOBAL)
        .and_then(|mut v| v.next())
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| "text".into());
    let _ = writeln!(out, "{global} = {}", toml_value(&log_format));
    let _ = writeln!(out, "\n[{server}]");
    for (id, long) in flags_of(server) {
        let values: Vec<String> = sub
            .get_raw(&id)
            .into_iter()
            .flatten()
            .map(|v| toml_value(&v.to_string_lossy()))
            .collect();
        let value = match values.len() {
            0 => None,
            1 => values.into_iter().next(),
            _ => Some(format!("[{}]", values.join(", "))),
        };
        match (value, effective(&long)) {
            (Some(v), _) => {
                let _ = writeln!(out, "{long} = {v}");
            }
            (None, Some(what)) => {
                let _ = writeln!(out, "# {long}: not set ({what})");
            }
            (None, None) => {
                let _ = writeln!(out, "# {long}: not set");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(toml: &str) -> Option<Vec<String>> {
        flag_texts(DeValue::parse(toml).expect("TOML").get_ref())
    }

    #[test]
    fn values_become_flag_texts() {
        assert_eq!(texts("\"a b\""), Some(vec!["a b".to_owned()]));
        assert_eq!(texts("0x10"), Some(vec!["16".to_owned()]));
        assert_eq!(texts("1_000"), Some(vec!["1000".to_owned()]));
        assert_eq!(texts("true"), Some(vec!["true".to_owned()]));
        // An array gives its flag once per element (a flag that takes several values).
        assert_eq!(
            texts("[\"redis://a:6379\", \"redis://b:6379\"]"),
            Some(vec![
                "redis://a:6379".to_owned(),
                "redis://b:6379".to_owned()
            ])
        );
        assert_eq!(texts("[[1]]"), None);
        assert_eq!(texts("{ a = 1 }"), None);
    }

    #[test]
    fn a_flag_given_twice_from_an_array_is_refused_with_its_line() {
        let dir = std::env::temp_dir().join(format!("iocp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("twice.toml");
        std::fs::write(&path, "addr = \"127.0.0.1:0\"\n\n[chat]\nrooms = [3, 4]\n").unwrap();
        let err = match parse_args(["iocp-server", "chat", "--config", path.to_str().unwrap()]) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("two values for --rooms"),
        };
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("line 4") && err.contains("`rooms`"), "{err}");
    }
}

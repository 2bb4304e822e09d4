//! How to start again a server that a restore in place stops, worked out
//! before anything is stopped.
//!
//! A server takes its settings from its configuration files, from its
//! command line and from its environment. A port or socket folder given
//! only on the command line (`pg_ctl start -o '-p 5433 -k /run/pg'`) is in
//! no configuration file, so a bare `pg_ctl start` brings the server up
//! somewhere else, or not at all. At every start the server records its
//! command line in `postmaster.opts` in the data directory
//! (`PROGRAM "ARG" "ARG" ...` on one line; `pg_ctl restart` reads it too),
//! and the default start command passes those options again, to the same
//! server program. `pg_settings` says where the running server listens;
//! the start after the restore is checked against that, and a port taken
//! from the environment (`PGPORT`), which no file records, is passed on
//! the command line.
//!
//! An operator's `start-command` (a systemd unit, `pg_ctlcluster`) is
//! used as it is: it knows how its server is run.

use std::path::Path;

use arca_schemas::PostgresqlSpec;

use super::{connect, pg_error, program};

/// The command line recorded in `postmaster.opts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The server program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
}

impl CommandLine {
    /// Reads the contents of `postmaster.opts`. The server writes each
    /// argument between double quotes and escapes nothing, so a line
    /// whose arguments hold a double quote cannot be read back: refused.
    pub fn parse(text: &str) -> Result<CommandLine, String> {
        let line = text.strip_suffix('\n').unwrap_or(text);
        if line.contains('\n') {
            return Err("it holds more than one line".to_owned());
        }
        let (program, rest) = match line.find(" \"") {
            Some(i) => (&line[..i], &line[i..]),
            None => (line, ""),
        };
        if program.trim().is_empty() {
            return Err("it names no program".to_owned());
        }
        let mut args = Vec::new();
        if !rest.is_empty() {
            let inner = rest
                .strip_prefix(" \"")
                .and_then(|r| r.strip_suffix('"'))
                .ok_or("its arguments are not each between double quotes")?;
            for arg in inner.split("\" \"") {
                if arg.contains('"') {
                    return Err(
                        "an argument holds a double quote, so the arguments cannot be told apart"
                            .to_owned(),
                    );
                }
                args.push(arg.to_owned());
            }
        }
        Ok(CommandLine {
            program: program.to_owned(),
            args,
        })
    }

    /// The folder given with `-D` (the data directory, or a folder of
    /// configuration files naming it), and the other arguments.
    fn split_folder(&self) -> (Option<String>, Vec<String>) {
        let mut folder = None;
        let mut rest = Vec::new();
        let mut args = self.args.iter();
        while let Some(a) = args.next() {
            if a == "-D" {
                folder = args.next().cloned();
            } else if let Some(d) = a.strip_prefix("-D") {
                folder = Some(d.to_owned());
            } else {
                rest.push(a.clone());
            }
        }
        (folder, rest)
    }

    /// True when the arguments set the port (`-p`, `-c port=`, `--port=`).
    fn sets_port(&self) -> bool {
        self.args
            .iter()
            .any(|a| a.starts_with("-p") || a.starts_with("port=") || a.starts_with("--port="))
    }
}

/// `arg` as one word for a shell (the one through which `pg_ctl` starts
/// the server), quoted only when it needs to be.
fn shell_word(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// `port`.
    pub port: String,
    /// `unix_socket_directories`.
    pub sockets: String,
}

impl std::fmt::Display for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sockets.trim().is_empty() {
            write!(f, "port {} without a Unix socket", self.port)
        } else {
            write!(f, "port {}, socket folder {}", self.port, self.sockets)
        }
    }
}

/// Asks the server reached through `spec` where it listens, and checks
/// that it serves `dir`. Returns also whether its port came from the
/// environment.
async fn ask(spec: &PostgresqlSpec, dir: &Path) -> Result<(Listening, bool), String> {
    let (client, connection) = connect(spec).await?;
    let row = client
        .query_one(
            "SELECT current_setting('data_directory'), current_setting('port'), \
             current_setting('unix_socket_directories'), \
             (SELECT source FROM pg_settings WHERE name = 'port')",
            &[],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    drop(client);
    let _ = connection.await;
    let server_dir: String = row.get(0);
    let same = match (
        std::fs::canonicalize(&server_dir),
        std::fs::canonicalize(dir),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        return Err(format!(
            "the server at host {} port {} serves {server_dir}, not {}",
            spec.host,
            spec.port,
            dir.display()
        ));
    }
    let source: String = row.get(3);
    Ok((
        Listening {
            port: row.get(1),
            sockets: row.get(2),
        },
        source == "environment variable",
    ))
}

/// Where the server runs now, asked through the spec's connection.
pub async fn listening(spec: &PostgresqlSpec) -> Result<Listening, String> {
    let (client, connection) = connect(spec).await?;
    let row = client
        .query_one(
            "SELECT current_setting('port'), current_setting('unix_socket_directories')",
            &[],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    drop(client);
    let _ = connection.await;
    Ok(Listening {
        port: row.get(0),
        sockets: row.get(1),
    })
}

/// How the server is started after a restore in place.
#[derive(Debug, Clone)]
pub struct Start {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Run as the data directory's owner (the default `pg_ctl`); an
    /// operator's `start-command` runs as the agent, like a hook command.
    pub as_owner: bool,
    /// Where the server listened before it was stopped: after the start
    /// it must listen there again.
    pub listening: Option<Listening>,
    /// Where the server's log goes (the default command).
    pub log: Option<String>,
    /// Where the command came from, for the job's output.
    pub origin: &'static str,
}

impl Start {
    /// For a server that runs on `dir` now, before it is stopped: the
    /// operator's `start-command`, or `pg_ctl start` with the options in
    /// `postmaster.opts`. An error says why neither can be worked out.
    pub async fn of_running(spec: &PostgresqlSpec, dir: &Path) -> Result<Start, String> {
        let (listening, port_from_environment) = ask(spec, dir).await.map_err(|e| {
            format!(
                "cannot ask the running server where it listens, which the start after \
                 the restore is checked against ({e}); check host, port and user"
            )
        })?;
        if let Some(command) = &spec.start_command {
            return Ok(Start {
                command: command.clone(),
                as_owner: false,
                listening: Some(listening),
                log: None,
                origin: "start-command",
            });
        }
        let line = recorded(dir)?;
        let mut extra = Vec::new();
        if port_from_environment && !line.sets_port() {
            extra = vec!["-p".to_owned(), listening.port.clone()];
        }
        let mut start = pg_ctl(spec, dir, Some(&line), extra);
        start.listening = Some(listening);
        start.origin = "the running server's options, from postmaster.opts";
        Ok(start)
    }

    /// For a server that does not run on `dir`: the operator's
    /// `start-command`, or `pg_ctl start` with the options of its last
    /// start when `postmaster.opts` tells them, else with none.
    pub fn of_stopped(spec: &PostgresqlSpec, dir: &Path) -> Start {
        if let Some(command) = &spec.start_command {
            return Start {
                command: command.clone(),
                as_owner: false,
                listening: None,
                log: None,
                origin: "start-command",
            };
        }
        match recorded(dir) {
            Ok(line) => {
                let mut start = pg_ctl(spec, dir, Some(&line), Vec::new());
                start.origin = "the options of its last start, from postmaster.opts";
                start
            }
            Err(_) => pg_ctl(spec, dir, None, Vec::new()),
        }
    }

    /// The command as a line, for the job's output.
    pub fn shown(&self) -> String {
        self.command
            .iter()
            .map(|a| shell_word(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The command line in `dir/postmaster.opts`, checked to be usable.
fn recorded(dir: &Path) -> Result<CommandLine, String> {
    let opts = dir.join("postmaster.opts");
    let text = std::fs::read_to_string(&opts).map_err(|e| {
        format!(
            "cannot read {} ({e}), where the server records the options it was started with",
            opts.display()
        )
    })?;
    let line = CommandLine::parse(&text).map_err(|e| format!("{}: {e}", opts.display()))?;
    if !Path::new(&line.program).is_file() {
        return Err(format!(
            "{} names the server program {}, which is not there",
            opts.display(),
            line.program
        ));
    }
    if let (Some(folder), _) = line.split_folder()
        && !folder.starts_with('/')
    {
        return Err(format!(
            "{} gives the server's folder as {folder:?}, relative to a working folder that is not recorded",
            opts.display()
        ));
    }
    Ok(line)
}

/// `pg_ctl start` on `dir`, with the server program, folder and options
/// of `line` when given, and `extra` options.
fn pg_ctl(
    spec: &PostgresqlSpec,
    dir: &Path,
    line: Option<&CommandLine>,
    extra: Vec<String>,
) -> Start {
    let log = spec
        .log_file
        .clone()
        .unwrap_or_else(|| format!("{}/arca-start.log", dir.display()));
    let (folder, mut options) = line.map(|l| l.split_folder()).unwrap_or_default();
    options.extend(extra);
    let mut command = vec![
        program(spec, "pg_ctl"),
        "start".to_owned(),
        "-D".to_owned(),
        folder.unwrap_or_else(|| dir.display().to_string()),
        "-l".to_owned(),
        log.clone(),
        "-w".to_owned(),
        "-t".to_owned(),
        spec.timeout_secs.to_string(),
    ];
    if let Some(l) = line {
        command.extend(["-p".to_owned(), l.program.clone()]);
    }
    if !options.is_empty() {
        let joined = options
            .iter()
            .map(|o| shell_word(o))
            .collect::<Vec<_>>()
            .join(" ");
        command.extend(["-o".to_owned(), joined]);
    }
    Start {
        command,
        as_owner: true,
        listening: None,
        log: Some(log),
        origin: "no recorded options: the settings in its configuration files only",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_command_line_reads_back() {
        let l = CommandLine::parse(
            "/usr/lib/postgresql/15/bin/postgres \"-D\" \"/srv/pg data\" \"-p\" \"5433\" \"-k\" \"/run/pg\"\n",
        )
        .unwrap();
        assert_eq!(l.program, "/usr/lib/postgresql/15/bin/postgres");
        assert_eq!(
            l.args,
            ["-D", "/srv/pg data", "-p", "5433", "-k", "/run/pg"]
        );
        assert!(l.sets_port());
        let (folder, rest) = l.split_folder();
        assert_eq!(folder.as_deref(), Some("/srv/pg data"));
        assert_eq!(rest, ["-p", "5433", "-k", "/run/pg"]);

        // Debian's pg_ctlcluster: the configuration file named on the command line.
        let l = CommandLine::parse(
            "/usr/lib/postgresql/15/bin/postgres \"-D\" \"/var/lib/postgresql/15/main\" \"-c\" \"config_file=/etc/postgresql/15/main/postgresql.conf\"",
        )
        .unwrap();
        assert!(!l.sets_port());
        assert_eq!(
            l.split_folder().1,
            ["-c", "config_file=/etc/postgresql/15/main/postgresql.conf"]
        );

        let l = CommandLine::parse("/opt/pg/bin/postgres\n").unwrap();
        assert!(l.args.is_empty());
        assert_eq!(l.split_folder(), (None, Vec::new()));

        for bad in [
            "",
            "\n",
            "/opt/pg/bin/postgres \"-D\" \"/a\"b\"",
            "/opt/pg/bin/postgres \"-D\" /a",
            "/opt/pg/bin/postgres \"-D\"\n\"x\"",
        ] {
            assert!(CommandLine::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_start_passes_the_recorded_options_again() {
        let spec: PostgresqlSpec = toml::from_str(
            "data-directory = \"/srv/pg\"\nbin-dir = \"/opt/pg/bin\"\ntimeout-secs = 60\n",
        )
        .unwrap();
        let line = CommandLine {
            program: "/opt/pg/bin/postgres".into(),
            args: ["-D", "/srv/pg", "-k", "/run/it's here", "-p", "5433"]
                .map(String::from)
                .to_vec(),
        };
        let s = pg_ctl(&spec, Path::new("/srv/pg"), Some(&line), Vec::new());
        assert_eq!(
            s.command,
            [
                "/opt/pg/bin/pg_ctl",
                "start",
                "-D",
                "/srv/pg",
                "-l",
                "/srv/pg/arca-start.log",
                "-w",
                "-t",
                "60",
                "-p",
                "/opt/pg/bin/postgres",
                "-o",
                r"-k '/run/it'\''s here' -p 5433",
            ]
        );
        assert!(s.as_owner);
        // Nothing recorded: the configuration files only.
        let s = Start::of_stopped(&spec, Path::new("/nonexistent/arca/pg"));
        assert_eq!(
            s.shown(),
            "/opt/pg/bin/pg_ctl start -D /nonexistent/arca/pg -l \
             /nonexistent/arca/pg/arca-start.log -w -t 60"
        );
        assert!(s.as_owner);
        // The operator's command, as it is, run as the agent.
        let spec = PostgresqlSpec {
            start_command: Some(
                ["systemctl", "start", "postgresql@15-main"]
                    .map(String::from)
                    .to_vec(),
            ),
            ..spec
        };
        let s = Start::of_stopped(&spec, Path::new("/nonexistent/arca/pg"));
        assert_eq!(s.shown(), "systemctl start postgresql@15-main");
        assert!(!s.as_owner);
    }
}

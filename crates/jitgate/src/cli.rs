//! Command-line definitions (design.md §8). Exit codes: 0 ok, 1 refused/failed, 2 usage.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// jitgate: identity-aware Postgres and SSH gateway with just-in-time access.
#[derive(Debug, Parser)]
#[command(name = "jitgate", version, about, propagate_version = true, after_help = crate::exit::HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Where client commands find the gateway.
#[derive(Debug, Args, Clone, Default)]
pub struct Conn {
    /// Gateway API URL (default: $JITGATE_URL, the login file, or http://127.0.0.1:8080).
    #[arg(long, global = true, env = "JITGATE_URL")]
    pub url: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Trust this CA (PEM) for the gateway's certificate (API and Postgres clients), instead of
    /// the CA pinned at `jitgate login`.
    #[arg(long, global = true, env = "JITGATE_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

/// The commands, grouped in `--help` as a user meets them.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the gateway.
    Serve {
        /// Config file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Print a shell completion script: `source <(jitgate completions bash)`, or install it
    /// where your shell looks (bash: /etc/bash_completion.d/jitgate).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (jitgate.1 and one per command) into a folder.
    Man {
        /// Where to write them (e.g. /usr/local/share/man/man1).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Configuration tools.
    Config {
        /// What to do.
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Ask for access to a resource.
    Request(RequestArgs),
    /// List requests you can see.
    Requests {
        /// Only this state.
        #[arg(long)]
        state: Option<String>,
        /// Only your own.
        #[arg(long)]
        mine: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Approve a request.
    Approve {
        /// Request id.
        id: i64,
        /// A comment recorded with the approval (shown to the requester and in the audit log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Deny a request.
    Deny {
        /// Request id.
        id: i64,
        /// Why (required).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Withdraw your pending request.
    Cancel {
        /// Request id.
        id: i64,
        #[command(flatten)]
        conn: Conn,
    },
    /// List live grants (yours, or all you may see with --all).
    Grants {
        /// Everyone's you may see.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// End someone's grant now and kill its sessions.
    Revoke {
        /// Grant id.
        grant_id: i64,
        /// Why it is revoked (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Break the glass: open a grant at once, without approvers (policies with
    /// `[policies.break_glass]`). Every webhook is alerted and a reviewer must review it.
    #[command(name = "break-glass")]
    BreakGlass {
        /// Resource name.
        resource: String,
        /// Access level (default: the resource's default).
        #[arg(long)]
        access: Option<String>,
        /// How long (default and maximum: the policy's break-glass max_duration).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// What is on fire (required, reviewers read it).
        #[arg(long)]
        reason: String,
        /// Incident or ticket id.
        #[arg(long)]
        ticket: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// The `[[oncall]]` sources: fresh or stale, their age, last error and who is on call
    /// (admins and auditors).
    Oncall {
        #[command(flatten)]
        conn: Conn,
    },
    /// Break-glass reviews: the open ones (and closed ones with --all); `show ID` lists what
    /// the grant did, `close ID --note ...` records the review.
    Reviews {
        #[command(subcommand)]
        cmd: Option<ReviewCmd>,
        /// Closed reviews too.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Give back your grant (by id, or all of yours on a resource). Alias: `done`.
    #[command(visible_alias = "done")]
    Release {
        /// Grant id or resource name.
        target: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Ask for more time on a live grant (needs approval like a request).
    Extend {
        /// Grant id.
        grant_id: i64,
        /// How much more.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why more time is needed (approvers see it).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List live sessions.
    Sessions {
        #[command(flatten)]
        conn: Conn,
    },
    /// Drain the gateway at --url (admins): /readyz answers 503 and new sessions are refused
    /// while live ones go on, e.g. before maintenance or in a Kubernetes preStop hook.
    Drain {
        /// Undo: ready again, new sessions admitted.
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Kill a live session.
    Kill {
        /// Session id.
        session_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Audit log tools.
    Audit {
        /// What to do.
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Log in with the company's identity provider (OpenID Connect); stores a gateway token.
    Login {
        /// Use the device flow (a code to enter on another device) instead of a browser redirect.
        #[arg(long)]
        device: bool,
        /// Print the URL instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
        /// Authenticate at the provider again even if it remembers you (`max_age=0`): for
        /// approving under a policy with `step_up`, within its minutes.
        #[arg(long)]
        fresh: bool,
        /// First contact with a gateway whose certificate comes from its own CA: the CA's
        /// fingerprint (`sha256:...`, from the operator; `jitgate serve` logs it as ca_sha256).
        /// The CA is pinned only if it matches, and the login is verified against it.
        #[arg(long, value_name = "SHA256")]
        ca_pin: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke your gateway token and forget it (and the SSH certificate).
    Logout {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show who the gateway thinks you are.
    Whoami {
        #[command(flatten)]
        conn: Conn,
    },
    /// Connect to a resource with its usual client (psql), everything filled in.
    Connect {
        /// Resource name.
        resource: String,
        /// Database on the resource (default: the resource's).
        #[arg(long)]
        dbname: Option<String>,
        /// Extra arguments for the client (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Write a pg_service.conf entry per postgres resource (verify-full against the pinned
    /// gateway CA, the token from a private passfile): then `psql service=NAME`.
    PgService {
        /// Print the entries instead of writing them.
        #[arg(long)]
        print: bool,
        /// Service file to write (default: $PGSERVICEFILE, else ~/.pg_service.conf); only
        /// jitgate's own block in it is replaced.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print `export PG...=` lines for a postgres resource (verify-full; for libpq, psycopg,
    /// node-postgres): `eval "$(jitgate pg-env prod-db)"`.
    PgEnv {
        /// Resource name.
        resource: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List resources and what you may request on each.
    Resources {
        #[command(flatten)]
        conn: Conn,
    },
    /// Get an SSH user certificate for your key from the gateway (KEY-cert.pub).
    SshCert {
        /// Private key whose public half (KEY.pub) is certified; default ~/.config/jitgate/id_ed25519 (generated).
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Write ssh_config `Host` entries for the SSH resources into ~/.config/jitgate/ssh_config, pin
    /// the gateway's host CA, include the file from ~/.ssh/config (once), refresh the
    /// certificate: then `ssh web-1` works, on every replica, across host key rotations.
    SshConfig {
        /// Private key to use (as for ssh-cert).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Print the entries instead of writing them to their file and including it from your
        /// ssh config (for ssh configs managed by hand; the pins and certificate are still
        /// refreshed, the entries point at them).
        #[arg(long)]
        print: bool,
        /// The ssh config that gets the `Include` line; default ~/.ssh/config.
        #[arg(long, value_name = "FILE")]
        ssh_config: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Replay an SSH session recording in the terminal.
    Play {
        /// Session id (s-…).
        session: String,
        /// Play this .cast file instead of the one in data_dir/recordings.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Config file to find data_dir.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// Playback speed (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause kept, in seconds.
        #[arg(long, default_value_t = 3.0)]
        idle_limit: f64,
    },
    /// Machine tokens (admins).
    Token {
        /// What to do.
        #[command(subcommand)]
        cmd: TokenCmd,
    },
}

/// `jitgate config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate a config file and print its summary; exit 1 on error.
    Check {
        /// Config file (positional or --config).
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Config file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
}

/// `jitgate audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Search audit events.
    Search(SearchArgs),
    /// Print the audit log (all rotated files, oldest first) as JSONL, the lines exactly as
    /// written (so a copy still verifies), for a SIEM or log shipper. With --follow it keeps
    /// printing new lines as they are written, across rotations, until stopped; resume with
    /// --from-seq (the last seq received + 1) or --from-checkpoint.
    Export {
        /// Output format (only jsonl).
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl"])]
        format: String,
        /// Start at this seq (inclusive).
        #[arg(long, conflicts_with = "from_checkpoint")]
        from_seq: Option<u64>,
        /// Start at the newest signed checkpoint line, so the receiver's first line is one an
        /// auditor can verify against the public key.
        #[arg(long)]
        from_checkpoint: bool,
        /// Keep going: print lines as the gateway writes them (polled every 100 ms), following
        /// the live file across rotations.
        #[arg(long)]
        follow: bool,
        /// The live audit file (instead of reading the config).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Config file to find the audit file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Write an evidence pack: the request(s), each approval, the grant's life, every session
    /// with its statements or commands (refusals marked), SSH recordings, and the signed chain
    /// segments that prove them, as NAME.json (verify it alone: `jitgate audit verify
    /// --evidence NAME.json --pubkey KEY`), NAME.html (one self-contained page) and CSV files.
    /// Reads the audit files: run it where the gateway's data_dir is.
    #[command(group(clap::ArgGroup::new("subject").required(true).args(["grant", "request", "user", "resource"])))]
    Evidence {
        /// One grant (with its request and approvals).
        #[arg(long)]
        grant: Option<i64>,
        /// One request (with the grants it made).
        #[arg(long)]
        request: Option<i64>,
        /// Everything a user requested, was granted and did.
        #[arg(long)]
        user: Option<String>,
        /// Everything that happened on a resource.
        #[arg(long)]
        resource: Option<String>,
        /// Only events from this time on: 90d (ago), 2026-10-01, or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only events up to this time (same forms).
        #[arg(long)]
        until: Option<String>,
        /// Directory to write the pack into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// The live audit file (instead of reading the config).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Config file to find the audit file and data_dir.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Walk the hash chain of the audit log (across rotated files) and check its signed
    /// checkpoints; exit 1 at the first broken line or bad signature. With FILES and --pubkey
    /// it needs nothing else: an auditor verifies a copy offline, without the gateway or its
    /// config, and sees the last signed position.
    Verify {
        /// Audit files to verify as one chain (any order; a segment of a log is fine). Without
        /// them: the log gateway.toml names, with its rotated files.
        #[arg(value_name = "FILES")]
        files: Vec<PathBuf>,
        /// The gateway's checkpoint public key (`ed25519:...`, as `jitgate audit pubkey`
        /// prints it) or a file holding it; repeat for logs signed by several keys. Without it
        /// and without FILES: the key in data_dir/audit/.
        #[arg(long, value_name = "KEY")]
        pubkey: Vec<String>,
        /// One audit file (same as giving it as FILES, kept for scripts).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// With FILES: accept events after the last checkpoint (a copy of a live log). Without
        /// it, an unsigned tail makes the exit status 3: nothing shows whether lines after the
        /// last checkpoint were removed or replaced.
        #[arg(long)]
        allow_unsigned_tail: bool,
        /// With FILES: accept files that do not start at the log's first line (an excerpt).
        #[arg(long)]
        segment: bool,
        /// Verify an evidence pack (`jitgate audit evidence`) instead: its chain segments and
        /// their checkpoints with --pubkey, and that each of its events is a signed line.
        #[arg(long, conflicts_with_all = ["files", "file"])]
        evidence: Option<PathBuf>,
        /// Config file to find the audit file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Print the public key the gateway signs audit checkpoints with (give it to auditors and
    /// to `jitgate audit verify --pubkey`).
    Pubkey {
        /// Config file to find data_dir.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
}

/// `jitgate token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Mint a machine token; prints it once with its gateway.toml hash line.
    Create {
        /// Identity name (e.g. ci-bot).
        name: String,
        /// Groups (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cut off a login token now (admins); its id is in the `login` audit event.
    Revoke {
        /// Token id (24 hex characters).
        token_id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `jitgate request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Resource name.
    pub resource: String,
    /// Access level (read-only, read-write, or an SSH login).
    #[arg(long)]
    pub access: Option<String>,
    /// How long (e.g. 30m, 1h); default: the policy's.
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: Option<String>,
    /// Why you need it.
    #[arg(long)]
    pub reason: Option<String>,
    /// Ticket id.
    #[arg(long)]
    pub ticket: Option<String>,
    /// End the grant when its first session ends.
    #[arg(long)]
    pub single_session: bool,
    /// End the grant after this long without a session (e.g. 15m).
    #[arg(long, value_name = "DURATION")]
    pub idle_end: Option<String>,
    /// When the grant's clock starts: `approval` (default) or `first-use` (at your first
    /// session, which must come within the policy's first_use_within).
    #[arg(long, value_name = "WHEN", value_parser = ["approval", "first-use"])]
    pub start: Option<String>,
    /// Ask now for a window later: the grant opens at this time and ends --for after it
    /// (approvers decide ahead). `2026-12-02 22:00 Europe/Paris`, `2026-12-02 22:00` (this
    /// machine's time zone), `2026-12-02T21:00:00Z`, or `+3h`; at most 30 days ahead.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Wait until the request is decided, showing whom it waits for (a long poll: the
    /// decision shows the moment it is made). Exit 3 if denied, 4 if still pending at --timeout.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "1h", requires = "wait")]
    pub timeout: String,
    #[command(flatten)]
    pub conn: Conn,
}

/// `jitgate reviews ...`.
#[derive(Debug, Subcommand)]
pub enum ReviewCmd {
    /// One review with the grant's sessions, statements and commands.
    Show {
        /// Review id (the break-glass request's id).
        id: i64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Close a review (a reviewer of the policy or an admin, not the one who broke the glass).
    Close {
        /// Review id.
        id: i64,
        /// The finding: what was done and whether it was justified.
        #[arg(long)]
        note: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// `jitgate audit search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Actor or subject identity.
    #[arg(long)]
    pub user: Option<String>,
    /// Only events about this resource.
    #[arg(long)]
    pub resource: Option<String>,
    /// Event kind, or a prefix ending in `.` (e.g. `grant.`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Grant id.
    #[arg(long)]
    pub grant: Option<i64>,
    /// Session id.
    #[arg(long)]
    pub session: Option<String>,
    /// Request id.
    #[arg(long)]
    pub request: Option<i64>,
    /// Since (7d, 2h, or an RFC 3339 time).
    #[arg(long)]
    pub since: Option<String>,
    /// Only events up to this time (RFC 3339, or a duration ago such as 1h).
    #[arg(long)]
    pub until: Option<String>,
    /// Most events.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only SQL statements and SSH commands containing this text (ASCII case ignored, from
    /// the start of a word: `DROP TAB` finds `drop table`; indexed).
    #[arg(long, conflicts_with = "command")]
    pub text: Option<String>,
    /// Like --text, in SSH commands only (exec, lines typed in a shell, SFTP paths).
    #[arg(long)]
    pub command: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

//! `rabbitmqctl`: what only the broker's CLI shows or does (unacked counts, connections,
//! vhosts, memory alarms).

use super::*;

// ---------------------------------------------------------------------------------------
// rabbitmqctl
// ---------------------------------------------------------------------------------------

/// Runs `rabbitmqctl -q` against the test node with `scripts/rabbitmq.sh`'s environment and
/// returns its standard output.
///
/// # Errors
/// When it cannot run or exits non-zero: the message carries its output.
pub async fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    rabbitmqctl_on(NODE_NAME, args).await
}

/// Like [`rabbitmqctl`], against node `node` (the fault node of [`fault_node`], say).
///
/// # Errors
/// When it cannot run or exits non-zero: the message carries its output.
pub async fn rabbitmqctl_on(node: &str, args: &[&str]) -> Result<String, String> {
    let program = ["/usr/sbin/rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or("rabbitmqctl");
    let output = tokio::process::Command::new(program)
        .arg("-n")
        .arg(node)
        .arg("-q")
        .args(args)
        .env("RABBITMQ_NODENAME", node)
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Like [`rabbitmqctl`], panicking on failure.
pub async fn rabbitmqctl_ok(args: &[&str]) -> String {
    rabbitmqctl_ok_on(NODE_NAME, args).await
}

/// Like [`rabbitmqctl_on`], panicking on failure.
pub async fn rabbitmqctl_ok_on(node: &str, args: &[&str]) -> String {
    rabbitmqctl_on(node, args)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Runs a `rabbitmqctl list_*` command (`args`) with the JSON formatter and returns its rows.
///
/// # Panics
/// When rabbitmqctl fails or its output cannot be parsed.
pub async fn rabbitmqctl_json(args: &[&str]) -> Vec<serde_json::Value> {
    rabbitmqctl_json_on(NODE_NAME, args).await
}

/// Like [`rabbitmqctl_json`], against node `node`.
pub async fn rabbitmqctl_json_on(node: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut args = args.to_vec();
    args.splice(1..1, ["--formatter", "json"]);
    let out = rabbitmqctl_ok_on(node, &args).await;
    serde_json::from_str(out.trim())
        .unwrap_or_else(|error| panic!("parse {} output {out:?}: {error}", args[0]))
}

/// Like [`rabbitmqctl`], but blocking: for `Drop` guards.
fn rabbitmqctl_blocking(args: &[&str]) -> Result<(), String> {
    rabbitmqctl_blocking_on(NODE_NAME, args)
}

/// Like [`rabbitmqctl_on`], but blocking: for `Drop` guards.
pub fn rabbitmqctl_blocking_on(node: &str, args: &[&str]) -> Result<(), String> {
    let status = std::process::Command::new("rabbitmqctl")
        .arg("-n")
        .arg(node)
        .arg("-q")
        .args(args)
        .env("RABBITMQ_NODENAME", node)
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|error| format!("cannot run rabbitmqctl: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("rabbitmqctl {} failed ({status})", args.join(" ")))
    }
}

/// One row of `rabbitmqctl list_queues`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// Queue name.
    pub name: String,
    /// Messages ready for delivery.
    pub messages_ready: u64,
    /// Messages delivered and not yet acknowledged.
    pub messages_unacknowledged: u64,
    /// Consumers.
    pub consumers: u64,
}

/// `rabbitmqctl list_queues` for `vhost`.
///
/// # Panics
/// When rabbitmqctl fails or its output cannot be parsed.
pub async fn list_queues(vhost: &str) -> Vec<QueueInfo> {
    list_queues_on(NODE_NAME, vhost).await
}

/// `rabbitmqctl list_queues` for `vhost` of node `node`.
///
/// # Panics
/// When rabbitmqctl fails or its output cannot be parsed.
pub async fn list_queues_on(node: &str, vhost: &str) -> Vec<QueueInfo> {
    let rows = rabbitmqctl_json_on(
        node,
        &[
            "list_queues",
            "-p",
            vhost,
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ],
    )
    .await;
    rows.iter()
        .map(|row| QueueInfo {
            name: row["name"].as_str().unwrap_or_default().to_owned(),
            messages_ready: row["messages_ready"].as_u64().unwrap_or_default(),
            messages_unacknowledged: row["messages_unacknowledged"].as_u64().unwrap_or_default(),
            consumers: row["consumers"].as_u64().unwrap_or_default(),
        })
        .collect()
}

/// The `list_queues` row of queue `name` in `vhost`, if it exists.
pub async fn queue_info(vhost: &str, name: &str) -> Option<QueueInfo> {
    list_queues(vhost)
        .await
        .into_iter()
        .find(|q| q.name == name)
}

/// One row of `rabbitmqctl list_connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The broker's name for the connection (`127.0.0.1:port -> 127.0.0.1:5672`).
    pub name: String,
    /// The name the client gave itself (`connection_name` client property), if any.
    pub client_name: Option<String>,
    /// The negotiated heartbeat timeout in seconds (0: heartbeats off).
    pub timeout: u64,
    /// The connection's vhost.
    pub vhost: String,
    /// The authenticated user.
    pub user: String,
    /// Whether the connection uses TLS.
    pub ssl: bool,
    /// The subject of the client certificate the peer presented over TLS, if any.
    pub peer_cert_subject: Option<String>,
}

/// `rabbitmqctl list_connections`: every client connection of the node.
///
/// # Panics
/// When rabbitmqctl fails or its output cannot be parsed.
pub async fn list_connections() -> Vec<ConnectionInfo> {
    let rows = rabbitmqctl_json(&[
        "list_connections",
        "name",
        "timeout",
        "vhost",
        "user",
        "ssl",
        "peer_cert_subject",
        "client_properties",
    ])
    .await;
    rows.iter()
        .map(|row| ConnectionInfo {
            name: row["name"].as_str().unwrap_or_default().to_owned(),
            client_name: client_property(&row["client_properties"], "connection_name"),
            timeout: row["timeout"].as_u64().unwrap_or_default(),
            vhost: row["vhost"].as_str().unwrap_or_default().to_owned(),
            user: row["user"].as_str().unwrap_or_default().to_owned(),
            ssl: row["ssl"].as_bool().unwrap_or_default(),
            peer_cert_subject: row["peer_cert_subject"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        })
        .collect()
}

/// Finds a client property in rabbitmqctl's JSON rendering of `client_properties`, a list
/// of `[key, type, value]` triples.
fn client_property(properties: &serde_json::Value, key: &str) -> Option<String> {
    properties.as_array()?.iter().find_map(|entry| {
        let entry = entry.as_array()?;
        if entry.first()?.as_str()? == key {
            entry.get(2)?.as_str().map(str::to_owned)
        } else {
            None
        }
    })
}

/// The connections whose client-provided name is `client_name`.
pub async fn connections_named(client_name: &str) -> Vec<ConnectionInfo> {
    list_connections()
        .await
        .into_iter()
        .filter(|c| c.client_name.as_deref() == Some(client_name))
        .collect()
}

/// Closes every client connection to `vhost` (`rabbitmqctl close_all_connections -p`):
/// give the test its own [`TestVhost`], so other tests' connections are not touched.
///
/// # Panics
/// When rabbitmqctl fails.
pub async fn close_all_connections(vhost: &str, reason: &str) {
    rabbitmqctl_ok(&["close_all_connections", "-p", vhost, reason]).await;
}

/// Closes (broker side) the connections whose client properties mention `client_name`;
/// returns how many.
///
/// `rabbitmqctl close_connection` takes the `<rabbit@localhost.…>` pid form of the default
/// table output (the JSON formatter's `#PID<…>` rendering is rejected as
/// `invalid_pid_syntax`).
///
/// # Panics
/// When rabbitmqctl fails.
pub async fn close_connections_named(client_name: &str, reason: &str) -> usize {
    let out = rabbitmqctl_ok(&["list_connections", "pid", "client_properties"]).await;
    let mut closed = 0;
    for line in out.lines().filter(|l| l.contains(client_name)) {
        if let Some(pid) = line.split_whitespace().next() {
            rabbitmqctl_ok(&["close_connection", pid, reason]).await;
            closed += 1;
        }
    }
    closed
}

/// A vhost of its own for one test, with full permissions for `guest`; deleted (with its
/// queues) on drop.
#[derive(Debug)]
pub struct TestVhost {
    name: String,
}

impl TestVhost {
    /// Creates vhost `aw-test-{name}-{random}` and grants `guest` every permission on it.
    ///
    /// # Panics
    /// When rabbitmqctl fails.
    pub async fn create(name: &str) -> TestVhost {
        let name = unique_name(name);
        add_vhost(&name).await;
        TestVhost { name }
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The broker URL for this vhost.
    pub fn url(&self) -> String {
        amqp_url_for_vhost(&self.name)
    }

    /// Sets the vhost's limits (`rabbitmqctl set_vhost_limits`), a JSON object such as
    /// `{"max-connections": 0}`.
    ///
    /// # Panics
    /// When rabbitmqctl fails.
    pub async fn set_limits(&self, limits: &str) {
        rabbitmqctl_ok(&["set_vhost_limits", "-p", &self.name, limits]).await;
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        if let Err(error) = rabbitmqctl_blocking(&["delete_vhost", &self.name]) {
            eprintln!("test cleanup: {error}");
        }
    }
}

/// Creates `vhost` and grants `guest` configure/write/read on everything in it.
///
/// # Panics
/// When rabbitmqctl fails.
pub async fn add_vhost(vhost: &str) {
    rabbitmqctl_ok(&["add_vhost", vhost]).await;
    rabbitmqctl_ok(&["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]).await;
}

/// Deletes `vhost` and everything in it.
///
/// # Panics
/// When rabbitmqctl fails.
pub async fn delete_vhost(vhost: &str) {
    rabbitmqctl_ok(&["delete_vhost", vhost]).await;
}

/// Sets the broker's memory high watermark (a fraction of RAM). `0` raises the memory alarm,
/// which blocks every publishing connection on the node: prefer [`MemoryAlarm`], which
/// restores the default when dropped.
///
/// # Panics
/// When rabbitmqctl fails.
pub async fn set_vm_memory_high_watermark(fraction: f64) {
    rabbitmqctl_ok(&["set_vm_memory_high_watermark", &fraction.to_string()]).await;
}

/// The broker-wide memory alarm, raised while this guard lives: publishers are blocked
/// (`connection.blocked`). Dropping it restores [`DEFAULT_MEMORY_HIGH_WATERMARK`].
///
/// This affects every test running against the node at the same time: hold it briefly (or
/// raise it on the fault node, [`MemoryAlarm::raise_on`]).
#[derive(Debug)]
pub struct MemoryAlarm {
    node: String,
}

impl MemoryAlarm {
    /// Raises the alarm (watermark 0) on the test node.
    ///
    /// # Panics
    /// When rabbitmqctl fails.
    pub async fn raise() -> MemoryAlarm {
        MemoryAlarm::raise_on(NODE_NAME).await
    }

    /// Raises the alarm (watermark 0) on node `node`.
    ///
    /// # Panics
    /// When rabbitmqctl fails.
    pub async fn raise_on(node: &str) -> MemoryAlarm {
        // Create the guard first, so the watermark is restored even if the call below fails
        // half-way.
        let guard = MemoryAlarm {
            node: node.to_owned(),
        };
        rabbitmqctl_ok_on(node, &["set_vm_memory_high_watermark", "0"]).await;
        guard
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let watermark = DEFAULT_MEMORY_HIGH_WATERMARK.to_string();
        let args = ["set_vm_memory_high_watermark", watermark.as_str()];
        if let Err(error) = rabbitmqctl_blocking_on(&self.node, &args) {
            eprintln!("test cleanup: restoring the memory watermark: {error}");
        }
    }
}

/// A user of its own for one test, with a unique name and password and every permission on
/// vhost `/`; deleted on drop. For per-user settings ([`TestUser::set_limits`]) that must not
/// touch `guest`, whom the other tests use.
#[derive(Debug)]
pub struct TestUser {
    name: String,
    password: String,
}

impl TestUser {
    /// Creates user `aw-test-{name}-{random}` with a random password and grants it
    /// configure/write/read on everything in `/`.
    ///
    /// # Panics
    /// When rabbitmqctl fails.
    pub async fn create(name: &str) -> TestUser {
        let user = TestUser {
            name: unique_name(name),
            password: unique_name("password"),
        };
        rabbitmqctl_ok(&["add_user", &user.name, &user.password]).await;
        rabbitmqctl_ok(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]).await;
        user
    }

    /// The user name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Sets the user's limits (`rabbitmqctl set_user_limits`), a JSON object such as
    /// `{"max-channels": 0}`.
    ///
    /// # Panics
    /// When rabbitmqctl fails.
    pub async fn set_limits(&self, limits: &str) {
        rabbitmqctl_ok(&["set_user_limits", &self.name, limits]).await;
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if let Err(error) = rabbitmqctl_blocking(&["delete_user", &self.name]) {
            eprintln!("test cleanup: {error}");
        }
    }
}

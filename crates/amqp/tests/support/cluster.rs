//! `cluster`: the local three-node RabbitMQ cluster of `scripts/rabbitmq-cluster.sh`
//! (`aw-c1@localhost` … `aw-c3@localhost`, AMQP on 127.0.0.1:5701–5703), for tests that crash,
//! stop and restart nodes or look at quorum queue leaders. No other test may use it.
//!
//! `scripts/test.sh` starts it and exports `ASYNCWORKER_TEST_CLUSTER_URLS` and
//! `ASYNCWORKER_TEST_CLUSTER_NODES` (comma-separated, in node order); [`Cluster::from_env`]
//! reads them.

use super::*;

/// The cluster script, from this crate's manifest directory.
fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq-cluster.sh")
}

/// The local test cluster: its nodes' AMQP URLs and names, in node order (index 0 is
/// `aw-c1@localhost`).
#[derive(Debug, Clone)]
pub struct Cluster {
    urls: Vec<String>,
    nodes: Vec<String>,
}

impl Cluster {
    /// The cluster described by `ASYNCWORKER_TEST_CLUSTER_URLS` and
    /// `ASYNCWORKER_TEST_CLUSTER_NODES`.
    ///
    /// # Panics
    /// When either is missing, or they list different numbers of nodes: the message says how
    /// to start the cluster.
    pub fn from_env() -> Cluster {
        let read = |name: &str| -> Vec<String> {
            let value = std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set: the cluster tests need the local three-node cluster; \
                     run them through `scripts/test.sh` (which starts it), or \
                     `scripts/rabbitmq-cluster.sh start && eval \"$(scripts/rabbitmq-cluster.sh env)\"`"
                )
            });
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let urls = read("ASYNCWORKER_TEST_CLUSTER_URLS");
        let nodes = read("ASYNCWORKER_TEST_CLUSTER_NODES");
        assert_eq!(
            urls.len(),
            nodes.len(),
            "ASYNCWORKER_TEST_CLUSTER_URLS ({urls:?}) and ASYNCWORKER_TEST_CLUSTER_NODES \
             ({nodes:?}) list different numbers of nodes"
        );
        assert!(!nodes.is_empty(), "the cluster has no nodes");
        Cluster { urls, nodes }
    }

    /// Every node's AMQP URL (default vhost), in node order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Every node's name, in node order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Node `i`'s AMQP URL.
    pub fn url(&self, i: usize) -> &str {
        &self.urls[i]
    }

    /// Node `i`'s name.
    pub fn node(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Crashes node `i` (`kill -9` of its Erlang VM); returns when it is gone.
    ///
    /// # Panics
    /// When the script fails.
    pub async fn kill(&self, i: usize) {
        self.script(&["kill", self.node(i)]).await;
    }

    /// Stops node `i` gracefully (`rabbitmqctl stop`).
    ///
    /// # Panics
    /// When the script fails.
    pub async fn stop_node(&self, i: usize) {
        self.script(&["stop-node", self.node(i)]).await;
    }

    /// A guard that starts node `i` again (`start-node`) if it is dropped during a panic: take
    /// it before crashing or stopping a node, so a failing test leaves the cluster whole.
    pub fn restart_on_panic(&self, i: usize) -> RestartOnPanic {
        RestartOnPanic {
            node: self.node(i).to_owned(),
        }
    }

    /// Starts node `i` again; returns when every node sees all of them running.
    ///
    /// # Panics
    /// When the script fails (the node did not come back within the script's timeouts).
    pub async fn start_node(&self, i: usize) {
        self.script(&["start-node", self.node(i)]).await;
    }

    /// The nodes node `i` sees running (`rabbitmqctl cluster_status`), as indexes in node
    /// order.
    ///
    /// # Panics
    /// When rabbitmqctl fails or its output cannot be parsed.
    pub async fn running_seen_by(&self, i: usize) -> Vec<usize> {
        let out = rabbitmqctl_ok_on(self.node(i), &["cluster_status", "--formatter", "json"]).await;
        let status: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|error| panic!("parse cluster_status output {out:?}: {error}"));
        let mut running: Vec<usize> = status["running_nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("cluster_status without running_nodes: {out}"))
            .iter()
            .filter_map(|node| self.index_of(node.as_str()?))
            .collect();
        running.sort_unstable();
        running
    }

    /// The index of the node holding the leader of quorum queue `queue` (vhost `/`), asking
    /// the first node that answers.
    ///
    /// # Panics
    /// When no node answers, the queue does not exist or it has no leader.
    pub async fn leader(&self, queue: &str) -> usize {
        let mut errors = Vec::new();
        for node in &self.nodes {
            match rabbitmqctl_on(
                node,
                &["list_queues", "--formatter", "json", "name", "leader"],
            )
            .await
            {
                Ok(out) => {
                    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim())
                        .unwrap_or_else(|error| {
                            panic!("parse list_queues output {out:?}: {error}")
                        });
                    let row = rows
                        .iter()
                        .find(|row| row["name"] == queue)
                        .unwrap_or_else(|| panic!("no queue {queue:?} on the cluster: {out}"));
                    let leader = row["leader"].as_str().unwrap_or_default();
                    return self.index_of(leader).unwrap_or_else(|| {
                        panic!(
                            "queue {queue:?} has no leader among {:?}: {row}",
                            self.nodes
                        )
                    });
                }
                Err(error) => errors.push(error),
            }
        }
        panic!("no cluster node answers: {errors:?}");
    }

    /// The index of node `name`, if it is one of the cluster's.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node == name)
    }

    async fn script(&self, args: &[&str]) {
        let script = cluster_script();
        let output = tokio::process::Command::new(&script)
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
        assert!(
            output.status.success(),
            "{} {} failed ({}): {}{}",
            script.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Starts a node again when dropped during a panic (see [`Cluster::restart_on_panic`]).
#[derive(Debug)]
pub struct RestartOnPanic {
    node: String,
}

impl Drop for RestartOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let script = cluster_script();
        match std::process::Command::new(&script)
            .args(["start-node", &self.node])
            .status()
        {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("test cleanup: start-node {} failed ({status})", self.node),
            Err(error) => eprintln!("test cleanup: cannot run {}: {error}", script.display()),
        }
    }
}

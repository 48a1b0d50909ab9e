//! [`Connections`]: several named connection configurations.

use asyncworker_core::Error;

use super::AmqpConfig;

/// broker (or vhost, or user). A route picks one by name; with no name, the only one.
///
/// ```
/// use asyncworker_amqp::{AmqpConfig, Connections};
///
/// # fn main() -> Result<(), asyncworker_core::Error> {
/// let mut connections = Connections::new();
/// connections.insert("orders", AmqpConfig::from_url("amqp://orders-broker")?)?;
/// connections.insert("audit", AmqpConfig::from_url("amqp://audit-broker")?)?;
///
/// assert_eq!(connections.select("invoices", Some("audit"))?.host(), "audit-broker");
/// // Two are registered: a route must say which.
/// let err = connections.select("invoices", None).unwrap_err();
/// assert!(err.to_string().contains("invoices"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Connections {
    entries: Vec<(String, AmqpConfig)>,
}

impl Connections {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `config` as `name`. A configuration without a connection name gets `name` as
    /// its connection name, so the broker shows which one it is.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `name` is empty or already registered.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        config: AmqpConfig,
    ) -> Result<&mut Self, Error> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::config("an AMQP connection name must not be empty"));
        }
        if self.get(&name).is_some() {
            return Err(Error::config(format!(
                "an AMQP connection named {name:?} is already registered"
            )));
        }
        let config = config.named_if_unnamed(&name);
        self.entries.push((name, config));
        Ok(self)
    }

    /// [`Connections::insert`], by value.
    ///
    /// # Errors
    ///
    /// As [`Connections::insert`].
    pub fn with(mut self, name: impl Into<String>, config: AmqpConfig) -> Result<Self, Error> {
        self.insert(name, config)?;
        Ok(self)
    }

    /// The configuration registered as `name`.
    pub fn get(&self, name: &str) -> Option<&AmqpConfig> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, config)| config)
    }

    /// The registered names, in registration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// How many configurations are registered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The configuration `route` uses: the one named `choice`, or, with no choice, the only
    /// one registered.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the route when `choice` is not registered, or when no choice
    /// is made and zero or several configurations are registered.
    pub fn select(&self, route: &str, choice: Option<&str>) -> Result<&AmqpConfig, Error> {
        let known = || {
            self.names()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match choice {
            Some(name) => self.get(name).ok_or_else(|| {
                if self.is_empty() {
                    Error::config(format!(
                        "route {route:?} uses the AMQP connection {name:?}, but no AMQP \
                         connection is registered"
                    ))
                } else {
                    Error::config(format!(
                        "route {route:?} uses the AMQP connection {name:?}, which is not \
                         registered (registered: {})",
                        known()
                    ))
                }
            }),
            None => match self.entries.as_slice() {
                [(_, config)] => Ok(config),
                [] => Err(Error::config(format!(
                    "route {route:?} needs an AMQP connection, but none is registered"
                ))),
                _ => Err(Error::config(format!(
                    "route {route:?} does not say which AMQP connection to use, and {} are \
                     registered ({}): choose one by name",
                    self.len(),
                    known()
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_select_by_name_or_the_only_one() {
        let a = AmqpConfig::from_url("amqp://a").unwrap();
        let b = AmqpConfig::from_url("amqp://b").unwrap();
        let mut conns = Connections::new();
        let e = conns.select("r1", None).unwrap_err().to_string();
        assert!(
            e.contains("\"r1\"") && e.contains("none is registered"),
            "{e}"
        );
        conns.insert("a", a).unwrap();
        assert_eq!(conns.select("r1", None).unwrap().host(), "a");
        assert_eq!(
            conns.select("r1", None).unwrap().connection_name(),
            Some("a")
        );
        conns.insert("b", b.clone()).unwrap();
        let e = conns.select("r1", None).unwrap_err().to_string();
        assert!(e.contains("\"r1\"") && e.contains("\"a\", \"b\""), "{e}");
        assert_eq!(conns.select("r1", Some("b")).unwrap().host(), "b");
        let e = conns.select("r1", Some("c")).unwrap_err().to_string();
        assert!(e.contains("\"c\"") && e.contains("not registered"), "{e}");
        assert!(conns.insert("a", b).is_err());
    }
}

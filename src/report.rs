//! [`Report`]: an error as a person reads it, for `main`.

use std::fmt;

use asyncworker_core::BoxError;

/// An error returned from `main`, printed for a person: its message, then each cause on a
/// line of its own.
///
/// A `main` returning `Result<(), BoxError>` prints the error's `Debug` form when it fails —
/// `Error: Config("bulk size must be at least 1")` — because that is what Rust's `main`
/// does with any error. `Report`'s `Debug` is its `Display`:
///
/// ```text
/// Error: cannot connect to amqp://guest@127.0.0.1:1 vhost "/" (attempt 1)
///
/// Caused by:
///     Connection refused (os error 111)
/// ```
///
/// Any error converts into it with `?`:
///
/// ```
/// use asyncworker::prelude::*;
///
/// fn main() -> Result<(), Report> {
///     let size: usize = "8".parse()?;
///     let _layer = asyncworker::bulk::BulkLayer::<asyncworker::memory::MemoryMessage>::new(size)?;
///     Ok(())
/// }
/// ```
pub struct Report(BoxError);

impl Report {
    /// The error it reports.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }

    /// The error it reports, owned.
    pub fn into_error(self) -> BoxError {
        self.0
    }
}

// No `std::error::Error` impl: it would overlap with this blanket conversion (as with
// `anyhow::Error`), which is what makes `?` work on every error type.
impl<E: Into<BoxError>> From<E> for Report {
    fn from(error: E) -> Self {
        Report(error.into())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        if source.is_some() {
            f.write_str("\n\nCaused by:")?;
        }
        while let Some(cause) = source {
            write!(f, "\n    {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot start the worker")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_report_reads_as_the_message_then_each_cause() {
        let report = Report::from(Outer(std::io::Error::other("disk full")));
        assert_eq!(
            format!("{report:?}"),
            "cannot start the worker\n\nCaused by:\n    disk full"
        );
        assert_eq!(format!("{report}"), format!("{report:?}"));
    }

    #[test]
    fn an_error_without_causes_is_one_line() {
        let report = Report::from(asyncworker_core::Error::config(
            "bulk size must be at least 1",
        ));
        let shown = format!("{report:?}");
        assert!(!shown.contains("Config("), "{shown}");
        assert!(shown.contains("bulk size must be at least 1"), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
    }
}

//! memory (in progress)

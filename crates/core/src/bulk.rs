//! bulk (in progress)

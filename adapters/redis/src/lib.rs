//! In progress: lands with issue 4.

//! Shared harness for Tern's end-to-end tests (work in progress).

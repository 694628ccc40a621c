//! Cached probes of kernel features.

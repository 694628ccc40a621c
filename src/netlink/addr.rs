//! Addresses over rtnetlink.

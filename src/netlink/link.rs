//! Links over rtnetlink.

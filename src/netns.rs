//! Network namespaces: create, enter, run code in, remove.

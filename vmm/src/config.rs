//! The VM configuration: TOML file + CLI flags, validated.

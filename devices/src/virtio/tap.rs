//! TAP network backend.

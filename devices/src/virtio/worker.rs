//! Worker threads that run activated devices on an event-manager loop.

//! Type 0/1 configuration space with BAR sizing and capabilities.

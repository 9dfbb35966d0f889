//! SCD wire protocol (see docs/wire.md).

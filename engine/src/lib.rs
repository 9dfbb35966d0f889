//! SCD storage engine (see docs/storage.md).

//! Native PHP session module `cluster` (not built yet: see its issue).

//! Health checks: see the module docs once written.

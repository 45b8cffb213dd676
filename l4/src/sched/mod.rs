//! Schedulers: see the module docs once written.

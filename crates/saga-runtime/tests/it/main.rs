//! The runtime in process on a real SQLite store, for what the binary cannot be made to do from
//! outside: code of this process (a builtin, a transition hook) that panics.

mod panics;

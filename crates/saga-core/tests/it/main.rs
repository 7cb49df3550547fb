//! saga-core integration tests: definition parsing and validation.

mod validation;

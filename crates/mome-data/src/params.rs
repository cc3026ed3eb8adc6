//! Validate once, into a checked type: linfa's `ParamGuard` pattern, shared by every
//! mome crate (mome-core re-exports it).
//!
//! A job is written as an *unchecked* type (what a TOML file or a caller fills in,
//! usually `serde::Deserialize`) and a *checked* type that only [`ParamGuard::check`]
//! can make. Library entry points take the checked type, so nothing downstream
//! validates again, and every default lives in the unchecked type's `Default` /
//! serde defaults.
//!
//! ```
//! use mome_data::params::ParamGuard;
//!
//! #[derive(Debug, Clone, Default)]
//! struct BatchParams { batch_size: usize }
//! #[derive(Debug, Clone)]
//! struct Batch { batch_size: usize }
//!
//! impl ParamGuard for BatchParams {
//!     type Checked = Batch;
//!     type Error = String;
//!     fn check(&self) -> Result<Batch, String> {
//!         if self.batch_size == 0 {
//!             return Err("batch_size must be > 0".into());
//!         }
//!         Ok(Batch { batch_size: self.batch_size })
//!     }
//! }
//!
//! assert!(BatchParams::default().check().is_err());
//! assert_eq!(BatchParams { batch_size: 8 }.check().unwrap().batch_size, 8);
//! ```

/// An unchecked set of parameters that validates into [`ParamGuard::Checked`].
pub trait ParamGuard {
    /// The validated type; only [`ParamGuard::check`] makes one.
    type Checked;
    /// What a failed check returns (naming the field).
    type Error;
    /// Validates every field and builds the checked type.
    fn check(&self) -> std::result::Result<Self::Checked, Self::Error>;
}

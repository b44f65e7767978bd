//! The data layer: interactions in CSR form, raw-id maps, k-core filtering and splits.

pub mod idmap;
pub mod interactions;
pub mod kcore;
pub mod split;

pub use idmap::IdMap;
pub use interactions::{Columns, Interactions};
pub use kcore::{k_core, KCore};
pub use split::{leave_one_out, ratio, Order, ShortUsers, Split, SplitReport};

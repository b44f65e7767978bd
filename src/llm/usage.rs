//! Token counts a server reports with an answer. Shared by the client (which reads them from
//! the response and sums them in a batch report) and the cache (which keeps them with each
//! answer), so neither module depends on the other for it.

use serde::{Deserialize, Serialize};

/// Token counts reported by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

impl Usage {
    /// Prompt plus completion tokens (saturating: a server may report anything).
    pub fn total(self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

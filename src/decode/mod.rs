//! Decoding: logit filters, greedy and beam search, temperature fallback.

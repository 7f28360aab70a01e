//! Placeholder: PNG plots of backtests are being written.

//! Placeholder: the k-means lag-feature baseline is being written.

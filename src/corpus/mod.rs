//! Articles with text and activation peaks.

//! The learned scheduler (issue 4): under construction.
#![forbid(unsafe_code)]

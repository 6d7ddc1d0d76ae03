//! Bitbucket REST client (Cloud 2.0 and Data Center). Placeholder.
